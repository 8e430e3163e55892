"""`brainbarriers demo` end to end on the shipped 1 mm case (the README's first command)."""

from __future__ import annotations

import json
import subprocess
import sys

import slicerio

from brainbarriers.io import load_volume


def test_demo_writes_outputs_inputs_and_evaluation(tmp_path):
    out = tmp_path / "demo"
    # Skull-stripping, tumour and CTV (the barriers' atlas registration is covered elsewhere).
    result = subprocess.run([sys.executable, "-m", "brainbarriers.cli.main", "demo", "--out",
                             str(out), "--steps", "ctv", "--device", "cpu"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("brain_mask", "tumor", "ctv"):
        volume = load_volume(out / f"{name}.nii.gz")
        assert volume.grid.same_as(load_volume(out / "inputs" / "t1ce.nii.gz").grid)
    for name in ("t1", "t1ce", "t2", "flair", "tumor_truth", "brain_mask_truth", "barriers_truth"):
        assert (out / "inputs" / f"{name}.nii.gz").exists()
    assert (out / "overview.png").read_bytes()[:4] == b"\x89PNG"
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["brain_mask"]["dice"] >= 0.95
    # The default model is trained on real scans; on this synthetic tumour its ensemble scores
    # WT 0.92, TC 0.80, ET 0.81 (README, "The demo case").
    assert evaluation["tumor"]["WT"]["dice"] >= 0.85 and evaluation["tumor"]["ET"]["dice"] >= 0.7
    assert json.loads(result.stdout) == evaluation  # what the command prints
    names = {s["name"] for s in slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"),
                                                           skip_voxels=True)["segments"]}
    assert {"Brain", "Enhancing tumour", "Peritumoral oedema", "CTV"} <= names
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["steps"]] == ["skullstrip", "tumor", "ctv"]
    assert manifest["status"] == "done"
