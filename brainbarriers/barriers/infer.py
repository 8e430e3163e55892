"""Two-stage inference (paper 000, Fig. 2) and the helpers training shares with it.

1. Stage 1: the model's input sequences, z-scored inside the brain, blurred against aliasing and
   resampled to the stage-1 model's spacing (whole volume), segmented at once by the DynUNet;
   softmax probabilities brought back to the case's grid (linear).
2. Stage 2: per structure with a model, on the stage-2 spacing, the bounding box of the coarse mask
   expanded by ``margin`` voxels (10, as in the paper) is cropped and segmented by the structure's
   HMRNet (sliding window when the crop is larger than the model's patch); its foreground probability
   is brought back to the case's grid. When the package's ``config`` has ``reach`` (voxels), stage 2
   may only label voxels within that distance of the coarse mask: the paper trusts the whole box,
   but a small, briefly trained HMRNet (the demo set) also fires on look-alike tissue far from the
   structure in the box's corners (temporal horns taken for ventricles, and so on).
3. Combination: each voxel takes the structure of highest probability among those above 0.5
   (overlaps resolved by probability); structures without a stage-2 model keep their stage-1
   probability.
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import resample_to
from ..volume import Grid, Volume
from . import N_CLASSES, STRUCTURES


def zscore(volume: Volume, brain: np.ndarray) -> Volume:
    a = volume.array.astype(np.float32)
    values = a[brain] if brain.any() else a.ravel()
    return volume.with_array(((a - values.mean()) / (values.std() + 1e-6)).astype(np.float32))


def grid_at_spacing(grid: Grid, spacing_mm: float) -> Grid:
    """A grid covering the same field of view with isotropic ``spacing_mm`` voxels, same axes."""
    spacing = grid.spacing
    extent = np.array(grid.shape) * spacing
    shape = tuple(int(max(1, round(e / spacing_mm))) for e in extent)
    direction = grid.direction
    # Keep the field of view's outer corner: voxel centres shift by half the size change.
    corner = grid.affine[:3, 3] - direction @ (spacing / 2)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing_mm
    affine[:3, 3] = corner + direction @ np.full(3, spacing_mm / 2)
    return Grid(shape, affine)


def antialias_sigma(source_spacing: np.ndarray, target_spacing: np.ndarray) -> np.ndarray:
    """Gaussian sigma (source voxels) to blur before sampling onto coarser voxels.

    The blur makes the source's point spread match the coarse voxel's (FWHM = coarse size):
    without it, sampling a 2 mm image every 6 mm keeps one slice in three, and a 1-2 mm falx or
    sinus vanishes from two coarse slices in three.
    """
    src, dst = np.asarray(source_spacing, float), np.asarray(target_spacing, float)
    fwhm_mm = np.sqrt(np.clip(dst**2 - src**2, 0, None))
    return fwhm_mm / 2.355 / src


def stack_inputs(images: dict[str, Volume], sequences: list[str], brain: np.ndarray, grid: Grid | None
                 ) -> np.ndarray:
    """(C, ...) z-scored channels of ``sequences`` on ``grid`` (None: the images' own grid),
    anti-aliased when ``grid`` is coarser."""
    from scipy import ndimage as ndi

    chans = []
    for s in sequences:
        v = zscore(images[s], brain)
        if grid is not None and not v.grid.same_as(grid):
            sigma = antialias_sigma(v.spacing, _spacing_along(grid, v))
            if (sigma > 0.25).any():
                v = v.with_array(ndi.gaussian_filter(v.array, sigma))
            v = resample_to(v, grid)
        chans.append(v.array)
    return np.stack(chans).astype(np.float32)


def _spacing_along(grid: Grid, volume: Volume) -> np.ndarray:
    """``grid``'s voxel size measured along each of ``volume``'s array axes (mm)."""
    # Voxel step of ``grid`` expressed in ``volume``'s index axes, scaled back to mm.
    to_volume = np.linalg.inv(volume.affine[:3, :3]) @ grid.affine[:3, :3]
    return np.abs(to_volume).max(axis=1) * volume.spacing


def pad8(x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    from ..nets.hmrnet import pad_to_multiple

    return pad_to_multiple(x, 8)


def bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    idx = np.argwhere(mask)
    if not len(idx):
        return None
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


@torch.no_grad()
def run_stage1(net: torch.nn.Module, manifest: dict, images: dict[str, Volume], brain: np.ndarray,
               device: str = "cpu") -> np.ndarray:
    """Stage-1 class probabilities (N_CLASSES, ...) on the images' grid."""
    cfg, sequences = manifest["config"], manifest["inputs"]
    ref = images[sequences[0]]
    g1 = grid_at_spacing(ref.grid, cfg["spacing_mm"])
    x = torch.from_numpy(stack_inputs(images, sequences, brain, g1))[None].to(device)
    xp, crop = pad8(x)
    prob = torch.softmax(net(xp), dim=1)[crop][0].cpu().numpy()
    out = [resample_to(Volume(p, g1.affine), ref.grid).array for p in prob]
    return np.stack(out).astype(np.float32)


@torch.no_grad()
def predict_crop(net: torch.nn.Module, x: np.ndarray, patch: list[int] | None, device: str = "cpu") -> np.ndarray:
    """Foreground probability of a (C, ...) crop."""
    t = torch.from_numpy(x)[None].to(device)
    net.eval()
    if patch is not None and any(s > p for s, p in zip(t.shape[2:], patch)):
        from monai.inferers import sliding_window_inference

        tp, crop = pad8(t)
        prob = sliding_window_inference(tp, patch, 1, lambda z: torch.softmax(net(z), 1), overlap=0.25,
                                        mode="gaussian")[crop]
    else:
        tp, crop = pad8(t)
        prob = torch.softmax(net(tp), dim=1)[crop]
    return prob[0, 1].cpu().numpy()


def run_stage2(net: torch.nn.Module, manifest: dict, images: dict[str, Volume], brain: np.ndarray,
               coarse_mask: np.ndarray, device: str = "cpu") -> np.ndarray | None:
    """One structure's foreground probability on the images' grid (None if stage 1 found nothing)."""
    cfg, sequences = manifest["config"], manifest["inputs"]
    ref = images[sequences[0]]
    g2 = grid_at_spacing(ref.grid, cfg["spacing_mm"])
    same = g2.same_as(ref.grid, atol=1e-3)
    g2 = ref.grid if same else g2
    mask = coarse_mask if same else resample_to(
        Volume(coarse_mask.astype(np.float32), ref.affine), g2).array > 0.5
    box = bbox(mask, int(cfg.get("margin", 10)))
    if box is None:
        return None
    x = stack_inputs(images, sequences, brain, None if same else g2)[(slice(None), *box)]
    fg = np.zeros(g2.shape, np.float32)
    fg[box] = predict_crop(net, x, cfg.get("patch"), device)
    reach = cfg.get("reach")
    if reach is not None:
        fg[box] *= within_reach(mask[box], float(reach))
    return fg if same else resample_to(Volume(fg, g2.affine), ref.grid).array


def within_reach(mask: np.ndarray, reach: float) -> np.ndarray:
    """Voxels at most ``reach`` voxels (Euclidean) from ``mask``."""
    from scipy import ndimage as ndi

    return ndi.distance_transform_edt(~mask) <= reach


def combine(probs: dict[int, np.ndarray], shape) -> np.ndarray:
    """Label map from per-structure foreground probabilities: the most probable above 0.5."""
    labels = np.zeros(shape, np.uint8)
    best = np.full(shape, 0.5, np.float32)
    for label, p in sorted(probs.items()):
        win = p > best
        labels[win] = label
        best = np.where(win, p, best)
    return labels


def two_stage(models: dict, images: dict[str, Volume], brain: np.ndarray, device: str = "cpu",
              progress=lambda f, m: None, refine: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """(final labels, coarse labels, info) on the images' grid."""
    net1, man1 = models["stage1"]
    progress(0.05, "stage 1: coarse localisation")
    p1 = run_stage1(net1, man1, images, brain, device)
    coarse = np.argmax(p1, axis=0).astype(np.uint8)
    probs = {label: p1[label] for label in range(1, N_CLASSES)}
    refined = []
    if refine:
        items = sorted(models["stage2"].items())
        for n, (label, (net, man)) in enumerate(items):
            progress(0.2 + 0.75 * n / max(1, len(items)), f"stage 2: {STRUCTURES[label].key}")
            fg = run_stage2(net, man, images, brain, coarse == label, device)
            if fg is not None:
                probs[label] = fg
                refined.append(STRUCTURES[label].key)
    labels = combine(probs, coarse.shape)
    return labels, coarse, {"refined": refined}
