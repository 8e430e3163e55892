"""Tumour inference with a model package: normalise, crop, sliding window, TTA, ensemble, labels.

1. the package's input sequences are brought to the canonical (RAS) orientation of the brain mask's
   grid, as in training (``work_grid``), and resampled to the package's ``spacing_mm`` when it
   records one (the CPU models are trained at 2 mm, the paper's at 1 mm), the brain mask with
   nearest neighbour;
2. each sequence is clipped to its [0.5, 99.5] percentiles inside the brain and z-scored there
   (``normalisation.kind`` "brain-zscore"), or, for MONAI bundles, z-scored over its non-zero voxels
   (``"nonzero-zscore"``, MONAI's ``NormalizeIntensity(nonzero=True, channel_wise=True)``);
3. the volume is cropped to the brain's box; MONAI's ``sliding_window_inference`` with Gaussian
   blending over windows of the package's ``patch_size`` sharing ``overlap`` of their width
   (``DEFAULT_OVERLAP``);
4. test-time augmentation (``tta``): the identity and the 7 flips over the three axes, or the first
   ``flips`` of these eight (identity, single-axis flips, then pairs, then all three);
5. every weights key of the package (its folds) is run and the probabilities averaged. With TTA and
   several folds the flip variants are shared out among the folds (pass k: fold k mod n, variant k),
   so a fold ensemble costs what one network with TTA costs; ``uncertainty`` is the disagreement
   between these network passes (twice the standard deviation of a region's probability across
   them, the largest over the regions: 0 where every pass agrees, 1 where half say yes and half no);
6. region heads (``output.type == "regions"``, sigmoid per WT/TC/ET channel, in the package's own
   channel order) or label heads (``"labels"``, softmax, ``output.label_map`` class -> BraTS label)
   are turned into BraTS labels 1/2/4; probabilities are resampled back to the input grid first;
7. tumour components (26-connected, whole tumour) smaller than ``min_component_ml`` that are not
   the largest are removed (``postprocess.min_component_ml`` of the package; 0, the default, keeps
   all: on the real held-out cases the false positives were larger than 2 ml, README);
8. only the main tumour is kept (``focus_core_ml``, ``postprocess.focus_core_ml`` of the
   package; 0, the default, keeps every component): the largest whole-tumour component and the
   other foci with at least that much tumour core, so that a blob of "oedema" away from the
   tumour is cleared but a second enhancing focus is not; the cleared components are returned so
   that the step can say where they were (on the real held-out cases, README: WT 0.801 -> 0.820);
9. an enhancing region whose total volume is below ``small_et_ml`` (paper: 200 voxels = 0.2 ml at
   1 mm) is relabelled necrotic core (1).

``prepare_input`` does 1-3, ``predict_array`` 4-5, ``to_input_grid`` and ``decide`` 6-9; the
benches that combine network passes in other ways (``bench/tumor_ensemble.py``) use the same four.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..errors import InputError
from ..geometry import canonical_grid, reorient_to, resample_to
from ..models import ModelPackage
from ..volume import Grid, Volume
from .preprocess import brain_box, labels_from_regions, normalise

FLIPS = [f for n in range(4) for f in itertools.combinations((2, 3, 4), n)]  # identity + 7 flips
DEFAULT_SMALL_ET_ML = 0.2
# Sliding-window overlap. With the CPU models' 64^3 windows at 2 mm, 0.4 keeps two windows per axis
# for brain boxes up to 204 mm where 0.5 needs three beyond 192 mm (a third less work on a long
# brain); on the 16 cross-validated cases Dice was the same to within 0.001 (README).
DEFAULT_OVERLAP = 0.4


def _forward(net, x: torch.Tensor) -> torch.Tensor:
    out = net(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def network_passes(n_nets: int, tta: bool, flips: int = len(FLIPS)) -> list[tuple[int, tuple[int, ...]]]:
    """(net index, flipped axes) of every network pass: without TTA each net once, unflipped; with
    TTA the first ``flips`` of the eight flip variants shared out round-robin among the nets (each
    net runs at least once)."""
    if not tta:
        return [(k, ()) for k in range(n_nets)]
    if not 1 <= flips <= len(FLIPS):
        raise InputError(None, f"test-time flips: {flips} asked for; 1 to {len(FLIPS)} exist")
    variants = FLIPS[:flips]
    return [(k % n_nets, variants[k % flips]) for k in range(max(n_nets, flips))]


def predict_array(nets: Sequence[torch.nn.Module], x: torch.Tensor, *, roi: Sequence[int],
                  head: str = "regions", tta: bool = True, overlap: float = DEFAULT_OVERLAP,
                  device: str = "cpu", sw_batch: int = 4,
                  progress: Callable[[float, str], None] | None = None,
                  spread: bool = False, flips: int = len(FLIPS)
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Probabilities (K x spatial) for a normalised C x spatial tensor, averaged over the network
    passes (``network_passes``); with ``spread`` also their disagreement (spatial, 0..1: twice the
    largest standard deviation over the K channels).

    Windows go through the network ``sw_batch`` at a time: on 2 CPU cores the CPU model runs
    about 1.4x faster per window in batches of 2 to 4 than one by one.
    """
    from monai.inferers import sliding_window_inference

    x = x.unsqueeze(0).to(device)
    passes = network_passes(len(nets), tta, flips)
    total = squares = None
    with torch.inference_mode():
        for done, (k, flip) in enumerate(passes, 1):
            net = nets[k].to(device).eval()
            xi = torch.flip(x, flip) if flip else x
            logits = sliding_window_inference(
                xi, roi_size=tuple(int(r) for r in roi), sw_batch_size=sw_batch,
                predictor=lambda t, net=net: _forward(net, t), overlap=overlap, mode="gaussian",
                sw_device=device, device=device)
            prob = torch.sigmoid(logits) if head == "regions" else torch.softmax(logits, 1)
            prob = (torch.flip(prob, flip) if flip else prob).float()
            total = prob if total is None else total + prob
            if spread:
                squares = prob * prob if squares is None else squares + prob * prob
            if progress is not None:
                progress(done / len(passes), f"network pass {done}/{len(passes)}")
    mean = total / len(passes)
    if not spread:
        return mean[0].cpu().numpy()
    std = (squares / len(passes) - mean * mean).clamp_(min=0).sqrt_()
    return mean[0].cpu().numpy(), (2 * std[0].amax(0)).clamp_(max=1).cpu().numpy()


def predict_regions_array(nets, x: torch.Tensor, roi=(96, 96, 96), tta: bool = True, **kw) -> np.ndarray:
    return predict_array(nets, x, roi=roi, head="regions", tta=tta, **kw)


def grid_with_spacing(grid: Grid, spacing: Sequence[float]) -> Grid:
    """A grid over the same field of view with another voxel size (same directions, same corner)."""
    old = grid.spacing
    new = np.asarray(spacing, float)
    shape = tuple(int(max(1, np.ceil(n * o / s - 1e-3))) for n, o, s in zip(grid.shape, old, new))
    affine = grid.affine.copy()
    affine[:3, :3] = grid.direction * new
    # Keep the outer corner of voxel 0 where it was: centre moves by (new - old) / 2 along each axis.
    affine[:3, 3] = grid.affine[:3, 3] + grid.direction @ ((new - old) / 2.0)
    return Grid(shape, affine)


def work_grid(grid: Grid, spacing: Sequence[float] | None = None) -> Grid:
    """The grid a network works on: ``grid`` in canonical (RAS) orientation, at ``spacing`` mm."""
    canon = canonical_grid(grid)
    if spacing is None or np.allclose(canon.spacing, spacing, rtol=0.02):
        return canon
    return grid_with_spacing(canon, spacing)


def onto(volume: Volume, grid: Grid, label: bool = False) -> Volume:
    """``volume`` on ``grid``: exact when they differ only by axis order and flips, else resampled."""
    if volume.grid.same_as(grid):
        return volume
    if canonical_grid(grid).same_as(canonical_grid(volume.grid)):
        return reorient_to(volume, grid)
    return resample_to(volume, grid, label=label)


def relabel_small_et(labels: np.ndarray, voxel_ml: float, small_et_ml: float) -> np.ndarray:
    """Enhancing tumour (4) whose total volume is below ``small_et_ml`` becomes necrosis (1)."""
    et = labels == 4
    if small_et_ml > 0 and 0 < et.sum() * voxel_ml < small_et_ml:
        labels = labels.copy()
        labels[et] = 1
    return labels


def _tumour_components(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 26-connected whole-tumour components (0 outside) and their sizes in voxels."""
    from scipy import ndimage

    comp, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    return comp, np.bincount(comp.ravel(), minlength=n + 1)[1:]


def remove_small_components(labels: np.ndarray, voxel_ml: float, min_ml: float) -> np.ndarray:
    """Whole-tumour components below ``min_ml`` are cleared, except the largest one."""
    if min_ml <= 0:
        return labels
    comp, sizes = _tumour_components(labels)
    if sizes.size <= 1:
        return labels
    sizes = sizes * voxel_ml
    drop = np.flatnonzero(sizes < min_ml) + 1
    drop = drop[drop != int(np.argmax(sizes)) + 1]
    if drop.size == 0:
        return labels
    out = labels.copy()
    out[np.isin(comp, drop)] = 0
    return out


def keep_main_tumour(labels: np.ndarray, voxel_ml: float,
                     focus_core_ml: float) -> tuple[np.ndarray, list[dict]]:
    """Only the largest whole-tumour component and the other foci with at least ``focus_core_ml``
    of tumour core (necrosis or enhancing): a component of oedema alone, away from the tumour, is
    cleared (0 keeps every component, inf the largest only). Returns the labels and the cleared
    components (``ml``, ``core_ml``, ``centre``: the voxel index of their centroid), largest
    first, so that the step can say what it removed.
    """
    if focus_core_ml <= 0:
        return labels, []
    comp, sizes = _tumour_components(labels)
    n = sizes.size
    if n <= 1:
        return labels, []
    core = _core_voxels(labels, comp, n)
    largest = int(np.argmax(sizes))
    drop = [i for i in range(n) if i != largest and core[i] * voxel_ml < focus_core_ml]
    if not drop:
        return labels, []
    out = labels.copy()
    out[np.isin(comp, [i + 1 for i in drop])] = 0
    return out, _described(comp, sizes, core, drop, voxel_ml)


def secondary_foci(labels: np.ndarray, voxel_ml: float) -> list[dict]:
    """The whole-tumour components other than the largest, described as ``keep_main_tumour``
    describes what it clears (largest first): after the main-tumour rule, the foci it kept for
    their core - a multifocal tumour's, or false positives that the reviewer must judge."""
    comp, sizes = _tumour_components(labels)
    if sizes.size <= 1:
        return []
    others = [i for i in range(sizes.size) if i != int(np.argmax(sizes))]
    return _described(comp, sizes, _core_voxels(labels, comp, sizes.size), others, voxel_ml)


def _core_voxels(labels: np.ndarray, comp: np.ndarray, n: int) -> np.ndarray:
    """Tumour-core voxels (necrosis or enhancing) per component."""
    return np.bincount(comp.ravel(), weights=np.isin(labels, (1, 4)).ravel(), minlength=n + 1)[1:]


def _described(comp, sizes, core, indices, voxel_ml) -> list[dict]:
    from scipy import ndimage

    centres = ndimage.center_of_mass(np.ones(comp.shape), comp, [i + 1 for i in indices])
    return sorted(({"ml": float(sizes[i] * voxel_ml), "core_ml": float(core[i] * voxel_ml),
                    "centre": [float(c) for c in centre]} for i, centre in zip(indices, centres)),
                  key=lambda r: -r["ml"])


def _prepare(images: Sequence[Volume | None], mask: Volume, kind: str, clip) -> np.ndarray:
    """Normalised channels; an absent sequence (None) is a channel of zeros, its normalised mean."""
    m = mask.array > 0
    if any(im is None for im in images):
        present = [im for im in images if im is not None]
        channels = iter(_prepare(present, mask, kind, clip))
        zeros = np.zeros(mask.shape, np.float32)
        return np.stack([zeros if im is None else next(channels) for im in images])
    if kind == "nonzero-zscore":  # MONAI's NormalizeIntensity(nonzero=True, channel_wise=True)
        out = []
        for im in images:
            a = np.asarray(im.array, np.float32) * m
            nz = a != 0
            v = a[nz]
            out.append(np.where(nz, (a - v.mean()) / (v.std() or 1.0), 0.0) if v.size else a)
        return np.stack(out).astype(np.float32)
    return np.stack([normalise(np.asarray(im.array) * m, m, clip) for im in images]).astype(np.float32)


class Segmentation(NamedTuple):
    labels: Volume  # BraTS labels (uint8, 0/1/2/4)
    uncertainty: Volume | None  # the passes' disagreement (float32, 0..1)
    cleared: list[dict]  # components cleared as not the main tumour (``keep_main_tumour``)
    probability: Volume  # whole-tumour probability, the passes' mean (float32, 0 outside the brain)


def segment(images: Mapping[str, Volume], brain_mask: Volume, package: ModelPackage,
            **kw) -> Volume:
    """BraTS labels (uint8, 0/1/2/4) on the grid of ``brain_mask`` from the package's inputs
    (options as for ``segment_with_uncertainty``; the disagreement map is not computed)."""
    return _segment(images, brain_mask, package, spread=False, **kw).labels


def segment_with_uncertainty(images: Mapping[str, Volume], brain_mask: Volume,
                             package: ModelPackage, **kw) -> Segmentation:
    """BraTS labels, the passes' disagreement (zero outside the brain and everywhere when there is
    a single pass), both on the grid of ``brain_mask``, the components cleared and the whole
    tumour's probability before any post-processing."""
    return _segment(images, brain_mask, package, spread=True, **kw)


class PreparedInput(NamedTuple):
    """A case made ready for a package's networks (steps 1-3 of the module docstring)."""
    x: np.ndarray  # normalised channels on the work grid (C x spatial, float32)
    box: tuple  # the brain's box on the work grid (with a 4-voxel margin): where networks run
    grid: Grid  # the work grid (canonical orientation, the package's voxel size)
    brain: np.ndarray  # the brain mask on the work grid (bool)
    ref: Volume  # the brain mask on the input grid: where results land

    def crop(self, x: np.ndarray | None = None) -> torch.Tensor:
        """``x`` (default the prepared channels, or a variant of them) cut to the brain's box."""
        x = self.x if x is None else x
        return torch.from_numpy(np.ascontiguousarray(x[(slice(None),) + self.box], np.float32))


def prepare_input(images: Mapping[str, Volume], brain_mask: Volume,
                  package: ModelPackage) -> PreparedInput:
    """The package's inputs checked, on its work grid, normalised inside the brain."""
    present = [s for s in package.inputs if s in images]
    if not package.accepts_subsets:
        package.require_inputs(images)
    elif not present:
        raise InputError(None, f"model {package.name} takes any of {package.inputs}; none was given")
    extra = [s for s in images if s not in package.inputs]
    if extra:
        raise InputError(None, f"sequence(s) {extra} given, but model {package.name} takes "
                         f"exactly {package.inputs}")
    m = package.manifest
    ref = brain_mask
    for name in present:
        if not images[name].grid.same_as(ref.grid):
            raise InputError(images[name].source or None,
                             f"{name} is not on the brain mask's grid ({images[name].grid.describe()}"
                             f" vs {ref.grid.describe()})")
    grid = work_grid(ref.grid, m.get("spacing_mm"))
    seqs = [onto(images[s], grid) if s in images else None for s in package.inputs]
    mask = onto(brain_mask, grid, label=True)
    if not (mask.array > 0).any():
        raise InputError(brain_mask.source or None, "the brain mask is empty")
    norm = m.get("normalisation", {})
    x = _prepare(seqs, mask, norm.get("kind", "brain-zscore"),
                 tuple(norm.get("clip_percentiles", (0.5, 99.5))))
    brain = mask.array > 0
    return PreparedInput(x, brain_box(brain, margin=4), grid, brain, ref)


def output_head(package: ModelPackage) -> tuple[str, dict]:
    """The package's output kind ("regions" or "labels") and its ``output`` entry."""
    out = package.manifest.get("output", {"type": "regions", "channels": ["WT", "TC", "ET"]})
    return out.get("type", "regions"), out


def to_input_grid(prepared: PreparedInput, maps: np.ndarray, head: str = "regions") -> np.ndarray:
    """Maps over the brain's box (K x box) back on the input grid (K x input), linearly: zero
    outside the box, except a label head's background channel (one there)."""
    full = np.zeros((maps.shape[0],) + prepared.grid.shape, np.float32)
    if head == "labels":
        full[0] = 1.0
    full[(slice(None),) + prepared.box] = maps
    return np.stack([onto(Volume(c, prepared.grid.affine), prepared.ref.grid).array for c in full])


def decide(prob: np.ndarray, ref: Volume, package: ModelPackage, *,
           small_et_ml: float | None = None, min_component_ml: float | None = None,
           focus_core_ml: float | None = None) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """Steps 6-9 of the module docstring on the input grid: probabilities (K x input grid) ->
    BraTS labels (uint8), the components cleared as not the main tumour, and the whole tumour's
    probability before any post-processing. Options left None take the package's values."""
    head, out = output_head(package)
    brain = ref.array > 0
    if head == "regions":
        ch = {name: prob[i] > 0.5 for i, name in enumerate(out["channels"])}
        labels = labels_from_regions(ch["WT"] & brain, ch["TC"] & brain, ch["ET"] & brain)
        whole = prob[out["channels"].index("WT")]
    elif head == "labels":
        label_map = {int(k): int(v) for k, v in out.get("label_map", {"0": 0, "1": 1, "2": 2, "3": 4}).items()}
        whole = 1.0 - sum(prob[k] for k, v in label_map.items() if v == 0)
        cls = prob.argmax(0)
        labels = np.zeros(cls.shape, np.uint8)
        for k, v in label_map.items():
            labels[cls == k] = v
        labels[~brain] = 0
    else:
        raise InputError(package.path, f"unknown output type {head!r} (regions or labels)")
    post = package.manifest.get("postprocess", {})
    voxel_ml = ref.voxel_volume_ml
    if min_component_ml is None:
        min_component_ml = float(post.get("min_component_ml", 0.0))
    labels = remove_small_components(labels, voxel_ml, min_component_ml)
    if focus_core_ml is None:
        focus_core_ml = float(post.get("focus_core_ml", 0.0))
    labels, cleared = keep_main_tumour(labels, voxel_ml, focus_core_ml)
    if small_et_ml is None:
        small_et_ml = float(post.get("small_et_ml", DEFAULT_SMALL_ET_ML))
    labels = relabel_small_et(labels, voxel_ml, small_et_ml)
    return labels.astype(np.uint8), cleared, np.clip(whole * brain, 0, 1).astype(np.float32)


def _segment(images: Mapping[str, Volume], brain_mask: Volume, package: ModelPackage, *,
             spread: bool, tta: bool = True, device: str = "cpu",
             small_et_ml: float | None = None, min_component_ml: float | None = None,
             focus_core_ml: float | None = None,
             overlap: float = DEFAULT_OVERLAP, flips: int = len(FLIPS),
             nets: Sequence[torch.nn.Module] | None = None,
             progress: Callable[[float, str], None] | None = None
             ) -> Segmentation:
    prepared = prepare_input(images, brain_mask, package)
    head, _ = output_head(package)
    nets = nets if nets is not None else package.networks(device)
    roi = package.manifest.get("patch_size", [96, 96, 96])
    predicted = predict_array(nets, prepared.crop(), roi=roi, head=head, tta=tta, overlap=overlap,
                              device=device, progress=progress, spread=spread, flips=flips)
    prob = predicted[0] if spread else predicted
    ref = prepared.ref
    # Back to the input grid: probabilities (linear), then decisions.
    labels, cleared, whole = decide(to_input_grid(prepared, prob, head), ref, package,
                                    small_et_ml=small_et_ml, min_component_ml=min_component_ml,
                                    focus_core_ml=focus_core_ml)
    uncertainty = None
    if spread:
        disagreement = to_input_grid(prepared, predicted[1][None])[0]
        inside = disagreement * (ref.array > 0)
        uncertainty = ref.with_array(np.clip(inside, 0, 1).astype(np.float32))
    return Segmentation(ref.with_array(labels), uncertainty, cleared, ref.with_array(whole))
