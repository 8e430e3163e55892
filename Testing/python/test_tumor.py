"""Tumour inference, the ``tumor`` step through the pipeline, the demo model's accuracy, and training.

The skull-stripping step is another capability; a test-only stand-in makes the brain mask (from the
phantom's truth) and the skull-stripped sequences, so the tumour step runs as the pipeline runs it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pipeline_standins import standin_skullstrip

from brainbarriers.cli.main import main as cli
from brainbarriers.errors import InputError
from brainbarriers.io import load_volume, save_volume
from brainbarriers.metrics import dice
from brainbarriers.models import load_package
from brainbarriers.phantom import make_case
from brainbarriers.pipeline import PipelineRun
from brainbarriers.pipeline.core import Step
from brainbarriers.tumor.inference import (
    FLIPS,
    grid_with_spacing,
    predict_array,
    relabel_small_et,
    segment,
)
from brainbarriers.tumor.preprocess import labels_from_regions, normalise, regions_from_labels
from brainbarriers.tumor.step import STEP
from brainbarriers.volume import Grid

torch.set_num_threads(1)
SEQ = ("t1", "t1ce", "t2", "flair")


# ------------------------------------------------------------------------------ units
def test_normalise_clips_and_zscores_inside_the_brain():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (20, 20, 20)).astype(np.float32)
    image[0, 0, 0] = 1e6  # an outlier the percentile clip must tame
    mask = np.zeros(image.shape, bool)
    mask[2:18, 2:18, 2:18] = True
    mask[0, 0, 0] = True
    out = normalise(image, mask)
    assert abs(out[mask].mean()) < 1e-4 and abs(out[mask].std() - 1) < 1e-3
    assert out[0, 0, 0] < 4  # clipped to the 99.5th percentile
    assert not out[~mask].any()


def test_regions_and_labels_roundtrip():
    labels = np.array([0, 1, 2, 4, 4, 2, 0], np.uint8).reshape(1, 1, 7)
    r = regions_from_labels(labels) > 0
    assert r[0].tolist() == (labels > 0).tolist()
    assert np.array_equal(labels_from_regions(r[0], r[1], r[2]), labels)
    # 2023 labels (3 = enhancing) are read as 4.
    assert np.array_equal(regions_from_labels(np.where(labels == 4, 3, labels)), regions_from_labels(labels))
    # ET outside WT is dropped; ET inside WT but outside TC still becomes 4 (nesting restored).
    wt = np.array([1, 1, 0], bool)
    assert labels_from_regions(wt, np.array([0, 0, 0], bool), np.array([0, 1, 1], bool)).tolist() == [2, 4, 0]


def test_small_enhancing_region_becomes_necrosis():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:8, 2:8, 2:8] = 2
    labels[4:6, 4:6, 4:6] = 4  # 8 voxels of 1 mm^3 = 0.008 ml
    assert (relabel_small_et(labels, 0.001, 0.2) == 4).sum() == 0
    assert (relabel_small_et(labels, 0.001, 0.2) == 1).sum() == 8
    assert (relabel_small_et(labels, 0.001, 0.005) == 4).sum() == 8  # above the threshold: kept
    assert (relabel_small_et(labels, 0.001, 0.0) == 4).sum() == 8


def test_tta_flips_back_and_ensemble_averages():
    assert len(FLIPS) == 8 and len(set(FLIPS)) == 8 and () in FLIPS

    class Ramp(torch.nn.Module):  # equivariant to flips: the identity on channel 0
        def __init__(self, sign=1.0):
            super().__init__()
            self.sign = sign

        def forward(self, x):
            return self.sign * x[:, :1]

    x = torch.linspace(-3, 3, 16 * 12 * 8).reshape(1, 16, 12, 8)
    p = predict_array([Ramp()], x, roi=(8, 8, 8), tta=True)
    assert np.allclose(p[0], torch.sigmoid(x[0]).numpy(), atol=1e-5)  # wrong flip-back would differ
    p2 = predict_array([Ramp(1.0), Ramp(-1.0)], x, roi=(8, 8, 8), tta=False)
    assert np.allclose(p2, 0.5, atol=1e-6)
    calls = []

    class Counter(Ramp):
        def forward(self, t):
            calls.append(1)
            return super().forward(t)

    predict_array([Counter()], x, roi=(16, 12, 8), tta=True)
    assert len(calls) == 8


def test_grid_with_spacing_keeps_the_field_of_view():
    grid = Grid((240, 240, 155), np.diag([-1.0, -1.0, 1.0, 1.0]))
    g2 = grid_with_spacing(grid, (2.0, 2.0, 2.0))
    assert g2.shape == (120, 120, 78)
    # Corner of voxel 0 stays: centre shifted half a new voxel minus half an old one.
    assert np.allclose(g2.affine[:3, 3], [-0.5, -0.5, 0.5])
    assert np.allclose(g2.spacing, 2.0)


# ------------------------------------------------------------------------------ the step
def standin_supervoxels() -> Step:
    def run(ctx):  # 4x4x4 blocks inside the brain
        shape = ctx.grid.shape
        idx = np.indices(shape) // 4
        blocks = idx[0] * 10_000 + idx[1] * 100 + idx[2] + 1
        mask = ctx.get("brain_mask").array > 0
        return {"supervoxels_merged": ctx.new_volume(np.where(mask, blocks, 0).astype(np.int32))}

    return Step(name="supervoxels", run=run, inputs=("brain_mask",), outputs=("supervoxels_merged",),
                labels=("supervoxels_merged",))


@pytest.fixture(scope="module")
def tumor_run(small_case_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tumor_run")
    inputs = {s: small_case_dir / f"{s}.nii.gz" for s in SEQ}
    events = []
    run = PipelineRun(inputs, out, [standin_skullstrip(small_case_dir / "brain_mask_truth.nii.gz"),
                                    STEP], device="cpu", options={"tumor": {"tta": "false"}},
                      on_event=events.append)
    return out, run.run(), events, run


def test_step_declaration_and_registry():
    assert STEP.name == "tumor" and STEP.outputs == ("tumor",) and STEP.labels == ("tumor",)
    assert STEP.sequences == SEQ
    assert STEP.inputs == ("brain_mask", "t1_brain", "t1ce_brain", "t2_brain", "flair_brain")
    assert STEP.optional_inputs == ("supervoxels_merged",)
    from brainbarriers.pipeline.registry import all_steps

    names = [s.name for s in all_steps()]
    assert "tumor" in names
    assert names.index("tumor") > names.index("supervoxels")


def test_demo_model_through_the_pipeline(tumor_run, small_case_dir):
    out, outputs, events, run = tumor_run
    pred = load_volume(outputs["tumor"], allow_empty=True)
    truth = load_volume(small_case_dir / "tumor_truth.nii.gz")
    assert pred.grid.same_as(truth.grid)  # written on the user's grid
    assert set(np.unique(pred.array)) <= {0, 1, 2, 4}
    wt = dice(pred.array > 0, truth.array > 0)
    print(f"\ndemo model, seed-3 phantom through the pipeline: Dice WT {wt:.3f}")
    assert wt >= 0.80
    assert any("demo model" in w["message"] for w in run.warnings)


@pytest.mark.parametrize("seed", [11])
def test_demo_model_on_held_out_case(seed):
    case = make_case(seed, zoom=2)  # training used seeds >= 1000
    mask = case.truths["brain_mask"]
    images = {s: v.with_array(v.array * (mask.array > 0)) for s, v in case.sequences.items()}
    pred = segment(images, mask, load_package("demo-hnfnetv2-phantom"), tta=False)
    truth = case.truths["tumor"].array
    wt = dice(pred.array > 0, truth > 0)
    tc = dice(np.isin(pred.array, (1, 4)), np.isin(truth, (1, 4)))
    print(f"\ndemo model, held-out seed {seed}: Dice WT {wt:.3f} TC {tc:.3f}")
    assert wt >= 0.80


def test_demo_model_on_the_1mm_demo_case_resamples_to_its_spacing():
    from brainbarriers.demo import demo_case_folder

    folder = demo_case_folder()
    mask = load_volume(folder / "brain_mask_truth.nii.gz")
    truth = load_volume(folder / "tumor_truth.nii.gz")
    images = {s: load_volume(folder / f"{s}.nii.gz") for s in SEQ}
    images = {s: v.with_array(v.array * (mask.array > 0)) for s, v in images.items()}
    pred = segment(images, mask, load_package("demo-hnfnetv2-phantom"), tta=False)
    assert pred.grid.same_as(truth.grid) and np.allclose(pred.spacing, 1.0)
    wt = dice(pred.array > 0, truth.array > 0)
    print(f"\ndemo model on the 1 mm demo case (via 2 mm): Dice WT {wt:.3f}")
    assert wt >= 0.75


def test_missing_extra_and_incompatible_inputs(small_case_dir, small_case, tmp_path):
    inputs = {s: small_case_dir / f"{s}.nii.gz" for s in ("t1", "t1ce", "t2")}
    with pytest.raises(InputError, match="step 'tumor' needs --flair"):
        PipelineRun(inputs, tmp_path / "o", [standin_skullstrip(small_case_dir / "brain_mask_truth.nii.gz"),
                                             STEP], device="cpu")
    pkg = load_package("demo-hnfnetv2-phantom")
    mask = small_case.truths["brain_mask"]
    images = dict(small_case.sequences)
    with pytest.raises(InputError, match=r"\['flair'\] are not available"):
        segment({k: v for k, v in images.items() if k != "flair"}, mask, pkg)
    extra = dict(images, ct=images["t1"])
    with pytest.raises(InputError, match=r"\['ct'\] given"):
        segment(extra, mask, pkg)
    # A package wanting a sequence the step does not have is refused, naming it.
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pkg.path, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["inputs"] = ["t1", "t1ce", "t2", "pd"]
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match="pd"):
        PipelineRun({s: small_case_dir / f"{s}.nii.gz" for s in SEQ}, tmp_path / "o2",
                    [standin_skullstrip(small_case_dir / "brain_mask_truth.nii.gz"), STEP],
                    device="cpu", options={"tumor": {"model": str(bad)}}).run()


def test_refine_by_supervoxels(small_case_dir, tmp_path):
    inputs = {s: small_case_dir / f"{s}.nii.gz" for s in SEQ}
    run = PipelineRun(inputs, tmp_path / "o", [
        standin_skullstrip(small_case_dir / "brain_mask_truth.nii.gz"), standin_supervoxels(), STEP],
        device="cpu", options={"tumor": {"tta": False, "refine_supervoxels": True}})
    run.run()
    tumor = run.get("tumor").array > 0
    blocks = run.get("supervoxels_merged").array
    assert tumor.any()
    inside = blocks > 0
    # Every supervoxel is all tumour or no tumour.
    per_block = np.bincount(blocks[inside], weights=tumor[inside])
    size = np.bincount(blocks[inside])
    used = size > 0
    assert np.all((per_block[used] == 0) | (per_block[used] == size[used]))


# ------------------------------------------------------------------------------ training
def _write_brats(root, seed, release):
    case = make_case(seed, zoom=4, radius_mm=20.0, edema_mm=8.0)
    names = {"2021": ("BraTS2021_{:05d}", {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2",
                                          "flair": "_flair", "seg": "_seg"}),
             "2023": ("BraTS-GLI-{:05d}-000", {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w",
                                               "flair": "-t2f", "seg": "-seg"})}
    stem, suffix = names[release]
    case_id = stem.format(seed)
    folder = root / case_id
    folder.mkdir(parents=True)
    mask = case.truths["brain_mask"].array > 0
    for s in SEQ:
        v = case.sequences[s]
        save_volume(v.with_array((v.array * mask).astype(np.float32)), folder / f"{case_id}{suffix[s]}.nii.gz")
    seg = case.truths["tumor"].array
    if release == "2023":
        seg = np.where(seg == 4, 3, seg)
    save_volume(case.truths["tumor"].with_array(seg.astype(np.uint8)),
                folder / f"{case_id}{suffix['seg']}.nii.gz", np.uint8)
    return case_id


def test_train_two_iterations_and_resume(tmp_path, capsys):
    from brainbarriers.tumor.train import find_cases, kfold

    data = tmp_path / "brats"
    ids = {_write_brats(data, 21, "2021"), _write_brats(data, 22, "2023")}
    cases = find_cases(data)
    assert {c["id"] for c in cases} == ids and {c["release"] for c in cases} == {"2021", "2023"}
    tr, val = kfold(10, 5, 0)
    assert len(val) == 2 and not set(tr) & set(val)
    assert sorted(sum((kfold(10, 5, k)[1] for k in range(5)), [])) == list(range(10))
    out = tmp_path / "run"
    args = ["train", "tumor", "--data", str(data), "--out", str(out), "--base", "4",
            "--patch", "32", "32", "32", "--batch-size", "1", "--save-every", "1",
            "--device", "cpu", "--fold", "0", "--folds", "2"]
    assert cli(args + ["--iterations", "2"]) == 0
    log = [json.loads(line) for line in (out / "checkpoints" / "fold0" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in log)
    first = load_package(out / "package")
    assert first.weight_keys == ["fold0"] and first.manifest["training"]["folds"][0]["iteration"] == 2
    assert cli(args + ["--iterations", "3"]) == 0
    assert "resumed" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / "checkpoints" / "fold0" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3]
    pkg = load_package(out / "package")
    assert pkg.manifest["training"]["folds"][0]["iteration"] == 3
    net = pkg.build_network()
    assert net(torch.zeros(1, 4, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    # ConResNet trains through the same loop (its deep-supervised context-residual loss).
    assert cli(args[:-4] + ["--arch", "conresnet", "--out", str(tmp_path / "cr"), "--iterations", "1",
                            "--base", "8", "--fold", "0", "--folds", "2"]) == 0
    assert load_package(tmp_path / "cr" / "package").manifest["architecture"]["name"] == "conresnet"


def test_train_refuses_bad_data(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["train", "tumor", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no BraTS cases" in capsys.readouterr().err
    case = tmp_path / "d" / "BraTS2021_00001"
    case.mkdir(parents=True)
    save_volume(make_case(1, zoom=4).sequences["flair"], case / "BraTS2021_00001_flair.nii.gz")
    assert cli(["train", "tumor", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")]) == 2
    assert "lacks BraTS2021_00001_t1.nii.gz" in capsys.readouterr().err
