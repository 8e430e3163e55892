"""Intensity normalisation, the brain's box and the BraTS regions, shared by training and inference."""

from __future__ import annotations

import numpy as np

# Region channels of our models, nested from largest to smallest.
REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def normalise(image: np.ndarray, mask: np.ndarray, clip=(0.5, 99.5)) -> np.ndarray:
    """Clip to the brain's [0.5, 99.5] percentiles, z-score inside the brain, zero outside."""
    image = np.asarray(image, np.float32)
    mask = np.asarray(mask, bool)
    out = np.zeros(image.shape, np.float32)
    values = image[mask]
    if values.size == 0:
        return out
    lo, hi = np.percentile(values, clip)
    values = np.clip(values, lo, hi)
    std = float(values.std())
    out[mask] = (values - float(values.mean())) / (std if std > 1e-6 else 1.0)
    return out


def normalise_stack(images: list[np.ndarray], mask: np.ndarray, clip=(0.5, 99.5)) -> np.ndarray:
    return np.stack([normalise(im, mask, clip) for im in images]).astype(np.float32)


def brain_box(mask: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    """The brain's bounding box (plus a margin), as slices; the whole array if the mask is empty."""
    idx = np.argwhere(np.asarray(mask) > 0)
    if idx.size == 0:
        return tuple(slice(0, s) for s in np.shape(mask))
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, np.shape(mask))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def regions_from_labels(labels: np.ndarray, order=("WT", "TC", "ET")) -> np.ndarray:
    """BraTS labels (2021's 4 or 2023's 3 for enhancing) -> binary region channels."""
    labels = np.asarray(labels)
    if np.any(labels == 3) and not np.any(labels == 4):
        labels = np.where(labels == 3, 4, labels)
    return np.stack([np.isin(labels, REGION_LABELS[r]) for r in order]).astype(np.float32)


def labels_from_regions(wt: np.ndarray, tc: np.ndarray, et: np.ndarray) -> np.ndarray:
    """Nested binary regions -> BraTS labels: ET -> 4, TC without ET -> 1, WT without TC -> 2."""
    et = et & wt  # keep the nesting the labels encode: ET inside TC inside WT
    tc = (tc | et) & wt
    out = np.zeros(wt.shape, np.uint8)
    out[wt] = 2
    out[tc] = 1
    out[et] = 4
    return out
