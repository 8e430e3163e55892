"""The ``supervoxels`` pipeline step: SSLIC_Var oversegmentation of the skull-stripped sequences
inside the brain mask, then the merge hierarchy (``hierarchy``), cut at one level.

Outputs (label maps, 0 outside the brain): ``supervoxels`` (the oversegmentation) and
``supervoxels_merged`` (the hierarchy's level of ``regions`` regions; every other level is had from
the oversegmentation and the hierarchy, e.g. by the Slicer effect's slider). Options
(``--set supervoxels.KEY=VALUE``): ``size`` (K, voxels: one number or three, default 7), ``m``
(0.1), ``eps`` (0.01), ``adaptive`` (true: SSLIC_Var; false: SLIC), ``max_factor`` (10, the clamp
of m_k / m), ``iterations`` (5), ``alpha`` (0.5), ``beta`` (0.1), ``gamma`` (0.1), ``bins`` (32),
``texture`` (false; true adds the paper's 8-direction texture histograms: on 4 real BraTS
cases tumour ASA at 300 regions 0.753 with them, 0.758 without, for 3.4 vs 0.9 CPU s),
``order`` ("ward" or "weight", see
``hierarchy``), ``regions`` (default 300, or a quarter of the supervoxels when there are fewer than
1200), ``threshold`` (cut at this merge height instead of a count), ``threshold_edges``.

When the run has tumour labels (the tumour step runs first), the merging keeps its regions fine
where they will be edited: ``focus`` (true) makes merging ``focus_factor`` (100) times dearer within
``focus_mm`` (5) of the tumour and, within ``focus_reach_mm`` (20) of it, wherever the model's
whole-tumour probability is at least ``focus_probability`` (0.05) (``hierarchy``, Focus);
``focus=false`` merges as the paper does. With the focus, a finer oversegmentation pays off at
300 regions (its fine cells are kept where the tumour is), hence K = 7 rather than 10 (README,
Supervoxels).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..pipeline.core import Step, StepContext
from ..volume import Volume

SEQUENCE_PRODUCTS = ("t1_brain", "t1ce_brain", "t2_brain", "flair_brain")


def _size(value) -> tuple[int, int, int]:
    sizes = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(sizes) != 3 or any(int(s) < 2 for s in sizes):
        raise InputError(None, f"supervoxels.size={value!r}: give one or three sizes of >= 2 voxels")
    return tuple(int(s) for s in sizes)


DEFAULT_SIZE = 7
DEFAULT_REGIONS = 300


def default_regions(n: int) -> int:
    """The merged map's level: 300 regions, or a quarter of the supervoxels when fewer than 1200."""
    return DEFAULT_REGIONS if n >= 4 * DEFAULT_REGIONS else max(1, n // 4)


def compute_supervoxels(images: list[np.ndarray], mask: np.ndarray, *, device: str = "cpu",
                        options: dict | None = None, progress=None,
                        focus: np.ndarray | None = None):
    """Oversegmentation and merged map (numpy int32) of co-registered images inside ``mask``.

    Each image is scaled to [0, 1] inside the mask first. ``focus``: where the merging keeps its
    regions fine (``options["focus_factor"]``, default 100). Returns (supervoxels, merged, record)
    with record = {"threshold": the paper's T, "regions": the merged map's count, "hierarchy":
    the ``Hierarchy``}.
    """
    from .hierarchy import FOCUS_FACTOR, build_hierarchy
    from .slic import scale_to_unit, sslic

    o = dict(options or {})
    mask = np.asarray(mask) > 0
    if not images:
        raise InputError(None, "supervoxels need at least one sequence")
    features = np.stack([scale_to_unit(np.asarray(x, np.float32), mask) for x in images])
    report = progress or (lambda fraction, message: None)
    with torch.inference_mode():
        labels = sslic(
            features, mask, size=_size(o.get("size", DEFAULT_SIZE)), m=float(o.get("m", 0.1)),
            eps=float(o.get("eps", 0.01)), adaptive=bool(o.get("adaptive", True)),
            max_factor=float(o.get("max_factor", 10.0)), iterations=int(o.get("iterations", 5)),
            device=device, progress=lambda f, msg: report(0.8 * f, msg))
    over = labels.cpu().numpy().astype(np.int32)
    del labels
    hierarchy = build_hierarchy(
        over, list(features), alpha=float(o.get("alpha", 0.5)), beta=float(o.get("beta", 0.1)),
        gamma=float(o.get("gamma", 0.1)), bins=int(o.get("bins", 32)),
        texture=_flag(o.get("texture", False)), order=str(o.get("order", "ward")),
        threshold_edges=str(o.get("threshold_edges", "nng")),
        focus=focus, focus_factor=_number(o, "focus_factor", FOCUS_FACTOR, low=1.0),
        progress=lambda f, msg: report(0.8 + 0.2 * f, msg))
    if o.get("threshold") is not None:
        lut = hierarchy.lookup(threshold=float(o["threshold"]))
    else:
        lut = hierarchy.lookup(regions=int(o.get("regions", default_regions(hierarchy.n))))
    merged = lut[over]
    record = {"threshold": hierarchy.threshold, "regions": int(lut.max()), "hierarchy": hierarchy}
    return over, merged.astype(np.int32), record


def _flag(value, key: str = "texture") -> bool:
    from ..pipeline.core import option_flag

    return option_flag(value, "supervoxels", key)


def _number(options: dict, key: str, default: float, low: float = 0.0) -> float:
    try:
        value = float(options.get(key, default))
    except (TypeError, ValueError):
        value = float("nan")
    if not value >= low:
        raise InputError(None, f"supervoxels.{key}={options[key]!r}: give a number of {low:g} or "
                         "more")
    return value


def tumour_focus(ctx: StepContext) -> np.ndarray | None:
    """Voxels within ``focus_mm`` of the run's tumour labels and, within ``focus_reach_mm`` of
    them, those where the model's whole-tumour probability is at least ``focus_probability``; None
    when there is no tumour or the focus is off."""
    from .hierarchy import FOCUS_MM, FOCUS_PROBABILITY, FOCUS_REACH_MM, focus_around

    if not ctx.has("tumor") or not _flag(ctx.options.get("focus", True), "focus"):
        return None
    tumour = ctx.get("tumor")
    probability = ctx.get("tumor_probability").array if ctx.has("tumor_probability") else None
    return focus_around(tumour.array > 0, tumour.grid.spacing,
                        _number(ctx.options, "focus_mm", FOCUS_MM), probability=probability,
                        min_probability=_number(ctx.options, "focus_probability",
                                                FOCUS_PROBABILITY),
                        reach_mm=_number(ctx.options, "focus_reach_mm", FOCUS_REACH_MM))


def run(ctx: StepContext) -> dict[str, Volume]:
    names = [p for p in SEQUENCE_PRODUCTS if ctx.has(p)]
    if not names:
        raise InputError(None, "the supervoxels step needs at least one skull-stripped sequence "
                         "(t1_brain, t1ce_brain, t2_brain or flair_brain)")
    mask = ctx.get("brain_mask").array > 0
    if not mask.any():
        raise InputError(None, "the brain mask is empty: no supervoxels can be computed")
    images = [ctx.get(p).array for p in names]
    focus = tumour_focus(ctx)
    ctx.progress(0.0, f"supervoxels on {', '.join(names)}"
                 + (", regions kept fine around the tumour" if focus is not None else ""))
    over, merged, record = compute_supervoxels(images, mask, device=ctx.device, options=ctx.options,
                                               progress=ctx.progress, focus=focus)
    ctx.progress(1.0, f"{int(over.max())} supervoxels, {record['regions']} regions in the merged "
                 f"map (the paper's T = {record['threshold']:.4f})")
    return {"supervoxels": ctx.new_volume(over), "supervoxels_merged": ctx.new_volume(merged)}


STEP = Step(
    name="supervoxels",
    run=run,
    inputs=("brain_mask",),
    optional_inputs=SEQUENCE_PRODUCTS + ("tumor", "tumor_probability"),
    outputs=("supervoxels", "supervoxels_merged"),
    labels=("supervoxels", "supervoxels_merged"),
    version="4",
    description="multimodal supervoxels (SSLIC_Var) and their merge hierarchy",
)
