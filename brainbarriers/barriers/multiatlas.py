"""Cerebellum, ventricles (and falx and tentorium) by multi-atlas registration, label fusion and a
per-case CSF model.

Definitions (the one place they are written; the bench, the tests and the atlas builder import them)
------------------------------------------------------------------------------------------------
The structures follow the Neuromorphometrics protocol of the MICCAI 2012 multi-atlas labelling
challenge (the labels of the OASIS subjects the atlases are made from):

- **cerebellum** (barrier label 5) = cerebellar hemispheres with the vermis: Neuromorphometrics 38/39
  (right/left cerebellum exterior, i.e. cortex), 40/41 (right/left cerebellum white matter) and 71-73
  (cerebellar vermal lobules I-V, VI-VII, VIII-X). Brain stem (35) and the fourth ventricle are not
  part of it.
- **ventricles** (barrier label 6) = the ventricular system: 51/52 (right/left lateral ventricle),
  49/50 (right/left inferior lateral ventricle, the temporal horns), 4 (third ventricle) and 11
  (fourth ventricle). Not the cavum septi pellucidi ("5th ventricle", 15) nor extra-ventricular CSF
  (46).

The method
----------
Each atlas (a skull-stripped T1 at 2 mm with ``ATLAS_LABELS`` at 1 mm; ``data/anatomy/oasis``,
made by ``scripts/build_oasis_atlases.py``) is registered to the patient's skull-stripped image
(``register_to_atlas``): the centred rigid and affine steps of ``atlas.register`` (Mattes mutual
information, so T1, T1ce, T2 or FLAIR can be the fixed image; metric sampled at a fixed seed),
then symmetric-forces demons at 4 mm and 2 mm. Demons compare intensities, so the patient's image is
first shown in the atlas's contrast (``as_atlas_would_show``: three intensity classes matched to
the atlas's by what they overlie after the affine step, intensities mapped through the class
medians).
Each atlas's structures are carried onto the patient's grid as soft one-hot channels (linear
interpolation), and the atlases' probabilities are averaged (label fusion by mean vote).

- falx and tentorium: each atlas also carries the sheets drawn from its own labels
  (``position.sheets_from_labels``); fused probability > ``SHEET_VOTE``. The atlas stage joins them
  to the template's sheets (``atlas.atlas_barriers``);

- cerebellum: fused probability > 0.5, the largest connected piece, holes filled;
- ventricles: registration puts the ventricles in the right place but not at the right size (the
  atlas's ventricles are a given size; a patient's may be half or twice that). The image says which
  voxels are CSF: a per-case intensity model takes the CSF intensity from the core of the fused
  ventricles (probability >= 0.9) and the tissue intensity from the ring 2-6 mm around them, and
  keeps voxels closer to CSF than to tissue (past the mid-point, whatever the sequence's contrast)
  and past the brain's CSF / grey-matter boundary (three-class Otsu; the mid-point alone lets
  tissue in when the atlas's ventricles are too large, their core being then part tissue) within
  the fused probability's reach (> 0.1, grown by 2 mm so larger-than-atlas ventricles are not
  cut) and connected to a confident seed (probability > 0.5 and CSF-like). Where the model is not
  usable (contrast between CSF and tissue too low, e.g. a badly normalised image) the fused mask
  is kept and a warning given. The template stage (``atlas.atlas_barriers``) uses the same model
  on the template's registered ventricles. The multi-atlas stage then redraws the ventricles
  voxel by voxel with a classifier learnt from the OASIS heads' own labels (``ventricles``): the
  labels take in part of the partial-volume border and the choroid plexus, which no threshold
  does (leave-one-out Dice 0.860 -> 0.885, README).

Status: the atlas stage's default (``atlas.DEFAULT_ANATOMY``). Chosen on evidence: on the three
OASIS heads, each segmented leave-one-out with the other two atlases only
(``bench/barriers_accuracy.py --oasis``), it beat the template's cerebellum and ventricles on every
head (README, "Cerebellum and ventricles on real heads"); demons after the affine step matched
ANTs SyN's accuracy (antspyx, tried and not shipped: it pins SciPy below what Slicer 5.12 ships) in
a third of its time, where SimpleITK's finer B-splines took minutes per atlas.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ..io import load_volume, to_sitk
from ..metrics import dice
from ..volume import Volume

# ------------------------------------------------------------------------------- the definitions
#: Neuromorphometrics labels making each barrier structure (barrier label -> labels).
CEREBELLUM_LABELS: tuple[int, ...] = (38, 39, 40, 41, 71, 72, 73)
VENTRICLE_LABELS: tuple[int, ...] = (4, 11, 49, 50, 51, 52)
CEREBELLUM, VENTRICLES = 5, 6  # barrier labels (``brainbarriers.barriers.STRUCTURES``)
FALX, TENTORIUM = 1, 2
#: What an atlas carries, in the order of ``warp_structures``' channels. The falx and tentorium are
#: drawn from the atlas's own labels (``position.sheets_from_labels``: the interhemispheric fissure
#: above the corpus callosum; the gap between cerebellum and occipital / temporal cortex).
ATLAS_LABELS: tuple[int, ...] = (CEREBELLUM, VENTRICLES, FALX, TENTORIUM)
_CHANNEL = {label: n for n, label in enumerate(ATLAS_LABELS)}  # label -> channel of the warped stack
NEUROMORPHOMETRICS: dict[int, tuple[int, ...]] = {CEREBELLUM: CEREBELLUM_LABELS, VENTRICLES: VENTRICLE_LABELS}
CONVENTION = ("Neuromorphometrics (MICCAI 2012 multi-atlas labelling challenge): cerebellum = 38-41 + "
              "vermis 71-73; ventricles = lateral 51/52 + inferior horns 49/50 + third 4 + fourth 11")

ATLAS_FOLDER = "oasis"


class BarrierWarning(UserWarning):
    """Something the user should read about a barrier result (the step forwards it to the manifest)."""

ATLAS_SUBJECTS = ("1000", "1001", "1002")


def structures_from_neuromorphometrics(labels: np.ndarray) -> np.ndarray:
    """Barrier labels (5 cerebellum, 6 ventricles, 0 elsewhere) of a Neuromorphometrics label map."""
    out = np.zeros(labels.shape, np.uint8)
    for barrier, members in NEUROMORPHOMETRICS.items():
        out[np.isin(labels, members)] = barrier
    return out


# ---------------------------------------------------------------------------------- the atlases
@dataclass(frozen=True)
class Atlas:
    name: str
    t1: Volume  # skull-stripped T1 (0 outside the brain), about 2 mm
    labels: Volume  # barrier labels 5/6, 1 mm, cropped around the structures


def atlas_folder() -> Path:
    from ..phantom import anatomy_folder

    return anatomy_folder() / ATLAS_FOLDER


@lru_cache(maxsize=1)
def load_atlases() -> tuple[Atlas, ...]:
    """The shipped atlases (OASIS subjects; CC BY-NC, see ``data/anatomy/oasis/README.md``)."""
    folder = atlas_folder()
    atlases = []
    for name in ATLAS_SUBJECTS:
        t1, labels = folder / f"oasis-{name}_t1.nii.gz", folder / f"oasis-{name}_barriers.nii.gz"
        for path in (t1, labels):
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: run scripts/build_oasis_atlases.py")
        atlases.append(Atlas(name, load_volume(t1), load_volume(labels)))
    return tuple(atlases)


def make_atlas(name: str, t1: Volume, neuromorphometrics: Volume, *, t1_spacing_mm: float = 2.0,
               margin_mm: float = 8.0) -> Atlas:
    """An atlas from a skull-stripped T1 and its Neuromorphometrics labels (same grid).

    The T1 is smoothed and shrunk to about ``t1_spacing_mm`` and scaled to 0-255 (99.5th centile of
    the brain); the two structures are kept at the labels' own resolution, cropped to their box
    grown by ``margin_mm``."""
    if not t1.grid.same_as(neuromorphometrics.grid, atol=1e-3):
        raise ValueError(f"atlas {name}: the T1 and the labels are on different grids")
    brain = t1.array > 0
    if not brain.any():
        raise ValueError(f"atlas {name}: the T1 is empty (expected a skull-stripped T1)")
    image = t1.array.astype(np.float32)
    image = np.clip(image / np.percentile(image[brain], 99.5) * 255.0, 0, 255)
    from ..registration import shrunk  # the registration's own downsampling

    small = shrunk(to_sitk(t1.with_array(image.astype(np.float32))), t1_spacing_mm)
    from ..io import _from_sitk

    t1_small = _from_sitk(small, Path(f"atlas {name}"))
    t1_small = t1_small.with_array(np.round(np.clip(t1_small.array, 0, 255)).astype(np.uint8))
    from .position import sheets_from_labels

    labels = structures_from_neuromorphometrics(neuromorphometrics.array)
    sheets = sheets_from_labels(neuromorphometrics).array
    for sheet in (FALX, TENTORIUM):
        labels[(sheets == sheet) & (labels == 0)] = sheet
    idx = np.argwhere(labels > 0)
    if not len(idx):
        raise ValueError(f"atlas {name}: no cerebellum or ventricle labels")
    margin = np.ceil(margin_mm / neuromorphometrics.spacing).astype(int)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, labels.shape)
    crop = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    affine = neuromorphometrics.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return Atlas(name, t1_small, Volume(crop, affine))


# ---------------------------------------------------------------------------------- registration
#: Demons on top of the affine: iterations per level and the smoothing of the displacement field
#: (Gaussian, in voxels of each level: 4 mm, then 2 mm). 50 iterations converge (100 and 200 gave
#: the same Dice on two OASIS pairs); 0.75 voxel kept the ventricles' shape better than 1.0.
DEMONS_ITERATIONS = 50
DEMONS_SMOOTHING_VOXELS = 0.75


def as_atlas_would_show(fixed: sitk.Image, atlas_on_fixed: sitk.Image) -> sitk.Image:
    """``fixed`` in the (affinely aligned) atlas's T1 contrast, so that demons, an
    intensity-difference method, can register any sequence to a T1 atlas.

    Both brains are split into three intensity classes (three-class Otsu: CSF, grey and white
    matter in some order). The fixed image's classes are matched to the atlas's by the atlas
    intensity they overlie after the affine step - only their order is used, which survives the
    affine step's misalignment - and each fixed intensity is mapped piecewise linearly through
    (fixed class median -> matched atlas class median), flat beyond the outer medians. So T2's
    bright CSF becomes the atlas's dark CSF, and FLAIR's grey / white matter order is swapped.
    (A lookup read off the joint histogram voxel by voxel failed on T2: after the affine step the
    bright CSF mostly lies on the atlas's grey matter, and the ventricles came out half as large
    as on the same head's T1.) Voxels outside the fixed brain stay 0."""
    from skimage.filters import threshold_multiotsu

    f = sitk.GetArrayFromImage(fixed)
    m = sitk.GetArrayFromImage(atlas_on_fixed)
    inside, both = f > 0, (f > 0) & (m > 0)
    if both.sum() < 1000:
        raise ValueError("multi-atlas: the atlas and the image barely overlap after the affine step")

    def classes(values):
        return np.digitize(values, threshold_multiotsu(values, classes=3))

    fixed_values, under = f[inside], m[inside]  # the fixed brain, and the atlas under it
    fixed_class = classes(fixed_values)
    fixed_medians = np.array([np.median(fixed_values[fixed_class == c]) for c in range(3)])
    atlas_values = m[m > 0]
    atlas_class = classes(atlas_values)
    atlas_medians = np.sort([np.median(atlas_values[atlas_class == c]) for c in range(3)])
    overlain = np.array([np.median(under[(fixed_class == c) & (under > 0)]) for c in range(3)])
    target = atlas_medians[np.argsort(np.argsort(overlain))]  # rank of what each class overlies
    out = np.zeros(f.shape, np.float32)
    out[inside] = np.interp(fixed_values, fixed_medians, target)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(fixed)
    return result


def register_to_atlas(fixed: sitk.Image, moving: sitk.Image, *, iterations: int = DEMONS_ITERATIONS,
                      smoothing: float = DEMONS_SMOOTHING_VOXELS) -> sitk.Transform:
    """Fixed -> atlas points: the centred rigid and affine steps of ``atlas.register`` (Mattes mutual
    information, seeded sampling), then symmetric-forces demons on the affinely aligned atlas
    against ``as_atlas_would_show(fixed)``, at 4 mm then 2 mm. ``fixed`` is a skull-stripped float
    image at about 2 mm. The same inputs give the same transform (``atlas.register`` runs on one
    thread; demons are deterministic on any number)."""
    from .atlas import register

    affine = register(fixed, moving, deformable=False)
    atlas_on_fixed = sitk.Resample(moving, fixed, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    target = as_atlas_would_show(fixed, atlas_on_fixed)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(iterations)
    demons.SetStandardDeviations(smoothing)
    field = None
    for shrink in (2, 1):
        level = sitk.Shrink(target, [shrink] * 3) if shrink > 1 else target
        atlas_level = sitk.Resample(atlas_on_fixed, level, sitk.Transform(), sitk.sitkLinear, 0.0)
        if field is None:
            start = sitk.Image(level.GetSize(), sitk.sitkVectorFloat64, 3)
            start.CopyInformation(level)
        else:
            start = sitk.Resample(field, level, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        field = demons.Execute(level, atlas_level, start)
    # Points go through the last transform first: the demons field, then the affine.
    return sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(
        sitk.Cast(field, sitk.sitkVectorFloat64))])


def _brain_box(brain: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, brain.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _sub_volume(volume: Volume, box: tuple[slice, ...], array: np.ndarray | None = None) -> Volume:
    affine = volume.affine.copy()
    start = np.array([s.start for s in box], float)
    affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return Volume(volume.array[box] if array is None else array, affine)


def warp_structures(atlas: Atlas, reference: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """Probabilities of the atlas's ``ATLAS_LABELS`` on ``reference``'s grid ([i, j, k]), one channel
    each, in that order.

    The transform is first sampled as a displacement field (``atlas.dense_transform``)."""
    from .atlas import dense_transform

    dense = dense_transform(transform, reference)
    out = []
    for value in ATLAS_LABELS:
        onehot = to_sitk(atlas.labels.with_array((atlas.labels.array == value).astype(np.float32)))
        warped = sitk.Resample(onehot, reference, dense, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out.append(sitk.GetArrayFromImage(warped).transpose(2, 1, 0))
    return np.stack(out)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == 1 + int(np.argmax(sizes))


def ventricle_core(brain: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The registered ventricles' confident core: fused probability >= 0.9 (> 0.5 when that holds
    fewer than 50 voxels)."""
    core = (prob >= 0.9) & brain
    return core if core.sum() >= 50 else (prob > 0.5) & brain


def csf_and_tissue(values: np.ndarray, brain: np.ndarray, prob: np.ndarray, core: np.ndarray,
                   spacing) -> tuple[float, float]:
    """The case's own CSF and tissue intensities around the ventricles: the medians of ``core`` and
    of the ring 2-6 mm outside the fused ventricles (probability < 0.05; the whole brain if the
    ring is empty)."""
    around = ndi.distance_transform_edt(~(prob > 0.5), sampling=spacing)
    ring = brain & (around >= 2.0) & (around <= 6.0) & (prob < 0.05)
    tissue = values[ring] if ring.any() else values[brain]
    return float(np.median(values[core])), float(np.median(tissue))


def csf_refine(image: np.ndarray, brain: np.ndarray, prob: np.ndarray, spacing: np.ndarray, *,
               reach: float = 0.1, grow_mm: float = 2.0) -> tuple[np.ndarray, str | None]:
    """Ventricles: the fused probability ``prob`` restricted to CSF-like voxels (module docstring).

    Returns (mask, warning or None)."""
    fused = prob > 0.5
    core = ventricle_core(brain, prob)
    if core.sum() < 20:
        return fused, "ventricles: too few confident atlas voxels for the CSF model; the atlas mask is kept"
    values = image.astype(np.float32)
    csf, tissue = csf_and_tissue(values, brain, prob, core, spacing)
    spread = float(np.std(values[brain])) + 1e-6
    if abs(csf - tissue) < 0.5 * spread:
        return fused, ("ventricles: the image barely separates CSF from tissue around the ventricles; "
                       "the atlas mask is kept unrefined")
    # CSF: past the mid-point between the two, and past the brain's own CSF / grey-matter boundary
    # (three-class Otsu: the lower threshold where CSF is dark, the upper where it is bright). The
    # mid-point alone lets tissue in when the atlas's ventricles are too large (their core is then
    # part tissue); the Otsu boundary alone cannot be trusted on an image without three classes.
    from skimage.filters import threshold_multiotsu

    midpoint = 0.5 * (csf + tissue)
    lower, upper = threshold_multiotsu(values[brain], classes=3)
    if csf < tissue:
        csf_like = values < min(midpoint, lower)
    else:
        csf_like = values > max(midpoint, upper)
    allowed = (prob > reach) | (ndi.distance_transform_edt(prob <= 0.5, sampling=spacing) <= grow_mm)
    candidate = allowed & brain & csf_like
    if not candidate.any():
        return fused, "ventricles: no CSF-like voxel where the atlases put the ventricles; the atlas mask is kept"
    return pieces_meeting(candidate, candidate & fused), None


def pieces_meeting(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The connected pieces of ``mask`` that contain a voxel of ``seeds``."""
    lab, n = ndi.label(mask)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[seeds & mask])] = True
    keep[0] = False
    return keep[lab]


#: Below this Dice with the expected cerebellum, an atlas's registration is taken as failed (a
#: cerebellum put elsewhere overlaps it hardly at all). Measured on Brats18_TCIA10_639_1: 0.91-0.93
#: on its T1, 0.78-0.82 on its T2, whose ventricles the atlases nonetheless missed - a guard
#: against gross failure only.
MIN_AGREEMENT = 0.5
#: Fused probability above which a voxel is on a sheet. Chosen on the three OASIS heads (leave-one-
#: out): 0.2 covered 0.93-0.97 of the interfaces, 0.35 0.90-0.96, both with >= 0.99 of the sheet on
#: its interface.
SHEET_VOTE = 0.2


def fuse(probs: list[np.ndarray]) -> np.ndarray:
    return np.mean(probs, axis=0).astype(np.float32)


def multiatlas_structures(image: Volume, brain_mask: Volume, *, atlases: tuple[Atlas, ...] | None = None,
                          refine_ventricles: bool = True, expected_cerebellum: np.ndarray | None = None,
                          ventricle_classifier="shipped",
                          ) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """Cerebellum (5), ventricles (6), falx (1) and tentorium (2) on ``image``'s grid: (labels, fused
    probabilities (one channel per ``ATLAS_LABELS``), warnings). ``image`` is any MR sequence;
    ``brain_mask`` is on its grid.

    ``expected_cerebellum`` (a mask on ``image``'s grid, e.g. the template's registered cerebellum)
    guards against a failed registration: an atlas whose cerebellum overlaps it with Dice below
    ``MIN_AGREEMENT`` is left out of the fusion, with a warning; when every atlas is left out,
    (None, None, warnings) is returned and the caller keeps what it had.

    ``refine_ventricles``: the ventricles are drawn by ``ventricle_classifier`` (a
    ``ventricles.Classifier``; "shipped": the one learnt from the OASIS heads; None: the CSF model
    alone) on top of the CSF model, on grids of about 1 mm (``ventricles.suits``; elsewhere by
    the CSF model alone); else they are the fused probability above 0.5."""
    from ..registration import shrunk
    from .atlas import _skull_stripped

    if not image.grid.same_as(brain_mask.grid, atol=1e-3):
        raise ValueError("multi-atlas: the brain mask is not on the image's grid")
    brain = brain_mask.array > 0
    if not brain.any():
        raise ValueError("multi-atlas: empty brain mask")
    atlases = load_atlases() if atlases is None else atlases
    if not atlases:
        raise ValueError("multi-atlas: no atlas given")
    box = _brain_box(brain, 3)
    sub_image, sub_brain = _sub_volume(image, box), brain[box]
    fixed = _skull_stripped(sub_image, sub_brain)
    fixed_small = shrunk(fixed, 2.0)
    reference = to_sitk(_sub_volume(image, box, np.zeros(sub_brain.shape, np.float32)))
    expected = None if expected_cerebellum is None else np.asarray(expected_cerebellum, bool)[box]
    probs, warnings = [], []
    for atlas in atlases:
        moving = sitk.Cast(to_sitk(atlas.t1), sitk.sitkFloat32)
        prob = warp_structures(atlas, reference, register_to_atlas(fixed_small, moving))
        if expected is not None and expected.any():
            agreement = dice(prob[_CHANNEL[CEREBELLUM]] > 0.5, expected)
            if agreement < MIN_AGREEMENT:
                warnings.append(f"atlas {atlas.name} left out: its registered cerebellum overlaps the "
                                f"template's with Dice {agreement:.2f} (registration failed)")
                continue
        probs.append(prob)
    if not probs:
        return None, None, warnings
    fused = fuse(probs)
    cerebellum = fused[_CHANNEL[CEREBELLUM]] > 0.5
    cerebellum = ndi.binary_fill_holes(_largest(cerebellum & sub_brain)) if cerebellum.any() else cerebellum
    if refine_ventricles:
        prob = fused[_CHANNEL[VENTRICLES]]
        ventricles, warning = csf_refine(sub_image.array, sub_brain, prob, image.spacing)
        if warning:
            warnings.append(warning)
        else:
            from . import ventricles as learnt

            classifier = learnt.shipped() if ventricle_classifier == "shipped" else ventricle_classifier
            if classifier is not None and learnt.suits(image.spacing):
                drawn = learnt.classify(sub_image.array, sub_brain, prob, ventricles & sub_brain,
                                        image.spacing, classifier)
                if drawn.any() or not (ventricles & sub_brain).any():
                    ventricles = drawn
                else:
                    warnings.append("ventricles: the classifier kept no voxel of the CSF model's "
                                    "ventricles; the CSF model's mask is kept")
    else:
        ventricles = fused[_CHANNEL[VENTRICLES]] > 0.5
    ventricles &= sub_brain
    cerebellum &= ~ventricles  # CSF is not cerebellum: the fourth ventricle lies in its outline
    # The sheets: a low vote, since two-voxel sheets a millimetre or two apart average below 0.5;
    # the tentorium may take the cerebellum's top, the falx keeps out of both structures.
    tentorium = (fused[_CHANNEL[TENTORIUM]] > SHEET_VOTE) & ~ventricles
    falx = (fused[_CHANNEL[FALX]] > SHEET_VOTE) & ~ventricles & ~cerebellum & ~tentorium
    sub = np.where(cerebellum, CEREBELLUM, 0)
    sub = np.where(tentorium, TENTORIUM, np.where(falx, FALX, sub))
    labels = np.zeros(image.shape, np.uint8)
    labels[box] = np.where(ventricles, VENTRICLES, sub)
    full = np.zeros((len(ATLAS_LABELS), *image.shape), np.float32)
    full[(slice(None), *box)] = fused
    return labels, full, warnings
