"""BrainBarriers: brain mask, tumour sub-regions, anatomical barriers, supervoxels and a
barrier-respecting CTV from brain MRI, as editable segmentations.

The numerical work runs in a separate process (``PythonSlicer -m brainbarriers.worker``); this
module exports the inputs, follows the worker's progress without blocking the GUI, and imports the
results into the scene. Console and batch use: ``BrainBarriersLogic().run(...)``.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import qt
import slicer
import vtk  # noqa: F401 - Slicer modules conventionally have it at hand
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SEQUENCES = ("t1", "t1ce", "t2", "flair", "ct")
STEPS = ("skullstrip", "supervoxels", "tumor", "barriers", "ctv")
MODEL_STEPS = ("skullstrip", "tumor", "barriers")  # steps with a choice of trained model
DEVICES = ("auto", "cpu", "cuda")
TERMINOLOGY_FILE = "BrainBarriers.term.json"


def _resource(name: str) -> str:
    return os.path.join(os.path.dirname(__file__), "Resources", name)


#
# Module
#
class BrainBarriers(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Brain Barriers")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = ["Segmentations", "Terminologies"]
        self.parent.contributors = ["SlicerBrainBarriers developers"]
        self.parent.helpText = _(
            "Brain mask, tumour sub-regions (BraTS: necrotic core, oedema, enhancing tumour), "
            "anatomical barriers to cancer spread (falx, tentorium, sinuses, cerebellum, "
            "ventricles), multimodal supervoxels and a clinical target volume that does not cross "
            "the barriers, from T1, T1ce, T2 and FLAIR MRI (CT optional). The work runs in a "
            "background process; results appear as a segmentation ready for the Segment Editor.")
        self.parent.acknowledgementText = _(
            "Methods: HMRNet for the barriers, SSLIC with variance-adaptive compactness for the "
            "supervoxels. See the project README for references.")
        slicer.app.connect("startupCompleted()", registerTerminology)


def registerTerminology() -> None:
    """Make the extension's own terminology entries (falx, tentorium, sinuses, CTV) known."""
    try:
        logic = slicer.modules.terminologies.logic()
    except AttributeError:  # the Terminologies module is not loaded
        return
    if not logic.LoadTerminologyFromFile(_resource(TERMINOLOGY_FILE)):
        logging.warning("BrainBarriers: could not load %s", TERMINOLOGY_FILE)


#
# Parameter node
#
@parameterNodeWrapper
class BrainBarriersParameterNode:
    t1: vtkMRMLScalarVolumeNode
    t1ce: vtkMRMLScalarVolumeNode
    t2: vtkMRMLScalarVolumeNode
    flair: vtkMRMLScalarVolumeNode
    ct: vtkMRMLScalarVolumeNode
    runSkullstrip: bool = True
    runSupervoxels: bool = True
    runTumor: bool = True
    runBarriers: bool = True
    runCtv: bool = True
    skullstripModel: str = "default"
    tumorModel: str = "default"
    barriersModel: str = "default"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"


def availableModels(step: str) -> list[str]:
    """Model names for a step: "default" first, then what the core's model registry lists."""
    names = ["default"]
    try:
        import importlib

        models = importlib.import_module("brainbarriers.models")
        names += [n for n in models.list_models(step) if n != "default"]
    except Exception:  # no registry yet, or it cannot be read: the default model only
        pass
    return names


#
# Widget
#
class BrainBarriersWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainBarriers.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BrainBarriersLogic()
        for step in MODEL_STEPS:
            combo = getattr(self.ui, f"{step}ModelComboBox")
            combo.clear()
            combo.addItems(availableModels(step))
            combo.currentTextChanged.connect(lambda text, s=step: self._onModelChanged(s, text))
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.setText(_("Select the input volumes, then Apply."))
        self.ui.cancelButton.enabled = False

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.installButton.connect("clicked(bool)", self.onInstallButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic is not None:
            self.logic.cancel()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic is not None:
            self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.t1ce:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.t1ce = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                             self._checkCanApply)
            for step in MODEL_STEPS:
                combo = getattr(self.ui, f"{step}ModelComboBox")
                index = combo.findText(getattr(self._parameterNode, f"{step}Model"))
                combo.setCurrentIndex(max(index, 0))
            self._checkCanApply()

    def _onModelChanged(self, step: str, text: str) -> None:
        if self._parameterNode and text:
            setattr(self._parameterNode, f"{step}Model", text)

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self.logic is not None and self.logic.isRunning()
        hasInput = bool(p) and any(getattr(p, s) for s in SEQUENCES)
        hasStep = bool(p) and any(getattr(p, "run" + s.capitalize()) for s in STEPS)
        self.ui.applyButton.enabled = hasInput and hasStep and not running
        self.ui.cancelButton.enabled = running
        self.ui.applyButton.toolTip = (_("Run the selected steps in the background") if hasInput
                                       else _("Select at least one input volume"))

    def onInstallButton(self) -> None:
        try:
            if self.logic.installDependencies(askConfirmation=True):
                self.ui.statusLabel.setText(_("Python packages are installed."))
        except Exception as e:
            slicer.util.errorDisplay(_("Installing the Python packages failed: ") + str(e))

    def onApplyButton(self) -> None:
        p = self._parameterNode
        try:
            if self.logic.missingDependencies():
                if not self.logic.installDependencies(askConfirmation=True):
                    self.ui.statusLabel.setText(_("Cancelled: the Python packages are needed."))
                    return
            steps = [s for s in STEPS if getattr(p, "run" + s.capitalize())]
            models = {s: getattr(p, f"{s}Model") for s in MODEL_STEPS if s in steps}
            self.ui.progressBar.setValue(0)
            self.logic.run(**{s: getattr(p, s) for s in SEQUENCES}, steps=steps, device=p.device,
                           models=models, waitForCompletion=False, onUpdate=self._onJobUpdate)
        except Exception as e:
            slicer.util.errorDisplay(_("Could not start: ") + str(e))
        self._checkCanApply()

    def onCancelButton(self) -> None:
        self.logic.cancel()
        self._checkCanApply()

    def _onJobUpdate(self, job) -> None:
        status = job.status
        self.ui.progressBar.setValue(int(round(100 * status.fraction)))
        self.ui.statusLabel.setText(status.message)
        if status.state in ("done", "failed", "cancelled", "timeout"):
            self._checkCanApply()
            if status.state in ("failed", "timeout") and status.error:
                slicer.util.errorDisplay(
                    _("BrainBarriers failed: ") + status.error.get("message", ""),
                    detailedText=status.error.get("log", "") +
                    ("\n\nFull log: " + status.error["log_path"]
                     if status.error.get("log_path") else ""))
            elif status.state == "done":
                seg = job.nodes.get("segmentation")
                if seg is not None:
                    seg.CreateClosedSurfaceRepresentation()


#
# Logic
#
class BrainBarriersLogic(ScriptedLoadableModuleLogic):
    """Usable from the Python console and batch scripts: no widget, no dialog unless asked.

    Example (console)::

        import BrainBarriers
        logic = BrainBarriers.BrainBarriersLogic()
        nodes = logic.run(t1=getNode("T1"), t1ce=getNode("T1ce"), t2=getNode("T2"),
                          flair=getNode("FLAIR"), steps=["barriers", "ctv"], device="cpu")
        nodes["segmentation"]  # the vtkMRMLSegmentationNode
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.job = None
        self._timer = None

    def getParameterNode(self):
        return BrainBarriersParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ dependencies
    @staticmethod
    def requirementsFile() -> str:
        return _resource("requirements.txt")

    def missingDependencies(self) -> list[str]:
        from BrainBarriersLib import dependencies

        missing = dependencies.missing_requirements(self.requirementsFile())
        if not dependencies.torch_available():
            missing.append("torch")
        return missing

    def installDependencies(self, askConfirmation: bool = True) -> bool:
        """Install the pinned requirements into Slicer's Python (and torch through the PyTorch
        extension). Returns False when the user declines. Never called at import."""
        from BrainBarriersLib import dependencies

        missing = dependencies.missing_requirements(self.requirementsFile())
        needTorch = not dependencies.torch_available()
        if not missing and not needTorch:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("BrainBarriers needs these Python packages, which will be downloaded and "
                  "installed into Slicer's Python now:\n\n") +
                "\n".join(missing + (["torch (through the PyTorch extension)"] if needTorch
                                     else [])),
                windowTitle=_("Install Python packages")):
            return False
        if needTorch:
            try:
                import PyTorchUtils
            except ImportError as e:
                raise RuntimeError(_("PyTorch is needed: install the 'PyTorch' extension from the "
                                     "Extensions Manager and restart Slicer.")) from e
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError(_("PyTorch could not be installed."))
        if missing:
            with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."),
                                                 waitCursor=True) if askConfirmation else \
                    _NullContext():
                slicer.util.pip_install(missing)
        return True

    # ------------------------------------------------------------------ running
    def isRunning(self) -> bool:
        return self.job is not None and self.job.status.state == "running"

    def run(self, t1=None, t1ce=None, t2=None, flair=None, ct=None, steps=None, device="auto",
            models=None, options=None, name="BrainBarriers", waitForCompletion=True,
            timeout=None, onUpdate=None, keepFiles=False):
        """Run the pipeline on volume nodes and import the results into the scene.

        steps: names among skullstrip, supervoxels, tumor, barriers, ctv (None: all); their
        prerequisites are added. device: "auto", "cpu" or "cuda". models: {step: model name}.
        options: {step: {key: value}} (as ``--set step.key=value``).

        With ``waitForCompletion`` (console, batch): blocks, returns {"segmentation": node,
        "supervoxels": node, ...} and raises RuntimeError (with the worker's log) on failure.
        Without: returns at once; progress goes to ``onUpdate(job)`` from a QTimer, and
        ``cancel()`` stops the run. The scene is left as it was on failure or cancel.
        """
        from BrainBarriersLib.runner import PipelineJob

        if self.isRunning():
            raise RuntimeError(_("A BrainBarriers run is already in progress."))
        missing = self.missingDependencies()
        if missing:
            raise RuntimeError(_("Missing Python packages: ") + ", ".join(missing) +
                               _(". Install them with BrainBarriersLogic().installDependencies()."))
        allOptions = {k: dict(v) for k, v in (options or {}).items()}
        for step, model in (models or {}).items():
            if model and model != "default":
                allOptions.setdefault(step, {})["model"] = model
        inputs = {"t1": t1, "t1ce": t1ce, "t2": t2, "flair": flair, "ct": ct}
        self.job = PipelineJob(slicer.mrmlScene, inputs, steps=steps, device=device,
                               options=allOptions, name=name, timeout=timeout,
                               keep_files=keepFiles, on_update=onUpdate)
        self.job.start()
        if waitForCompletion:
            state = self.job.wait()
            if state != "done":
                error = self.job.status.error or {}
                raise RuntimeError(f"BrainBarriers {state}: {error.get('message', '')}\n"
                                   f"{error.get('log', '')}")
            return self.job.nodes
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self._poll)
        self._timer.start()
        return self.job

    def _poll(self) -> None:
        if self.job is None or not self.job.poll():
            if self._timer is not None:
                self._timer.stop()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
        if self._timer is not None:
            self._timer.stop()


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


#
# Test
#
class BrainBarriersTest(ScriptedLoadableModuleTest):
    """Loads the demo case, runs the pipeline through the Logic and checks the segmentation."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_DemoCase()

    def demoFolder(self) -> str:
        import brainbarriers

        return os.path.join(os.path.dirname(brainbarriers.__file__), "data", "demo")

    def test_DemoCase(self):
        self.delayDisplay("Loading the demo case")
        folder = self.demoFolder()
        nodes = {s: slicer.util.loadVolume(os.path.join(folder, f"{s}.nii.gz"))
                 for s in ("t1", "t1ce", "t2", "flair")}
        logic = BrainBarriersLogic()
        if logic.missingDependencies():
            logic.installDependencies(askConfirmation=False)
        before = slicer.mrmlScene.GetNumberOfNodes()

        self.delayDisplay("Running the pipeline (background worker, waiting for it)")
        result = logic.run(**nodes, device="cpu", waitForCompletion=True)
        seg = result["segmentation"]
        self.assertIsNotNone(seg)
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), before)

        from brainbarriers.labels import SEGMENTS_BY_OUTPUT

        segmentation = seg.GetSegmentation()
        names = {segmentation.GetNthSegment(i).GetName()
                 for i in range(segmentation.GetNumberOfSegments())}
        for spec in SEGMENTS_BY_OUTPUT["barriers"].values():
            self.assertIn(spec.name, names)
        reference = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
        self.assertEqual(reference.GetID(), nodes["t1ce"].GetID())
        self.assertTrue(segmentation.GetSegment("barriers_falx").GetTerminology()
                        if hasattr(segmentation.GetSegment("barriers_falx"), "GetTerminology")
                        else True)
        brain = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "brain_mask_brain",
                                                            nodes["t1ce"])
        truth = slicer.util.arrayFromVolume(slicer.util.loadLabelVolume(
            os.path.join(folder, "brain_mask_truth.nii.gz")))
        dice = 2.0 * ((brain > 0) & (truth > 0)).sum() / ((brain > 0).sum() + (truth > 0).sum())
        self.assertGreater(dice, 0.8)

        self.delayDisplay("Cancel leaves the scene as it was")
        count = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.run(**nodes, device="cpu", waitForCompletion=False)
        job.cancel()
        self.assertEqual(job.wait(), "cancelled")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Test passed")
