"""Model packages: write/load/verify, refusal of corrupt or incompatible packages, registry, CLI,
and the import of a MONAI Model Zoo brats_mri_segmentation bundle."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from brainbarriers.cli.main import main as cli
from brainbarriers.errors import InputError
from brainbarriers.io import sha256_file
from brainbarriers.models import (
    MANIFEST,
    install_package,
    list_packages,
    load_package,
    models_dirs,
    verify_package,
    write_package,
)

torch.set_num_threads(1)
SMALL = {"in_channels": 4, "out_channels": 3, "base": 4, "widths": [4, 8, 8, 16], "blocks": 1,
         "ema_channels": 8, "ema_bases": 4}


def _manifest(name="tiny-hnf", inputs=("t1", "t1ce", "t2", "flair")):
    return {"name": name, "version": "0.1", "task": "tumor", "licence": "Apache-2.0",
            "architecture": {"name": "hnfnetv2", "params": SMALL}, "inputs": list(inputs),
            "normalisation": {"kind": "brain-zscore"}, "patch_size": [32, 32, 32],
            "output": {"type": "regions", "channels": ["WT", "TC", "ET"]}}


@pytest.fixture()
def package(tmp_path):
    from brainbarriers.nets.hnfnet import HNFNetv2

    torch.manual_seed(0)
    nets = {f"fold{i}": HNFNetv2(**SMALL).state_dict() for i in range(2)}
    return write_package(tmp_path / "pkg", _manifest(), nets), nets


def test_write_load_build_roundtrip(package):
    folder, nets = package
    pkg = load_package(folder)
    assert pkg.name == "tiny-hnf" and pkg.weight_keys == ["fold0", "fold1"]
    m = json.loads((folder / MANIFEST).read_text())
    assert len(m["weights"]["fold0"]["sha256"]) == 64
    net = pkg.build_network("fold1")
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, nets["fold1"][k])
    assert len(pkg.networks()) == 2
    x = torch.randn(1, 4, 32, 32, 32)
    assert pkg.build_network()(x).shape == (1, 3, 32, 32, 32)


def test_checksum_mismatch_is_refused(package):
    folder, _ = package
    f = folder / "fold0.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum mismatch"):
        load_package(folder)
    assert cli(["models", "verify", str(folder)]) == 2


def test_missing_weights_file_and_bad_manifest_are_refused(package, tmp_path):
    folder, _ = package
    (folder / "fold1.safetensors").unlink()
    with pytest.raises(InputError, match="fold1.safetensors.*missing"):
        verify_package(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        verify_package(folder)
    with pytest.raises(InputError, match="no manifest.json"):
        verify_package(tmp_path)
    m = _manifest()
    m["weights"] = {"a": {"file": "a.safetensors", "sha256": "0" * 64}}
    m.pop("inputs")
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(InputError, match="lacks the field.*inputs"):
        verify_package(folder)


def test_incompatible_inputs_and_factory_are_refused(tmp_path):
    from brainbarriers.nets.hnfnet import HNFNetv2

    folder = write_package(tmp_path / "p", _manifest(inputs=("t1", "t1ce", "t2", "pd")),
                           HNFNetv2(**SMALL).state_dict())
    pkg = load_package(folder)
    assert pkg.weight_keys == ["model"]
    with pytest.raises(InputError, match=r"\['pd'\] are not available"):
        pkg.require_inputs(["t1", "t1ce", "t2", "flair"])
    with pytest.raises(InputError, match="incompatible"):
        load_package(folder).require_inputs(["t1", "t1ce", "t2", "pd", "flair"], exact=True)
    m = json.loads((folder / MANIFEST).read_text())
    m["architecture"] = {"factory": "os:system", "params": {}}
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(InputError, match="brainbarriers.<module>"):
        load_package(folder).build_network()


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    from brainbarriers.nets.hnfnet import HNFNetv2

    m = _manifest()
    folder = write_package(tmp_path / "p", m, HNFNetv2(**SMALL).state_dict())
    m = json.loads((folder / MANIFEST).read_text())
    m["architecture"]["params"]["base"] = 8
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(InputError, match="do not fit"):
        load_package(folder).build_network()


def test_registry_install_list_zip_and_cli(package, tmp_path, monkeypatch, capsys):
    folder, _ = package
    models = tmp_path / "models"
    monkeypatch.setenv("BRAINBARRIERS_MODELS", str(models))
    assert models_dirs()[0] == models
    zpath = tmp_path / "pkg.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in folder.iterdir():
            z.write(f, f"tiny/{f.name}")
    pkg = install_package(zpath)
    assert pkg.path == models / "tiny-hnf-0.1"
    assert load_package("tiny-hnf").path == pkg.path
    assert load_package("tiny-hnf@0.1").path == pkg.path
    assert any(p.name == "tiny-hnf" for p in list_packages(task="tumor"))
    with pytest.raises(InputError, match="no model package named 'nope'"):
        load_package("nope")
    with pytest.raises(InputError, match="sha256 differs"):
        install_package(zpath, sha256="0" * 64)
    capsys.readouterr()
    assert cli(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"tiny-hnf", "demo-hnfnetv2-phantom"} <= {p["name"] for p in listed}
    assert cli(["models", "verify", "tiny-hnf", "--build"]) == 0
    assert "checksums match" in capsys.readouterr().out
    shutil.rmtree(models)
    assert cli(["models", "install", str(folder)]) == 0
    assert (models / "tiny-hnf-0.1" / "fold0.safetensors").is_file()


def test_shipped_demo_package_verifies():
    pkg = verify_package("demo-hnfnetv2-phantom")
    assert pkg.task == "tumor" and pkg.inputs == ["t1", "t1ce", "t2", "flair"]
    size = sum(p.stat().st_size for p in pkg.path.iterdir())
    assert size < 5e6  # a few MB at most
    assert "DEMO" in pkg.manifest["description"]
    pkg.build_network()


def _fake_bundle(root, channel_order=("T1c", "T1", "T2", "FLAIR")):
    """A folder with the layout of MONAI's brats_mri_segmentation bundle and random weights."""
    from monai.networks.nets import SegResNet

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    net_def = {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1],
               "init_filters": 8, "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2}
    (root / "configs" / "inference.json").write_text(json.dumps({
        "network_def": net_def,
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [64, 64, 48],
                    "sw_batch_size": 1, "overlap": 0.5}}))
    (root / "configs" / "metadata.json").write_text(json.dumps({
        "name": "BraTS MRI segmentation", "version": "0.5.2", "monai_version": "1.3.0",
        "description": "test bundle",
        "network_data_format": {
            "inputs": {"image": {"num_channels": 4,
                                 "channel_def": {str(i): c for i, c in enumerate(channel_order)}}},
            "outputs": {"pred": {"num_channels": 3, "channel_def": {
                "0": "tumor core", "1": "whole tumor", "2": "enhancing tumor"}}}}}))
    (root / "LICENSE").write_text("Apache License 2.0\n")
    torch.manual_seed(1)
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in net_def.items() if k != "_target_"}
    net = SegResNet(spatial_dims=3, **kw)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return net


def test_import_monai_bundle(tmp_path):
    from brainbarriers.models.monai_bundle import import_monai_bundle

    net = _fake_bundle(tmp_path / "brats_mri_segmentation")
    assert cli(["models", "import-monai", str(tmp_path / "brats_mri_segmentation"),
                str(tmp_path / "imported")]) == 0
    pkg = load_package(tmp_path / "imported")
    assert pkg.inputs == ["t1ce", "t1", "t2", "flair"]  # the bundle's own channel order
    assert pkg.manifest["output"]["channels"] == ["TC", "WT", "ET"]
    assert pkg.manifest["architecture"]["name"] == "segresnet"
    assert pkg.manifest["patch_size"] == [64, 64, 48]
    x = torch.randn(1, 4, 32, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(pkg.build_network()(x), net(x), atol=1e-5)
    # A bundle whose metadata names another channel order is followed.
    _fake_bundle(tmp_path / "b2", channel_order=("FLAIR", "T1w", "t1gd", "T2w"))
    assert import_monai_bundle(tmp_path / "b2", tmp_path / "i2").inputs == ["flair", "t1", "t1ce", "t2"]
    (tmp_path / "b2" / "models" / "model.pt").unlink()
    with pytest.raises(InputError, match="model.pt"):
        import_monai_bundle(tmp_path / "b2", tmp_path / "i3")


def test_monai_bundle_runs_through_our_inference(tmp_path, small_case):
    """The imported SegResNet's channels are fed in the bundle's order and TC/WT/ET decoded.

    Each sequence is bright in its own region, and a stand-in network reads the regions from the
    channels where the bundle says the sequences are (TC from T1c, WT from FLAIR, ET from T1): the
    labels come out right only if the channels go in, and the outputs come back, in that order.
    """
    from brainbarriers.tumor.inference import segment

    _fake_bundle(tmp_path / "b")
    from brainbarriers.models.monai_bundle import import_monai_bundle

    pkg = import_monai_bundle(tmp_path / "b", tmp_path / "pkg")
    assert pkg.inputs == ["t1ce", "t1", "t2", "flair"]
    mask = small_case.truths["brain_mask"]
    brain = mask.array > 0
    centre = np.argwhere(brain).mean(axis=0)
    radius = np.linalg.norm(np.indices(mask.shape) - centre[:, None, None, None], axis=0)
    region = {"ET": radius < 4, "TC": radius < 7, "WT": radius < 11,
              "elsewhere": (radius > 14) & (radius < 17)}
    bright_in = {"t1ce": "TC", "t1": "ET", "flair": "WT", "t2": "elsewhere"}
    images = {s: mask.with_array(np.where(brain, 1.0 + 10.0 * region[r], 0.0).astype(np.float32))
              for s, r in bright_in.items()}
    # The bundle's 1 mm is overridden to the phantom's 2 mm to keep the test quick (resampling to the
    # model's spacing is tested with the demo model); TTA off.
    pkg.manifest["spacing_mm"] = [2.0, 2.0, 2.0]
    seen = {}

    class Reader(torch.nn.Module):
        """Stands in for the network: region logits read from the bundle's input channels."""

        def forward(self, x):
            seen["channels"] = x.shape[1]
            def bright(c):
                return torch.where(x[:, c] > 1.0, 10.0, -10.0)
            return torch.stack([bright(0), bright(3), bright(1)], dim=1)  # TC, WT, ET

    labels = segment(images, mask, pkg, tta=False, nets=[Reader()])
    assert seen["channels"] == 4
    assert labels.grid.same_as(mask.grid)
    expected = np.zeros(mask.shape, np.uint8)
    expected[region["WT"]] = 2
    expected[region["TC"]] = 1
    expected[region["ET"]] = 4
    expected[~brain] = 0
    assert (expected == 4).sum() > 20 and (expected == 2).sum() > 20
    np.testing.assert_array_equal(labels.array, expected)
    # The imported network itself runs through the same path.
    labels = segment(images, mask, pkg, tta=False, nets=[pkg.build_network()])
    assert set(np.unique(labels.array)) <= {0, 1, 2, 4} and not labels.array[~brain].any()


# ------------------------------------------------------------------------------ integrity
@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder (where zips are extracted) isolated for the test."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _zip(folder, zpath, extra=()):
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in folder.iterdir():
            z.write(f, f"pkg/{f.name}")
        for name, data in extra:
            z.writestr(name, data)
    return zpath


@pytest.mark.parametrize("field, value", [("name", "../../victim"), ("version", "../../../victim"),
                                          ("name", "{tmp_path}/victim"), ("name", "..")])
def test_install_writes_nothing_outside_the_models_folder(package, tmp_path, field, value):
    folder, _ = package
    value = value.format(tmp_path=tmp_path)  # an absolute path, in this test's folder
    victim = tmp_path / "victim-0.1"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    m = json.loads((folder / MANIFEST).read_text())
    m[field] = value
    (folder / MANIFEST).write_text(json.dumps(m))
    models = tmp_path / "a" / "b" / "models"
    with pytest.raises(InputError, match=f"{field} .* cannot name a folder"):
        install_package(folder, dest=models)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not models.exists() or not any(models.iterdir())


def test_a_weights_file_linked_outside_the_package_is_refused(package, tmp_path):
    folder, _ = package
    outside = tmp_path / "outside.safetensors"
    (folder / "fold0.safetensors").rename(outside)
    (folder / "fold0.safetensors").symlink_to(outside)  # same bytes, same sha256, but elsewhere
    with pytest.raises(InputError, match="which is outside"):
        verify_package(folder)


def test_the_zip_cache_is_checked_against_the_zip_on_every_use(package, tmp_path, private_tmp):
    """A package planted in the extraction cache (self-consistent checksums) is not used."""
    from brainbarriers.nets.hnfnet import HNFNetv2

    folder, nets = package
    zpath = _zip(folder, tmp_path / "pkg.zip")
    cached = load_package(zpath).path
    torch.manual_seed(99)
    planted = write_package(tmp_path / "planted", _manifest(), {"fold0": HNFNetv2(**SMALL).state_dict(),
                                                                  "fold1": nets["fold1"]})
    for f in planted.iterdir():
        shutil.copy(f, cached / f.name)
    assert verify_package(cached).name == "tiny-hnf"  # the planted folder verifies on its own
    original = (folder / "fold0.safetensors").read_bytes()
    assert (load_package(zpath).path / "fold0.safetensors").read_bytes() == original
    for f in planted.iterdir():
        shutil.copy(f, cached / f.name)
    pkg = install_package(zpath, sha256=sha256_file(zpath), dest=tmp_path / "models")
    assert (pkg.path / "fold0.safetensors").read_bytes() == original


def test_sha256_given_for_a_folder_is_not_ignored(package, tmp_path):
    folder, _ = package
    with pytest.raises(InputError, match="--sha256 checks a zip"):
        install_package(folder, sha256="0" * 64, dest=tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_zip_bombs_are_refused(package, tmp_path, private_tmp, monkeypatch):
    import brainbarriers.models as models

    folder, _ = package
    many = _zip(folder, tmp_path / "many.zip", [(f"pkg/docs/{n}.txt", b"x") for n in range(1000)])
    with pytest.raises(InputError, match="holds 1003 files; a model package holds at most 1000"):
        install_package(many, dest=tmp_path / "models")
    monkeypatch.setattr(models, "MAX_ZIP_BYTES", 16 << 20)
    big = _zip(folder, tmp_path / "big.zip", [("pkg/docs/zeros.bin", bytes(20 << 20))])
    assert big.stat().st_size < 8 << 20  # small on disk, over the limit once expanded
    with pytest.raises(InputError, match="expands to"):
        install_package(big, dest=tmp_path / "models")
    assert not list(private_tmp.rglob("*.txt")) and not list(private_tmp.rglob("*.bin"))
    assert not (tmp_path / "models").exists()


def test_installs_leave_no_extraction_behind(package, tmp_path, private_tmp):
    folder, _ = package
    data = bytearray((folder / "fold1.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (folder / "fold1.safetensors").write_bytes(bytes(data))
    bad = _zip(folder, tmp_path / "bad.zip")
    with pytest.raises(InputError, match="checksum mismatch"):
        install_package(bad, dest=tmp_path / "models")
    assert not list(private_tmp.rglob("*.safetensors"))
    assert not list((tmp_path / "models").rglob("*.safetensors"))


def test_installed_package_follows_the_umask(package, tmp_path, private_tmp):
    import os
    import stat

    folder, _ = package
    old = os.umask(0o022)
    try:
        pkg = install_package(_zip(folder, tmp_path / "p.zip"), dest=tmp_path / "models")
    finally:
        os.umask(old)
    assert stat.S_IMODE(pkg.path.stat().st_mode) == 0o755
    assert not list(private_tmp.rglob("*.safetensors"))  # the extraction was removed
