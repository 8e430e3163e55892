"""Skull-stripping of one head volume, any orientation and voxel size, by either backend.

The networks want the head in closest-to-RAS voxel order; that is the canonical form of the grid
(an exact permutation/flip of the voxels, no interpolation). deepbet then works at the image's own
resolution when its voxels are near-isotropic and no coarser than ~1.3 mm (exactly deepbet's own
processing); thick-slice or coarse scans are first resampled, linearly and in world space, to
1 mm voxels over the same box, as HD-BET always resamples to 1.5 mm. The brain probability comes
back to the canonical grid by linear interpolation, is thresholded, kept out of the scan's own
background (``scan_background``: an already skull-stripped scan's constant fill), reduced to its
largest connected component with inner holes filled, and returned on the input's own grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..geometry import reorient_to, resample_to, to_canonical
from ..volume import Grid, Volume

BACKENDS = ("deepbet", "hdbet")
# Adult brain volumes (mask incl. cerebellum and brainstem) lie well inside this range.
PLAUSIBLE_ML = (800.0, 2200.0)
# Smaller than this along any axis cannot hold enough of a head to find a brain in.
MIN_EXTENT_MM = 50.0
MIN_VOXELS = 8
# Below this the networks have found no brain (a real partial-coverage head still gives more).
MIN_BRAIN_ML = 100.0
# The brain is set apart from the background by intensity: in a head the voxels around the brain
# mask include dark air, whereas in noise they look just like the voxels inside.
MIN_CONTRAST = 0.5
# A brain has tissue classes: its intensities vary (coefficient of variation ~0.2-0.4 in MRI).
MIN_TEXTURE = 0.02
# deepbet runs on the image's own voxels when they are at most this coarse and this anisotropic.
DEEPBET_NATIVE_MAX_MM = 1.3
DEEPBET_NATIVE_MAX_RATIO = 1.3
DEEPBET_SPACING_MM = 1.0

Progress = Callable[[float, str], None]


@dataclass
class SkullStripResult:
    mask: Volume  # uint8 0/1 on the input's grid
    backend: str
    volume_ml: float
    resampled: bool  # whether the network saw a resampled copy
    warnings: list[str] = field(default_factory=list)


def isotropic_grid(grid: Grid, spacing_mm: float) -> Grid:
    """A grid along ``grid``'s own axes with cubic voxels, covering the same box."""
    direction, spacing = grid.direction, grid.spacing
    extent = np.asarray(grid.shape) * spacing
    shape = tuple(max(1, int(round(e / spacing_mm))) for e in extent)
    corner = grid.affine[:3, 3] - direction @ (spacing / 2)  # outer corner of the first voxel
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing_mm
    affine[:3, 3] = corner + direction @ np.full(3, spacing_mm / 2)
    return Grid(shape, affine)


def check_head_extent(volume: Volume) -> None:
    extent = np.asarray(volume.shape) * volume.spacing
    if min(volume.shape) < MIN_VOXELS or extent.min() < MIN_EXTENT_MM:
        size = "x".join(f"{e:.0f}" for e in extent)
        raise InputError(
            volume.source or None,
            f"covers only {size} mm ({'x'.join(map(str, volume.shape))} voxels): too small to "
            f"hold a head (at least {MIN_EXTENT_MM:.0f} mm and {MIN_VOXELS} voxels along each "
            "axis are needed)",
        )


def check_has_contrast(volume: Volume) -> None:
    """Refuse an image whose nonzero voxels all have one value (a mask given as the image)."""
    sample = volume.array[::2, ::2, ::2]  # statistics on every 8th voxel are as telling, and fast
    values = sample[sample != 0]
    low, high = np.percentile(values, [1, 99]) if values.size else (0.0, 0.0)
    if high - low <= 1e-6 * max(abs(float(high)), 1.0):
        raise InputError(
            volume.source or None,
            "has a single intensity in all its nonzero voxels: a mask or label map, not a head MRI",
        )


def _largest_component_filled(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component with its inner holes filled.

    Worked out in the mask's bounding box plus one voxel (as deepbet does in its box): the same
    result as on the whole volume, since everything outside the box is background.
    """
    import cc3d
    import fill_voids

    mask = mask.astype(bool, copy=False)
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    box = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(present[0]) - 1, 0), int(present[-1]) + 2))
    box = tuple(box)
    labels = cc3d.connected_components(mask[box], connectivity=26)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(sizes.argmax())
    # fill_voids treats the array's border as outside: pad so a box at the volume's edge is alike.
    filled = fill_voids.fill(np.pad(largest, 1), in_place=True)[1:-1, 1:-1, 1:-1]
    out[box] = filled
    return out


def scan_background(image: np.ndarray) -> np.ndarray:
    """The scan's constant background: the voxels holding the value that fills most of the volume's
    faces, connected to the faces through that value. In an already skull-stripped scan (BraTS,
    the output of HD-BET or BET) it is the fill outside the brain, which the networks' masks
    overreach by a few millimetres (on the 16 BraTS cases in ``../shared/data``: 5-84 ml of zeros
    inside deepbet's mask); in a raw head the faces hold noise and it is empty or air."""
    import cc3d

    def faces(array: np.ndarray) -> np.ndarray:
        return np.concatenate([array[(slice(None),) * a + (end,)].ravel()
                               for a in range(array.ndim) for end in (0, -1)])

    image = np.asarray(image)
    values, counts = np.unique(faces(image), return_counts=True)
    if counts.max() < 0.5 * counts.sum():
        return np.zeros(image.shape, bool)
    labels = cc3d.connected_components(image == values[counts.argmax()], connectivity=6)
    on_faces = np.unique(faces(labels))
    return np.isin(labels, on_faces[on_faces > 0])


def check_is_brain(image: np.ndarray, mask: np.ndarray, voxel_ml: float, source: str) -> None:
    """Refuse a result that is not a brain in a head: nothing found, or found in noise."""
    volume_ml = float(mask.sum()) * voxel_ml
    where = source or None
    if volume_ml < MIN_BRAIN_ML:
        raise InputError(
            where, f"no brain was found in the image ({volume_ml:.0f} ml): is it a head MRI?"
        )
    # Statistics on every 8th voxel: as telling, and fast next to the network.
    image, mask = image[::2, ::2, ::2], mask[::2, ::2, ::2]
    inside = image[mask]
    mean = float(inside.mean())
    if float(inside.std()) < MIN_TEXTURE * max(abs(mean), 1e-6):
        raise InputError(
            where, "the image does not look like a head MRI: what the network calls brain is of "
            "uniform intensity, without grey matter, white matter and CSF",
        )
    contrast = brain_contrast(image, mask)
    if contrast < MIN_CONTRAST:
        raise InputError(
            where,
            f"the image does not look like a head MRI: what the network calls brain is not set "
            f"apart from its surroundings (contrast {contrast:.2f}); noise or a non-head image?",
        )


def brain_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """How different the image is inside the mask and outside it, in units of its spread.

    The difference of the medians inside and outside, over the interquartile range of the whole
    image's nonzero voxels.
    """
    inside = image[mask]
    outside = image[~mask]
    if outside.size == 0 or inside.size == 0:
        return 0.0
    values = image[image != 0]
    q25, q75 = np.percentile(values if values.size else image, [25, 75])
    spread = max(float(q75 - q25), 1e-6)
    return abs(float(np.median(inside)) - float(np.median(outside))) / spread


def brain_mask(
    volume: Volume,
    *,
    backend: str = "deepbet",
    device: str = "cpu",
    threshold: float = 0.5,
    folds: int = 5,
    tta: bool = False,
    progress: Progress | None = None,
) -> SkullStripResult:
    """The brain mask of a head volume, on the volume's own grid."""
    if backend not in BACKENDS:
        raise InputError(None, f"unknown skull-stripping backend {backend!r} "
                         f"(use {' or '.join(BACKENDS)})")
    if not 0.0 < threshold < 1.0:
        raise InputError(None, f"the threshold must lie between 0 and 1, got {threshold}")
    if backend == "hdbet" and not 1 <= folds <= 5:
        raise InputError(None, f"HD-BET has five folds: folds must be 1 to 5, got {folds}")
    report = progress or (lambda fraction, message: None)
    check_head_extent(volume)
    check_has_contrast(volume)
    canonical = to_canonical(volume)
    image = canonical.with_array(canonical.array.astype(np.float32, copy=False))
    spacing = image.spacing
    if backend == "deepbet":
        native = (spacing.max() <= DEEPBET_NATIVE_MAX_MM
                  and spacing.max() / spacing.min() <= DEEPBET_NATIVE_MAX_RATIO)
        target = None if native else DEEPBET_SPACING_MM
    else:
        from .hdbet_backend import SPACING_MM as target
    model_input = image if target is None else resample_to(image, isotropic_grid(image.grid, target))
    report(0.05, f"{backend} on {model_input.grid.describe()}")
    try:
        if backend == "deepbet":
            from .deepbet_backend import predict

            probability = predict(model_input.array, device)
        else:
            from .hdbet_backend import predict as hdbet_predict

            probability = hdbet_predict(
                model_input.array, device, folds=folds, tta=tta,
                progress=lambda f, m: report(0.05 + 0.85 * f, m))
    except InputError as e:
        if e.path is not None or not volume.source:
            raise
        raise InputError(volume.source, e.problem) from e
    report(0.9, "brain mask: threshold, largest component, holes filled")
    if target is not None:
        probability = resample_to(model_input.with_array(probability), image.grid).array
    mask = _largest_component_filled((probability > threshold) & ~scan_background(image.array))
    check_is_brain(image.array, mask, image.voxel_volume_ml, volume.source)
    volume_ml = float(mask.sum()) * image.voxel_volume_ml
    result = SkullStripResult(
        mask=volume.with_array(
            reorient_to(canonical.with_array(mask.astype(np.uint8)), volume.grid).array),
        backend=backend, volume_ml=volume_ml, resampled=target is not None)
    lo, hi = PLAUSIBLE_ML
    if not lo <= volume_ml <= hi:
        result.warnings.append(
            f"the brain mask measures {volume_ml:.0f} ml, outside the usual {lo:.0f}-{hi:.0f} ml "
            "of an adult brain: check it (partial head coverage, a child, or a failed extraction)")
    return result
