"""The default tumour model's held-out BraTS cases as clinical scans degrade them.

Writes, for each held-out case of the default package's cross-validation, a copy whose every
sequence is degraded one way; the expert labels are copied untouched. Then score them as the real
ones:

    python bench/degraded_cases.py --out /tmp/thick slabs [--slab 5]
    python bench/degraded_cases.py --out /tmp/bias bias-field [--strength 0.3]
    python bench/tumor_validation.py --cases /tmp/thick/* --no-tta --min-component-ml --main-tumour 1

- ``slabs``: averaged over slabs of ``--slab`` 1 mm slices along the third axis and linearly
  interpolated between the slab centres back onto its own 1 mm grid (what a thick-sliced
  acquisition shows once resampled).
- ``bias-field``: multiplied by a smooth field of its own (a random third-degree polynomial in
  the voxel coordinates, exponentiated and scaled to span 1/(1+s) to 1+s over the volume, s =
  ``--strength``): the receive-coil inhomogeneity of a scan that no N4 correction has flattened.
  Seeded per case and sequence, so the copies are the same run after run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np

from brainbarriers.io import load_volume, save_volume
from brainbarriers.models import load_package
from brainbarriers.tumor.augment import slab_average

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tumor_validation import held_out_cases  # noqa: E402


def bias_field(shape: tuple[int, int, int], strength: float, seed: int) -> np.ndarray:
    """exp(p(x, y, z)), p a random polynomial of degree <= 3, scaled so the field spans
    [1/(1+strength), 1+strength] (its log symmetric about 0)."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    log_field = np.zeros(shape)
    for i in range(4):
        for j in range(4 - i):
            for k in range(4 - i - j):
                if i + j + k == 0:
                    continue
                term = np.multiply.outer(np.multiply.outer(axes[0] ** i, axes[1] ** j), axes[2] ** k)
                log_field += rng.uniform(-1.0, 1.0) * term
    log_field -= (log_field.max() + log_field.min()) / 2
    log_field *= np.log1p(strength) / np.abs(log_field).max()
    return np.exp(log_field).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("kind", choices=("slabs", "bias-field"))
    parser.add_argument("--slab", type=int, default=5, help="slabs: thickness in slices (1 mm each)")
    parser.add_argument("--strength", type=float, default=0.3, help="bias-field: the field spans 1/(1+s) to 1+s")
    args = parser.parse_args()
    for folder in held_out_cases(load_package("brats-hnfnetv2-cpu")):
        target = args.out / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("*.nii.gz")):
            if path.name.endswith("_seg.nii.gz"):
                shutil.copy(path, target / path.name)
                continue
            volume = load_volume(path)
            if args.kind == "slabs":
                array = slab_average(volume.array, args.slab, axis=2)
            else:
                seed = zlib.crc32(path.name.encode())
                array = volume.array * bias_field(volume.shape, args.strength, seed)
            save_volume(volume.with_array(array.astype(np.float32)), target / path.name)
        print(folder.name, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
