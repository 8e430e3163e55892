"""The ``ctv`` pipeline step: the GTV grown by a geodesic margin that stays out of the barriers.

Options (``--set ctv.KEY=VALUE``):

- ``margin_mm`` (default 15): the margin in millimetres;
- ``gtv``: ``enhancing`` (default: enhancing tumour + necrotic core, the guideline's enhancing
  tumour + resection cavity), ``core`` (tumour core) or ``whole`` (whole tumour);
- ``add_edema`` (default false): add the oedema (FLAIR abnormality) to the GTV;
- ``barriers`` (default ``[1,2,3,4]``: falx, tentorium, sagittal and transverse sinus): the barrier
  labels the margin may not cross; ``ventricles=true`` adds the ventricles (6).

Without a ``barriers`` product the margin is confined to the brain mask only (with a warning).
An empty GTV is not an error of the run: the step warns and writes no CTV, so the other outputs of
the run are still exported.
"""

from __future__ import annotations

from ..errors import InputError
from ..pipeline.core import Step, StepContext, option_flag
from ..volume import Volume
from .ctv import DEFAULT_BARRIERS, DEFAULT_MARGIN_MM, VENTRICLES, grow_ctv


def _labels(value) -> tuple[int, ...]:
    items = value if isinstance(value, list | tuple) else str(value).replace(",", " ").split()
    try:
        labels = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise InputError(None, f"ctv: option barriers must be label numbers, got {value!r}") from None
    if any(v < 1 or v > 6 for v in labels):
        raise InputError(None, f"ctv: barrier labels are 1..6, got {value!r}")
    return labels


def _run(ctx: StepContext) -> dict[str, Volume]:
    options = ctx.options
    known = {"margin_mm", "gtv", "add_edema", "barriers", "ventricles"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(None, f"ctv: unknown option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    labels = _labels(options.get("barriers", list(DEFAULT_BARRIERS)))
    if option_flag(options.get("ventricles", False), "ctv", "ventricles"):
        labels = tuple(sorted(set(labels) | {VENTRICLES}))
    barriers = ctx.get("barriers") if ctx.has("barriers") else None
    if barriers is None:
        ctx.warn("ctv: no barrier map in this run; the margin is confined to the brain mask only")
    ctx.progress(0.1, "growing the GTV by a geodesic margin")
    try:
        ctv = grow_ctv(
            ctx.get("tumor"), ctx.get("brain_mask"), barriers,
            margin_mm=options.get("margin_mm", DEFAULT_MARGIN_MM),
            gtv=str(options.get("gtv", "enhancing")),
            add_edema=option_flag(options.get("add_edema", False), "ctv", "add_edema"),
            barrier_labels=labels, warn=ctx.warn, check=ctx.check_cancel,
        )
    except InputError as e:
        if "GTV is empty" not in e.problem:
            raise
        ctx.warn(f"{e.problem}")
        return {}
    ctx.progress(1.0, f"CTV: {int(ctv.array.sum())} voxels")
    return {"ctv": ctx.new_volume(ctv.array)}


STEP = Step(
    name="ctv",
    run=_run,
    inputs=("tumor", "brain_mask"),
    optional_inputs=("barriers",),
    # Optional: an empty GTV gives a warning and no CTV instead of failing the whole run.
    optional_outputs=("ctv",),
    labels=("ctv",),
    version="1",
    description="clinical target volume: GTV + geodesic margin that does not cross the barriers",
)
