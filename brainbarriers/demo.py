"""``brainbarriers demo``: every step on the shipped demo case, scored against its ground truth."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from .io import atomic_path, load_volume
from .labels import SEGMENTS_BY_OUTPUT
from .metrics import brats_scores, dice, label_dice
from .pipeline.core import FINAL_OUTPUTS, check_output_folder
from .volume import Volume

DEMO_SEQUENCES = ("t1", "t1ce", "t2", "flair")


def demo_case_folder() -> Path:
    return Path(str(resources.files("brainbarriers") / "data" / "demo"))


# Output product -> how it is scored against its ``<product>_truth.nii.gz``.
EVALUATORS: dict[str, Callable[[Volume, Volume], dict]] = {
    "brain_mask": lambda pred, truth: {"dice": round(dice(pred.array > 0, truth.array > 0), 4)},
    "tumor": brats_scores,
    "barriers": lambda pred, truth: label_dice(
        pred, truth, {v: s.key for v, s in SEGMENTS_BY_OUTPUT["barriers"].items()}),
}


def copy_demo_inputs(out: Path) -> dict[str, Path]:
    """Copy the demo case (sequences and truths) to ``out/inputs``; returns the sequences' paths."""
    check_output_folder(out)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for src in sorted(demo_case_folder().glob("*.nii.gz")):
        if not (inputs / src.name).exists():
            with atomic_path(inputs / src.name) as tmp:
                shutil.copyfile(src, tmp)
    return {s: inputs / f"{s}.nii.gz" for s in DEMO_SEQUENCES}


def evaluate_run(out: Path) -> dict:
    """Score each output in ``out`` that has a truth in ``out/inputs``; writes evaluation.json."""
    results = {}
    for product, filename in FINAL_OUTPUTS.items():
        truth_path = out / "inputs" / f"{product}_truth.nii.gz"
        if product in EVALUATORS and (out / filename).exists() and truth_path.exists():
            pred = load_volume(out / filename, allow_empty=True)
            truth = load_volume(truth_path, allow_empty=True)
            results[product] = EVALUATORS[product](pred, truth)
    with atomic_path(out / "evaluation.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    return results
