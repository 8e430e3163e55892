"""The pipeline: geometry over every input orientation, grids, manifest, reruns, progress, cancel."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from nibabel import orientations as ornt
from scipy import ndimage as ndi

from brainbarriers.errors import Cancelled, InputError
from brainbarriers.geometry import reorient_to, resample_to
from brainbarriers.io import load_volume, save_volume, sha256_file
from brainbarriers.metrics import dice
from brainbarriers.pipeline import CancelToken, PipelineRun, Step
from brainbarriers.volume import Grid, Volume


def _threshold_step_run(ctx):
    """A real label operation: white-matter threshold, then a 4 mm dilation (in mm)."""
    mask = ctx.get("t1").array > 115  # the phantom's white matter is near 140, grey matter 90
    ctx.progress(0.3, "thresholded")
    distance = ndi.distance_transform_edt(~mask, sampling=ctx.grid.spacing)
    out = mask.astype(np.uint8) + (distance <= 4.0).astype(np.uint8)  # 2 inside, 1 in the margin
    ctx.progress(0.9, "dilated")
    return {"brain_mask": ctx.new_volume(out)}


THRESHOLD = Step("threshold", _threshold_step_run, sequences=("t1",), outputs=("brain_mask",),
                 labels=("brain_mask",), description="threshold")


@pytest.fixture(scope="module")
def crop(small_case):
    """A 2 mm crop of the phantom T1 (fast to run 48 times)."""
    t1 = small_case.sequences["t1"]
    region = (slice(30, 90), slice(25, 95), slice(20, 60))
    affine = t1.affine.copy()
    affine[:3, 3] = t1.world_coordinates(np.array([[30, 25, 20]]))[0]
    return Volume(np.ascontiguousarray(t1.array[region]), affine)


def present(volume: Volume, transform: np.ndarray) -> Volume:
    """The same voxels in world space, stored with axes permuted/flipped."""
    array = ornt.apply_orientation(volume.array, transform)
    affine = volume.affine @ ornt.inv_ornt_aff(transform, volume.shape)
    return Volume(np.ascontiguousarray(array), affine)


ALL_48 = [np.array([[axis, flip] for axis, flip in zip(perm, flips)])
          for perm in itertools.permutations(range(3))
          for flips in itertools.product((1, -1), repeat=3)]


def run_once(tmp_path, name, volume, steps=(THRESHOLD,), **kw):
    path = tmp_path / f"{name}.nii.gz"
    save_volume(volume, path)
    run = PipelineRun({"t1": path}, tmp_path / f"run_{name}", list(steps), device="cpu", **kw)
    run.run()
    return run, load_volume(tmp_path / f"run_{name}" / "brain_mask.nii.gz", allow_empty=True)


def test_all_48_orientations_give_the_same_labels_in_world_space(tmp_path, crop):
    assert len({tuple(t.ravel()) for t in ALL_48}) == 48
    _, baseline = run_once(tmp_path, "base", crop)
    assert 0 < (baseline.array > 0).mean() < 1
    for n, transform in enumerate(ALL_48):
        shown = present(crop, transform)
        _, out = run_once(tmp_path, f"o{n}", shown)
        # On the grid the user gave, and exactly the baseline once put back on the baseline grid.
        assert out.grid.same_as(shown.grid)
        np.testing.assert_array_equal(reorient_to(out, crop.grid).array, baseline.array)


def test_oblique_input(tmp_path, crop):
    angle = np.deg2rad(20)
    rot = np.eye(4)
    rot[:3, :3] = [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    centre = crop.world_coordinates(np.array(crop.shape)[None] / 2)[0]
    shift, back = np.eye(4), np.eye(4)
    shift[:3, 3], back[:3, 3] = -centre, centre
    oblique_grid = Grid(crop.shape, back @ rot @ shift @ crop.affine)
    oblique = resample_to(crop, oblique_grid)
    _, base = run_once(tmp_path, "base", crop)
    _, out = run_once(tmp_path, "oblique", oblique)
    assert out.grid.same_as(oblique_grid)
    # Against the axis-aligned run in world space, where the rotated field of view covers the
    # original one (the input itself was interpolated, so agreement is close, not exact).
    covered = resample_to(Volume(np.ones(crop.shape, np.uint8), oblique_grid.affine), crop.grid,
                          label=True).array > 0
    covered = ndi.binary_erosion(covered, iterations=3)
    back_on_crop = resample_to(out, crop.grid, label=True).array
    assert dice((back_on_crop > 0) & covered, (base.array > 0) & covered) > 0.95
    # Any permutation/flip of the oblique input gives exactly the oblique result.
    for transform in ALL_48[::7]:
        _, o = run_once(tmp_path, "obl_perm", present(oblique, transform))
        np.testing.assert_array_equal(reorient_to(o, oblique_grid).array, out.array)


@pytest.fixture(scope="module")
def tcga():
    from pathlib import Path

    # ../shared beside the repository (as in CI)
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tcga-fg-6692").resolve()


def _t1_from(name):
    def run(ctx):
        return {"brain_mask": ctx.new_volume((ctx.get(name).array > 0).astype(np.uint8))}
    return run


def test_real_case_on_different_grids(tmp_path, tcga):
    step = Step("mask", _t1_from("flair"), sequences=("flair",), outputs=("brain_mask",),
                labels=("brain_mask",))
    inputs = {s: tcga / f"{s}.nii.gz" for s in ("t1ce", "t2", "flair")}
    # The headers' alignment only (test_registration covers the co-registration of this case).
    run = PipelineRun(inputs, tmp_path / "out", [step], device="cpu", coregister="never")
    run.run()
    warned = " ".join(w["message"] for w in run.warnings)
    for name in ("t2", "flair"):
        assert f"{name} ({inputs[name]}) is on another grid" in warned
    assert f"t1ce ({inputs['t1ce']})" not in warned
    out = load_volume(tmp_path / "out" / "brain_mask.nii.gz", allow_empty=True)
    ref = load_volume(inputs["t1ce"])
    assert out.grid.same_as(ref.grid)  # default reference: T1ce
    # The FLAIR's field of view, carried to the T1ce grid, is where FLAIR has signal.
    flair = load_volume(inputs["flair"])
    expected = resample_to(flair.with_array((flair.array > 0).astype(np.uint8)), ref.grid, label=True)
    assert dice(out.array > 0, expected.array > 0) > 0.97
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["reference"] == "t1ce" and len(manifest["warnings"]) == 2

    run = PipelineRun(inputs, tmp_path / "out_t2", [step], device="cpu", reference="t2",
                      coregister="never")
    run.run()
    out = load_volume(tmp_path / "out_t2" / "brain_mask.nii.gz", allow_empty=True)
    assert out.grid.same_as(load_volume(inputs["t2"]).grid)


def test_manifest_and_rerun_skip(tmp_path, crop):
    path = tmp_path / "t1.nii.gz"
    save_volume(crop, path)
    events = []
    run = PipelineRun({"t1": path}, tmp_path / "run", [THRESHOLD], device="cpu",
                      on_event=events.append)
    outputs = run.run()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert manifest["inputs"]["t1"]["sha256"] == sha256_file(path)
    assert manifest["steps"][0]["name"] == "threshold" and manifest["steps"][0]["status"] == "done"
    assert manifest["steps"][0]["seconds"] >= 0 and "numpy" in manifest["versions"]
    assert set(outputs) >= {"brain_mask", "segmentation", "overview"}
    assert (tmp_path / "run" / "overview.png").read_bytes()[:4] == b"\x89PNG"
    kinds = [e.event for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds
    fractions = [e.fraction for e in events if e.event == "progress"]
    assert fractions == sorted(fractions) and fractions[0] == 0.3

    # Same inputs: skipped. Changed input: run again.
    events.clear()
    PipelineRun({"t1": path}, tmp_path / "run", [THRESHOLD], device="cpu", on_event=events.append).run()
    assert [e.data.get("status") for e in events if e.event == "step"] == ["skipped"]
    save_volume(crop.with_array(crop.array[::-1].copy()), path)
    events.clear()
    PipelineRun({"t1": path}, tmp_path / "run", [THRESHOLD], device="cpu", on_event=events.append).run()
    assert "done" in [e.data.get("status") for e in events if e.event == "step"]
    # Changed options: run again.
    events.clear()
    PipelineRun({"t1": path}, tmp_path / "run", [THRESHOLD], device="cpu", on_event=events.append,
                options={"threshold": {"x": 1}}).run()
    assert "done" in [e.data.get("status") for e in events if e.event == "step"]


def test_cancel_leaves_nothing_half_written(tmp_path, crop):
    path = tmp_path / "t1.nii.gz"
    save_volume(crop, path)
    token = CancelToken()

    def on_event(event):
        if event.event == "progress" and event.fraction >= 0.9:
            token.cancel()  # as a user pressing Cancel mid-step

    run = PipelineRun({"t1": path}, tmp_path / "run", [THRESHOLD], device="cpu",
                      on_event=on_event, cancel=token)
    with pytest.raises(Cancelled):
        run.run()
    out = tmp_path / "run"
    assert not (out / "brain_mask.nii.gz").exists() and not (out / "work" / "brain_mask.nii.gz").exists()
    assert not [p for p in out.rglob("*") if ".part" in p.name]
    assert json.loads((out / "manifest.json").read_text())["status"] == "cancelled"


def test_missing_sequence_and_bad_folder_leave_nothing(tmp_path, crop):
    path = tmp_path / "t1.nii.gz"
    save_volume(crop, path)
    need_flair = Step("x", _t1_from("flair"), sequences=("flair",), outputs=("brain_mask",))
    with pytest.raises(InputError, match="--flair"):
        PipelineRun({"t1": path}, tmp_path / "out", [need_flair])
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="is a file"):
        PipelineRun({"t1": path}, path / "out", [THRESHOLD])
    with pytest.raises(InputError, match="not writable"):
        PipelineRun({"t1": path}, "/sys/brainbarriers-out", [THRESHOLD])
    with pytest.raises(InputError, match="given both as t1 and as t2"):
        PipelineRun({"t1": path, "t2": path}, tmp_path / "out", [THRESHOLD])
    assert not (tmp_path / "out").exists()


def test_an_output_a_step_no_longer_makes_is_removed(tmp_path, crop):
    """A rerun whose step makes no CTV (say, an empty GTV) must not leave the earlier CTV file."""
    def maybe(ctx):
        if ctx.options.get("make"):
            return {"ctv": ctx.new_volume((ctx.get("t1").array > 115).astype(np.uint8))}
        return {}

    step = Step("maybe", maybe, sequences=("t1",), optional_outputs=("ctv",), labels=("ctv",))
    path = tmp_path / "t1.nii.gz"
    save_volume(crop, path)
    PipelineRun({"t1": path}, tmp_path / "run", [step], options={"maybe": {"make": True}}).run()
    assert (tmp_path / "run" / "ctv.nii.gz").exists()
    PipelineRun({"t1": path}, tmp_path / "run", [step], options={"maybe": {"make": False}}).run()
    assert not (tmp_path / "run" / "ctv.nii.gz").exists()
    assert not (tmp_path / "run" / "work" / "ctv.nii.gz").exists()


def _mask_of(name):
    """A step making the brain mask and the skull-stripped ``name`` (a skullstrip stand-in)."""
    def run(ctx):
        mask = ctx.get(name).array > 115
        return {"brain_mask": ctx.new_volume(mask.astype(np.uint8)),
                f"{name}_brain": ctx.new_volume(np.where(mask, ctx.get(name).array, 0))}
    return Step("strip", run, sequences=(name,), outputs=("brain_mask",),
                optional_outputs=(f"{name}_brain",), labels=("brain_mask",))


def test_rerun_with_another_input_and_fewer_steps_keeps_nothing_of_the_first(tmp_path, crop):
    """The folder holds one run's products: none made from the first input survives a rerun."""
    def tumour(ctx):
        return {"tumor": ctx.new_volume((ctx.get("brain_mask").array > 0).astype(np.uint8))}

    tumour_step = Step("tumor", tumour, inputs=("brain_mask",), outputs=("tumor",),
                       labels=("tumor",))
    first, second = tmp_path / "first.nii.gz", tmp_path / "second.nii.gz"
    save_volume(crop, first)
    save_volume(crop.with_array(crop.array[::-1].copy()), second)
    out = tmp_path / "run"
    PipelineRun({"t1": first}, out, [_mask_of("t1"), tumour_step]).run()
    assert (out / "tumor.nii.gz").exists() and (out / "t1_brain.nii.gz").exists()
    PipelineRun({"t1": second}, out, [THRESHOLD]).run()
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {"brain_mask.nii.gz", "work/brain_mask.nii.gz", "segmentation.seg.nrrd",
                     "overview.png", "manifest.json", ".brainbarriers.lock"}, names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["t1"]["path"] == str(second)
    assert set(manifest["outputs"]) == {"brain_mask"}


def test_a_refused_input_leaves_no_new_folder(tmp_path, crop):
    """An input refused while the run runs (here a bad option) leaves no folder the run made."""
    path = tmp_path / "t1.nii.gz"
    save_volume(crop, path)

    def refuse(ctx):
        raise InputError(None, "threshold: option level must be a number")

    step = Step("refuse", refuse, sequences=("t1",), outputs=("brain_mask",))
    with pytest.raises(InputError, match="must be a number"):
        PipelineRun({"t1": path}, tmp_path / "new" / "run", [step]).run()
    assert not (tmp_path / "new" / "run").exists()
    # In a folder that was there before, the refusal is recorded, and earlier outputs are gone.
    PipelineRun({"t1": path}, tmp_path / "old", [THRESHOLD]).run()
    with pytest.raises(InputError):
        PipelineRun({"t1": path}, tmp_path / "old", [step]).run()
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "must be a number" in manifest["error"]
    assert not (tmp_path / "old" / "brain_mask.nii.gz").exists()


def test_part_files_of_a_killed_run_are_cleaned(tmp_path, crop):
    path = tmp_path / "t1.nii.gz"
    save_volume(crop, path)
    out = tmp_path / "run"
    PipelineRun({"t1": path}, out, [THRESHOLD]).run()
    # What SIGKILL between writing and renaming leaves (no `finally` runs).
    leftovers = [out / ".brain_mask.nii.gz.k1ll3d.part.nii.gz",
                 out / "work" / ".brain_mask.nii.gz.x9.part.nii.gz",
                 out / ".manifest.json.abc.part.json"]
    for p in leftovers:
        p.write_bytes(b"half")
    PipelineRun({"t1": path}, out, [THRESHOLD]).run()
    assert not [p for p in out.rglob("*") if ".part" in p.name]


def test_output_folder_through_a_symlink_loop_is_one_line_exit_2(tmp_path, crop, capsys):
    from brainbarriers.cli.main import main

    path = tmp_path / "t1.nii.gz"
    save_volume(crop, path)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out, problem in [(tmp_path / "loop" / "run", "symbolic links"),
                         (tmp_path / "dangling", "broken symbolic link")]:
        code = main(["run", "--t1", str(path), "--steps", "skullstrip", "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and problem in err[0], err
    assert not (tmp_path / "nowhere").exists()


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, crop):
    """Two runs into one folder: the second is refused with a clear message, the first is whole."""
    import threading

    path = tmp_path / "t1.nii.gz"
    save_volume(crop, path)
    inside, release = threading.Event(), threading.Event()

    def slow(ctx):
        inside.set()
        release.wait(30)
        return _threshold_step_run(ctx)

    step = Step("threshold", slow, sequences=("t1",), outputs=("brain_mask",), labels=("brain_mask",))
    first = PipelineRun({"t1": path}, tmp_path / "run", [step])
    worker = threading.Thread(target=first.run)
    worker.start()
    try:
        assert inside.wait(30)
        with pytest.raises(InputError, match=r"another brainbarriers run \(process \d+\) is writing"):
            PipelineRun({"t1": path}, tmp_path / "run", [THRESHOLD]).run()
    finally:
        release.set()
        worker.join(60)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["steps"][0]["status"] == "done"
    # Once the first is done, the folder is free again.
    PipelineRun({"t1": path}, tmp_path / "run", [THRESHOLD]).run()
