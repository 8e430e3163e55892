"""The merge hierarchy: levels by count and threshold from one record, exact recovery of distinct
plateaus, merges only between touching regions, the texture term, and level lookups in
milliseconds."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from brainbarriers.supervoxels.hierarchy import (
    Descriptors,
    Hierarchy,
    _Weights,
    build_hierarchy,
    region_descriptors,
)


def _grid_case(seed=0, blocks=(6, 6, 4), size=4, noise=0.02):
    """Supervoxels = blocks of size^3 voxels; four plateaus (quadrants in x, y) of distinct values
    in two sequences, with noise."""
    rng = np.random.default_rng(seed)
    shape = tuple(b * size for b in blocks)
    idx = np.indices(shape) // size
    over = (idx[0] * blocks[1] * blocks[2] + idx[1] * blocks[2] + idx[2] + 1).astype(np.int32)
    quadrant = (idx[0] >= blocks[0] // 2) * 2 + (idx[1] >= blocks[1] // 2)
    levels = np.array([[0.2, 0.7], [0.4, 0.7], [0.6, 0.3], [0.8, 0.3]])
    images = [np.clip(levels[quadrant, c] + rng.normal(0, noise, shape), 0, 1).astype(np.float32)
              for c in range(2)]
    return over, images, quadrant


@pytest.mark.parametrize("order", ["ward", "weight"])
@pytest.mark.parametrize("texture", [True, False])
def test_four_plateaus_are_the_four_region_level(order, texture):
    over, images, quadrant = _grid_case()
    h = build_hierarchy(over, images, order=order, texture=texture)
    assert h.n == over.max() and len(h.merges) == h.n - 1 and h.min_regions == 1
    level = h.labels(over, regions=4)
    # every region is one quadrant, every quadrant one region
    pairs = np.unique(np.stack([level.ravel(), quadrant.ravel()]), axis=1)
    assert pairs.shape[1] == 4 and len(np.unique(pairs[0])) == 4 and len(np.unique(pairs[1])) == 4


def test_every_count_and_every_region_connected():
    over, images, _ = _grid_case(seed=1, noise=0.1)
    h = build_hierarchy(over, images)
    for k in (1, 2, 3, 7, 20, 50, h.n - 1, h.n):
        level = h.labels(over, regions=k)
        assert len(np.unique(level)) == k
        for r in np.unique(level):
            assert ndi.label(level == r)[1] == 1  # only touching regions were ever merged
    assert h.lookup(regions=0).max() == 1 and h.lookup(regions=10**6).max() == h.n  # clamped


def test_threshold_levels_are_prefixes_of_the_same_sequence():
    over, images, _ = _grid_case(seed=2, noise=0.1)
    h = build_hierarchy(over, images, order="weight")
    ceiling = np.maximum.accumulate(h.heights)
    for t in np.quantile(h.heights, [0.1, 0.5, 0.9]):
        m = h.merges_for_threshold(t)
        assert (ceiling[:m] < t).all() and (m == len(ceiling) or ceiling[m] >= t)
        np.testing.assert_array_equal(h.lookup(threshold=t), h.lookup(regions=h.n - m))
    assert h.threshold > 0  # the paper's T read on the nearest-neighbour graph
    assert 1 <= h.paper_level() <= h.n
    with pytest.raises(ValueError):
        h.lookup(regions=3, threshold=0.1)


def test_record_round_trip_and_disconnected_pieces():
    over, images, _ = _grid_case(seed=3)
    over[:, :, 8:12] = 0  # two separate slabs (block layers 0-1 and 3): never one region
    over = np.unique(over, return_inverse=True)[1].reshape(over.shape)  # consecutive 1..n again
    h = build_hierarchy(over.astype(np.int32), images)
    assert h.min_regions == 2
    again = Hierarchy.from_arrays(h.to_arrays())
    np.testing.assert_array_equal(again.lookup(regions=9), h.lookup(regions=9))


def test_edge_weight_on_hand_values():
    # Two regions of two sequences: means 0 and 1 (Dc = sqrt(2 / 2) = 1), intensity histograms in
    # opposite bins (L1 = 2 per sequence: Dt = sqrt(4 / 4) = 1), so x = 1 and w = 1 - e^-10.
    hist = np.zeros((2, 2, 4), np.float32)
    hist[0, :, 0] = hist[1, :, 3] = 5
    desc = Descriptors(np.array([5.0, 5.0]), np.array([[0.0, 0.0], [5.0, 5.0]]), hist, 1)
    weights = _Weights(desc, 0.5, 0.1, 0.1, 4)
    a, b = np.array([0]), np.array([1])
    assert weights.x(a, b)[0] == pytest.approx(1.0)
    assert weights.w(weights.x(a, b))[0] == pytest.approx(1 - np.exp(-10.0))
    assert weights.x(a, a)[0] == 0.0 and weights.w(0.0) == 0.0


def test_texture_term_tells_apart_what_intensity_histograms_cannot():
    """Region 1: a smooth ramp; region 2: the same values shuffled. Same mean, same intensity
    histogram: only the texture (directional derivative histograms) differs."""
    rng = np.random.default_rng(0)
    ramp = np.broadcast_to(np.linspace(0.2, 0.8, 10)[:, None, None], (10, 10, 10)).copy()
    shuffled = rng.permutation(ramp.ravel()).reshape(ramp.shape)
    image = np.concatenate([ramp, np.full((2, 10, 10), 0.5), shuffled]).astype(np.float32)
    over = np.concatenate([np.full((10, 10, 10), 1), np.full((2, 10, 10), 3),
                           np.full((10, 10, 10), 2)]).astype(np.int32)
    a, b = np.array([0]), np.array([1])
    plain = _Weights(region_descriptors(over, [image], texture=False)[0], 0.5, 0.1, 0.1, 32)
    textured = _Weights(region_descriptors(over, [image], texture=True)[0], 0.5, 0.1, 0.1, 32)
    assert plain.x(a, b)[0] < 1e-6
    assert textured.x(a, b)[0] > 0.03


def test_the_focus_reaches_into_the_models_fringe_but_not_far_away():
    from brainbarriers.supervoxels.hierarchy import focus_around

    mask = np.zeros((60, 8, 8), bool)
    mask[10:12] = True
    spacing = (2.0, 1.0, 1.0)  # 2 mm along the first axis: 5 voxels are 10 mm
    probability = np.zeros(mask.shape, np.float32)
    probability[15] = 0.1  # 8 mm from the mask: within reach
    probability[25] = 0.1  # 28 mm: a false positive far away
    probability[18] = 0.01  # 14 mm but below the threshold
    plain = focus_around(mask, spacing, 5.0)
    assert plain[:, 0, 0].nonzero()[0].tolist() == list(range(8, 14))  # within 5 mm: 2 voxels
    fringe = focus_around(mask, spacing, 5.0, probability=probability)
    assert fringe[:, 0, 0].nonzero()[0].tolist() == list(range(8, 14)) + [15]
    fringe = focus_around(mask, spacing, 5.0, probability=probability, reach_mm=30.0)
    assert fringe[:, 0, 0].nonzero()[0].tolist() == list(range(8, 14)) + [15, 25]
    assert focus_around(np.zeros_like(mask), spacing, probability=probability) is None


def test_levels_in_milliseconds():
    rng = np.random.default_rng(0)
    n = 5000
    # a random merge tree over a chain: merge i with i+1 in random order
    order = rng.permutation(n - 1)
    h = Hierarchy(n, np.stack([order + 1, order + 2], 1), np.sort(rng.random(n - 1)), 0.5)
    t0 = time.perf_counter()
    for k in (300, 301, 1000, 50):
        lut = h.lookup(regions=k)
        assert lut.max() == k
    assert (time.perf_counter() - t0) / 4 < 0.05


def test_a_focus_keeps_its_regions_fine_and_factor_one_is_no_focus():
    over, images, quadrant = _grid_case(blocks=(8, 8, 4), noise=0.05)
    focus = quadrant == 0  # the part being edited: one plateau
    plain = build_hierarchy(over, images)
    same = build_hierarchy(over, images, focus=focus, focus_factor=1.0)
    np.testing.assert_array_equal(plain.merges, same.merges)
    focused = build_hierarchy(over, images, focus=focus, focus_factor=100.0)

    def inside(h, level):  # regions at ``level`` that lie in the focus
        return len(np.unique(h.labels(over, regions=level)[focus]))

    # At 40 regions (of 256 supervoxels, 64 of them in the focus) the plain merging has spent most
    # of its merges in the focus too; the focused one has merged the rest of the volume first.
    assert inside(focused, 40) > 2 * inside(plain, 40)
    assert inside(focused, 40) >= 30
    # The regions still follow the image: none straddles two plateaus.
    for level in (8, 40):
        labels = focused.labels(over, regions=level)
        assert len({(int(a), int(b)) for a, b in zip(labels.ravel(), quadrant.ravel())}) == level
    with pytest.raises(ValueError, match="grid"):
        build_hierarchy(over, images, focus=focus[:-1], focus_factor=10.0)
    with pytest.raises(ValueError, match="focus_factor"):
        build_hierarchy(over, images, focus=focus, focus_factor=0.5)
