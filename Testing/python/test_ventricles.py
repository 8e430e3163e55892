"""The ventricle classifier of the multi-atlas stage (``brainbarriers.barriers.ventricles``).

Its accuracy on real heads is measured leave-one-out by ``bench/barriers_accuracy.py --oasis``
(README); here: what it computes, that it learns and reloads exactly, and that it keeps no island.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainbarriers.barriers import ventricles as V


def _head(shape=(40, 40, 40)):
    """A bright brain with a dark ventricle (a box) and the atlas's probability over it."""
    rng = np.random.default_rng(3)
    brain = np.zeros(shape, bool)
    brain[4:-4, 4:-4, 4:-4] = True
    truth = np.zeros(shape, bool)
    truth[15:25, 16:24, 14:26] = True
    image = np.where(brain, 200.0, 0.0) + rng.normal(0, 5, shape)
    image[truth] = 40.0 + rng.normal(0, 5, truth.sum())
    prob = np.zeros(shape, np.float32)
    prob[14:26, 15:25, 13:27] = 0.95  # registered a little too large
    return image.astype(np.float32), brain, truth, prob


def test_features_read_intensity_on_the_cases_own_scale_whatever_the_contrast():
    image, brain, truth, prob = _head()
    refined = truth.copy()
    cand, x = V.features(image, brain, prob, refined, (1.0, 1.0, 1.0))
    assert x.shape == (cand.sum(), len(V.FEATURES)) and cand[truth].all()
    assert abs(np.median(x[truth[cand], 0])) < 0.1  # CSF at 0 ...
    assert abs(np.median(x[~truth[cand] & (x[:, 3] < 0.05), 0]) - 1.0) < 0.1  # ... tissue at 1
    # A T2-like image (CSF bright) and another scale give the same features.
    t2 = np.where(brain, 1000.0 - 3.0 * image, 0.0).astype(np.float32)
    _, x_t2 = V.features(t2, brain, prob, refined, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(x_t2, x, atol=1e-3)


def test_training_learns_and_gives_the_same_weights_twice(tmp_path):
    image, brain, truth, prob = _head()
    refined = np.zeros_like(truth)
    refined[16:24, 17:23, 15:25] = True  # the CSF model's mask, a little too small
    cand, x = V.features(image, brain, prob, refined, (1.0, 1.0, 1.0))
    first = V.train([(x, truth[cand])], steps=200)
    second = V.train([(x, truth[cand])], steps=200)
    for (w1, b1), (w2, b2) in zip(first.layers, second.layers):
        assert np.array_equal(w1, w2) and np.array_equal(b1, b2)
    mask = V.classify(image, brain, prob, refined, (1.0, 1.0, 1.0), first)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.97  # the CSF model's mask alone: 0.67
    first.save(tmp_path / "c.npz", {"what": "test"})
    again = V.Classifier.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(again.probability(x), first.probability(x))
    assert json.loads((tmp_path / "c.json").read_text()) == {"what": "test"}


def _dark_is_ventricle() -> V.Classifier:
    """By hand: ventricle where the intensity feature is below one half."""
    n = len(V.FEATURES)
    w0 = np.zeros((1, n))
    w0[0, 0] = -20.0
    return V.Classifier(np.zeros(n), np.ones(n), ((w0, np.array([10.0])),))


def test_a_dark_blob_away_from_the_ventricles_is_not_kept():
    image, brain, truth, prob = _head()
    image[8:11, 8:11, 8:11] = 40.0  # CSF-dark, within the atlas's reach, not touching the ventricle
    prob[8:11, 8:11, 8:11] = 0.2
    mask = V.classify(image, brain, prob, truth, (1.0, 1.0, 1.0), _dark_is_ventricle())
    assert np.array_equal(mask, truth)


def test_the_shipped_classifier_and_its_record():
    classifier = V.shipped()
    assert classifier is not None
    assert classifier.layers[0][0].shape == (V.HIDDEN, len(V.FEATURES))
    assert classifier.layers[-1][0].shape == (1, V.HIDDEN)
    from brainbarriers.barriers.multiatlas import atlas_folder

    record = json.loads((atlas_folder() / V.WEIGHTS).with_suffix(".json").read_text())
    assert record["features"] == list(V.FEATURES) and len(record["data"]) == 3
    assert "CC BY-NC" in record["licence"]


@pytest.mark.parametrize("voxel_mm", [1.0, 2.0])
def test_when_the_classifier_keeps_nothing_the_csf_models_ventricles_stay(monkeypatch, voxel_mm):
    """A classifier that rejects every voxel must not erase the ventricles: the stage keeps the CSF
    model's mask and says so. On a 2 mm grid the classifier is not used at all."""
    from brainbarriers.barriers import multiatlas as M
    from brainbarriers.volume import Volume

    image, brain, truth, prob = _head()
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    fused = np.zeros((len(M.ATLAS_LABELS), *image.shape), np.float32)
    fused[M._CHANNEL[M.VENTRICLES]] = prob

    def warped(atlas, reference, transform):  # registration stood in: the atlas gives ``prob``
        return fused[(slice(None), *M._brain_box(brain, 3))]

    monkeypatch.setattr(M, "warp_structures", warped)
    monkeypatch.setattr(M, "register_to_atlas", lambda fixed, moving: None)
    n = len(V.FEATURES)
    never = V.Classifier(np.zeros(n), np.ones(n), ((np.zeros((1, n)), np.array([-10.0])),))
    atlas = M.load_atlases()[0]
    labels, _, notes = M.multiatlas_structures(Volume(image, affine), Volume(brain.astype(np.uint8), affine),
                                               atlases=(atlas,), ventricle_classifier=never)
    dice = 2 * ((labels == M.VENTRICLES) & truth).sum() / ((labels == M.VENTRICLES).sum() + truth.sum())
    assert dice > 0.9
    assert any("classifier kept no voxel" in n for n in notes) == (voxel_mm == 1.0)


def test_the_classifier_is_used_on_grids_of_about_1_mm_only():
    assert V.suits((1.0, 1.0, 1.0)) and V.suits((0.94, 0.94, 1.2))
    assert not V.suits((2.0, 2.0, 2.0)) and not V.suits((1.0, 1.0, 5.0))
