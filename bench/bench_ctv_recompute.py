"""Time the one-click CTV recompute after editing the GTV, on the demo case's full grid
(240 x 240 x 155, 1 mm), with the barriers already computed (no network runs):

- the core: ``ctv_from_gtv`` on the edited GTV (the enhancing tumour + necrotic core with a
  10 mm ball removed, as an edit would);
- the Slicer side with slicer-core's real MRML: ``BrainBarriersLib.ctv_edit.recompute_ctv`` on a
  segmentation holding the brain, tumour, barrier and CTV segments (reading the segments on the
  reference grid, the core, replacing the CTV segment).

    python bench/bench_ctv_recompute.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    from brainbarriers.ctv import ctv_from_gtv
    from brainbarriers.io import load_volume

    demo = Path(str(resources.files("brainbarriers") / "data" / "demo"))
    tumor = load_volume(demo / "tumor_truth.nii.gz")
    brain = load_volume(demo / "brain_mask_truth.nii.gz")
    barriers = load_volume(demo / "barriers_truth.nii.gz")
    gtv = np.isin(tumor.array, (1, 4))
    centre = np.argwhere(gtv).mean(0)
    ball = ((np.indices(gtv.shape) - centre[:, None, None, None]) ** 2).sum(0) <= 10**2
    edited = tumor.array.copy()
    edited[ball & gtv] = 0  # the edit: part of the GTV removed
    print(f"grid {tumor.grid.describe()}; GTV {gtv.sum()} -> {np.isin(edited, (1, 4)).sum()} "
          f"voxels; load average {os.getloadavg()[0]:.1f}")

    times = []
    for _ in range(args.repeat):
        w, c = time.perf_counter(), time.process_time()
        ctv = ctv_from_gtv(tumor.with_array(np.isin(edited, (1, 4)).astype(np.uint8)), brain,
                           barriers, margin_mm=15.0)
        times.append((time.perf_counter() - w, time.process_time() - c))
    best = min(times)
    print(f"core ctv_from_gtv: best {best[0]:.2f} s wall, {best[1]:.2f} s CPU; all "
          + ", ".join(f"{t[0]:.2f}" for t in times) + f"; CTV {int(ctv.array.sum())} voxels")

    try:
        import slicer  # noqa: F401 - the slicer-core wheel
    except ImportError:
        print("slicer-core not installed: the Slicer-side timing is skipped")
        return 0
    sys.path.insert(0, str(ROOT / "SlicerBrainBarriers"))
    from BrainBarriersLib import scene as bridge
    from BrainBarriersLib.ctv_edit import CTV_SEGMENT_ID, recompute_ctv

    from brainbarriers.volume import Volume

    scene = slicer.vtkMRMLScene()
    keep = bridge.ensure_segmentation_logic(scene)  # noqa: F841
    reference = bridge.import_labelmap_volume(scene, Volume(brain.array, brain.affine), None, "ref")
    seg = bridge.import_segmentation(scene, [
        ("brain_mask", brain), ("tumor", tumor.with_array(edited)), ("barriers", barriers),
        ("ctv", ctv)], reference, "run")
    times = []
    for _ in range(args.repeat):
        w, c = time.perf_counter(), time.process_time()
        recompute_ctv(scene, seg, margin_mm=15.0)
        times.append((time.perf_counter() - w, time.process_time() - c))
    best = min(times)
    got = bridge.segment_array(scene, seg, CTV_SEGMENT_ID, reference)
    same = bool(np.array_equal(got > 0, ctv.array > 0))
    print(f"Slicer side recompute_ctv (slicer-core MRML): best {best[0]:.2f} s wall, "
          f"{best[1]:.2f} s CPU; all " + ", ".join(f"{t[0]:.2f}" for t in times)
          + f"; CTV segment equals the core's: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
