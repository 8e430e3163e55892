"""Where review should start: supervoxel regions ranked by the tumour model's uncertainty."""

from __future__ import annotations

import numpy as np


def regions_by_uncertainty(regions: np.ndarray, uncertainty: np.ndarray,
                           min_uncertainty: float = 0.05) -> list[tuple[int, float, int]]:
    """(region id, mean uncertainty, voxels) of every region (id > 0) whose mean uncertainty is at
    least ``min_uncertainty``, the most uncertain first (ties: the larger region first, then the
    lower id). ``regions`` and ``uncertainty`` are arrays on the same grid."""
    if regions.shape != uncertainty.shape:
        raise ValueError(f"regions {regions.shape} and uncertainty {uncertainty.shape} differ")
    ids = regions.ravel().astype(np.int64)
    if ids.size == 0 or ids.min() < 0:
        raise ValueError("region ids must be non-negative")
    counts = np.bincount(ids)
    sums = np.bincount(ids, weights=uncertainty.ravel().astype(np.float64), minlength=counts.size)
    present = np.flatnonzero(counts)
    present = present[present > 0]
    means = sums[present] / counts[present]
    keep = means >= min_uncertainty
    ranked = sorted(zip(present[keep], means[keep], counts[present][keep]),
                    key=lambda r: (-r[1], -r[2], r[0]))
    return [(int(r), float(m), int(n)) for r, m, n in ranked]
