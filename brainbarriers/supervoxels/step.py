"""The ``supervoxels`` pipeline step: SSLIC_Var oversegmentation of the skull-stripped sequences
inside the brain mask, then graph-based merging.

Outputs (label maps, 0 outside the brain): ``supervoxels`` (the oversegmentation) and
``supervoxels_merged``. Options (``--set supervoxels.KEY=VALUE``): ``size`` (K, voxels: one number or
three, default 10), ``m`` (0.1), ``eps`` (0.01), ``adaptive`` (true: SSLIC_Var; false: SLIC),
``max_factor`` (10, the clamp of m_k / m), ``iterations`` (5), ``alpha`` (0.5), ``beta`` (0.1),
``gamma`` (0.1), ``bins`` (32), ``threshold_edges`` ("nng" or "rag", see ``merge``), ``threshold``
(a fixed T instead of the computed one), ``max_rounds`` (200).
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


def compute_supervoxels(images: list[np.ndarray], mask: np.ndarray, *, device: str = "cpu",
                        options: dict | None = None, progress=None):
    """Oversegmentation and merged map (numpy int32) of co-registered images inside ``mask``.

    Each image is scaled to [0, 1] inside the mask first. Returns (supervoxels, merged, record).
    """
    from .merge import merge_supervoxels
    from .slic import scale_to_unit, sslic

    o = dict(options or {})
    mask = np.asarray(mask) > 0
    if not images:
        raise InputError(None, "supervoxels need at least one sequence")
    features = np.stack([scale_to_unit(np.asarray(x, np.float32), mask) for x in images])
    report = progress or (lambda fraction, message: None)
    with torch.inference_mode():
        labels = sslic(
            features, mask, size=_size(o.get("size", 10)), m=float(o.get("m", 0.1)),
            eps=float(o.get("eps", 0.01)), adaptive=bool(o.get("adaptive", True)),
            max_factor=float(o.get("max_factor", 10.0)), iterations=int(o.get("iterations", 5)),
            device=device, progress=lambda f, msg: report(0.8 * f, msg))
        merged, record = merge_supervoxels(
            labels, torch.as_tensor(features, device=labels.device), alpha=float(o.get("alpha", 0.5)),
            beta=float(o.get("beta", 0.1)), gamma=float(o.get("gamma", 0.1)),
            bins=int(o.get("bins", 32)), max_rounds=int(o.get("max_rounds", 200)),
            threshold=None if o.get("threshold") is None else float(o["threshold"]),
            threshold_edges=str(o.get("threshold_edges", "nng")),
            progress=lambda f, msg: report(0.8 + 0.2 * f, msg))
    return labels.cpu().numpy().astype(np.int32), merged.cpu().numpy().astype(np.int32), record


def run(ctx: StepContext) -> dict[str, Volume]:
    names = [p for p in SEQUENCE_PRODUCTS if ctx.has(p)]
    if not names:
        raise InputError(None, "the supervoxels step needs at least one skull-stripped sequence "
                         "(t1_brain, t1ce_brain, t2_brain or flair_brain)")
    mask = ctx.get("brain_mask").array > 0
    if not mask.any():
        raise InputError(None, "the brain mask is empty: no supervoxels can be computed")
    images = [ctx.get(p).array for p in names]
    ctx.progress(0.0, f"supervoxels on {', '.join(names)}")
    over, merged, record = compute_supervoxels(images, mask, device=ctx.device, options=ctx.options,
                                               progress=ctx.progress)
    threshold = record["threshold"]
    ctx.progress(1.0, f"{int(over.max())} supervoxels, {int(merged.max())} after merging"
                 + ("" if threshold is None else f" (T = {threshold:.4f})"))
    return {"supervoxels": ctx.new_volume(over), "supervoxels_merged": ctx.new_volume(merged)}


STEP = Step(
    name="supervoxels",
    run=run,
    inputs=("brain_mask",),
    optional_inputs=SEQUENCE_PRODUCTS,
    outputs=("supervoxels", "supervoxels_merged"),
    labels=("supervoxels", "supervoxels_merged"),
    version="1",
    description="multimodal supervoxels (SSLIC_Var) and their merging",
)
