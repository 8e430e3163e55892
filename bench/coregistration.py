"""What a patient's movement between sequences costs the tumour step, and what co-registration wins back.

Real BraTS cases (aligned by their curators, expert labels on the T1ce grid) are made into what a
clinic sends: the T1, T2 and FLAIR each moved by a seeded rigid motion (up to 6 degrees and 6 mm)
and stored on an oblique grid of 1x1x4 mm slices (tilted 8, 16 and 24 degrees) that covers the
head. The pipeline (skull-stripping, tumour) runs on
each case three times: as curated, moved with ``--coregister never`` (the headers' alignment), and
moved with the default ``--coregister auto``. Printed per case: Dice WT/TC/ET against the expert
labels, the registration's error against the known motion (mean and largest over the brain, mm),
and the seconds the run took. The default model's folds saw these cases in training (its
cross-validation figures are in its manifest), so the Dice figures here are flattering; the point
is the difference between the three runs, which is the alignment's alone.

    python bench/coregistration.py [--cases Brats18_2013_20_1 ...] [--out /tmp/coreg]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from brainbarriers.io import affine_from_sitk, load_volume, save_volume, to_sitk
from brainbarriers.metrics import brats_scores
from brainbarriers.pipeline import PipelineRun, plan
from brainbarriers.registration import euler_transform
from brainbarriers.volume import Volume

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CASES = ("Brats18_2013_20_1", "Brats18_CBICA_AME_1", "Brats18_TCIA10_628_1")
MOVED = ("t1", "t2", "flair")


def motion(rng: np.random.Generator, centre) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre)
    transform.SetRotation(*np.radians(rng.uniform(-6, 6, 3)))
    transform.SetTranslation(tuple(rng.uniform(-6, 6, 3)))
    return transform


def clinical_copy(volume: Volume, moved_by: sitk.Transform, tilt_deg: float) -> Volume:
    """``volume``'s patient moved by ``moved_by``, scanned in 4 mm slices on a tilted grid that
    covers the whole head (centred where the volume's centre is)."""
    image = sitk.Cast(to_sitk(volume), sitk.sitkFloat32)
    size, spacing = np.array([240, 240, 50]), np.array([1.0, 1.0, 4.0])
    grid = sitk.Image(size.tolist(), sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    tilt = sitk.Euler3DTransform()
    tilt.SetRotation(np.radians(tilt_deg), 0.0, 0.0)
    grid.SetDirection(tilt.GetMatrix())
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((np.array(image.GetSize()) / 2 - 0.5).tolist()))
    direction = np.array(tilt.GetMatrix()).reshape(3, 3)
    grid.SetOrigin((centre - direction @ ((size - 1) * spacing / 2)).tolist())
    out = sitk.Resample(image, grid, moved_by, sitk.sitkLinear, 0.0)
    return Volume(sitk.GetArrayFromImage(out).transpose(2, 1, 0), affine_from_sitk(out))


def registration_error(record: dict, truth: sitk.Transform, points) -> tuple[float, float]:
    found = (euler_transform(record["center_lps"], record["euler3d_lps"]) if record.get("applied")
             else sitk.Euler3DTransform())  # the headers' alignment, unless a move was applied
    inverse = truth.GetInverse()
    d = [np.linalg.norm(np.subtract(found.TransformPoint(p), inverse.TransformPoint(p))) for p in points]
    return float(np.mean(d)), float(np.max(d))


def run_case(case: str, work: Path, seed: int) -> list[dict]:
    folder = next(SHARED.glob(f"*/{case}"))
    files = {s: folder / f"{case}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")}
    truth = load_volume(folder / f"{case}_seg.nii.gz")
    t1ce = load_volume(files["t1ce"])
    centre = to_sitk(t1ce).TransformContinuousIndexToPhysicalPoint((np.array(t1ce.shape) / 2).tolist())
    rng = np.random.default_rng(seed)
    motions, moved = {}, dict(files)
    for k, s in enumerate(MOVED):
        motions[s] = motion(rng, centre)
        moved[s] = work / f"{case}_{s}_moved.nii.gz"
        save_volume(clinical_copy(load_volume(files[s]), motions[s], 8.0 * (k + 1)), moved[s])
    ijk = np.argwhere(t1ce.array > 0)[::400]
    points = [(-x, -y, z) for x, y, z in t1ce.world_coordinates(ijk)]
    rows = []
    for label, inputs, mode in (("as curated", files, "auto"), ("moved, never", moved, "never"),
                                ("moved, auto", moved, "auto")):
        out = work / f"{case}-{label.replace(', ', '-').replace(' ', '-')}"
        start = time.perf_counter()
        run = PipelineRun(inputs, out, plan(["tumor"]), coregister=mode, device="cpu")
        run.run()
        seconds = time.perf_counter() - start
        scores = brats_scores(load_volume(out / "tumor.nii.gz", allow_empty=True), truth)
        row = {"case": case, "run": label, "seconds": round(seconds, 1),
               **{r: round(scores[r]["dice"], 4) for r in ("WT", "TC", "ET")}}
        if label != "as curated":
            errors = {s: registration_error(run.coregistration.get(s, {}), motions[s], points)
                      for s in MOVED}
            row["error_mm"] = {s: [round(e, 2) for e in errors[s]] for s in MOVED}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [r for seed, case in enumerate(args.cases) for r in run_case(case, work, seed)]
    print(f"\n{'run':14s} {'WT':>6s} {'TC':>6s} {'ET':>6s}  mean over {len(args.cases)} cases")
    for label in ("as curated", "moved, never", "moved, auto"):
        sel = [r for r in rows if r["run"] == label]
        print(f"{label:14s} " + " ".join(f"{np.mean([r[k] for r in sel]):6.3f}" for k in ("WT", "TC", "ET")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
