"""The atlas stage's falx and tentorium moved onto the patient's CSF lines (``atlas.refine_sheets``):
on small synthetic heads with a known fissure and cerebellar gap, registered sheets placed a few
millimetres off come back onto the dark line, a steep sheet keeps no hole a CTV could pass, the
cerebellum above the tentorium is cleared, bright CSF (T2) works as dark, and a permuted, flipped
grid gives the same voxels. (The real-head figures: bench/barriers_accuracy.py --oasis.)"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from brainbarriers.barriers.atlas import refine_sheets
from brainbarriers.volume import Volume

FALX, TENTORIUM, CEREBELLUM, VENTRICLES = 1, 2, 5, 6
N = 40


def _head(fissure_x, nx=N, seed=0):
    """nx x 40 x 40 at 1 mm, RAS, all brain: tissue (100) with noise, a ventricle block (CSF, 20)
    for the contrast, a dark fissure (one voxel, 20) at x = fissure_x(y, z) for z >= 22, and a
    cerebellum (z < 12, y < 15) under a dark gap at z = 12."""
    rng = np.random.default_rng(seed)
    image = 100 + rng.normal(0, 3, (nx, N, N))
    labels = np.zeros((nx, N, N), np.uint8)
    labels[25:32, 25:32, 12:18] = VENTRICLES
    image[labels == VENTRICLES] = 20
    for y in range(N):
        for z in range(22, N):
            image[int(round(fissure_x(y, z))), y, z] = 20
    image[:, :15, 12] = 20
    labels[:, :15, :12] = CEREBELLUM
    return image.astype(np.float32), labels


def _falx_positions(labels):
    """Mean x of the falx on every (y, z) line that has it."""
    falx = labels == FALX
    xs = np.arange(labels.shape[0])[:, None, None]
    has = falx.any(0)
    return np.where(has, (falx * xs).sum(0) / np.maximum(falx.sum(0), 1), np.nan), has


def test_a_falx_registered_3_mm_off_comes_back_onto_the_fissure():
    image, labels = _head(lambda y, z: 20)
    labels[17, 5:35, 24:38] = FALX  # registration put it 3 mm to the left
    out, note = refine_sheets(Volume(image, np.eye(4)), np.ones(image.shape, bool), labels)
    assert note is None
    x, has = _falx_positions(out)
    assert has[5:35, 24:38].all()  # every line it crossed still has it
    assert np.nanmean(np.abs(x[has] - 20)) < 0.6  # centred on the fissure, not at 17
    assert (out[17] != FALX).all()
    assert (out[:, :, :22] == FALX).sum() < 0.1 * (out == FALX).sum()  # (only near its lower edge)


def test_a_steep_falx_leaves_no_face_connected_hole():
    # 3.5 voxels of x per voxel of z: a sheet drawn three voxels thick along x would have holes.
    def fissure(y, z):
        return 4 + 3.5 * (z - 22)

    image, labels = _head(fissure, nx=72)
    for y in range(4, 36):
        for z in range(22, 40):
            labels[int(round(fissure(y, z))) + 2, y, z] = FALX
    out, _ = refine_sheets(Volume(image, np.eye(4)), np.ones(image.shape, bool), labels)
    x, has = _falx_positions(out[:, 12:28, 29:34])  # away from the sheet's edges
    assert has.all() and np.abs(x - fissure(0, np.arange(29, 34))).max() <= 1.0  # on the fissure
    pieces, _ = ndi.label(out[:, 12:28, 29:34] != FALX)  # face connectivity
    assert pieces[0, 0, -1] > 0 and pieces[-1, 0, 0] > 0 and pieces[0, 0, -1] != pieces[-1, 0, 0]


def test_the_tentorium_moves_down_to_the_gap_and_the_cerebellum_above_it_is_cleared():
    image, labels = _head(lambda y, z: 20)
    labels[:, :15, 12:15] = CEREBELLUM  # registration put the cerebellum's top 3 mm too high
    labels[5:35, 2:13, 15:17] = TENTORIUM  # and the tentorium above it
    out, _ = refine_sheets(Volume(image, np.eye(4)), np.ones(image.shape, bool), labels)
    tent = out[5:35, 2:13] == TENTORIUM
    zs = np.argwhere(tent)[:, 2]
    assert tent.any(2).all() and abs(zs.mean() - 12) < 0.8
    assert (out[5:35, 2:13, 14:] != CEREBELLUM).all()  # nothing of the cerebellum above the sheet
    assert (out[5:35, 2:13, :11] == CEREBELLUM).all()  # below it, untouched


def test_bright_csf_is_found_as_well_and_an_image_without_contrast_is_left_alone():
    image, labels = _head(lambda y, z: 20)
    labels[17, 5:35, 24:38] = FALX
    t2 = 120.0 - image  # CSF bright
    out, note = refine_sheets(Volume(t2, np.eye(4)), np.ones(image.shape, bool), labels)
    x, has = _falx_positions(out)
    assert note is None and np.nanmean(np.abs(x[has] - 20)) < 0.6
    flat = np.full(image.shape, 100, np.float32)
    same, note = refine_sheets(Volume(flat, np.eye(4)), np.ones(image.shape, bool), labels)
    assert np.array_equal(same, labels) and "barely separates CSF" in note


@pytest.mark.parametrize("order,flips", [((2, 0, 1), (0,)), ((1, 2, 0), (1, 2))])
def test_a_permuted_flipped_grid_gives_the_same_voxels(order, flips):
    image, labels = _head(lambda y, z: 20 + (z - 22) * 0.3)
    labels[17, 5:35, 24:38] = FALX
    labels[5:35, 2:13, 15:17] = TENTORIUM
    brain = np.ones(image.shape, bool)
    expected, _ = refine_sheets(Volume(image, np.eye(4)), brain, labels)

    def move(a):
        a = np.transpose(a, order)
        for axis in flips:
            a = np.flip(a, axis)
        return np.ascontiguousarray(a)

    # The affine of the moved grid: voxel (i', j', k') is the RAS voxel it came from.
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for new_axis, old_axis in enumerate(order):
        flipped = new_axis in flips
        affine[old_axis, new_axis] = -1.0 if flipped else 1.0
        affine[old_axis, 3] = (N - 1) if flipped else 0.0
    out, _ = refine_sheets(Volume(move(image), affine), move(brain), move(labels))
    np.testing.assert_array_equal(out, move(expected))
