"""Cerebellum and ventricles on real heads: the multi-atlas stage (``barriers/multiatlas.py``).

Fast checks of the definitions, the shipped atlases and their terms, the per-case CSF model (both
contrast signs), bad input and the step's option. The accuracy on real heads (OASIS, leave-one-out)
is measured by ``bench/barriers_accuracy.py --oasis``.
"""

from __future__ import annotations

import numpy as np
import pytest

from brainbarriers.barriers import multiatlas as M
from brainbarriers.metrics import dice
from brainbarriers.volume import Volume


# ------------------------------------------------------------------------------- definitions
def test_the_structures_follow_the_neuromorphometrics_definitions():
    labels = np.array([38, 39, 40, 41, 71, 72, 73, 35, 4, 11, 49, 50, 51, 52, 15, 46, 0], np.int16)
    out = M.structures_from_neuromorphometrics(labels.reshape(1, 1, -1)).ravel()
    assert out.tolist() == [5] * 7 + [0] + [6] * 6 + [0, 0, 0]  # brain stem, cavum, outer CSF: no
    assert "vermis" in M.CONVENTION and set(M.NEUROMORPHOMETRICS) == {M.CEREBELLUM, M.VENTRICLES}


def test_the_shipped_atlases_load_with_their_terms():
    atlases = M.load_atlases()
    assert [a.name for a in atlases] == list(M.ATLAS_SUBJECTS)
    for a in atlases:
        assert set(np.unique(a.labels.array)) == {0, M.CEREBELLUM, M.VENTRICLES}
        assert np.allclose(a.t1.spacing, 2.0, atol=0.3) and np.allclose(a.labels.spacing, 1.0, atol=1e-3)
    readme = (M.atlas_folder() / "README.md").read_text()
    assert "CC BY-NC" in readme and "OASIS" in readme and "Neuromorphometrics" in readme


# ------------------------------------------------------------------------------- the CSF model
def _ball(shape, centre, radius):
    ii, jj, kk = np.indices(shape)
    return (ii - centre[0]) ** 2 + (jj - centre[1]) ** 2 + (kk - centre[2]) ** 2 <= radius**2


@pytest.mark.parametrize("csf_bright", [False, True])  # T1/FLAIR (dark CSF) or T2 (bright CSF)
def test_the_csf_model_shrinks_an_atlas_ventricle_that_is_too_large(csf_bright):
    shape = (40, 40, 40)
    brain = _ball(shape, (20, 20, 20), 18)
    true = _ball(shape, (20, 20, 20), 4)
    rng = np.random.default_rng(0)
    image = np.where(true, 30.0, 100.0) + rng.normal(0, 5, shape)
    if csf_bright:
        image = 200.0 - image
    prob = np.clip(1.5 - np.sqrt(((np.indices(shape) - 20) ** 2).sum(0)) / 8.0, 0, 1)  # radius ~8: 8x too big
    mask, warning = M.csf_refine(image, brain, prob, np.ones(3))
    assert warning is None
    assert (prob > 0.5).sum() > 4 * true.sum()
    assert dice(mask, true) > 0.9


def test_tissue_in_a_too_large_atlas_core_does_not_become_ventricle():
    """CSF 30 (the ventricle, radius 5, and the outer CSF), grey matter 70 (a rim around the
    ventricle and the cortex), white matter 100. The atlas's ventricle (radius 9) is so large that
    its core is mostly the grey rim: the mid-point between core and surrounding tissue (85) would
    take the rim in; the brain's CSF / grey-matter boundary keeps it out."""
    shape = (44, 44, 44)
    r = np.sqrt(((np.indices(shape) - 22) ** 2).sum(0))
    brain = r <= 20
    true = r <= 5
    image = np.where(true | (r > 18), 30.0, np.where((r <= 8) | (r > 16), 70.0, 100.0))
    image += np.random.default_rng(0).normal(0, 3, shape)
    prob = np.clip((10.0 - r) / 2.0, 0, 1)  # 1 out to r = 8, 0 from r = 10
    assert np.median(image[(prob >= 0.9) & brain]) > 60  # the core is mostly grey matter
    mask, warning = M.csf_refine(image, brain, prob, np.ones(3))
    assert warning is None
    assert dice(mask, true) > 0.95


def test_the_csf_model_keeps_the_atlas_mask_and_says_so_without_contrast():
    shape = (30, 30, 30)
    brain = _ball(shape, (15, 15, 15), 14)
    prob = _ball(shape, (15, 15, 15), 5).astype(np.float32)
    image = np.random.default_rng(0).normal(100, 5, shape)
    mask, warning = M.csf_refine(image, brain, prob, np.ones(3))
    assert warning and "atlas mask is kept" in warning
    assert np.array_equal(mask, prob > 0.5)


def test_bad_input_gets_a_clear_error():
    v = Volume(np.ones((8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="empty brain mask"):
        M.multiatlas_structures(v, v.with_array(np.zeros((8, 8, 8), np.uint8)))
    other = Volume(np.ones((8, 8, 8), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="not on the image's grid"):
        M.multiatlas_structures(v, other)
    with pytest.raises(ValueError, match="different grids"):
        M.make_atlas("x", v, other)


def test_the_step_refuses_an_unknown_anatomy_before_any_work():
    from brainbarriers.barriers.step import STEP
    from brainbarriers.errors import InputError

    class Ctx:
        options = {"anatomy": "atlases"}

        def get(self, name):
            return Volume(np.ones((4, 4, 4), np.uint8), np.eye(4))

        def has(self, name):
            return name == "t1"

        def progress(self, *a):
            raise AssertionError("no work may start")

    with pytest.raises(InputError, match="anatomy must be one of template, multiatlas"):
        STEP.run(Ctx())
    assert "anatomy" in STEP.options
