"""Overlap and surface metrics with the BraTS conventions.

Regions from BraTS labels (2021 convention 1 necrotic core, 2 oedema, 4 enhancing; the 2023 release
uses 3 for enhancing): ET = 4, TC = 1 + 4, WT = 1 + 2 + 4.
Both empty -> Dice 1, HD95 0. One empty -> Dice 0 and HD95 = the challenge's penalty, 373.13 mm
(the diagonal of the 240x240x155 BraTS grid).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .volume import Volume

HD95_PENALTY = 373.1287

BRATS_REGIONS = {"ET": (4,), "TC": (1, 4), "WT": (1, 2, 4)}


def brats2021_labels(labels: np.ndarray) -> np.ndarray:
    """Map the 2023 convention (3 = enhancing) to 2021's (4 = enhancing); 2021 maps pass unchanged."""
    labels = np.asarray(labels)
    if np.any(labels == 3) and not np.any(labels == 4):
        labels = np.where(labels == 3, 4, labels)
    return labels


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = pred.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, truth).sum() / total)


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distances (mm) from the surface voxels of a to the nearest surface voxel of b."""
    structure = ndi.generate_binary_structure(3, 1)
    surface_a = a & ~ndi.binary_erosion(a, structure, border_value=0)
    surface_b = b & ~ndi.binary_erosion(b, structure, border_value=0)
    distance_to_b = ndi.distance_transform_edt(~surface_b, sampling=spacing)
    return distance_to_b[surface_a]


def hd95(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """95 % Hausdorff distance in mm: max of the two directed 95th percentiles of surface distances."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return HD95_PENALTY
    # Crop to the union's box (plus a margin) so large grids stay fast.
    box = np.argwhere(pred | truth)
    lo, hi = np.maximum(box.min(0) - 2, 0), box.max(0) + 3
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    spacing = np.asarray(spacing, float)
    d_ab = _surface_distances(pred[region], truth[region], spacing)
    d_ba = _surface_distances(truth[region], pred[region], spacing)
    # The larger of the two directed 95th percentiles (as surface-distance's robust Hausdorff and
    # MONAI's compute_hausdorff_distance(percentile=95) do), not the percentile of the pooled set.
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def brats_scores(pred: Volume, truth: Volume) -> dict[str, dict[str, float]]:
    """Dice and HD95 for ET, TC and WT (``{"ET": {"dice": .., "hd95": ..}, ...}``)."""
    if not pred.grid.same_as(truth.grid):
        raise ValueError("prediction and ground truth are on different grids")
    p, t = brats2021_labels(pred.array), brats2021_labels(truth.array)
    scores = {}
    for region, values in BRATS_REGIONS.items():
        pm, tm = np.isin(p, values), np.isin(t, values)
        scores[region] = {"dice": round(dice(pm, tm), 4),
                          "hd95": round(hd95(pm, tm, truth.spacing), 3)}
    return scores


def label_dice(pred: Volume, truth: Volume, names: dict[int, str]) -> dict[str, float]:
    """Dice per label value of a multi-label map."""
    return {name: round(dice(pred.array == value, truth.array == value), 4)
            for value, name in names.items()}
