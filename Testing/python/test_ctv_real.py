"""The CTV stops where it should on a real head (issue 14.3).

OASIS subject 1000 (MICCAI 2012 multi-atlas labelling: skull-stripped T1 with manual
Neuromorphometrics labels), brought to 2 mm to keep the test fast. The barriers are **built from the
manual labels** (``barriers.position.sheets_from_labels``: the falx from the interface of the two
cerebral hemispheres above the corpus callosum, the tentorium from the interface of the cerebellum
and the occipital/temporal cortex), not predicted: the atlas stage's sheets cover only 0.84-0.87 of
these interfaces on the OASIS heads (``brainbarriers evaluate --barriers``), and this test is about
the CTV, which is only as good as its barriers. The brain mask is the skull-stripped scan's (the
fissure's CSF is inside it, as with a real skull-stripping).

A 15 mm CTV grown from a GTV at the medial surface of the left hemisphere puts no voxel into the
right hemisphere's cortex, and reaches the right hemisphere only through the corpus callosum; one
from a GTV in the temporal-occipital cortex just above the tentorium puts none into the cerebellum.
The Euclidean margin (the GTV dilated by 15 mm within the brain mask) leaks into both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from brainbarriers.barriers.position import (
    CEREBELLUM,
    LEFT_HEMISPHERE,
    OCCIPITAL_TEMPORAL,
    RIGHT_HEMISPHERE,
    corpus_callosum,
    sheets_from_labels,
)
from brainbarriers.ctv import grow_ctv
from brainbarriers.volume import Volume

OASIS = Path(__file__).resolve().parents[3] / "shared" / "data" / "oasis-miccai2012" / "1000"
MARGIN = 15.0

pytestmark = pytest.mark.skipif(not OASIS.is_dir(), reason="shared/data/oasis-miccai2012 not found")


@pytest.fixture(scope="module")
def head() -> dict:
    from brainbarriers.barriers.infer import grid_at_spacing
    from brainbarriers.geometry import resample_to
    from brainbarriers.io import load_volume

    labels = load_volume(OASIS / "1000_glm.nii.gz")  # 1 mm, LAS
    t1 = load_volume(OASIS / "1000_SS.nii.gz")
    grid = grid_at_spacing(labels.grid, 2.0)
    lab = resample_to(labels, grid, label=True)
    brain = resample_to(t1.with_array((t1.array > 0).astype(np.uint8)), grid, label=True)
    return {**labelled_head(lab, brain), "barriers": sheets_from_labels(lab)}


def labelled_head(labels: Volume, brain: Volume) -> dict:
    """The label map, the brain mask and the regions the checks need (also bench/ctv_real_heads.py)."""
    L = np.round(labels.array).astype(int)
    return {"labels": labels, "L": L, "brain": brain,
            "left": np.isin(L, list(LEFT_HEMISPHERE)), "right": np.isin(L, list(RIGHT_HEMISPHERE)),
            "right_cortex": np.isin(L, [v for v in RIGHT_HEMISPHERE if v >= 100]),
            "cerebellum": np.isin(L, list(CEREBELLUM)), "cc": corpus_callosum(L, labels.spacing)}


def _world(volume: Volume, mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask) @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def _ball(volume: Volume, centre: np.ndarray, radius_mm: float) -> np.ndarray:
    offsets = (np.indices(volume.shape) - centre.reshape(3, 1, 1, 1)) * volume.spacing.reshape(3, 1, 1, 1)
    return np.linalg.norm(offsets, axis=0) <= radius_mm


def _margins(h: dict, gtv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(CTV with the barriers, Euclidean margin within the brain mask)."""
    lab = h["labels"]
    tumor = lab.with_array(np.where(gtv, 4, 0).astype(np.uint8))
    ctv = grow_ctv(tumor, h["brain"], h["barriers"], margin_mm=MARGIN).array > 0
    euclid = (ndi.distance_transform_edt(~gtv, sampling=lab.spacing) <= MARGIN) & (h["brain"].array > 0)
    return ctv, euclid


def _medial_left_gtv(h: dict, height_mm: tuple[float, float]) -> np.ndarray:
    """A 6 mm GTV in the left hemisphere at its medial surface (within 3 mm of the right one),
    over the middle of the corpus callosum, ``height_mm`` above its top."""
    lab = h["labels"]
    assert np.allclose(np.abs(lab.grid.direction), np.eye(3), atol=1e-3)  # axes along R, A, S (LAS here)
    medial = h["left"] & (ndi.distance_transform_edt(~h["right"], sampling=lab.spacing) <= 3.0)
    cc = _world(lab, h["cc"])
    w = _world(lab, medial)
    above = w[:, 2] - cc[:, 2].max()
    pick = (above > height_mm[0]) & (above < height_mm[1]) & (np.abs(w[:, 1] - np.median(cc[:, 1])) < 10)
    candidates = np.argwhere(medial)[pick]
    assert len(candidates) > 5
    return _ball(lab, candidates[len(candidates) // 2], 6.0) & h["left"]


def test_falx_keeps_the_ctv_out_of_the_other_hemisphere(head):
    gtv = _medial_left_gtv(head, (15.0, 25.0))
    ctv, euclid = _margins(head, gtv)
    assert gtv.sum() > 20 and (ctv & ~gtv).sum() > 20 * gtv.sum()  # it did grow
    assert (ctv & head["right_cortex"]).sum() == 0
    assert (ctv & head["right"]).sum() == 0  # the callosum is farther than 15 mm from this GTV
    # The Euclidean margin crosses the falx into the right hemisphere's medial cortex (> 4 ml).
    ml = float(np.prod(head["labels"].spacing)) / 1000
    assert (euclid & head["right_cortex"]).sum() * ml > 4.0


def test_ctv_crosses_only_through_the_corpus_callosum(head):
    """A GTV just above the callosum: what the CTV puts in the right hemisphere is connected to the
    callosum within the CTV (no piece reached across the falx)."""
    gtv = _medial_left_gtv(head, (2.0, 8.0))
    ctv, euclid = _margins(head, gtv)
    right = ctv & (head["right"] | head["cc"])
    pieces, n = ndi.label(right)
    touching = set(np.unique(pieces[head["cc"] & right])) - {0}
    assert set(range(1, n + 1)) <= touching, "a piece of the CTV in the right hemisphere avoids the callosum"
    assert (euclid & head["right_cortex"]).sum() > 10 * max(1, (ctv & head["right_cortex"]).sum())


def _tentorial_gtv(h: dict) -> np.ndarray:
    """A 6 mm GTV in the left temporal-occipital cortex right on the tentorium (within 4 mm of the
    cerebellum), far (> 25 mm) from the notch; cerebral voxels only, not across the tentorium."""
    lab = h["labels"]
    occ_temp = np.isin(h["L"], list(OCCIPITAL_TEMPORAL)) & h["left"]
    w = _world(lab, occ_temp)
    lateral = np.abs(w[:, 0] - np.median(_world(lab, h["cerebellum"])[:, 0])) > 25
    d_cb = ndi.distance_transform_edt(~h["cerebellum"], sampling=lab.spacing)
    candidates = np.argwhere(occ_temp)[lateral]
    centre = candidates[np.argmin(d_cb[tuple(candidates.T)])]
    assert d_cb[tuple(centre)] <= 4.0
    return _ball(lab, centre, 6.0) & h["left"]


def test_tentorium_keeps_a_supratentorial_ctv_out_of_the_cerebellum(head):
    lab = head["labels"]
    gtv = _tentorial_gtv(head)
    ctv, euclid = _margins(head, gtv)
    assert (ctv & ~gtv).sum() > 20 * gtv.sum()
    assert (ctv & head["cerebellum"]).sum() == 0
    ml = float(np.prod(lab.spacing)) / 1000
    assert (euclid & head["cerebellum"]).sum() * ml > 4.0
