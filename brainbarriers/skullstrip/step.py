"""The ``skullstrip`` pipeline step."""

from __future__ import annotations

import numpy as np

from ..pipeline.core import Step, StepContext
from .core import brain_volume_warning, skullstrip_volume

# deepbet is trained on T1-weighted images: the first of these that was given is used.
DEEPBET_ORDER = ("t1", "t1ce", "t2", "flair")
BRAIN_SEQUENCES = ("t1", "t1ce", "t2", "flair", "ct")


def _run(ctx: StepContext) -> dict:
    backend = ctx.options.get("backend", "deepbet")
    given = [s for s in DEEPBET_ORDER if ctx.has(s)]
    if not given:
        from ..errors import InputError

        raise InputError(None, "skull-stripping needs one of --t1, --t1ce, --t2, --flair")
    source = ctx.options.get("sequence", given[0])
    if backend == "deepbet" and source not in ("t1", "t1ce"):
        ctx.warn(f"deepbet is trained on T1-weighted images; running it on {source} (no T1 given)")
    ctx.progress(0.05, f"{backend} on {source}")
    mask = skullstrip_volume(ctx.get(source), backend=backend, device=ctx.device)
    ctx.progress(0.9, "masking the sequences")
    warning = brain_volume_warning(mask)
    if warning:
        ctx.warn(warning)
    inside = mask.array > 0
    results = {"brain_mask": ctx.new_volume(mask.array)}
    for name in BRAIN_SEQUENCES:
        if ctx.has(name) and name != "ct":
            image = ctx.get(name).array
            results[f"{name}_brain"] = ctx.new_volume(np.where(inside, image, 0).astype(np.float32))
    return results


STEP = Step(
    name="skullstrip",
    run=_run,
    optional_inputs=BRAIN_SEQUENCES,
    outputs=("brain_mask",),
    optional_outputs=tuple(f"{s}_brain" for s in BRAIN_SEQUENCES if s != "ct"),
    labels=("brain_mask",),
    version="1",
    description="brain mask (skull-stripping)",
)
