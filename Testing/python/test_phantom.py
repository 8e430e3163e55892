"""The phantom generator and the shipped demo case."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from brainbarriers.demo import demo_case_folder
from brainbarriers.io import load_volume
from brainbarriers.phantom import make_case


def _mean(case, sequence, mask):
    return float(case.sequences[sequence].array[mask].mean())


def test_tumour_compartments_and_contrasts(small_case):
    labels = small_case.truths["tumor"].array
    brain = small_case.truths["brain_mask"].array > 0
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    assert not np.any((labels > 0) & ~brain)
    # One connected lesion; the necrotic core is wrapped by the enhancing rim.
    assert ndi.label(labels > 0)[1] == 1
    core_grown = ndi.binary_dilation(labels == 1, iterations=1)
    assert np.all(np.isin(labels[core_grown], (1, 4)))
    necrosis, enhancing, edema = labels == 1, labels == 4, labels == 2
    wm = brain & (labels == 0) & (small_case.sequences["t1"].array > 120)
    # The usual appearance: enhancing rim bright on T1ce, oedema bright on FLAIR and T2,
    # necrosis dark on T1ce, CSF-like bright on T2.
    assert _mean(small_case, "t1ce", enhancing) > 1.2 * _mean(small_case, "t1ce", wm)
    assert _mean(small_case, "t1ce", necrosis) < 0.6 * _mean(small_case, "t1ce", enhancing)
    assert _mean(small_case, "flair", edema) > 1.5 * _mean(small_case, "flair", wm)
    assert _mean(small_case, "t2", edema) > 1.5 * _mean(small_case, "t2", wm)
    assert _mean(small_case, "t2", necrosis) > _mean(small_case, "t2", edema)


def test_cases_vary_with_their_parameters_and_repeat_with_their_seed():
    left = make_case(seed=11, zoom=2, radius_mm=10.0, hemisphere="left")
    right = make_case(seed=11, zoom=2, radius_mm=22.0, hemisphere="right")
    again = make_case(seed=11, zoom=2, radius_mm=10.0, hemisphere="left")
    np.testing.assert_array_equal(left.sequences["flair"].array, again.sequences["flair"].array)
    x_left = left.truths["tumor"].world_coordinates(np.argwhere(left.truths["tumor"].array > 0))[:, 0]
    x_right = right.truths["tumor"].world_coordinates(np.argwhere(right.truths["tumor"].array > 0))[:, 0]
    brain = left.truths["brain_mask"]
    mid = brain.world_coordinates(np.argwhere(brain.array > 0))[:, 0].mean()
    assert x_left.mean() < mid < x_right.mean()  # RAS: left is smaller x
    core = lambda c: (np.isin(c.truths["tumor"].array, (1, 4))).sum()  # noqa: E731
    assert core(right) > 5 * core(left)


def test_shipped_demo_case():
    folder = demo_case_folder()
    t1ce = load_volume(folder / "t1ce.nii.gz")
    truth = load_volume(folder / "tumor_truth.nii.gz")
    assert t1ce.shape == (240, 240, 155) and np.allclose(t1ce.spacing, 1.0)
    assert truth.grid.same_as(t1ce.grid)
    assert set(np.unique(truth.array)) == {0, 1, 2, 4}
    for name in ("t1", "t2", "flair", "brain_mask_truth"):
        assert load_volume(folder / f"{name}.nii.gz").grid.same_as(t1ce.grid)
    brain_ml = (load_volume(folder / "brain_mask_truth.nii.gz").array > 0).sum() / 1000
    assert 1200 < brain_ml < 1700  # an adult brain (SRI24: about 1450 ml)
