"""Refine by supervoxels: a label map snapped to the supervoxels it mostly covers."""

from __future__ import annotations

import numpy as np


def snap_to_supervoxels(labels: np.ndarray, supervoxels: np.ndarray,
                        min_fraction: float = 0.5) -> np.ndarray:
    """A label map (0 = background, any positive labels) snapped to supervoxel boundaries.

    Every supervoxel (> 0) whose voxels are labelled (> 0) for at least ``min_fraction`` of its
    volume becomes wholly labelled; every other supervoxel loses its labels. Voxels that were
    already labelled keep their own label (sub-regions inside the tumour stay as they were); voxels
    added take the supervoxel's most frequent positive label. Outside the supervoxels (0), labels
    are left unchanged.
    """
    labels = np.asarray(labels)
    supervoxels = np.asarray(supervoxels)
    if labels.shape != supervoxels.shape:
        raise ValueError(f"labels {labels.shape} and supervoxels {supervoxels.shape} differ in shape")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError("min_fraction must be in (0, 1]")
    inside = supervoxels > 0
    ids, sv = np.unique(supervoxels[inside], return_inverse=True)
    sv = sv.reshape(-1)
    lab = labels[inside]
    values, lab_index = np.unique(lab, return_inverse=True)
    lab_index = lab_index.reshape(-1)
    n, k = len(ids), len(values)
    table = np.bincount(sv * k + lab_index, minlength=n * k).reshape(n, k)  # voxels per (sv, label)
    positive = values > 0
    size = table.sum(1)
    covered = table[:, positive].sum(1)
    keep = covered >= min_fraction * size
    # Most frequent positive label of each supervoxel (ties: the smaller label).
    majority = np.zeros(n, dtype=labels.dtype)
    if positive.any():
        majority = values[positive][table[:, positive].argmax(1)].astype(labels.dtype)
    out_inside = np.where(keep[sv], np.where(lab > 0, lab, majority[sv]), 0).astype(labels.dtype)
    out = labels.copy()
    out[inside] = out_inside
    return out
