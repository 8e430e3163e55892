"""Reorientation and resampling, always in world (RAS) space.

The pipeline computes on the *canonical* form of the reference grid: the same voxels with axes
permuted and flipped (no interpolation) so that they run as close as possible to R, A, S. Any input
orientation (48 axis permutations/flips, oblique directions) therefore reaches the steps as the same
array, and results go back to the user's grid by the exact inverse permutation.
"""

from __future__ import annotations

import numpy as np
from nibabel import orientations as ornt

from .io import affine_from_sitk, to_sitk
from .volume import Grid, Volume

RAS = ornt.axcodes2ornt(("R", "A", "S"))


def _to_ras_transform(affine: np.ndarray) -> np.ndarray:
    return ornt.ornt_transform(ornt.io_orientation(affine), RAS)


def _apply(array: np.ndarray, affine: np.ndarray, transform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    new_array = ornt.apply_orientation(array, transform)
    new_affine = affine @ ornt.inv_ornt_aff(transform, array.shape)
    return np.ascontiguousarray(new_array), new_affine


def to_canonical(volume: Volume) -> Volume:
    """The same voxels with their axes permuted/flipped to run closest to R, A, S."""
    array, affine = _apply(volume.array, volume.affine, _to_ras_transform(volume.affine))
    return Volume(array, affine, source=volume.source)


def canonical_grid(grid: Grid) -> Grid:
    transform = _to_ras_transform(grid.affine)
    shape = tuple(int(grid.shape[int(a)]) for a in np.argsort(transform[:, 0]))
    affine = grid.affine @ ornt.inv_ornt_aff(transform, grid.shape)
    return Grid(shape, affine)


def reorient_to(volume: Volume, grid: Grid) -> Volume:
    """Bring a volume back onto ``grid`` when the two differ only by axis permutation and flips.

    Exact (no interpolation): this is how outputs return to the user's own grid.
    """
    transform = ornt.ornt_transform(ornt.io_orientation(volume.affine), ornt.io_orientation(grid.affine))
    array, affine = _apply(volume.array, volume.affine, transform)
    if tuple(array.shape) != tuple(grid.shape) or not np.allclose(affine, grid.affine, atol=1e-3):
        raise ValueError("reorient_to: the grids differ by more than an axis permutation")
    return Volume(array, grid.affine, source=volume.source)


def resample_to(volume: Volume, grid: Grid, *, label: bool = False, default: float = 0.0,
                transform=None) -> Volume:
    """Resample onto another grid in world space (linear for images, nearest for label maps);
    ``transform`` (a SimpleITK transform from ``grid``'s LPS points into ``volume``'s) moves it too."""
    if volume.grid.same_as(grid) and transform is None:
        return volume
    import SimpleITK as sitk  # here, not at the top: it costs ~100 MB and one-grid runs never resample

    reference = sitk.Image([int(s) for s in grid.shape], sitk.sitkUInt8)
    ref_volume = Volume(np.zeros(grid.shape, np.uint8), grid.affine)
    template = to_sitk(ref_volume)
    reference.SetSpacing(template.GetSpacing())
    reference.SetDirection(template.GetDirection())
    reference.SetOrigin(template.GetOrigin())
    image = to_sitk(volume)
    if not label and image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        image = sitk.Cast(image, sitk.sitkFloat32)
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    move = sitk.Transform() if transform is None else transform
    out = sitk.Resample(image, reference, move, interpolator, default, image.GetPixelID())
    array = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    assert np.allclose(affine_from_sitk(out), grid.affine, atol=1e-3)
    return Volume(np.ascontiguousarray(array), grid.affine, source=volume.source)


def grids_overlap(a: Grid, b: Grid) -> float:
    """Fraction of a's world bounding box covered by b's (to catch inputs of different patients)."""
    def box(g: Grid) -> tuple[np.ndarray, np.ndarray]:
        corners = np.array(np.meshgrid(*[[0, s - 1] for s in g.shape], indexing="ij")).reshape(3, -1).T
        world = corners @ g.affine[:3, :3].T + g.affine[:3, 3]
        return world.min(0), world.max(0)

    (alo, ahi), (blo, bhi) = box(a), box(b)
    inter = np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0, None).prod()
    return float(inter / max(np.prod(ahi - alo), 1e-9))
