"""Every model the Slicer panel offers comes from the core's registry, and every option the panel
can send for it is accepted by its step: each step's real ``run`` is called with the option, only
the network inference itself stood in (it is tested elsewhere)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from brainbarriers import model_choices as mc
from brainbarriers.errors import InputError
from brainbarriers.models import list_packages
from brainbarriers.pipeline.registry import all_steps
from brainbarriers.tumor.inference import Segmentation
from brainbarriers.volume import Volume

SHAPE = (12, 12, 12)


class FakeContext:
    """What a step sees (StepContext's interface) on a tiny grid with every product present."""

    def __init__(self, step: str, options: dict):
        self.options = dict(options)
        self.device = "cpu"
        self.warnings: list[str] = []
        brain = np.zeros(SHAPE, np.uint8)
        brain[2:10, 2:10, 2:10] = 1
        image = np.random.default_rng(0).random(SHAPE).astype(np.float32)
        self.products = {"brain_mask": brain}
        for s in ("t1", "t1ce", "t2", "flair"):
            self.products[s] = image
            self.products[f"{s}_brain"] = image * brain

    def has(self, product: str) -> bool:
        return product in self.products

    def get(self, product: str) -> Volume:
        return Volume(self.products[product], np.eye(4))

    def sequences(self) -> list[str]:
        return ["t1", "t1ce", "t2", "flair"]

    def progress(self, fraction: float, message: str = "") -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def new_volume(self, array) -> Volume:
        return Volume(np.asarray(array), np.eye(4))


@pytest.fixture()
def stand_ins(monkeypatch):
    """Replace the networks by recorders; the steps' option handling stays real."""
    used: dict[str, object] = {}

    def brain_mask(image, backend, **kwargs):
        used["skullstrip"] = backend
        mask = Volume((image.array > 0).astype(np.uint8), image.affine)
        return types.SimpleNamespace(mask=mask, warnings=[], volume_ml=1.0)

    def segment_with_uncertainty(images, brain, package, **kwargs):
        used["tumor"] = package.name
        return Segmentation(Volume(np.zeros(SHAPE, np.uint8), np.eye(4)),
                            Volume(np.zeros(SHAPE, np.float32), np.eye(4)), [],
                            Volume(np.zeros(SHAPE, np.float32), np.eye(4)))

    def atlas_barriers(reference, brain_mask):
        used["barriers"] = "atlas"
        return np.zeros(SHAPE, np.uint8), None

    def two_stage(models, images, brain, device, progress, refine=True):
        used["barriers"] = models["folder"]
        return np.zeros(SHAPE, np.uint8), None, {"refined": []}

    monkeypatch.setattr("brainbarriers.skullstrip.step.brain_mask", brain_mask)
    monkeypatch.setattr("brainbarriers.tumor.inference.segment_with_uncertainty",
                        segment_with_uncertainty)
    monkeypatch.setattr("brainbarriers.barriers.atlas.atlas_barriers", atlas_barriers)
    monkeypatch.setattr("brainbarriers.barriers.infer.two_stage", two_stage)
    return used


def test_choices_come_from_the_registry_and_the_steps_defaults():
    from brainbarriers.tumor.step import DEFAULT_MODEL

    tumor = [c.value for c in mc.model_choices("tumor")]
    assert tumor[0] == DEFAULT_MODEL
    assert set(tumor) == {DEFAULT_MODEL} | {p.name for p in list_packages(task="tumor")}
    assert [c.value for c in mc.model_choices("barriers")][:2] == ["atlas", "demo"]
    assert mc.model_choices("skullstrip")[0].value == "deepbet"
    with pytest.raises(ValueError):
        mc.model_choices("ctv")


def test_a_model_set_installed_by_the_user_is_offered(tmp_path, monkeypatch):
    import shutil

    from brainbarriers.barriers.step import demo_models_folder

    shutil.copytree(demo_models_folder(), tmp_path / "my_barriers")
    monkeypatch.setenv("BRAINBARRIERS_MODELS", str(tmp_path))
    values = [c.value for c in mc.model_choices("barriers")]
    assert str(tmp_path / "my_barriers") in values


@pytest.mark.parametrize("step", mc.MODEL_STEPS)
def test_every_option_the_panel_can_send_is_accepted_by_its_step(step, stand_ins):
    run = {s.name: s for s in all_steps()}[step].run
    choices = mc.model_choices(step)
    assert choices
    for choice in choices:
        options = mc.model_options({step: choice.value})[step]
        ctx = FakeContext(step, options)
        outputs = run(ctx)
        assert outputs, (step, choice)
        used = stand_ins[step]
        if step == "barriers" and choice.value != "atlas":
            assert str(used).endswith("barriers_demo") or used == choice.value
        else:
            assert used == choice.value, (step, choice, used)


def test_a_misspelt_option_is_refused_not_ignored(stand_ins):
    from brainbarriers.pipeline.core import check_options

    steps = {s.name: s for s in all_steps()}
    for step, wrong in (("barriers", "model"), ("skullstrip", "model"), ("tumor", "models")):
        with pytest.raises(InputError, match=f"{step}: unknown option"):
            check_options(steps[step], {wrong: "x"})
        check_options(steps[step], {o: "x" for o in steps[step].options})  # every known one passes
    assert mc.model_options({"tumor": ""}) == {}
    with pytest.raises(ValueError):
        mc.model_options({"ctv": "x"})
