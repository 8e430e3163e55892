"""Time the CTV (geodesic margin) on the demo case's full grid (240 x 240 x 155, 1 mm).

    python bench/bench_ctv.py

Prints the seconds per GTV choice, the CTV volume, and how much the barriers removed compared with
the same margin without them.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from brainbarriers.ctv import grow_ctv
from brainbarriers.io import load_volume


def main() -> None:
    demo = Path(str(resources.files("brainbarriers") / "data" / "demo"))
    tumor = load_volume(demo / "tumor_truth.nii.gz")
    brain = load_volume(demo / "brain_mask_truth.nii.gz")
    barriers = load_volume(demo / "barriers_truth.nii.gz")
    print(f"grid {tumor.grid.describe()}")
    for gtv, edema in (("enhancing", False), ("whole", False), ("enhancing", True)):
        for label, bars in (("barriers", barriers), ("no barriers", None)):
            t0 = time.perf_counter()
            ctv = grow_ctv(tumor, brain, bars, margin_mm=15.0, gtv=gtv, add_edema=edema)
            seconds = time.perf_counter() - t0
            ml = ctv.array.sum() * ctv.voxel_volume_ml
            print(f"gtv={gtv:9s} add_edema={edema!s:5s} {label:11s}: {seconds:5.2f} s, "
                  f"CTV {ml:6.1f} ml")


if __name__ == "__main__":
    main()
