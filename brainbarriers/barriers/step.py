"""The ``barriers`` pipeline step: the ABCs label map (see ``brainbarriers.barriers``).

Which stage runs (option ``--set barriers.models=...``):

- ``models=PATH``: a model set written by ``brainbarriers train barriers`` - two-stage HMRNet
  (stage 1 DynUNet + stage-2 HMRNets); its input sequences must have been given;
- ``models=demo``: the shipped demo models (``data/models/barriers_demo``, trained on generated
  cases with T1ce + T2 - only meaningful on generated cases, whose falx, tentorium and sinuses are
  painted with a visible contrast; they miss those on the demo case and on patients);
- ``models=atlas`` (the **default**): the atlas stage - the labelled SRI24 template registered to the
  patient (rigid, affine, B-spline; ``barriers/atlas.py``). The default because it works on any real
  MRI; the demo models were trained on phantoms only.

Options: ``reference`` (sequence the atlas is registered to; default the first of t1, t1ce, t2,
flair given), ``anatomy`` (the atlas stage's cerebellum and ventricles: ``multiatlas``, the
default (``atlas.DEFAULT_ANATOMY``) - three labelled OASIS heads registered by demons, label
fusion and a CSF model, ``barriers/multiatlas.py``; ``template`` - those of the SRI24 template, the
ventricles re-drawn from the patient's CSF), ``refine=false`` (two-stage models: stage 1 only).
The stage that produced the output
is reported with ``ctx.warn`` ("barriers: produced by ...") so that it lands in the manifest.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..pipeline.core import Step, StepContext, option_flag
from ..volume import Volume

DEMO_MODELS = "barriers_demo"
OPTIONS = ("models", "reference", "refine", "anatomy")


def demo_models_folder() -> Path:
    return Path(str(resources.files("brainbarriers") / "data" / "models" / DEMO_MODELS))


def _run(ctx: StepContext) -> dict[str, Volume]:
    choice = str(ctx.options.get("models", "atlas"))
    brain_mask = ctx.get("brain_mask")
    brain = brain_mask.array > 0
    if not brain.any():
        raise InputError(None, "barriers: the brain mask is empty")
    given = [s for s in ("t1", "t1ce", "t2", "flair", "ct") if ctx.has(s)]
    if choice == "atlas":
        from .atlas import ANATOMY_CHOICES, DEFAULT_ANATOMY, atlas_barriers
        from .multiatlas import BarrierWarning

        ref = str(ctx.options.get("reference", next((s for s in ("t1", "t1ce", "t2", "flair") if s in given),
                                                    given[0] if given else "")))
        if ref not in given:
            raise InputError(None, f"barriers: reference sequence {ref!r} was not given")
        anatomy = str(ctx.options.get("anatomy", DEFAULT_ANATOMY))
        if anatomy not in ANATOMY_CHOICES:
            raise InputError(None, f"barriers: anatomy must be one of {', '.join(ANATOMY_CHOICES)}, "
                                   f"got {anatomy!r}")
        ctx.progress(0.1, f"registering the barrier atlas to {ref}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BarrierWarning)
            # The default call stays the plain two-argument one (stand-ins in tests replace it).
            labels, _ = atlas_barriers(ctx.get(ref), brain_mask,
                                       **({} if anatomy == DEFAULT_ANATOMY else {"anatomy": anatomy}))
        for w in caught:
            if issubclass(w.category, BarrierWarning):
                ctx.warn(f"barriers: {w.message}")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        how = ("cerebellum and ventricles by OASIS multi-atlas fusion with a CSF model"
               if anatomy == "multiatlas" else
               "cerebellum from the template, ventricles from the template and the image's CSF")
        ctx.warn(f"barriers: produced by the atlas stage (SRI24 barrier template registered to {ref}; "
                 f"{how}; no trained models)")
    else:
        from .infer import two_stage
        from .package import load_model_set

        folder = demo_models_folder() if choice == "demo" else Path(choice)
        models = load_model_set(folder, ctx.device)
        need = list(models["stage1"][1]["inputs"])
        for _, man in models["stage2"].values():
            need = need + [s for s in man["inputs"] if s not in need]
        missing = [s for s in need if s not in given]
        if missing:
            raise InputError(None, f"barriers: the models in {folder} need {', '.join('--' + s for s in missing)}")
        images = {s: ctx.get(s) for s in need}
        refine = option_flag(ctx.options.get("refine", True), "barriers", "refine")
        labels, _, info = two_stage(models, images, brain, ctx.device, ctx.progress, refine=refine)
        refined = ", ".join(info["refined"]) or "none"
        ctx.warn(f"barriers: produced by the two-stage HMRNet models in {folder} (stage 2 refined: {refined})")
    labels = np.where(brain_envelope(brain), labels, 0).astype(np.uint8)
    ctx.progress(1.0, "barriers done")
    return {"barriers": ctx.new_volume(labels)}


def brain_envelope(brain: np.ndarray) -> np.ndarray:
    """The brain and its dural surroundings (sinuses lie just outside the brain mask): ~10 voxels."""
    from scipy import ndimage as ndi

    return ndi.binary_dilation(brain, iterations=10)


STEP = Step(
    name="barriers",
    run=_run,
    inputs=("brain_mask",),
    outputs=("barriers",),
    optional_inputs=("t1", "t1ce", "t2", "flair", "ct"),
    labels=("barriers",),
    # 2: cerebellum and ventricles from the OASIS multi-atlas by default;
    # 3: every registration on one thread (reproducible), the ventricle classifier
    version="3",
    description="anatomical barriers: falx, tentorium, sinuses, cerebellum, ventricles",
    options=OPTIONS,
)
