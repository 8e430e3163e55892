"""Test-only pipeline steps that stand in for other capabilities (not product code).

Pytest puts this folder on sys.path (no __init__.py), so tests import it as ``pipeline_standins``.
"""

from __future__ import annotations

import numpy as np

from brainbarriers.geometry import resample_to, to_canonical
from brainbarriers.io import load_volume
from brainbarriers.pipeline import Step

SEQ = ("t1", "t1ce", "t2", "flair")


def standin_skullstrip(truth_path) -> Step:
    """Brain mask from a truth file, sequences masked by it: what skullstrip makes."""
    def run(ctx):
        mask = resample_to(to_canonical(load_volume(truth_path)), ctx.grid, label=True).array > 0
        out = {"brain_mask": ctx.new_volume(mask.astype(np.uint8))}
        for s in ctx.sequences():
            out[f"{s}_brain"] = ctx.new_volume(np.where(mask, ctx.get(s).array, 0).astype(np.float32))
        return out

    return Step(name="skullstrip", run=run, optional_inputs=SEQ, outputs=("brain_mask",),
                optional_outputs=tuple(f"{s}_brain" for s in SEQ), labels=("brain_mask",))
