"""The Slicer module on Slicer's own Python package of one release (``BB_SLICER_VERSION``), only
Qt stood in (see ``slicer_standin``). Run by ``test_slicer_harness.py`` in a process of its own
per release; not collected on its own (the file name does not start with ``test_``).

The panel is driven as a user drives it: the model combo boxes, the parameter node, Apply (which
installs what is missing, then runs the real worker), and the dialogs that appear.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slicer_standin  # noqa: E402

VERSION = os.environ.get("BB_SLICER_VERSION", "v5.10.0")
REC = slicer_standin.install(VERSION)

import BrainBarriers as BB  # noqa: E402
import slicer  # noqa: E402

DEMO = Path(BB.demoFolder())


# ------------------------------------------------------------------------------ stand-in widgets
class Combo:
    def __init__(self):
        self.items: list[tuple[str, str]] = []
        self.index = -1
        self.toolTip = ""
        self.slots: list = []
        self.blocked = False

    def connect(self, signal, slot):
        self.slots.append(slot)

    def blockSignals(self, block):
        was, self.blocked = self.blocked, block
        return was

    def clear(self):
        self.items, self.index = [], -1

    def addItem(self, label, data=None):
        self.items.append((label, data))
        if self.index < 0:
            self.index = 0

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def itemData(self, index):
        return self.items[index][1]

    def setCurrentIndex(self, index):
        self.index = index
        if not self.blocked:
            for slot in self.slots:
                slot(index)

    @property
    def currentData(self):
        return self.items[self.index][1]


class Widget(types.SimpleNamespace):
    enabled = True
    toolTip = ""

    def connect(self, signal, slot):
        pass

    def setText(self, text):
        self.text = text

    def setRange(self, lo, hi):
        self.range = (lo, hi)

    def setValue(self, value):
        self.value = value


def panel(parameters):
    """A BrainBarriersWidget with stand-in widgets, set up as ``setup()`` does."""
    # With a parent given, Slicer's base class leaves setup() (loadUI: Qt) to the module panel.
    widget = BB.BrainBarriersWidget(types.SimpleNamespace(layout=lambda: None))
    widget.ui = types.SimpleNamespace(
        **{f"{s}ModelComboBox": Combo() for s in BB.MODEL_STEPS},
        **{n: Widget() for n in ("applyButton", "cancelButton", "installButton", "progressBar",
                                 "statusLabel")})
    widget.logic = BB.BrainBarriersLogic()
    for step in BB.MODEL_STEPS:
        getattr(widget.ui, f"{step}ModelComboBox").connect(
            "currentIndexChanged(int)", lambda _i, s=step: widget._onModelChanged(s))
    widget._fillModelComboBoxes()
    widget._parameterNode = parameters  # what setParameterNode does, without connectGui
    widget._showModels()
    widget._checkCanApply()
    return widget


def load_demo(sequences=BB.DEMO_SEQUENCES):
    return {s: slicer.util.loadVolume(str(DEMO / f"{s}.nii.gz")) for s in sequences}


def run_events(widget, until, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        REC.tick()
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def fresh_scene():
    slicer.mrmlScene.Clear(0)
    REC.dialogs.clear()
    yield


# ------------------------------------------------------------------------------ tests
def test_module_metadata_and_startup_registrations():
    module = BB.BrainBarriers(slicer_standin.module_parent(Path(BB.__file__)))
    assert ("qSlicerAbstractCoreModule", "Segmentation") in REC.translations
    assert module.parent.categories == ["Segmentation"]
    startup = [slot for signal, slot in REC.connections if signal == "startupCompleted()"]
    assert BB.registerTerminology in startup and BB.registerSampleData in startup
    BB.registerTerminology()  # loads the context into the Terminologies logic
    import vtk

    names = vtk.vtkStringArray()
    slicer.modules.terminologies.logic().GetLoadedTerminologyNames(names)
    assert "Segmentation category and type - BrainBarriers" in [
        names.GetValue(i) for i in range(names.GetNumberOfValues())]
    assert BB.slicerVersionSupported()


def test_sample_data_source_is_the_demo_case_with_checksums():
    import hashlib
    import urllib.parse
    import urllib.request

    args = BB.sampleDataArguments()
    assert Path(args["thumbnailFileName"]).is_file()
    for uri, checksum in zip(args["uris"], args["checksums"]):
        path = urllib.request.url2pathname(urllib.parse.urlparse(uri).path)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        assert checksum == f"SHA256:{digest}", path
    assert len(args["uris"]) == len(args["fileNames"]) == len(args["nodeNames"]) == 4


def test_inputs_are_guessed_from_the_volume_names():
    nodes = load_demo()  # named t1, t1ce, t2, flair after their files
    parameters = BB.BrainBarriersLogic().getParameterNode()
    BB.BrainBarriersLogic.guessInputs(parameters)
    for sequence, node in nodes.items():
        assert getattr(parameters, sequence) is node or \
            getattr(parameters, sequence).GetID() == node.GetID(), sequence
    assert parameters.ct is None


def test_combo_boxes_list_the_registry_and_the_choice_reaches_the_run_options(monkeypatch):
    parameters = BB.BrainBarriersLogic().getParameterNode()
    widget = panel(parameters)
    for step in BB.MODEL_STEPS:
        combo = getattr(widget.ui, f"{step}ModelComboBox")
        assert combo.items == BB.modelChoices(step), step
        assert getattr(parameters, f"{step}Model") == combo.items[0][1]  # the step's default
    combo = widget.ui.barriersModelComboBox
    combo.setCurrentIndex(combo.findData("demo"))  # the user picks the demo barrier models
    assert parameters.barriersModel == "demo"

    sent = {}

    def record(self, *args, **kwargs):
        sent.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr("BrainBarriersLib.runner.PipelineJob.__init__", record)
    nodes = load_demo(["t1ce"])
    parameters.t1ce = nodes["t1ce"]
    with pytest.raises(RuntimeError, match="stop here"):
        widget.logic.runFromParameterNode(parameters)
    assert sent["options"]["barriers"] == {"models": "demo"}
    assert sent["options"]["tumor"] == {"model": BB.modelChoices("tumor")[0][1]}
    assert sent["options"]["skullstrip"] == {"backend": "deepbet"}


def test_a_failed_install_shows_one_dialog_with_pips_log(tmp_path, monkeypatch):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("no-such-package-xyz==1.0\n")
    monkeypatch.setattr(BB.BrainBarriersLogic, "requirementsFile", staticmethod(lambda: str(
        requirements)))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # fail at once, offline
    parameters = BB.BrainBarriersLogic().getParameterNode()
    widget = panel(parameters)
    parameters.t1ce = load_demo(["t1ce"])["t1ce"]
    widget.onApplyButton()
    assert REC.dialogs[0]["icon"] == slicer_standin.QMessageBox.Question  # asked first
    assert widget._install is not None and widget.ui.progressBar.range == (0, 0)  # busy, GUI free
    run_events(widget, lambda: widget._install is None, timeout=60)
    errors = REC.errors()
    assert len(errors) == 1, REC.dialogs
    assert "no-such-package-xyz" in errors[0]["detailedText"]  # pip's own words
    assert widget.logic.job is None  # nothing was run


def test_a_failed_run_shows_one_dialog_and_leaves_the_scene():
    parameters = BB.BrainBarriersLogic().getParameterNode()
    widget = panel(parameters)
    nodes = load_demo(["t1ce"])
    count = slicer.mrmlScene.GetNumberOfNodes()
    job = widget.logic.run(t1ce=nodes["t1ce"], steps=["skullstrip"], device="cpu",
                           options={"skullstrip": {"threshold": 2}}, waitForCompletion=False,
                           onUpdate=widget._onJobUpdate)
    run_events(widget, lambda: job.status.state != "running")
    assert job.status.state == "failed"
    errors = REC.errors()
    assert len(errors) == 1 and "threshold" in errors[0]["text"]
    assert slicer.mrmlScene.GetNumberOfNodes() == count


DEMO_RUN = os.environ.get("BB_HARNESS_DEMO", "")  # "panel" or "selftest": which demo run to make


@pytest.mark.skipif(DEMO_RUN != "panel",
                    reason="BB_HARNESS_DEMO=panel runs the worker on the demo case (about 20 s)")
def test_apply_runs_the_worker_on_the_demo_case_and_brings_the_segmentation():
    parameters = BB.BrainBarriersLogic().getParameterNode()
    nodes = load_demo()
    for s, node in nodes.items():
        setattr(parameters, s, node)
    for step in BB.STEPS:
        setattr(parameters, "run" + step.capitalize(), step == "skullstrip")
    parameters.device = "cpu"
    widget = panel(parameters)
    widget.onApplyButton()
    job = widget.logic.job
    assert job is not None and widget.ui.applyButton.enabled is False
    run_events(widget, lambda: job.status.state != "running", timeout=180)
    assert job.status.state == "done", job.status.error
    assert not REC.errors()
    seg = job.nodes["segmentation"]
    assert seg.IsA("vtkMRMLSegmentationNode") and slicer.mrmlScene.IsNodePresent(seg)
    segment = seg.GetSegmentation().GetSegment("brain_mask_brain")
    assert segment.GetName() == "Brain" and "BrainBarriers" in segment.GetTerminology()
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == \
        nodes["t1ce"].GetID()
    brain = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "brain_mask_brain", nodes["t1ce"])
    truth = slicer.util.arrayFromVolume(slicer.util.loadLabelVolume(
        str(DEMO / "brain_mask_truth.nii.gz")))
    dice = 2.0 * ((brain > 0) & (truth > 0)).sum() / ((brain > 0).sum() + (truth > 0).sum())
    assert dice > 0.9
    assert widget.ui.progressBar.value == 100 and widget.ui.applyButton.enabled


def test_without_the_packages_the_self_test_checks_what_it_can_and_installs_nothing(monkeypatch):
    def no_install(*args, **kwargs):
        raise AssertionError("the self-test must not install anything")

    monkeypatch.setattr(BB.BrainBarriersLogic, "installDependencies", no_install)
    monkeypatch.setattr(BB.BrainBarriersLogic, "missingDependencies", lambda self: ["torch>=2.8"])
    monkeypatch.setattr(BB.BrainBarriersLogic, "run", no_install)
    test = BB.BrainBarriersTest()
    test.messageDelay = 0
    test.runTest()  # terminology, Sample Data checksums, the demo volumes load; no run


@pytest.mark.skipif(DEMO_RUN != "selftest",
                    reason="BB_HARNESS_DEMO=selftest runs the module's self-test (about 30 s)")
def test_the_modules_self_test_passes_in_under_a_minute_and_installs_nothing(monkeypatch):
    import time

    def no_install(*args, **kwargs):
        raise AssertionError("the self-test must not install anything")

    monkeypatch.setattr(BB.BrainBarriersLogic, "installDependencies", no_install)
    monkeypatch.delenv(BB.FULL_SELF_TEST_VARIABLE, raising=False)
    test = BB.BrainBarriersTest()
    test.messageDelay = 0
    start = time.monotonic()
    test.runTest()
    assert time.monotonic() - start < 60
