"""Quality of a supervoxel map, as in Pelluet et al. 2021 (Table 1).

All take integer supervoxel labels (0 = outside, not scored) as numpy arrays.

- ``asa``: achievable segmentation accuracy. Each supervoxel takes the ground-truth label that covers
  most of it; ASA is the fraction of the scored voxels whose label is then right. Over every voxel of
  the supervoxels this is the usual ``sum_s max_g |s & g| / N``; ``region="tumor"`` scores only the
  tumour's voxels (truth > 0): "ASA computed in the tumour's region", where a supervoxel that is mostly
  healthy brain costs every tumour voxel it holds.
- ``weighted_variance`` (wVar): ``sum_s |s| var_s / (N var)``, the voxel-weighted intra-supervoxel
  variance over the variance of all scored voxels (so 0 = constant supervoxels, 1 = one supervoxel).
  With several sequences each supervoxel keeps its smallest normalised variance across them (the
  paper keeps "the minimal value for each supervoxel across modalities").
- ``morans_i`` (MI): Moran's I of the supervoxel means over the region adjacency graph (weight 1 for
  touching supervoxels): ``n / W * sum_ij w_ij z_i z_j / sum_i z_i^2``, z = mean - mean of means.
  Near 1: neighbours alike (redundant); near 0 or below: neighbours differ. Several sequences: the
  smallest value across them.
- ``global_score`` (GS): the mean of wVar and MI. For wVar, MI and GS lower is better.
"""

from __future__ import annotations

import numpy as np


def _consecutive(supervoxels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    inside = supervoxels > 0
    ids, inverse = np.unique(supervoxels[inside], return_inverse=True)
    return inside, inverse.reshape(-1), len(ids)


def supervoxel_count(supervoxels: np.ndarray) -> int:
    return int(len(np.unique(supervoxels[supervoxels > 0])))


def asa(supervoxels: np.ndarray, truth: np.ndarray, region: str = "all") -> float:
    """Achievable segmentation accuracy (see the module docstring); region is "all" or "tumor"."""
    inside, sv, n = _consecutive(np.asarray(supervoxels))
    g_values, g = np.unique(np.asarray(truth)[inside], return_inverse=True)
    g = g.reshape(-1)
    if n == 0:
        return float("nan")
    table = np.bincount(sv * len(g_values) + g, minlength=n * len(g_values)).reshape(n, len(g_values))
    best = table.argmax(1)  # each supervoxel's majority truth label (ties: the smaller label)
    right = best[sv] == g
    if region == "all":
        return float(right.mean())
    if region == "tumor":
        tumour = g_values[g] > 0
        return float(right[tumour].mean()) if tumour.any() else float("nan")
    raise ValueError(f"unknown region {region!r}")


def _as_channels(images) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [images]
    return [np.asarray(x) for x in images]


def weighted_variance(supervoxels: np.ndarray, images) -> float:
    """wVar: voxel-weighted supervoxel variance over the global variance (min across sequences)."""
    inside, sv, n = _consecutive(np.asarray(supervoxels))
    size = np.bincount(sv, minlength=n).astype(np.float64)
    per_channel = []
    for image in _as_channels(images):
        x = image[inside].astype(np.float64)
        total = x.var()
        mean = np.bincount(sv, x, n) / size
        var = np.bincount(sv, x * x, n) / size - mean**2
        per_channel.append(np.clip(var, 0, None) / total if total > 0 else np.zeros(n))
    var = np.min(per_channel, axis=0)
    return float((size * var).sum() / size.sum())


def adjacency(supervoxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairs (i < j) of touching supervoxels (face adjacency), as consecutive ids."""
    s = np.asarray(supervoxels)
    ids = np.unique(s[s > 0])
    lut_index = np.searchsorted(ids, s)
    pairs = []
    for axis in range(3):
        a = np.moveaxis(s, axis, 0)
        x, y = a[:-1].reshape(-1), a[1:].reshape(-1)
        keep = (x > 0) & (y > 0) & (x != y)
        xi = np.moveaxis(lut_index, axis, 0)[:-1].reshape(-1)[keep]
        yi = np.moveaxis(lut_index, axis, 0)[1:].reshape(-1)[keep]
        pairs.append(np.stack([np.minimum(xi, yi), np.maximum(xi, yi)], 1))
    p = np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), int)
    return p[:, 0], p[:, 1]


def morans_i(supervoxels: np.ndarray, images) -> float:
    """Moran's I of supervoxel means over touching pairs (min across sequences)."""
    inside, sv, n = _consecutive(np.asarray(supervoxels))
    i, j = adjacency(supervoxels)
    if n < 2 or len(i) == 0:
        return 0.0
    size = np.bincount(sv, minlength=n).astype(np.float64)
    values = []
    for image in _as_channels(images):
        mean = np.bincount(sv, image[inside].astype(np.float64), n) / size
        z = mean - mean.mean()
        denominator = (z * z).sum()
        if denominator == 0:
            values.append(0.0)
            continue
        # Symmetric weights: each touching pair counts twice in sum_ij and in W.
        values.append(float(n / (2.0 * len(i)) * (2.0 * (z[i] * z[j]).sum()) / denominator))
    return float(min(values))


def global_score(supervoxels: np.ndarray, images) -> float:
    return 0.5 * (weighted_variance(supervoxels, images) + morans_i(supervoxels, images))


def evaluate(supervoxels: np.ndarray, images, truth: np.ndarray | None = None) -> dict:
    """All of Table 1's scores for one supervoxel map."""
    w = weighted_variance(supervoxels, images)
    mi = morans_i(supervoxels, images)
    out = {"count": supervoxel_count(supervoxels), "wVar": w, "MI": mi, "GS": 0.5 * (w + mi)}
    if truth is not None:
        out["ASA"] = asa(supervoxels, truth, "tumor")
        out["ASA_all"] = asa(supervoxels, truth, "all")
    return out
