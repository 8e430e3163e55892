"""The CTV: GTV + geodesic margin that goes around the barriers, never through them.

Expected sets are computed independently of the product's code: a brute-force Dijkstra over voxel
centres with a 5x5x5 neighbourhood (edges only between free voxels whose straight segment stays
free), analytic geometry, and Euclidean distance transforms. Every test runs with both ways of
measuring behind a barrier: scikit-fmm's fast marching (an optional speed-up) and the SciPy-only
lattice fallback used where scikit-fmm is not installed.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from brainbarriers.ctv import geodesic, grow_ctv, gtv_mask
from brainbarriers.errors import InputError
from brainbarriers.volume import Volume

MARGIN = 15.0


@pytest.fixture(autouse=True, params=geodesic.METHODS)
def method(request, monkeypatch):
    """Run the test with fast marching and with the lattice fallback."""
    if request.param == "fmm" and not geodesic.fast_marching_available():
        pytest.skip("scikit-fmm is not installed (the lattice fallback is tested instead)")
    monkeypatch.setattr(geodesic, "default_method", lambda: request.param)
    return request.param


def reference_geodesic(seeds: np.ndarray, free: np.ndarray, spacing) -> np.ndarray:
    """Shortest path length (mm) from the seeds through free voxels, by Dijkstra on a graph whose
    edges join voxel centres up to two voxels apart in every axis (primitive offsets only)."""
    spacing = np.asarray(spacing, float)
    shape = free.shape
    index = -np.ones(shape, np.int64)
    nodes = np.argwhere(free)
    index[tuple(nodes.T)] = np.arange(len(nodes))
    rows, cols, weights = [], [], []
    for off in np.ndindex(5, 5, 5):
        d = np.array(off) - 2
        if not d.any() or math.gcd(math.gcd(abs(d[0]), abs(d[1])), abs(d[2])) != 1:
            continue
        if tuple(d) < (0, 0, 0):  # each undirected edge once
            continue
        target = nodes + d
        ok = np.all((target >= 0) & (target < shape), axis=1)
        a, b = nodes[ok], target[ok]
        ok = free[tuple(b.T)]
        a, b = a[ok], b[ok]
        for t in np.linspace(0, 1, 9)[1:-1]:  # the segment must stay in free voxels
            p = np.rint(a + (b - a) * t).astype(int)
            ok = free[tuple(p.T)]
            a, b = a[ok], b[ok]
        rows.append(index[tuple(a.T)])
        cols.append(index[tuple(b.T)])
        weights.append(np.full(len(a), float(np.linalg.norm(d * spacing))))
    graph = coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(len(nodes), len(nodes))).tocsr()
    sources = index[seeds & free]
    dist = dijkstra(graph, directed=False, indices=sources, min_only=True)
    out = np.full(shape, np.inf)
    out[tuple(nodes.T)] = dist
    return out


def volume(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Volume:
    return Volume(array, np.diag([*spacing, 1.0]))


def ball(shape, spacing, centre_mm, radius_mm) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0) * np.asarray(spacing)
    return np.linalg.norm(grid - np.asarray(centre_mm), axis=-1) <= radius_mm


def wall_case(spacing):
    """A box of brain with a falx-like wall (label 1) at i = 20 reaching from j = 12 to the end
    (a gap below j = 12, like the falx's free edge over the corpus callosum), and a GTV ball
    (label 4 rim, label 1 core) left of the wall."""
    spacing = np.asarray(spacing, float)
    shape = tuple(int(v) for v in np.ceil(np.array([40, 40, 36]) / spacing))
    brain = np.zeros(shape, np.uint8)
    brain[1:-1, 1:-1, 1:-1] = 1
    barriers = np.zeros(shape, np.uint8)
    barriers[20, 12:, :] = 1
    centre = np.array([12.0, 20.0, 18.0])
    tumor = np.zeros(shape, np.uint8)
    tumor[ball(shape, spacing, centre, 5.0)] = 4
    tumor[ball(shape, spacing, centre, 2.5)] = 1
    return brain, barriers, tumor


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 3.0)])
def test_margin_goes_around_the_wall_not_through_it(spacing):
    brain, barriers, tumor = wall_case(spacing)
    ctv = grow_ctv(volume(tumor, spacing), volume(brain, spacing), volume(barriers, spacing),
                   margin_mm=MARGIN).array.astype(bool)
    free = (brain > 0) & (barriers == 0)
    gtv = np.isin(tumor, (1, 4))
    geo = reference_geodesic(gtv, free, spacing)
    euclid = ndi.distance_transform_edt(~gtv, sampling=spacing)
    tol = max(spacing)  # one voxel

    assert not (ctv & (barriers > 0)).any(), "the CTV never includes the barrier itself"
    assert not (ctv & (brain == 0)).any()
    assert ctv[free & (geo <= MARGIN - tol)].all(), "reachable within the margin -> inside"
    assert not ctv[geo > MARGIN + tol].any(), "farther than the margin along free paths -> outside"

    across = np.zeros_like(free)
    across[21:] = True
    shielded = across & free & (euclid <= MARGIN - tol) & (geo > MARGIN + tol)
    around = across & free & (geo <= MARGIN - tol)
    assert shielded.sum() > 100 and not ctv[shielded].any(), \
        "voxels straight across the wall within the Euclidean margin stay outside"
    assert around.sum() > 10 and ctv[around].all(), "voxels reached around the wall's edge are in"
    # Everything in the CTV across the wall lies beyond the gap's edge side: reached through it.
    assert ctv[across].sum() > 0


def test_without_barriers_the_ctv_is_the_euclidean_dilation():
    spacing = (1.0, 1.0, 3.0)
    brain, _, tumor = wall_case(spacing)
    brain[:] = 1  # convex free space: geodesic = Euclidean
    ctv = grow_ctv(volume(tumor, spacing), volume(brain, spacing), None,
                   margin_mm=MARGIN).array.astype(bool)
    gtv = np.isin(tumor, (1, 4))
    euclid = ndi.distance_transform_edt(~gtv, sampling=spacing)
    dilation = euclid <= MARGIN
    tol = max(spacing)
    # Within one voxel (the tolerance) ...
    assert ctv[euclid <= MARGIN - tol].all() and not ctv[euclid > MARGIN + tol].any()
    # ... and in fact voxel for voxel.
    assert np.array_equal(ctv, dilation)


def test_margin_is_honoured_along_every_axis_on_a_1x1x3_grid():
    spacing = np.array([1.0, 1.0, 3.0])
    shape = (61, 61, 21)
    tumor = np.zeros(shape, np.uint8)
    tumor[28:33, 28:33, 9:12] = 4  # a box GTV: 5 x 5 x 3 voxels
    brain = np.ones(shape, np.uint8)
    for margin in (15.0, 10.0, 7.5):
        ctv = grow_ctv(volume(tumor, spacing), volume(brain, spacing), None,
                       margin_mm=margin).array.astype(bool)
        # Extent beyond the GTV face along each axis: floor(margin / spacing) voxels exactly.
        i_extent = np.flatnonzero(ctv[:, 30, 10])
        j_extent = np.flatnonzero(ctv[30, :, 10])
        k_extent = np.flatnonzero(ctv[30, 30, :])
        assert i_extent.min() == 28 - int(margin // 1) and i_extent.max() == 32 + int(margin // 1)
        assert j_extent.min() == 28 - int(margin // 1) and j_extent.max() == 32 + int(margin // 1)
        assert k_extent.min() == 9 - int(margin // 3) and k_extent.max() == 11 + int(margin // 3)
        # Diagonal: voxel (32 + a, 32 + b, 11 + c) is in iff its distance to the corner <= margin.
        for a, b, c in [(8, 8, 2), (10, 10, 1), (7, 7, 3), (12, 0, 3), (0, 11, 3)]:
            dist = float(np.linalg.norm(np.array([a, b, c]) * spacing))
            if 32 + a < shape[0] and 32 + b < shape[1] and 11 + c < shape[2]:
                assert bool(ctv[32 + a, 32 + b, 11 + c]) == (dist <= margin), (a, b, c, margin)


def test_phantom_brain_with_a_midline_falx(small_case):
    """The SRI24 phantom at 2 mm with a synthetic falx in the mid-sagittal plane above the corpus
    callosum level; a GTV near the midline in the left hemisphere."""
    brain_mask = small_case.truths["brain_mask"]
    brain = brain_mask.array > 0
    spacing = brain_mask.spacing
    assert np.allclose(spacing, 2.0)
    # Canonical RAS arrays: axis 0 runs left -> right; find the midline from the mask.
    idx = np.argwhere(brain)
    mid = int(round(idx[:, 0].mean()))
    k_low = int(np.percentile(idx[:, 2], 55))  # falx only above this axial level
    barriers = np.zeros(brain.shape, np.uint8)
    barriers[mid, :, k_low:] = np.where(brain[mid, :, k_low:], 1, 0)
    centre_vox = np.array([mid - 6, int(idx[:, 1].mean()), int(np.percentile(idx[:, 2], 75))])
    tumor = np.zeros(brain.shape, np.uint8)
    tumor[ball(brain.shape, spacing, centre_vox * spacing, 8.0) & brain] = 4
    assert tumor.any()
    tumor_v, barriers_v = brain_mask.with_array(tumor), brain_mask.with_array(barriers)
    ctv = grow_ctv(tumor_v, brain_mask, barriers_v, margin_mm=MARGIN).array.astype(bool)

    # Reference on the box around the GTV grown by the margin (paths cannot leave it anyway).
    lo = np.maximum(np.argwhere(tumor).min(0) - 10, 0)
    hi = np.minimum(np.argwhere(tumor).max(0) + 11, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    free = brain & (barriers == 0)
    geo = reference_geodesic(tumor[box] > 0, free[box], spacing)
    euclid = ndi.distance_transform_edt(tumor[box] == 0, sampling=spacing)
    c = ctv[box]
    tol = 2.0
    assert not ctv[~box_mask(brain.shape, box)].any()
    assert c[free[box] & (geo <= MARGIN - tol)].all()
    assert not c[geo > MARGIN + tol].any()
    across = np.zeros(c.shape, bool)
    across[mid + 1 - lo[0]:] = True
    shielded = across & free[box] & (euclid <= MARGIN - tol) & (geo > MARGIN + tol)
    assert shielded.sum() > 20 and not c[shielded].any()
    # Without the falx the same voxels are in (the falx is what keeps them out).
    no_falx = grow_ctv(tumor_v, brain_mask, None, margin_mm=MARGIN).array.astype(bool)
    assert no_falx[box][shielded].mean() > 0.9


def box_mask(shape, box) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[box] = True
    return m


def test_gtv_choices_and_edema():
    tumor = np.array([0, 1, 2, 3, 4]).reshape(5, 1, 1)
    assert gtv_mask(tumor, "enhancing").ravel().tolist() == [0, 1, 0, 0, 1]
    assert gtv_mask(tumor, "core").ravel().tolist() == [0, 1, 0, 1, 1]
    assert gtv_mask(tumor, "whole").ravel().tolist() == [0, 1, 1, 1, 1]
    assert gtv_mask(tumor, "enhancing", add_edema=True).ravel().tolist() == [0, 1, 1, 0, 1]
    with pytest.raises(InputError, match="unknown gtv"):
        gtv_mask(tumor, "everything")


def test_edema_only_tumour_is_an_empty_gtv_but_whole_works():
    spacing = (2.0, 2.0, 2.0)
    shape = (30, 30, 30)
    tumor = np.zeros(shape, np.uint8)
    tumor[ball(shape, spacing, (30, 30, 30), 6)] = 2
    brain = np.ones(shape, np.uint8)
    with pytest.raises(InputError, match="GTV is empty"):
        grow_ctv(volume(tumor, spacing), volume(brain, spacing), margin_mm=10)
    ctv = grow_ctv(volume(tumor, spacing), volume(brain, spacing), margin_mm=10, gtv="whole")
    assert ctv.array.sum() > (tumor > 0).sum()
    ctv2 = grow_ctv(volume(tumor, spacing), volume(brain, spacing), margin_mm=10, add_edema=True)
    assert np.array_equal(ctv.array, ctv2.array)


def test_ventricles_block_only_when_asked():
    spacing = (1.0, 1.0, 3.0)
    brain, _, tumor = wall_case(spacing)
    barriers = np.zeros_like(brain)
    barriers[19:22, :, :] = 6  # a slab of "ventricle" right of the GTV, no falx
    args = (volume(tumor, spacing), volume(brain, spacing), volume(barriers, spacing))
    default = grow_ctv(*args, margin_mm=MARGIN).array.astype(bool)
    blocked = grow_ctv(*args, margin_mm=MARGIN, barrier_labels=(1, 2, 3, 4, 6)).array.astype(bool)
    assert default[19:22].any() and default[22:].any()
    assert not blocked[19:22].any() and not blocked[22:].any()


def test_bad_margin_is_an_input_error():
    spacing = (1.0, 1.0, 3.0)
    brain, barriers, tumor = wall_case(spacing)
    for bad in (-1, "wide", float("nan")):
        with pytest.raises(InputError, match="margin_mm"):
            grow_ctv(volume(tumor, spacing), volume(brain, spacing), margin_mm=bad)
    zero = grow_ctv(volume(tumor, spacing), volume(brain, spacing), margin_mm=0)
    assert np.array_equal(zero.array > 0, np.isin(tumor, (1, 4)))


def test_barrier_map_on_another_grid_is_resampled_with_a_warning():
    spacing = (1.0, 1.0, 1.0)
    brain, barriers, tumor = wall_case(spacing)
    # The same wall on a 2 mm grid covering the same space (voxel centres offset by 0.5 mm).
    coarse_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse_affine[:3, 3] = 0.5
    coarse = np.zeros((20, 20, 18), np.uint8)
    coarse[10, 6:, :] = 1  # world x = 20.5 mm: nearest neighbour lands on i = 20 or 21
    messages = []
    ctv = grow_ctv(volume(tumor, spacing), volume(brain, spacing), Volume(coarse, coarse_affine),
                   margin_mm=MARGIN, warn=messages.append)
    assert any("barrier map is on another grid" in m and "resampled" in m for m in messages)
    assert ctv.grid.same_as(volume(tumor, spacing).grid)
    # The wall is still a wall after resampling: far side straight across stays out.
    assert not ctv.array[22:, 30, 18].any()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grow_ctv(volume(tumor, spacing), volume(brain, spacing), Volume(coarse, coarse_affine),
                 margin_mm=MARGIN)
    assert any("resampled" in str(w.message) for w in caught)


def test_ctv_command(tmp_path, capsys):
    from brainbarriers.cli.main import main as cli_main
    from brainbarriers.io import load_volume, save_volume

    spacing = (1.0, 1.0, 3.0)
    brain, barriers, tumor = wall_case(spacing)
    paths = {}
    for name, array in (("tumor", tumor), ("brain", brain), ("barriers", barriers)):
        paths[name] = save_volume(volume(array, spacing), tmp_path / f"{name}.nii.gz")
    out = tmp_path / "ctv.nii.gz"
    args = ["ctv", "--tumor", str(paths["tumor"]), "--brain-mask", str(paths["brain"]),
            "--barriers", str(paths["barriers"]), "--out", str(out), "--margin", "12"]
    assert cli_main(args) == 0
    expected = grow_ctv(volume(tumor, spacing), volume(brain, spacing),
                        volume(barriers, spacing), margin_mm=12)
    written = load_volume(out)
    assert np.array_equal(written.array, expected.array) and written.grid.same_as(expected.grid)
    assert "CTV of" in capsys.readouterr().out
    # Bad input: one line, exit code 2, nothing written.
    edema_only = save_volume(volume(np.where(tumor > 0, 2, 0).astype(np.uint8), spacing),
                             tmp_path / "edema.nii.gz")
    for bad in (["--tumor", str(tmp_path / "missing.nii.gz")], ["--tumor", str(edema_only)],
                ["--margin", "-3"]):
        target = tmp_path / "bad.nii.gz"
        call = args[:]
        call[call.index("--out") + 1] = str(target)
        flag = bad[0]
        call[call.index(flag) + 1] = bad[1]
        assert cli_main(call) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error" in err[0]
        assert not target.exists()


def test_a_diagonal_one_voxel_wall_is_not_crossed(method):
    """A staircase wall (voxels touching only at edges) has no face-connected hole: neither
    method may step diagonally through it."""
    shape = (30, 30, 6)
    i, j = np.indices(shape[:2])
    wall = np.repeat(((i + j) == 30)[:, :, None], shape[2], axis=2)
    free = ~wall
    seeds = np.zeros(shape, bool)
    seeds[10, 10, 3] = True
    distance = geodesic.geodesic_distance(seeds, free, (1.0, 1.0, 1.0), 40.0, method=method)
    across = np.repeat(((i + j) > 30)[:, :, None], shape[2], axis=2)
    assert np.isinf(distance[across]).all()
    assert np.isfinite(distance[free & ~across]).all()
