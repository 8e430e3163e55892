"""Phantom cases with barrier truths.

``add_barriers(case, seed)`` takes a ``brainbarriers.phantom.make_case`` case and

1. puts the labelled template (``sri24_barriers.nii.gz``) on the case's grid (block-averaged one-hot
   with background down-weighted, so the 1-2 mm thin falx, tentorium and sinuses survive 2 mm voxels);
2. makes the barriers visible: sinuses (flowing venous blood) bright on T1ce and dark (flow void) on
   T1, T2 and FLAIR; falx and tentorium (dura) dark on every sequence, blended over a voxel;
3. warps everything (sequences and all truths) by a seeded random smooth deformation - a small affine
   (+-4 degrees, +-4 % scale, +-4 mm shift) plus a smooth displacement field (Gaussian-filtered
   noise, 20 mm wide, up to about 4 mm) - so that generated cases differ from the template and from
   each other;
and adds ``truths["barriers"]``. ``make_barrier_case(seed, zoom)`` does both steps.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..geometry import resample_to
from ..phantom import PhantomCase, load_anatomy, make_case
from ..volume import Volume
from . import N_CLASSES

# Barrier appearance relative to the sequence's white matter level (phantom WM_LEVEL).
SINUS_LEVEL = {"t1": 0.35, "t1ce": 1.35, "t2": 0.2, "flair": 0.2}
DURA_LEVEL = {"t1": 0.25, "t1ce": 0.3, "t2": 0.2, "flair": 0.2}


def template_labels_on(grid_volume: Volume) -> np.ndarray:
    """The template's barriers on another (coarser) grid, keeping thin structures."""
    from .atlas import load_template

    _, _, labels = load_template()
    if grid_volume.grid.same_as(labels.grid):
        return labels.array.astype(np.uint8)
    probs = []
    factor = float(np.prod(grid_volume.spacing / labels.spacing))
    for value in range(N_CLASSES):
        onehot = labels.with_array((labels.array == value).astype(np.float32))
        if factor > 1.5:  # average over the coarse voxel before sampling its centre
            width = (grid_volume.spacing / labels.spacing) / 2.5
            onehot = onehot.with_array(ndi.gaussian_filter(onehot.array, width))
        probs.append(resample_to(onehot, grid_volume.grid).array)
    prob = np.stack(probs)
    prob[0] *= 0.35  # thin structures cover a fraction of a coarse voxel; still give them the voxel
    return np.argmax(prob, axis=0).astype(np.uint8)


def random_warp(shape: tuple[int, int, int], spacing: np.ndarray, rng: np.random.Generator,
                amplitude_mm: float = 4.0) -> np.ndarray:
    """Sampling coordinates (3, *shape) of a smooth random deformation (voxel units)."""
    centre = (np.array(shape) - 1) / 2
    angles = np.radians(rng.uniform(-4, 4, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    matrix = rot @ np.diag(rng.uniform(0.96, 1.04, 3))
    shift_vox = rng.uniform(-4, 4, 3) / spacing
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = (matrix @ (grid - centre[:, None])) + centre[:, None] + shift_vox[:, None]
    coords = coords.reshape(3, *shape)
    sigma = 20.0 / spacing
    for axis in range(3):
        noise = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
        noise *= amplitude_mm / (np.abs(noise).max() + 1e-8) / spacing[axis]
        coords[axis] += noise
    return coords.astype(np.float32)


def add_barriers(case: PhantomCase, seed: int, *, warp: bool = True) -> PhantomCase:
    """Add ``truths["barriers"]`` and the barriers' appearance to ``case`` (see the module docstring)."""
    ref = next(iter(case.sequences.values()))
    labels = template_labels_on(ref)
    from ..phantom import WM_LEVEL

    sinus = ndi.gaussian_filter(np.isin(labels, (3, 4)).astype(np.float32), 0.5)
    dura = ndi.gaussian_filter(np.isin(labels, (1, 2)).astype(np.float32), 0.5)
    rng = np.random.default_rng(10_000 + seed)
    sequences = {}
    for name, volume in case.sequences.items():
        image = volume.array.astype(np.float32)
        texture = 1.0 + 0.05 * rng.standard_normal(image.shape).astype(np.float32)
        image = image * (1 - dura) + dura * DURA_LEVEL.get(name, 0.3) * WM_LEVEL * texture
        image = image * (1 - sinus) + sinus * SINUS_LEVEL.get(name, 0.3) * WM_LEVEL * texture
        sequences[name] = image
    truths = {k: v.array for k, v in case.truths.items()}
    truths["barriers"] = labels
    if warp:
        coords = random_warp(ref.shape, ref.spacing, rng)
        sequences = {k: ndi.map_coordinates(v, coords, order=1, mode="constant") for k, v in sequences.items()}
        truths = {k: ndi.map_coordinates(v, coords, order=0, mode="constant") for k, v in truths.items()}
    out_seq = {k: ref.with_array(np.clip(np.round(v), 0, 255).astype(np.uint8)) for k, v in sequences.items()}
    out_truth = {k: ref.with_array(v.astype(np.uint8)) for k, v in truths.items()}
    info = dict(case.info, barriers_seed=seed, warped=warp)
    return PhantomCase(out_seq, out_truth, info)


def make_barrier_case(seed: int, zoom: int = 2, *, warp: bool = True, **kw) -> PhantomCase:
    """A generated glioma case with barrier truths (seeded)."""
    load_anatomy(zoom)
    return add_barriers(make_case(seed, zoom=zoom, **kw), seed, warp=warp)
