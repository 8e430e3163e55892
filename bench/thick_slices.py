"""The default tumour model's held-out BraTS cases as if scanned in thick axial slices.

Writes, for each held-out case of the default package's cross-validation, a copy whose every
sequence is averaged over slabs of ``--slab`` 1 mm slices along the third axis and linearly
interpolated between the slab centres back onto its own 1 mm grid (what a thick-sliced acquisition
shows once resampled); the expert labels are copied untouched. Then score them as the real ones:

    python bench/thick_slices.py --out /tmp/thick [--slab 5]
    python bench/tumor_validation.py --cases /tmp/thick/* --no-tta --min-component-ml --main-tumour 1
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from brainbarriers.io import load_volume, save_volume
from brainbarriers.models import load_package
from brainbarriers.tumor.augment import slab_average

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tumor_validation import held_out_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slab", type=int, default=5, help="slab thickness in slices (1 mm each)")
    args = parser.parse_args()
    for folder in held_out_cases(load_package("brats-hnfnetv2-cpu")):
        target = args.out / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("*.nii.gz")):
            if path.name.endswith("_seg.nii.gz"):
                shutil.copy(path, target / path.name)
                continue
            volume = load_volume(path)
            save_volume(volume.with_array(slab_average(volume.array, args.slab, axis=2)), target / path.name)
        print(folder.name, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
