"""Falx and tentorium position against Neuromorphometrics labels (``barriers.position``, issue 14.2).

A small synthetic label map checks the definitions by hand; a real OASIS head (MICCAI 2012 labels,
brought to 2 mm to keep the test fast) checks that sheets drawn from the labels score near 1, that a
falx moved sideways by 6 mm or one cut through the corpus callosum is caught, and the
``evaluate --barriers`` command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brainbarriers.barriers.position import (
    LEFT_HEMISPHERE,
    RIGHT_HEMISPHERE,
    barrier_position,
    corpus_callosum,
    sheet_scores,
    sheets_from_labels,
)
from brainbarriers.volume import Volume

OASIS = Path(__file__).resolve().parents[3] / "shared" / "data" / "oasis-miccai2012"


# ------------------------------------------------------------------------------- synthetic
def _toy_head() -> Volume:
    """40^3 at 1 mm, RAS. Left hemisphere (x < 19) and right (x > 20) with a 2 mm fissure at
    x = 19, 20 for z >= 20; below, the two white matters meet at the midline for 10 <= y < 30,
    16 <= z < 20 (the corpus callosum) and stay apart elsewhere; cerebellum (38) under a 2 mm gap
    below the left and right inferior temporal cortex (132, 133) at y < 10; a "thalamus" (60, not
    a hemisphere label) under the callosum."""
    lab = np.zeros((40, 40, 40), np.int16)
    lab[:19, :, 16:] = 191  # left superior frontal gyrus (odd: left)
    lab[21:, :, 16:] = 190  # right
    lab[:19, 10:30, 16:20] = 45  # left white matter
    lab[21:, 10:30, 16:20] = 44
    lab[19, 10:30, 16:20] = 45  # the corpus callosum crosses the fissure
    lab[20, 10:30, 16:20] = 44
    lab[:19, :10, 16:20] = 133  # left inferior temporal gyrus over the cerebellum
    lab[21:, :10, 16:20] = 132
    lab[2:38, :10, 4:14] = 38  # cerebellum, under a 2 mm gap (z = 14, 15)
    lab[5:35, 10:30, 8:16] = 60
    return Volume(lab, np.eye(4))


def test_definitions_by_hand():
    head = _toy_head()
    cc = corpus_callosum(head.array, np.ones(3))
    assert cc.any() and set(np.unique(head.array[cc])) <= {44, 45}
    assert np.argwhere(cc)[:, 2].max() == 19 and np.argwhere(cc)[:, 1].min() == 10
    assert {191, 45, 43} <= LEFT_HEMISPHERE and {190, 44, 42} <= RIGHT_HEMISPHERE
    assert not LEFT_HEMISPHERE & RIGHT_HEMISPHERE

    perfect = np.zeros(head.shape, np.uint8)
    perfect[19:21, :, 20:] = 1  # in the fissure, above the callosum
    perfect[19:21, :10, 16:20] = perfect[19:21, 30:, 16:20] = 1  # and down in front of and behind it
    perfect[:, :10, 14:16] = 2  # in the gap over the cerebellum
    good = barrier_position(head.with_array(perfect), head)
    assert good["falx"]["interface_covered"] >= 0.99 and good["falx"]["sheet_on_interface"] == 1.0
    assert good["tentorium"]["interface_covered"] >= 0.99 and good["tentorium"]["sheet_on_interface"] == 1.0

    # Moved 8 mm into the right hemisphere: the fissure is left uncovered and the sheet is in the
    # labelled cortex, more than 3 mm from the interface (whose edge is 4 mm from the midline).
    moved = np.zeros(head.shape, np.uint8)
    moved[27:29, :, 20:] = 1
    bad = barrier_position(head.with_array(moved), head)["falx"]
    assert bad["interface_covered"] < 0.5 and bad["sheet_on_interface"] == 0.0

    # Through the corpus callosum into the thalamus: the part more than 3 mm below the callosum's
    # top (z = 19; interface from z = 20) is not on the interface: z = 8..16, 9 of 32 slices.
    deep = np.zeros(head.shape, np.uint8)
    deep[19:21, 14:26, 8:] = 1  # away from the open ends (y < 10, y >= 30)
    s = barrier_position(head.with_array(deep), head)["falx"]
    assert s["sheet_on_interface"] == pytest.approx(1 - 9 / 32, abs=1e-3)

    # Outside the brain counts as placed: a sheet entirely in unlabelled space scores 1.
    outside = np.zeros(head.shape, bool)
    outside[:, 35:, 0:3] = True
    assert sheet_scores(outside, outside, outside, np.ones(3))["sheet_on_interface"] == 1.0


def test_reference_sheets_on_the_toy_head():
    head = _toy_head()
    ref = sheets_from_labels(head)
    assert ref.grid.same_as(head.grid)
    scores = barrier_position(ref, head)
    for name in ("falx", "tentorium"):
        assert scores[name]["interface_covered"] >= 0.95, (name, scores)
        assert scores[name]["sheet_on_interface"] >= 0.95, (name, scores)
    # The falx stays above the callosum and out of the cerebellum.
    assert not ((ref.array == 1) & (head.array == 38)).any()
    assert not (ref.array[:, 10:30, :20] == 1).any()


# ------------------------------------------------------------------------------- real head
needs_oasis = pytest.mark.skipif(not (OASIS / "1000").is_dir(), reason="shared/data/oasis-miccai2012 not found")


@pytest.fixture(scope="module")
def oasis_2mm() -> Volume:
    from brainbarriers.barriers.infer import grid_at_spacing
    from brainbarriers.geometry import resample_to
    from brainbarriers.io import load_volume

    labels = load_volume(OASIS / "1000" / "1000_glm.nii.gz")  # LAS, 1 mm
    return resample_to(labels, grid_at_spacing(labels.grid, 2.0), label=True)


@needs_oasis
def test_reference_sheets_on_a_real_head_and_the_errors_caught(oasis_2mm, tmp_path):
    from brainbarriers.cli.main import main
    from brainbarriers.io import save_volume

    labels = oasis_2mm
    ref = sheets_from_labels(labels)
    scores = barrier_position(ref, labels)
    for name in ("falx", "tentorium"):
        assert scores[name]["interface_covered"] >= 0.95, (name, scores)
        assert scores[name]["sheet_on_interface"] >= 0.95, (name, scores)
        assert scores[name]["interface_ml"] > 20

    # The same falx 6 mm to the side (3 voxels along the file's first axis, which is left-right).
    assert abs(labels.affine[0, 0]) > 1.9
    falx = ref.array == 1
    moved = np.where(ref.array == 2, 2, np.where(np.roll(falx, 3, axis=0), 1, 0)).astype(np.uint8)
    shifted = barrier_position(ref.with_array(moved), labels)
    assert shifted["falx"]["interface_covered"] < 0.6, shifted
    assert shifted["falx"]["sheet_on_interface"] < 0.75, shifted
    assert shifted["tentorium"] == scores["tentorium"]

    # The command gives the same figures, and refuses a prediction on another grid.
    save_volume(ref, tmp_path / "barriers.nii.gz")
    save_volume(labels, tmp_path / "labels.nii.gz")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["evaluate", "--barriers", "--json", str(tmp_path / "barriers.nii.gz"),
                     str(tmp_path / "labels.nii.gz")]) == 0
    assert json.loads(out.getvalue()) == scores
    other = Volume(ref.array[:-2], ref.affine)
    save_volume(other, tmp_path / "cropped.nii.gz")
    assert main(["evaluate", "--barriers", str(tmp_path / "cropped.nii.gz"), str(tmp_path / "labels.nii.gz")]) == 2
