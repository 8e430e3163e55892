"""BraTS metrics (Dice, HD95) against MONAI's implementation, the conventions, ``evaluate`` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from brainbarriers.cli.main import main as cli
from brainbarriers.io import save_volume
from brainbarriers.metrics import HD95_PENALTY, brats_scores, dice, hd95
from brainbarriers.volume import Volume


def _blob(rng, shape, n=3, sigma=3.0, level=0.6):
    noise = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise > np.quantile(noise, level + 0.3 * rng.random())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_and_hd95_match_monai(seed):
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    shape = (40, 36, 30)
    a, b = _blob(rng, shape), _blob(rng, shape)
    spacing = (1.0, 1.2, 2.5)
    ta = torch.from_numpy(a[None, None].astype(np.float32))
    tb = torch.from_numpy(b[None, None].astype(np.float32))
    ref_hd = float(compute_hausdorff_distance(ta, tb, include_background=True, percentile=95,
                                              spacing=spacing)[0, 0])
    assert hd95(a, b, spacing) == pytest.approx(ref_hd, rel=1e-5, abs=1e-5)
    metric = DiceMetric(include_background=True)
    metric(ta, tb)
    assert dice(a, b) == pytest.approx(float(metric.aggregate()), rel=1e-6)


def test_hd95_hand_example():
    # Two cubes shifted by 3 voxels along x (2 mm): every surface distance is 0 or a multiple of 2.
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[5:10, 5:10, 5:10] = True
    b[8:13, 5:10, 5:10] = True
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95(a, a) == 0.0 and dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(2 * 50 / 250)


def test_brats_conventions_and_2023_labels():
    aff = np.eye(4)
    truth = np.zeros((30, 30, 30), np.uint8)
    truth[10:20, 10:20, 10:20] = 2
    truth[12:18, 12:18, 12:18] = 1
    truth[14:16, 14:16, 14:16] = 4
    pred = truth.copy()
    pred[pred == 4] = 1  # no enhancing predicted
    s = brats_scores(Volume(pred, aff), Volume(truth, aff))
    assert s["ET"] == {"dice": 0.0, "hd95": round(HD95_PENALTY, 3)}
    assert s["WT"] == {"dice": 1.0, "hd95": 0.0}
    none = truth.copy()
    none[none == 4] = 1
    s = brats_scores(Volume(none, aff), Volume(none, aff))
    assert s["ET"] == {"dice": 1.0, "hd95": 0.0}
    t2023 = np.where(truth == 4, 3, truth).astype(np.uint8)
    s = brats_scores(Volume(truth, aff), Volume(t2023, aff))
    assert all(v == {"dice": 1.0, "hd95": 0.0} for v in s.values())


def test_evaluate_cli(tmp_path, capsys):
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    truth = np.zeros((30, 30, 20), np.uint8)
    truth[8:22, 8:22, 5:15] = 2
    truth[10:18, 10:18, 7:12] = 4
    pred = np.roll(truth, 2, axis=0)
    save_volume(Volume(truth, aff), tmp_path / "gt.nii.gz", np.uint8)
    save_volume(Volume(pred, aff), tmp_path / "pred.nii.gz", np.uint8)
    assert cli(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nii.gz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"ET", "TC", "WT"} and set(out["WT"]) == {"dice", "hd95"}
    assert out["WT"]["dice"] == pytest.approx(dice(pred > 0, truth > 0), abs=1e-4)
    assert out["WT"]["hd95"] == pytest.approx(2.0)
    assert cli(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nii.gz")]) == 0
    assert "WT" in capsys.readouterr().out
    save_volume(Volume(pred[:, :, :10], aff), tmp_path / "small.nii.gz", np.uint8)
    assert cli(["evaluate", str(tmp_path / "small.nii.gz"), str(tmp_path / "gt.nii.gz")]) == 2
    assert "grid" in capsys.readouterr().err
    assert cli(["evaluate", str(tmp_path / "nope.nii.gz"), str(tmp_path / "gt.nii.gz")]) == 2
