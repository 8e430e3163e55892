"""Rigid co-registration of a patient's sequences, on real scans: a known move recovered, the raw
clinical case (sequences that moved between acquisitions) aligned, aligned BraTS cases left alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from brainbarriers.geometry import resample_to
from brainbarriers.io import affine_from_sitk, load_volume, to_sitk
from brainbarriers.pipeline import PipelineRun, Step
from brainbarriers.registration import rigid_coregister, rigid_motion, sequence_to_reference_ras
from brainbarriers.volume import Volume

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BRATS = DATA / "brats18" / "Brats18_TCIA02_135_1" / "Brats18_TCIA02_135_1_"
TCGA = DATA / "tcga-fg-6692"
pytestmark = pytest.mark.skipif(not TCGA.is_dir() or not BRATS.parent.is_dir(),
                                reason="shared/data not found")


def _brain_points(volume: Volume, mask: np.ndarray, step: int = 200) -> list[tuple[float, ...]]:
    """LPS points (what SimpleITK transforms take) of every ``step``-th voxel of ``mask``."""
    ijk = np.argwhere(mask)[::step]
    ras = volume.world_coordinates(ijk)
    return [(-x, -y, z) for x, y, z in ras]


def _distances(a: sitk.Transform, b: sitk.Transform, points) -> np.ndarray:
    return np.array([np.linalg.norm(np.subtract(a.TransformPoint(p), b.TransformPoint(p))) for p in points])


def _moved(volume: Volume, motion: sitk.Transform) -> Volume:
    """``volume``'s patient moved by ``motion`` and scanned on an oblique grid of 1x1x3 mm slices."""
    image = sitk.Cast(to_sitk(volume), sitk.sitkFloat32)
    grid = sitk.Image([230, 230, 52], sitk.sitkFloat32)
    grid.SetSpacing((1.0, 1.0, 3.0))
    tilt = sitk.Euler3DTransform()
    tilt.SetRotation(np.radians(10), 0.0, 0.0)
    grid.SetDirection(tilt.GetMatrix())
    grid.SetOrigin(image.GetOrigin())
    out = sitk.Resample(image, grid, motion, sitk.sitkLinear, 0.0)
    return Volume(sitk.GetArrayFromImage(out).transpose(2, 1, 0), affine_from_sitk(out))


def test_a_known_move_of_a_real_flair_is_recovered_to_the_bit_each_time():
    t1ce, flair = load_volume(f"{BRATS}t1ce.nii.gz"), load_volume(f"{BRATS}flair.nii.gz")
    motion = sitk.Euler3DTransform()
    motion.SetCenter(to_sitk(flair).TransformContinuousIndexToPhysicalPoint([120.0, 120.0, 77.0]))
    motion.SetRotation(np.radians(4), np.radians(-3), np.radians(6))
    motion.SetTranslation((5.0, -3.0, 4.0))
    moved = _moved(flair, motion)
    found = rigid_coregister(t1ce, moved)
    # The found transform maps T1ce points to the moved FLAIR's: the inverse of the motion.
    error = _distances(found, motion.GetInverse(), _brain_points(t1ce, t1ce.array > 0))
    assert error.mean() < 0.5 and error.max() < 1.0, (error.mean(), error.max())
    again = rigid_coregister(t1ce, moved)
    assert again.GetParameters() == found.GetParameters()  # one thread, seeded sampling
    # What a viewer applies to the moved FLAIR: the motion itself, in RAS.
    record = {"center_lps": found.GetCenter(), "euler3d_lps": found.GetParameters()}
    to_reference = sequence_to_reference_ras(record)
    ras = [np.array([-x, -y, z, 1.0]) for x, y, z in _brain_points(t1ce, t1ce.array > 0, step=2000)]
    went = motion.GetInverse()  # the moved image shows at y what the FLAIR shows at motion(y)
    for point in ras:
        lps = went.TransformPoint(tuple(point[:3] * [-1, -1, 1]))
        back = to_reference @ np.r_[np.multiply(lps, [-1, -1, 1]), 1.0]
        assert np.linalg.norm(back[:3] - point[:3]) < 1.0


def test_aligned_brats_sequences_come_out_within_the_registrations_own_error():
    t1ce = load_volume(f"{BRATS}t1ce.nii.gz")
    for name in ("t1", "t2", "flair"):
        shift, angle = rigid_motion(rigid_coregister(t1ce, load_volume(f"{BRATS}{name}.nii.gz")))
        assert shift < 1.0 and angle < 1.0, (name, shift, angle)  # auto moves from 1.5 on


def test_the_raw_clinical_case_is_consistent_both_ways_and_through_a_third_sequence():
    """No truth for this case: its sequences moved between acquisitions (8-13 degrees), so the
    registrations must agree with each other: there and back, and through the T2."""
    seqs = {s: load_volume(TCGA / f"{s}.nii.gz") for s in ("t1ce", "t2", "flair")}
    brain = load_volume(TCGA / "t1ce_brain_mask.nii.gz").array > 0
    points = _brain_points(seqs["t1ce"], brain, step=20)
    to_flair = rigid_coregister(seqs["t1ce"], seqs["flair"])
    back = rigid_coregister(seqs["flair"], seqs["t1ce"])
    round_trip = sitk.CompositeTransform([back, to_flair])  # applied last to first: to_flair, back
    assert np.percentile(_distances(round_trip, sitk.Transform(), points), 95) < 1.5
    through_t2 = sitk.CompositeTransform([rigid_coregister(seqs["t2"], seqs["flair"]),
                                          rigid_coregister(seqs["t1ce"], seqs["t2"])])
    assert np.percentile(_distances(through_t2, to_flair, points), 95) < 1.5
    shift, angle = rigid_motion(to_flair)
    assert shift > 5.0 and angle > 5.0  # a real move, far beyond the headers' alignment


def _keep_flair(ctx):
    return {"brain_mask": ctx.new_volume((ctx.get("flair").array > 0).astype(np.uint8))}


KEEP_FLAIR = Step("mask", _keep_flair, sequences=("flair",), outputs=("brain_mask",), labels=("brain_mask",))


def test_the_pipeline_moves_the_clinical_sequences_and_leaves_aligned_ones_untouched(tmp_path):
    inputs = {s: TCGA / f"{s}.nii.gz" for s in ("t1ce", "t1", "flair")}
    run = PipelineRun(inputs, tmp_path / "tcga", [KEEP_FLAIR], device="cpu")
    run.run()
    manifest = json.loads((tmp_path / "tcga" / "manifest.json").read_text())
    record = manifest["coregistration"]
    assert manifest["coregister"] == "auto" and set(record) == {"t1", "flair"}
    # The T1 shares the T1ce's grid yet the patient moved in between: moved too.
    assert all(record[s]["applied"] and record[s]["rotation_deg"] > 5 for s in ("t1", "flair"))
    warned = " ".join(w["message"] for w in manifest["warnings"])
    assert f"flair ({inputs['flair']}) rigidly co-registered to the reference t1ce" in warned
    # The FLAIR the steps saw is the FLAIR moved by the recorded transform (its field of view).
    ref, flair = load_volume(inputs["t1ce"]), load_volume(inputs["flair"])
    moved = sitk.Euler3DTransform()
    moved.SetCenter(record["flair"]["center_lps"])
    moved.SetParameters(record["flair"]["euler3d_lps"])
    expected = resample_to(flair, ref.grid, transform=moved).array > 0
    out = load_volume(tmp_path / "tcga" / "brain_mask.nii.gz", allow_empty=True).array > 0
    assert (out != expected).mean() < 1e-3
    world = resample_to(flair, ref.grid).array > 0
    assert (out != world).mean() > 0.01  # and not where the headers alone put it

    brats = {s: Path(f"{BRATS}{s}.nii.gz") for s in ("t1ce", "flair")}
    run = PipelineRun(brats, tmp_path / "brats", [KEEP_FLAIR], device="cpu")
    run.run()
    assert not run.coregistration["flair"]["applied"]
    out = load_volume(tmp_path / "brats" / "brain_mask.nii.gz", allow_empty=True)
    np.testing.assert_array_equal(out.array, load_volume(brats["flair"]).array > 0)

    run = PipelineRun(inputs, tmp_path / "never", [KEEP_FLAIR], device="cpu", coregister="never")
    run.run()
    assert run.coregistration == {}
    out = load_volume(tmp_path / "never" / "brain_mask.nii.gz", allow_empty=True).array > 0
    np.testing.assert_array_equal(out, world)


def test_a_rerun_takes_each_move_from_the_manifest_and_resamples_to_the_bit(tmp_path, monkeypatch):
    """A second run in the folder finds each move recorded for the same two files (no registration
    again: 1-2 s a sequence) and gives the steps the very same FLAIR; another FLAIR is registered."""
    import brainbarriers.registration as registration

    seen = []

    def keep_flair(ctx):
        seen.append(ctx.get("flair").array.copy())
        return _keep_flair(ctx)

    step = Step("mask", keep_flair, sequences=("flair",), outputs=("brain_mask",), labels=("brain_mask",))
    registered = []
    original = registration.rigid_coregister
    monkeypatch.setattr(registration, "rigid_coregister",
                        lambda *a, **k: registered.append(1) or original(*a, **k))
    inputs = {s: TCGA / f"{s}.nii.gz" for s in ("t1ce", "flair")}
    first = PipelineRun(inputs, tmp_path / "run", [step], device="cpu")
    first.run()
    (tmp_path / "run" / "work" / "brain_mask.nii.gz").unlink()  # so that the step runs again
    second = PipelineRun(inputs, tmp_path / "run", [step], device="cpu")
    second.run()
    assert len(registered) == 1 and len(seen) == 2
    assert second.coregistration == first.coregistration and first.coregistration["flair"]["applied"]
    np.testing.assert_array_equal(seen[0], seen[1])
    warned = " ".join(w["message"] for w in second.warnings)
    assert "flair" in warned and "rigidly co-registered to the reference t1ce" in warned

    other = tmp_path / "flair.nii.gz"  # another file (one voxel changed): registered anew
    flair = load_volume(inputs["flair"])
    array = flair.array.copy()
    array[0, 0, 0] += 1
    sitk.WriteImage(to_sitk(flair.with_array(array)), str(other))
    PipelineRun({**inputs, "flair": other}, tmp_path / "run", [step], device="cpu").run()
    assert len(registered) == 2


def test_a_move_too_large_to_be_real_is_refused_with_a_warning(tmp_path, monkeypatch):
    """The TCGA FLAIR's 13.5 degrees, with the plausible limit set below it: the headers' alignment
    is kept, the manifest says so and a warning asks to check the scan."""
    import brainbarriers.registration as registration

    monkeypatch.setattr(registration, "MAX_ROTATION_DEG", 10.0)
    inputs = {s: TCGA / f"{s}.nii.gz" for s in ("t1ce", "flair")}
    run = PipelineRun(inputs, tmp_path / "run", [KEEP_FLAIR], device="cpu")
    run.run()
    record = run.coregistration["flair"]
    assert not record["applied"] and record["rotation_deg"] > 10.0
    warned = " ".join(w["message"] for w in run.warnings)
    assert "more than a patient moves within one session" in warned
    out = load_volume(tmp_path / "run" / "brain_mask.nii.gz", allow_empty=True).array > 0
    world = resample_to(load_volume(inputs["flair"]), load_volume(inputs["t1ce"]).grid).array > 0
    np.testing.assert_array_equal(out, world)
