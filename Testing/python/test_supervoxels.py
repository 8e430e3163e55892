"""Supervoxels: SSLIC_Var oversegmentation, metrics, snapping (merging: see the hierarchy tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from brainbarriers.supervoxels import metrics
from brainbarriers.supervoxels.slic import _compactness, scale_to_unit, sslic
from brainbarriers.supervoxels.snap import snap_to_supervoxels

SEQ = ("t1", "t1ce", "t2", "flair")


def _all_connected(labels: np.ndarray) -> list[int]:
    """Labels whose voxels form more than one face-connected piece."""
    broken = []
    for value, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        _, pieces = ndi.label(labels[box] == value)
        if pieces != 1:
            broken.append(value)
    return broken


@pytest.fixture(scope="module")
def phantom(small_case):
    mask = small_case.truths["brain_mask"].array > 0
    images = [np.where(mask, small_case.sequences[s].array, 0).astype(np.float32) for s in SEQ]
    features = np.stack([scale_to_unit(x, mask) for x in images])
    truth = small_case.truths["tumor"].array.astype(np.int16)
    return mask, images, features, truth


@pytest.fixture(scope="module")
def oversegmented(phantom):
    mask, _, features, _ = phantom
    return sslic(features, mask, size=(6, 6, 6)).numpy()


def two_regions(noise=0.03, seed=0, boundary=13):
    """A 30x24x20 volume, 0.25 left of x=boundary and 0.75 right of it, two noisy channels."""
    rng = np.random.default_rng(seed)
    shape = (30, 24, 20)
    base = np.where(np.arange(shape[0])[:, None, None] < boundary, 0.25, 0.75) * np.ones(shape)
    features = np.stack([base + rng.normal(0, noise, shape), 1 - base + rng.normal(0, noise, shape)])
    return np.clip(features, 0, 1).astype(np.float32), np.ones(shape, bool), base > 0.5


# ------------------------------------------------------------------------------ oversegmentation
def test_labels_cover_the_mask_exactly_and_are_consecutive(phantom, oversegmented):
    mask = phantom[0]
    assert np.array_equal(oversegmented > 0, mask)
    ids = np.unique(oversegmented[mask])
    assert ids[0] == 1 and ids[-1] == len(ids)


def test_every_supervoxel_is_one_connected_piece(oversegmented):
    assert _all_connected(oversegmented) == []


def test_count_is_near_volume_over_k_cubed(phantom, oversegmented):
    expected = phantom[0].sum() / 6**3
    count = metrics.supervoxel_count(oversegmented)
    assert 0.6 * expected < count < 1.3 * expected, (count, expected)


def test_two_regions_are_split_along_their_boundary():
    features, mask, right = two_regions()
    for adaptive in (False, True):
        labels = sslic(features, mask, size=(10, 10, 10), adaptive=adaptive).numpy()
        # boundary x=13 is not on the K=10 grid: the clustering, not the grid, must find it
        for value in np.unique(labels):
            side = right[labels == value]
            assert side.all() or not side.any(), f"supervoxel {value} crosses the boundary"
        assert _all_connected(labels) == []


def test_single_channel_and_27_candidates_also_work():
    features, mask, right = two_regions()
    labels = sslic(features[:1], mask, size=(8, 8, 8), candidates=27).numpy()
    assert labels.min() == 1 and _all_connected(labels) == []
    assert all(right[labels == v].all() or not right[labels == v].any() for v in np.unique(labels))


def test_mask_outside_gets_zero_and_empty_mask_gives_nothing():
    features, mask, _ = two_regions()
    mask = mask.copy()
    mask[:, :, :5] = False
    labels = sslic(features, mask, size=(6, 6, 6)).numpy()
    assert (labels[:, :, :5] == 0).all() and (labels[mask] > 0).all()
    assert not sslic(features, np.zeros_like(mask)).numpy().any()


def test_variance_adaptive_compactness_and_its_clamp():
    # two supervoxels, one flat (variance 0), one with variance 0.01 in each of 2 channels
    label = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    feats = torch.tensor([[0.5, 0.5]] * 4 + [[0.4, 0.4], [0.6, 0.6], [0.4, 0.4], [0.6, 0.6]])
    mk = _compactness(label, feats, 2, m=0.1, eps=0.01, adaptive=True, max_factor=10.0)
    assert torch.allclose(mk, torch.tensor([0.1, 0.1 * np.e]), rtol=1e-4)
    mk = _compactness(label, feats * 3, 2, m=0.1, eps=0.01, adaptive=True, max_factor=10.0)
    assert torch.allclose(mk, torch.tensor([0.1, 1.0]), rtol=1e-4)  # e^9 clamped to 10 m
    mk = _compactness(label, feats, 2, m=0.1, eps=0.01, adaptive=False, max_factor=10.0)
    assert torch.allclose(mk, torch.tensor([0.1, 0.1]))


def test_phantom_tumour_asa_above_bar(phantom, oversegmented):
    truth = phantom[3]
    assert metrics.asa(oversegmented, truth, "tumor") > 0.75
    assert metrics.asa(oversegmented, truth, "all") > 0.97


# ------------------------------------------------------------------------------ metrics
def test_asa_on_a_hand_example():
    sv = np.array([1, 1, 1, 2, 2, 2, 0]).reshape(1, 1, 7)
    gt = np.array([0, 0, 1, 1, 1, 2, 5]).reshape(1, 1, 7)
    # sv1 -> label 0 (2 of 3 right), sv2 -> label 1 (2 of 3 right); voxel outside not scored
    assert metrics.asa(sv, gt, "all") == pytest.approx(4 / 6)
    # tumour voxels (gt > 0 inside): positions 2, 3, 4, 5 -> right: 3 and 4
    assert metrics.asa(sv, gt, "tumor") == pytest.approx(2 / 4)


def test_weighted_variance_and_morans_i_on_hand_examples():
    sv = np.array([1, 1, 2, 2]).reshape(1, 1, 4)
    image = np.array([0.0, 2.0, 10.0, 10.0]).reshape(1, 1, 4)
    # variances 1 and 0, weights 1/2 each; total variance of [0, 2, 10, 10] = 20.75
    assert metrics.weighted_variance(sv, image) == pytest.approx(0.5 / 20.75)
    # two touching regions with different means: Moran's I = -1
    assert metrics.morans_i(sv, image) == pytest.approx(-1.0)
    assert metrics.global_score(sv, image) == pytest.approx(0.5 * (0.5 / 20.75 - 1.0))
    # several sequences: each supervoxel keeps its smallest normalised variance
    flat = np.array([5.0, 5.0, 0.0, 4.0]).reshape(1, 1, 4)  # variances 0 and 4 (total 4.6875)
    expected = 0.5 * 0.0 + 0.5 * min(0.0, 4 / 4.6875)
    assert metrics.weighted_variance(sv, [image, flat]) == pytest.approx(expected)
    assert metrics.supervoxel_count(sv) == 2


def test_morans_i_chain_is_positive_for_a_smooth_gradient():
    sv = np.arange(1, 7).reshape(1, 1, 6)
    image = np.arange(6, dtype=float).reshape(1, 1, 6)
    # means 0..5 on a chain: z = -2.5..2.5, sum z_i z_{i+1} = 3.75+0.75-0.25+0.75+3.75 = 8.75
    # over 5 pairs, sum z^2 = 17.5, I = n/W * 2*8.75/17.5 with W = 10 -> 0.6
    assert metrics.morans_i(sv, image) == pytest.approx(6 / 10 * 2 * 8.75 / 17.5)


# ------------------------------------------------------------------------------ snapping
def test_snap_to_supervoxels_on_a_hand_example():
    sv = np.array([1, 1, 1, 1, 2, 2, 2, 2, 0, 0]).reshape(1, 1, 10)
    lab = np.array([0, 4, 1, 1, 0, 0, 0, 2, 0, 2]).reshape(1, 1, 10)
    out = snap_to_supervoxels(lab, sv, min_fraction=0.5)
    # sv1 is 3/4 tumour: filled, the new voxel takes its most frequent label (1); sv2 1/4: cleared;
    # outside the supervoxels nothing changes
    assert out.ravel().tolist() == [1, 4, 1, 1, 0, 0, 0, 0, 0, 2]
    assert snap_to_supervoxels(lab, sv, min_fraction=1.0).ravel().tolist() == [0] * 9 + [2]
    with pytest.raises(ValueError):
        snap_to_supervoxels(lab, sv[..., :5])


def test_snap_on_the_phantom_keeps_the_tumour_close(phantom, oversegmented):
    truth = phantom[3]
    snapped = snap_to_supervoxels(truth, oversegmented)
    from brainbarriers.metrics import dice

    assert dice(snapped > 0, truth > 0) > 0.8
    # snapping is idempotent: a snapped map is already made of whole supervoxels
    assert np.array_equal(snap_to_supervoxels(snapped, oversegmented), snapped)


# ------------------------------------------------------------------------------ GPU code path on CPU
def test_tensor_components_match_the_compiled_ones():
    from brainbarriers.supervoxels.slic import enforce_connectivity, same_label_components

    rng = np.random.default_rng(1)
    labels = torch.from_numpy(rng.integers(0, 4, (14, 12, 10)))  # many fragments, background 0
    a = same_label_components(labels, use_torch=False).numpy()
    b = same_label_components(labels, use_torch=True).numpy()
    assert np.array_equal(a > 0, b > 0) and a.max() == b.max()
    # the same partition: a one-to-one map between the two numberings
    assert len(np.unique(np.stack([a[a > 0], b[b > 0]], 1), axis=0)) == a.max()
    for use_torch in (False, True):
        out = enforce_connectivity(labels, min_size=4, use_torch=use_torch).numpy()
        assert np.array_equal(out > 0, labels.numpy() > 0)
        assert _all_connected(out) == []
        sizes = np.bincount(out.ravel())[1:]
        _, pieces = ndi.label(labels.numpy() > 0)
        # pieces under min_size remain only where a mask island has no other supervoxel to join
        assert (sizes >= 4).sum() >= len(sizes) - pieces


def test_voxels_no_centre_reaches_fall_back_to_their_own_cell():
    features, _, _ = two_regions()
    mask = np.zeros(features.shape[1:], bool)
    mask[:, :, 7] = True  # a one-voxel slab: every 6^3 cell is 1/6 full, below min_cover = 0.5
    labels = sslic(features, mask, size=(6, 6, 6), min_cover=0.5).numpy()
    assert np.array_equal(labels > 0, mask)
    assert metrics.supervoxel_count(labels) == 5 * 4  # one per grid cell the slab crosses
    assert _all_connected(labels) == []
