"""Where the falx and tentorium lie on a head with Neuromorphometrics labels, without manual sheets.

No public data set has manual falx or tentorium sheets. Their position is measured instead against
the interfaces they must fill, defined from a full Neuromorphometrics label map (the MICCAI 2012
multi-atlas labelling challenge's labels; the values below are that challenge's label table):

- **falx interface**: the voxels within ``near_mm`` (4 mm) of both the left and the right cerebral
  hemisphere (``LEFT_HEMISPHERE`` / ``RIGHT_HEMISPHERE``: the cortical labels 100-207 of that side,
  even = right, odd = left, and the side's cerebral white matter and exterior), **above the corpus
  callosum**. The corpus callosum is the largest connected piece of the contact between the left and
  right cerebral white matter (labels 44 and 45 meet only at the commissures); "above" means higher
  (superior, in world coordinates) than its upper surface in the same coronal slice. In front of its
  genu and behind its splenium the whole interhemispheric interface counts: the falx runs down to
  the crista galli in front and to the tentorium behind. (Carrying the genu's and splenium's height
  forward flat instead was tried: it counts the falx behind the splenium, which lies correctly
  between the cuneus and lingual gyri down to the tentorium, as misplaced.)
- **tentorium interface**: the voxels within ``near_mm`` of both the cerebellum (``CEREBELLUM``:
  hemispheres' cortex and white matter 38-41, vermis 71-73) and the occipital or temporal cortex
  (``OCCIPITAL_TEMPORAL``, both sides).

For a predicted sheet S (a barrier label of ``brainbarriers.labels.BARRIER_SEGMENTS``: 1 falx, 2
tentorium) and its interface I, two shares are reported (targets >= 0.90 each, issue 14):

- ``interface_covered``: the share of I within ``tolerance_mm`` (3 mm) of S (is the fissure filled?);
- ``sheet_on_interface``: the share of S within ``tolerance_mm`` of I or outside the brain (is the
  sheet where the anatomy puts it? Outside the brain - unlabelled voxels outside the filled label
  map, such as the fissure's CSF or the dura over the vertex - is allowed: the sheet may run on to
  its bony attachment).

Distances are Euclidean in millimetres on the label map's own voxel spacing; the prediction must be
on the label map's grid (or differ from it only by axis order and flips).

``sheets_from_labels`` draws reference sheets from the labels themselves (the voxels of each
interface about equidistant from its two sides): what a perfect barrier step would give, used to
check this measure and the CTV on real heads.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..geometry import reorient_to, to_canonical
from ..volume import Volume

# Neuromorphometrics label values (MICCAI 2012 label table).
CORTICAL = range(100, 208)  # 100-207: even right, odd left
RIGHT_HEMISPHERE = frozenset([42, 44, *(v for v in CORTICAL if v % 2 == 0)])  # + cerebral exterior, WM
LEFT_HEMISPHERE = frozenset([43, 45, *(v for v in CORTICAL if v % 2 == 1)])
RIGHT_WHITE_MATTER, LEFT_WHITE_MATTER = 44, 45
CEREBELLUM = frozenset([38, 39, 40, 41, 71, 72, 73])
# Occipital and temporal cortex, right and left: calcarine, cuneus, entorhinal, fusiform, inferior
# occipital, inferior temporal, lingual, middle occipital, middle temporal, occipital pole,
# occipital fusiform, parahippocampal, planum polare, planum temporale, superior occipital,
# superior temporal, temporal pole, transverse temporal.
OCCIPITAL_TEMPORAL = frozenset(v for pair in (108, 114, 116, 122, 128, 132, 134, 144, 154, 156, 160, 170,
                                              180, 184, 196, 200, 202, 206) for v in (pair, pair + 1))

# Deep structures no sheet may cut: brainstem, ventricles, basal ganglia, thalamus, ventral DC,
# hippocampus, amygdala, accumbens, basal forebrain, optic chiasm.
DEEP = frozenset([35, 4, 11, 15, 49, 50, 51, 52, 36, 37, 55, 56, 57, 58, 59, 60, 61, 62, 47, 48,
                  31, 32, 33, 34, 23, 30, 70, 75, 76, 69])
FLUID = frozenset([46, 63, 64])  # CSF, right and left vessel
SHEETS = {"falx": 1, "tentorium": 2}  # barrier label of each sheet
NEAR_MM = 4.0
TOLERANCE_MM = 3.0
TARGET = 0.90
SHEET_REACH_MM = 10.0


def _near(mask: np.ndarray, spacing: np.ndarray, mm: float) -> np.ndarray:
    if not mask.any():
        return np.zeros(mask.shape, bool)
    return ndi.distance_transform_edt(~mask, sampling=spacing) <= mm


def corpus_callosum(labels: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The corpus callosum of a label array: the largest connected piece of the contact (within
    1.5 mm, or one voxel on coarser grids) between the left and right cerebral white matter."""
    right, left = labels == RIGHT_WHITE_MATTER, labels == LEFT_WHITE_MATTER
    reach = max(1.5, 1.01 * float(np.max(spacing)))  # face neighbours on coarse grids too
    contact = (right & _near(left, spacing, reach)) | (left & _near(right, spacing, reach))
    lab, n = ndi.label(contact, ndi.generate_binary_structure(3, 3))
    if n == 0:
        raise ValueError("no corpus callosum: the left and right cerebral white matter (labels 44, 45) "
                         "never touch; is this a Neuromorphometrics label map?")
    sizes = ndi.sum(contact, lab, range(1, n + 1))
    return lab == 1 + int(np.argmax(sizes))


def _above_corpus_callosum(labels: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """False at and below the corpus callosum's upper surface in the coronal slices (axis 1 of a RAS
    array) it spans (gaps interpolated), True elsewhere: above it, in front of it and behind it."""
    cc = corpus_callosum(labels, spacing)
    ks = np.arange(labels.shape[2])
    top = np.where(cc.any(axis=(0, 2)), np.max(np.where(cc, ks[None, None, :], -1), axis=(0, 2)), -1)
    ys = np.flatnonzero(top >= 0)
    y = np.arange(labels.shape[1])
    heights = np.where((y >= ys.min()) & (y <= ys.max()), np.interp(y, ys, top[ys]), -1.0)
    return ks[None, None, :] > heights[None, :, None]


def _sides(lab: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cerebellum = np.isin(lab, list(CEREBELLUM))
    occ_temp = np.isin(lab, list(OCCIPITAL_TEMPORAL))
    if not cerebellum.any() or not occ_temp.any():
        raise ValueError("the label map has no cerebellum (38-41, 71-73) or no occipital/temporal cortex")
    return {"falx": (np.isin(lab, list(LEFT_HEMISPHERE)), np.isin(lab, list(RIGHT_HEMISPHERE))),
            "tentorium": (cerebellum, occ_temp)}


def _distances(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    return ndi.distance_transform_edt(~mask, sampling=spacing)


def interfaces(labels: Volume, near_mm: float = NEAR_MM) -> tuple[Volume, dict[str, np.ndarray]]:
    """(the labels in canonical RAS order, {"falx": mask, "tentorium": mask}) on that grid."""
    canon = to_canonical(labels)
    lab = np.round(np.asarray(canon.array)).astype(np.int64)
    sp = canon.spacing
    out = {name: _near(a, sp, near_mm) & _near(b, sp, near_mm) for name, (a, b) in _sides(lab).items()}
    out["falx"] &= _above_corpus_callosum(lab, sp)
    return canon.with_array(lab), out


def sheets_from_labels(labels: Volume, reach_mm: float = SHEET_REACH_MM) -> Volume:
    """Reference falx (1) and tentorium (2) on the label map's own grid.

    Each sheet is the set of voxels whose distances to the interface's two sides (left and right
    hemisphere; cerebellum and occipital/temporal cortex) differ by at most one voxel size, both
    within ``reach_mm`` (wider than ``NEAR_MM``: the fissure is wider than 8 mm in places). The
    tentorium keeps to unlabelled voxels, CSF or vessel labels (``FLUID``) and its two sides' edges
    (so it never cuts the brainstem or the cerebral white matter); the falx keeps out of the deep
    structures (``DEEP``: brainstem, ventricles, thalamus...) and the cerebellum, above the corpus
    callosum (as its interface) and nearer the cerebrum than the cerebellum (it ends on the
    tentorium). (An allow-list for the falx as for the tentorium left holes where the labels give
    fissure voxels to other structures, and a 15 mm CTV leaked through them.)
    A band two voxels wide: |da - db| changes by at most two voxel sizes per face step, so it leaves
    no face-connected hole from one side to the other where it is defined.
    """
    canon = to_canonical(labels)
    lab = np.round(np.asarray(canon.array)).astype(np.int64)
    sp = canon.spacing
    out = np.zeros(lab.shape, np.uint8)
    distances = {}
    sides = _sides(lab)
    for name in ("tentorium", "falx"):
        a, b = sides[name]
        da, db = _distances(a, sp), _distances(b, sp)
        distances[name] = (da, db)
        sheet = (da <= reach_mm) & (db <= reach_mm) & (np.abs(da - db) <= float(sp.max()))
        if name == "tentorium":  # only in the gap's CSF or vessels, or on either side's edge
            sheet &= (lab == 0) | np.isin(lab, list(FLUID)) | a | b
        else:
            sheet &= ~np.isin(lab, list(DEEP))
        if name == "falx":
            cerebellum = sides["tentorium"][0]
            sheet &= _above_corpus_callosum(lab, sp) & ~cerebellum
            sheet &= np.minimum(da, db) < distances["tentorium"][0]
        out[sheet & (out == 0)] = SHEETS[name]
    return reorient_to(canon.with_array(out), labels.grid)


def sheet_scores(sheet: np.ndarray, interface: np.ndarray, outside_brain: np.ndarray, spacing,
                 tolerance_mm: float = TOLERANCE_MM) -> dict[str, float]:
    """``interface_covered`` and ``sheet_on_interface`` (see the module docstring) and the sizes."""
    spacing = np.asarray(spacing, float)
    sheet, interface = np.asarray(sheet, bool), np.asarray(interface, bool)
    covered = float(_near(sheet, spacing, tolerance_mm)[interface].mean()) if interface.any() else float("nan")
    if sheet.any():
        ok = _near(interface, spacing, tolerance_mm) | outside_brain
        on = float(ok[sheet].mean())
    else:
        on = float("nan")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {"interface_covered": round(covered, 4), "sheet_on_interface": round(on, 4),
            "interface_ml": round(float(interface.sum()) * voxel_ml, 2),
            "sheet_ml": round(float(sheet.sum()) * voxel_ml, 2)}


def barrier_position(barriers: Volume, labels: Volume, *, near_mm: float = NEAR_MM,
                     tolerance_mm: float = TOLERANCE_MM) -> dict[str, dict[str, float]]:
    """Falx and tentorium position of a barrier label map against a Neuromorphometrics label map
    of the same head: ``{"falx": {"interface_covered", "sheet_on_interface", ...}, "tentorium": ...}``.
    """
    canon, faces = interfaces(labels, near_mm)
    pred = reorient_to(barriers, canon.grid)  # raises when the grids differ by more than axis order
    pred_labels = np.round(np.asarray(pred.array)).astype(np.int64)
    outside = ~ndi.binary_fill_holes(canon.array > 0)
    return {name: sheet_scores(pred_labels == value, faces[name], outside, canon.spacing, tolerance_mm)
            for name, value in SHEETS.items()}
