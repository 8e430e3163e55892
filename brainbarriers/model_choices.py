"""The trained models each step can use, as a user interface offers them.

One list per step with a choice of model, built from the model registry (``brainbarriers.models``)
and the steps' own defaults; the first entry is what the step uses when told nothing. A choice is
sent to its step as the option ``MODEL_OPTION[step]`` (``--set STEP.OPTION=VALUE``), the option
that step reads. The Slicer module fills its drop-downs from here.
"""

from __future__ import annotations

from dataclasses import dataclass

# The step option that selects the model, per step with a choice of model.
MODEL_OPTION = {"skullstrip": "backend", "tumor": "model", "barriers": "models"}
MODEL_STEPS = tuple(MODEL_OPTION)


@dataclass(frozen=True)
class ModelChoice:
    label: str  # what a drop-down shows
    value: str  # the option's value
    description: str = ""


def _skullstrip() -> list[ModelChoice]:
    from .skullstrip.step import hdbet_installed

    choices = [ModelChoice("deepbet", "deepbet", "deepbet (T1-weighted; fast on CPU)")]
    if hdbet_installed():
        choices.append(ModelChoice("HD-BET", "hdbet", "HD-BET v1, five folds (any MR sequence)"))
    return choices


def _tumor() -> list[ModelChoice]:
    from .models import list_packages
    from .tumor.step import DEFAULT_MODEL

    packages = {p.name: p for p in list_packages(task="tumor")}
    names = [DEFAULT_MODEL] + sorted(n for n in packages if n != DEFAULT_MODEL)
    return [ModelChoice(name, name, packages[name].manifest.get("description", "")
                        if name in packages else "") for name in names]


def _barriers() -> list[ModelChoice]:
    from .barriers.step import demo_models_folder
    from .models import list_packages

    choices = [ModelChoice("atlas", "atlas", "SRI24 barrier atlas registered to the patient"),
               ModelChoice("demo", "demo", "two-stage HMRNet demo models (generated cases only)")]
    demo = demo_models_folder().resolve()
    for package in list_packages(task="barriers-stage1"):
        folder = package.path.parent  # a model set: stage1/ and stage2_*/ packages
        if folder.resolve() != demo:
            choices.append(ModelChoice(folder.name, str(folder), f"model set in {folder}"))
    return choices


def model_choices(step: str) -> list[ModelChoice]:
    """The models ``step`` can use, its default first. Raises ValueError for another step."""
    lister = {"skullstrip": _skullstrip, "tumor": _tumor, "barriers": _barriers}.get(step)
    if lister is None:
        raise ValueError(f"step {step!r} has no choice of model (steps: {', '.join(MODEL_STEPS)})")
    return lister()


def model_options(models: dict[str, str]) -> dict[str, dict[str, str]]:
    """``{step: value}`` as step options ``{step: {option: value}}`` (empty values left out)."""
    unknown = set(models) - set(MODEL_OPTION)
    if unknown:
        raise ValueError(f"no choice of model for step(s) {sorted(unknown)}")
    return {step: {MODEL_OPTION[step]: value} for step, value in models.items() if value}
