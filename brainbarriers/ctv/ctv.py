"""The CTV computation on volumes (the pipeline step in ``step.py`` wraps it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ..errors import InputError
from ..geometry import grids_overlap, resample_to
from ..volume import Volume
from .geodesic import geodesic_distance

# BraTS labels per GTV choice (see the package docstring for the reading of the guideline).
GTV_LABELS: dict[str, tuple[int, ...]] = {
    "enhancing": (4, 1),  # enhancing tumour + necrotic core (the cavity's stand-in)
    "core": (1, 3, 4),  # tumour core (3: non-enhancing tumour of pre-2017 BraTS maps)
    "whole": (1, 2, 3, 4),  # whole tumour
}
EDEMA = 2
# Barrier labels (brainbarriers.labels.BARRIER_SEGMENTS) blocked by default; 6 (ventricles) on request.
DEFAULT_BARRIERS = (1, 2, 3, 4)
VENTRICLES = 6
DEFAULT_MARGIN_MM = 15.0


def gtv_mask(tumor: np.ndarray, gtv: str = "enhancing", add_edema: bool = False) -> np.ndarray:
    if gtv not in GTV_LABELS:
        raise InputError(None, f"ctv: unknown gtv {gtv!r} (use {', '.join(GTV_LABELS)})")
    labels = GTV_LABELS[gtv] + ((EDEMA,) if add_edema else ())
    return np.isin(tumor, labels)


def _on_grid(volume: Volume, reference: Volume, what: str, warn: Callable[[str], None]) -> Volume:
    if volume.grid.same_as(reference.grid):
        return volume
    if grids_overlap(reference.grid, volume.grid) < 0.3:
        raise InputError(volume.source or None,
                         f"ctv: the {what} ({volume.grid.describe()}) does not overlap the tumour "
                         f"map ({reference.grid.describe()})")
    warn(f"ctv: the {what} is on another grid ({volume.grid.describe()}) than the tumour map "
         f"({reference.grid.describe()}); resampled to it (nearest neighbour)")
    return resample_to(volume, reference.grid, label=True)


def grow_ctv(
    tumor: Volume,
    brain_mask: Volume,
    barriers: Volume | None = None,
    *,
    margin_mm: float = DEFAULT_MARGIN_MM,
    gtv: str = "enhancing",
    add_edema: bool = False,
    barrier_labels: Iterable[int] = DEFAULT_BARRIERS,
    warn: Callable[[str], None] | None = None,
    check: Callable[[], None] | None = None,
) -> Volume:
    """The CTV (uint8, 1 inside) on the tumour map's grid.

    CTV = GTV + every voxel of (brain mask minus the chosen barriers) within ``margin_mm`` of the
    GTV along a path that stays inside it. Raises InputError when the GTV is empty. A brain mask or
    barrier map on another grid is resampled onto the tumour's grid, with a warning.
    """
    import warnings

    warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
    try:
        margin_mm = float(margin_mm)
    except (TypeError, ValueError):
        raise InputError(None, f"ctv: margin_mm must be a number of millimetres, got {margin_mm!r}") from None
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise InputError(None, f"ctv: margin_mm must be >= 0 mm, got {margin_mm}")
    gtv_voxels = gtv_mask(np.asarray(tumor.array), gtv, add_edema)
    if not gtv_voxels.any():
        chosen = GTV_LABELS[gtv] + ((EDEMA,) if add_edema else ())
        raise InputError(tumor.source or None,
                         f"ctv: the GTV is empty (no tumour voxel with label {', '.join(map(str, chosen))} "
                         f"for gtv={gtv!r}); no CTV is made")
    return ctv_from_gtv(tumor.with_array(gtv_voxels), brain_mask, barriers, margin_mm=margin_mm,
                        barrier_labels=barrier_labels, warn=warn, check=check)


def ctv_from_gtv(
    gtv: Volume,
    brain_mask: Volume,
    barriers: Volume | None = None,
    *,
    margin_mm: float = DEFAULT_MARGIN_MM,
    barrier_labels: Iterable[int] = DEFAULT_BARRIERS,
    warn: Callable[[str], None] | None = None,
    check: Callable[[], None] | None = None,
) -> Volume:
    """The CTV (uint8, 1 inside) of a binary GTV (any non-zero voxel), on the GTV's grid.

    The recompute after editing: the GTV is the edited segment, the brain mask and the barrier
    map are those already computed; no network runs. CTV = GTV + every voxel of (brain mask minus
    the chosen barriers) within ``margin_mm`` of it along a path that stays inside. An empty GTV
    is an InputError.
    """
    import warnings

    warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
    margin_mm = float(margin_mm)
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise InputError(None, f"ctv: margin_mm must be >= 0 mm, got {margin_mm}")
    gtv_voxels = np.asarray(gtv.array) != 0
    if not gtv_voxels.any():
        raise InputError(gtv.source or None, "ctv: the GTV is empty; no CTV is made")
    brain = _on_grid(brain_mask, gtv, "brain mask", warn).array > 0
    free = brain.copy()
    if barriers is not None:
        blocked_labels = sorted({int(v) for v in barrier_labels})
        barrier_map = _on_grid(barriers, gtv, "barrier map", warn).array
        free &= ~np.isin(barrier_map, blocked_labels)
    seeds = gtv_voxels & free
    if not seeds.any():
        warn("ctv: the GTV lies entirely outside the brain mask or on barriers; CTV = GTV")
        return gtv.with_array(gtv_voxels.astype(np.uint8))
    distance = geodesic_distance(seeds, free, gtv.spacing, margin_mm, check=check)
    ctv = gtv_voxels | (free & (distance <= margin_mm))
    return Volume(ctv.astype(np.uint8), gtv.affine, source="")
