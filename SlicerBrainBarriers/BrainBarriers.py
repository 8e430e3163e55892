"""BrainBarriers: brain mask, tumour sub-regions, anatomical barriers, supervoxels and a
barrier-respecting CTV from brain MRI, as editable segmentations.

The numerical work runs in a separate process (``PythonSlicer -m brainbarriers.worker``); this
module exports the inputs, follows the worker's progress without blocking the GUI, and imports the
results into the scene. Console and batch use: ``BrainBarriersLogic().run(...)``.

Slicer 5.10 or later: older releases bundle Python 3.9, which the core cannot run on.
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
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SEQUENCES = ("t1", "t1ce", "t2", "flair", "ct")
STEPS = ("skullstrip", "tumor", "supervoxels", "barriers", "ctv")  # the run order
MODEL_STEPS = ("skullstrip", "tumor", "barriers")  # steps with a choice of trained model
DEVICES = ("auto", "cpu", "cuda")
COREGISTER = ("auto", "always", "never")  # as brainbarriers run --coregister
TERMINOLOGY_FILE = "BrainBarriers.term.json"
MINIMUM_SLICER_VERSION = (5, 10)  # also checked in the top CMakeLists.txt
# Heavier self-test checks (the whole pipeline on CPU, minutes) only when this is set to 1.
FULL_SELF_TEST_VARIABLE = "BRAINBARRIERS_FULL_SELF_TEST"
# The demo case shipped with the core (brainbarriers/data/demo), offered in the Sample Data module.
DEMO_SEQUENCES = ("t1", "t1ce", "t2", "flair")
DEMO_SHA256 = {
    "t1": "52e9a5b3d84da8d4be5d71e203cd3541222be93620e221db4b2e14aa4e23a56d",
    "t1ce": "3c478fc981e367bd811aa602df99082096aaad0d75a68bd587a2712f2cf5b976",
    "t2": "4869e14ec1c7c16bbc581555a96d8b3537a2404a4d69868ec5310492f04e5d18",
    "flair": "6aaa90a18f38d35d5f9cd30d853d09253fde09a947bed5bf7fa862d1e612a01b",
}


def _resource(name: str) -> str:
    return os.path.join(os.path.dirname(__file__), "Resources", name)


#
# Module
#
class BrainBarriers(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Brain Barriers")
        # Slicer's module categories are translated in the application's own context.
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
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
        slicer.app.connect("startupCompleted()", registerSampleData)
        slicer.app.connect("startupCompleted()", registerEditorEffect)


def slicerVersionSupported() -> bool:
    return (slicer.app.majorVersion, slicer.app.minorVersion) >= MINIMUM_SLICER_VERSION


def coreFolder() -> str:
    """Where the ``brainbarriers`` core is: beside the module when installed, two levels up in a
    source checkout (as the worker finds it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(candidate, "brainbarriers", "__init__.py")):
            return candidate
    return here


def demoFolder() -> str:
    return os.path.join(coreFolder(), "brainbarriers", "data", "demo")


def sampleDataArguments() -> dict:
    """The demo case as a Sample Data source: the files ship with the extension, so the URIs are
    local (file://) and each copy into Slicer's cache is checked against its SHA-256."""
    import pathlib

    files = [os.path.join(demoFolder(), f"{s}.nii.gz") for s in DEMO_SEQUENCES]
    return {
        "category": "BrainBarriers",
        "sampleName": "BrainBarriersDemo",
        "sampleDescription": _("Brain tumour demo (T1, T1ce, T2, FLAIR)"),
        "thumbnailFileName": _resource("Icons/BrainBarriersDemo.png"),
        "uris": [pathlib.Path(f).as_uri() for f in files],
        "fileNames": [f"BrainBarriersDemo-{s}.nii.gz" for s in DEMO_SEQUENCES],
        "nodeNames": [f"BrainBarriersDemo-{s.upper()}" for s in DEMO_SEQUENCES],
        "checksums": [f"SHA256:{DEMO_SHA256[s]}" for s in DEMO_SEQUENCES],
        "loadFileType": "VolumeFile",
    }


def registerSampleData() -> None:
    """Offer the demo case in the Sample Data module (one click for a new user)."""
    try:
        import SampleData
    except ImportError:  # no Sample Data module (e.g. a custom application)
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sampleDataArguments())


def registerEditorEffect() -> None:
    """The Segment Editor effect "Supervoxels" (click a region to add it, Ctrl + click to remove)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    effect = effects.qSlicerSegmentEditorScriptedEffect(None)
    path = os.path.join(os.path.dirname(__file__), "BrainBarriersLib",
                        "SegmentEditorSupervoxelsEffect.py")
    effect.setPythonSource(path.replace("\\", "/"))
    effect.self().register()


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
    # The model chosen for a step: a value from modelChoices(step); "" is the step's default.
    skullstripModel: str = ""
    tumorModel: str = ""
    barriersModel: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    coregister: Annotated[str, Choice(list(COREGISTER))] = "auto"


def modelChoices(step: str) -> list[tuple[str, str]]:
    """(label, value) of every model the core's registry offers for ``step``, its default first.
    Raises ImportError while the core's Python packages are not installed."""
    from brainbarriers.model_choices import model_choices

    return [(c.label, c.value) for c in model_choices(step)]


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
        self._install = None  # the pip run in progress, if any

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainBarriers.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BrainBarriersLogic()
        for step in MODEL_STEPS:
            combo = getattr(self.ui, f"{step}ModelComboBox")
            combo.connect("currentIndexChanged(int)", lambda _i, s=step: self._onModelChanged(s))
        self._fillModelComboBoxes()
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.setText(_("Select the input volumes, then Apply."))
        self.ui.cancelButton.enabled = False
        if not slicerVersionSupported():
            self.ui.statusLabel.setText(_("BrainBarriers needs Slicer {major}.{minor} or later.")
                                        .format(major=MINIMUM_SLICER_VERSION[0],
                                                minor=MINIMUM_SLICER_VERSION[1]))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.installButton.connect("clicked(bool)", self.onInstallButton)
        self.ui.recomputeCtvButton.connect("clicked(bool)", self.onRecomputeCtvButton)
        self.initializeParameterNode()

    def _fillModelComboBoxes(self) -> None:
        """Each model combo box lists the core registry's models for its step (item data: the
        value sent to the step). Before the Python packages are installed the core cannot be
        read: the box then holds the step's default only, and says why."""
        for step in MODEL_STEPS:
            combo = getattr(self.ui, f"{step}ModelComboBox")
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            try:
                choices = modelChoices(step)
                combo.toolTip = _("Trained model for the {step} step").format(step=step)
            except ImportError:
                choices = [(_("default"), "")]
                combo.toolTip = _("Install the Python packages to choose among the models")
            for label, value in choices:
                combo.addItem(label, value)
            combo.blockSignals(wasBlocked)
        self._showModels()

    def _showModels(self) -> None:
        """Select each step's model from the parameter node (its default when not listed)."""
        if not self._parameterNode:
            return
        for step in MODEL_STEPS:
            combo = getattr(self.ui, f"{step}ModelComboBox")
            index = max(combo.findData(getattr(self._parameterNode, f"{step}Model")), 0)
            wasBlocked = combo.blockSignals(True)
            combo.setCurrentIndex(index)
            combo.blockSignals(wasBlocked)
            setattr(self._parameterNode, f"{step}Model", combo.itemData(index) or "")

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
        self.logic.guessInputs(self._parameterNode)

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
            self._showModels()
            self._checkCanApply()

    def _onModelChanged(self, step: str) -> None:
        if self._parameterNode:
            combo = getattr(self.ui, f"{step}ModelComboBox")
            setattr(self._parameterNode, f"{step}Model", combo.currentData or "")

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        busy = self._install is not None or (self.logic is not None and self.logic.isRunning())
        hasInput = bool(p) and any(getattr(p, s) for s in SEQUENCES)
        hasStep = bool(p) and any(getattr(p, "run" + s.capitalize()) for s in STEPS)
        self.ui.applyButton.enabled = (hasInput and hasStep and not busy
                                       and slicerVersionSupported())
        self.ui.installButton.enabled = not busy
        self.ui.cancelButton.enabled = self.logic is not None and self.logic.isRunning()
        self.ui.applyButton.toolTip = (_("Run the selected steps in the background") if hasInput
                                       else _("Select at least one input volume"))

    # ------------------------------------------------------------------ installing
    def _startInstall(self, then=None) -> None:
        """Install what is missing in the background; ``then()`` runs once it succeeded."""
        try:
            run = self.logic.installDependencies(askConfirmation=True, waitForCompletion=False,
                                                 onUpdate=lambda r: self._onInstallUpdate(r, then))
        except Exception as e:  # torch could not be installed, or pip could not start
            slicer.util.errorDisplay(_("Installing the Python packages failed: ") + str(e))
            return
        if run is False:
            self.ui.statusLabel.setText(_("Cancelled: the Python packages are needed."))
        elif run is True:  # nothing (more) to install
            self._installed(then)
        else:
            self._install = run
            self.ui.progressBar.setRange(0, 0)  # busy: pip does not tell how far it is
            self.ui.statusLabel.setText(_("Installing Python packages..."))
            self._checkCanApply()

    def _onInstallUpdate(self, run, then) -> None:
        if run.lines:
            self.ui.statusLabel.setText(run.lines[-1][:120])
        if not run.finished:
            return
        self._install = None
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)
        if run.returncode != 0:
            self.ui.statusLabel.setText(_("Installing the Python packages failed."))
            slicer.util.errorDisplay(
                _("Installing the Python packages failed (pip exit code {code}). The details "
                  "hold pip's log.").format(code=run.returncode), detailedText=run.log)
        else:
            self._installed(then)
        self._checkCanApply()

    def _installed(self, then) -> None:
        self.ui.statusLabel.setText(_("Python packages are installed."))
        self._fillModelComboBoxes()  # the core's model registry can be read now
        if then is not None:
            then()

    def onInstallButton(self) -> None:
        self._startInstall()

    # ------------------------------------------------------------------ running
    def onRecomputeCtvButton(self) -> None:
        """One click after editing the tumour segments: the CTV again, from the edited GTV and the
        barriers already in the segmentation (no network runs)."""
        job = self.logic.job
        seg = (job.nodes.get("segmentation") if job is not None and job.nodes else None) \
            or slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
        if seg is None:
            self.ui.statusLabel.setText(_("No segmentation to recompute the CTV from."))
            return
        with slicer.util.tryWithErrorDisplay(_("Recomputing the CTV failed."), waitCursor=True):
            self.logic.recomputeCtv(seg)
            self.ui.statusLabel.setText(_("CTV recomputed from the edited tumour in '{name}'.")
                                        .format(name=seg.GetName()))

    def onApplyButton(self) -> None:
        if self.logic.missingDependencies():
            self._startInstall(then=self._startRun)
        else:
            self._startRun()

    def _startRun(self) -> None:
        self.ui.progressBar.setValue(0)
        try:
            self.logic.runFromParameterNode(self._parameterNode, waitForCompletion=False,
                                            onUpdate=self._onJobUpdate)
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
                if status.warnings:  # e.g. which tumour regions the given sequences cannot show
                    self.ui.statusLabel.setText(
                        status.message + "\n" + "\n".join(_("Warning: ") + w
                                                           for w in status.warnings))
                seg = job.nodes.get("segmentation")
                if seg is not None:
                    seg.CreateClosedSurfaceRepresentation()
                uncertainty = job.nodes.get("tumor_uncertainty")
                if uncertainty is not None:  # review starts where the tumour model doubts
                    slicer.util.setSliceViewerLayers(foreground=uncertainty,
                                                     foregroundOpacity=0.4)


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
        self._installTimer = None

    def getParameterNode(self):
        return BrainBarriersParameterNode(super().getParameterNode())

    @staticmethod
    def guessInputs(parameterNode) -> None:
        """Fill empty sequence inputs with volumes named after them (a word of the name: "t1ce"
        in "BrainBarriersDemo-T1CE"); with none found, the first volume becomes the T1ce."""
        import re

        volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                   if not n.IsA("vtkMRMLLabelMapVolumeNode")]
        for node in volumes:
            words = set(re.split(r"[^a-z0-9]+", node.GetName().lower()))
            for sequence in SEQUENCES:
                if sequence in words and not getattr(parameterNode, sequence):
                    setattr(parameterNode, sequence, node)
        if volumes and not any(getattr(parameterNode, s) for s in SEQUENCES):
            parameterNode.t1ce = volumes[0]

    # ------------------------------------------------------------------ dependencies
    @staticmethod
    def requirementsFile() -> str:
        return _resource("requirements.txt")

    def missingDependencies(self) -> list[str]:
        from BrainBarriersLib import dependencies

        missing = dependencies.missing_requirements(self.requirementsFile())
        if dependencies.torch_missing(self.requirementsFile()):
            missing.append(dependencies.TORCH + dependencies.torch_requirement(
                self.requirementsFile()))
        return missing

    def installDependencies(self, askConfirmation: bool = True, waitForCompletion: bool = True,
                            onUpdate=None):
        """Install what ``missingDependencies`` lists into Slicer's Python: torch through the
        PyTorch extension, the rest with pip (wheels only, every installed package held at its
        version, so nothing of Slicer's is replaced). Never called at import.

        Returns True when nothing is (left) to install, False when the user declines. Else, with
        ``waitForCompletion`` (console, batch) it blocks and raises RuntimeError with pip's log on
        failure; without, it returns the running ``PipRun`` at once and calls ``onUpdate(run)``
        from a QTimer as pip prints, and once more when it has finished.
        """
        from BrainBarriersLib import dependencies
        from BrainBarriersLib.worker_client import python_command

        requirements = self.requirementsFile()
        missing = dependencies.missing_requirements(requirements)
        needTorch = dependencies.torch_missing(requirements)
        if not missing and not needTorch:
            return True
        torchVersion = dependencies.torch_requirement(requirements)
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("BrainBarriers needs these Python packages, which will be downloaded and "
                  "installed into Slicer's Python now:\n\n") +
                "\n".join(missing + ([f"torch{torchVersion} (through the PyTorch extension)"]
                                     if needTorch else [])),
                windowTitle=_("Install Python packages")):
            return False
        if needTorch:
            try:
                import PyTorchUtils
            except ImportError as e:
                raise RuntimeError(_("PyTorch is needed: install the 'PyTorch' extension from the "
                                     "Extensions Manager and restart Slicer.")) from e
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=torchVersion)
            if torch is None:
                raise RuntimeError(_("PyTorch could not be installed."))
        if not missing:
            return True
        constraints = os.path.join(slicer.app.temporaryPath, "BrainBarriers-constraints.txt")
        with open(constraints, "w", encoding="utf-8") as f:
            f.write(dependencies.installed_constraints(
                exclude=[dependencies.requirement_name(r) for r in missing]))
        run = dependencies.PipRun(dependencies.pip_install_command(python_command(), missing,
                                                                   constraints))
        if waitForCompletion:
            if run.wait() != 0:
                raise RuntimeError(_("Installing the Python packages failed:\n") + run.log)
            return True
        self._installTimer = qt.QTimer()
        self._installTimer.setInterval(200)
        self._installTimer.connect("timeout()", lambda: self._pollInstall(run, onUpdate))
        self._installTimer.start()
        return run

    def _pollInstall(self, run, onUpdate) -> None:
        new = run.poll()
        if run.finished:
            self._installTimer.stop()
            import importlib

            importlib.invalidate_caches()  # make the new packages importable in this session
        if (new or run.finished) and onUpdate is not None:
            onUpdate(run)

    # ------------------------------------------------------------------ running
    def isRunning(self) -> bool:
        return self.job is not None and self.job.status.state == "running"

    def runFromParameterNode(self, parameterNode, waitForCompletion=True, onUpdate=None):
        """Run what the panel shows: its inputs, checked steps, chosen models, device and
        co-registration."""
        p = parameterNode
        steps = [s for s in STEPS if getattr(p, "run" + s.capitalize())]
        models = {s: getattr(p, f"{s}Model") for s in MODEL_STEPS if s in steps}
        return self.run(**{s: getattr(p, s) for s in SEQUENCES}, steps=steps, device=p.device,
                        coregister=p.coregister, models=models,
                        waitForCompletion=waitForCompletion, onUpdate=onUpdate)

    def run(self, t1=None, t1ce=None, t2=None, flair=None, ct=None, steps=None, device="auto",
            models=None, options=None, name="BrainBarriers", waitForCompletion=True,
            timeout=None, onUpdate=None, keepFiles=False, coregister="auto"):
        """Run the pipeline on volume nodes and import the results into the scene.

        steps: names among skullstrip, tumor, supervoxels, barriers, ctv (None: all); their
        prerequisites are added. device: "auto", "cpu" or "cuda". models: {step: value}, values
        from ``modelChoices(step)`` ("" for the step's default). options: {step: {key: value}}
        (as ``--set step.key=value``). coregister: "auto", "always" or "never", as
        ``brainbarriers run --coregister``; each sequence the run moves is put under a new linear
        transform node ("<name> <sequence> to reference") so that it shows aligned with the results.

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
        from brainbarriers.model_choices import model_options

        allOptions = {k: dict(v) for k, v in (options or {}).items()}
        for step, values in model_options(dict(models or {})).items():
            allOptions.setdefault(step, {}).update(values)
        inputs = {"t1": t1, "t1ce": t1ce, "t2": t2, "flair": flair, "ct": ct}
        self.job = PipelineJob(slicer.mrmlScene, inputs, steps=steps, device=device,
                               options=allOptions, coregister=coregister, name=name, timeout=timeout,
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

    def recomputeCtv(self, segmentationNode, marginMm=15.0, gtv="enhancing", addEdema=False,
                     ventricles=False) -> str:
        """The CTV segment recomputed from the (edited) tumour segments of ``segmentationNode``
        with its brain mask and barrier segments: no network, no background process, about a
        second on a 240 x 240 x 155 grid. Returns the CTV segment's ID. ``gtv``, ``addEdema`` and
        ``ventricles`` as the ctv step's options."""
        from BrainBarriersLib.ctv_edit import recompute_ctv

        from brainbarriers.ctv import DEFAULT_BARRIERS
        from brainbarriers.ctv.ctv import VENTRICLES

        labels = tuple(DEFAULT_BARRIERS) + ((VENTRICLES,) if ventricles else ())
        return recompute_ctv(slicer.mrmlScene, segmentationNode, margin_mm=marginMm, gtv=gtv,
                             add_edema=addEdema, barrier_labels=labels)

    def _poll(self) -> None:
        if self.job is None or not self.job.poll():
            if self._timer is not None:
                self._timer.stop()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
        if self._timer is not None:
            self._timer.stop()


#
# Test
#
class BrainBarriersTest(ScriptedLoadableModuleTest):
    """Runs in under a minute on CPU and installs nothing: the terminology, the demo case in the
    Sample Data registration, the parameter node and model choices, and (when the Python packages
    are installed) the skull-stripping step on the demo case through the background worker, with
    cancel. The whole pipeline runs too when BRAINBARRIERS_FULL_SELF_TEST=1 (minutes on CPU)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TerminologyAndSampleData()
        self.setUp()
        self.test_DemoCase()

    def test_TerminologyAndSampleData(self):
        import hashlib
        import urllib.parse
        import urllib.request

        logic = slicer.modules.terminologies.logic()
        self.assertEqual(logic.LoadTerminologyFromFile(_resource(TERMINOLOGY_FILE)),
                         "Segmentation category and type - BrainBarriers")
        arguments = sampleDataArguments()
        self.assertTrue(os.path.isfile(arguments["thumbnailFileName"]))
        for uri, checksum in zip(arguments["uris"], arguments["checksums"]):
            path = urllib.request.url2pathname(urllib.parse.urlparse(uri).path)
            with open(path, "rb") as f:
                self.assertEqual("SHA256:" + hashlib.sha256(f.read()).hexdigest(), checksum)

    def test_DemoCase(self):
        self.delayDisplay("Loading the demo case")
        nodes = {s: slicer.util.loadVolume(os.path.join(demoFolder(), f"{s}.nii.gz"))
                 for s in DEMO_SEQUENCES}
        logic = BrainBarriersLogic()
        parameters = logic.getParameterNode()
        for s in DEMO_SEQUENCES:
            setattr(parameters, s, nodes[s])
        missing = logic.missingDependencies()
        if missing:  # the self-test never installs: say what was left out, and why
            self.delayDisplay("Skipped the pipeline run: Python packages not installed ("
                              + ", ".join(missing) + "); install them from the module panel")
            return
        for step in MODEL_STEPS:
            self.assertTrue(modelChoices(step))
        full = os.environ.get(FULL_SELF_TEST_VARIABLE) == "1"
        for step in STEPS:
            setattr(parameters, "run" + step.capitalize(), full or step == "skullstrip")
        parameters.device = "cpu"
        before = slicer.mrmlScene.GetNumberOfNodes()

        self.delayDisplay("Running " + ("every step" if full else "skull-stripping")
                          + " on CPU in the background worker")
        seg = logic.runFromParameterNode(parameters, waitForCompletion=True)["segmentation"]
        self.assertIsNotNone(seg)
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), before)
        reference = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
        self.assertEqual(reference.GetID(), nodes["t1ce"].GetID())
        segment = seg.GetSegmentation().GetSegment("brain_mask_brain")
        self.assertIn("BrainBarriers", segment.GetTerminology())
        brain = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "brain_mask_brain", nodes["t1ce"])
        truth = slicer.util.arrayFromVolume(slicer.util.loadLabelVolume(
            os.path.join(demoFolder(), "brain_mask_truth.nii.gz")))
        dice = 2.0 * ((brain > 0) & (truth > 0)).sum() / ((brain > 0).sum() + (truth > 0).sum())
        self.assertGreater(dice, 0.8)
        if full:
            from brainbarriers.labels import SEGMENTS_BY_OUTPUT

            segmentation = seg.GetSegmentation()
            names = {segmentation.GetNthSegment(i).GetName()
                     for i in range(segmentation.GetNumberOfSegments())}
            for spec in SEGMENTS_BY_OUTPUT["barriers"].values():
                self.assertIn(spec.name, names)

        self.delayDisplay("Cancel leaves the scene as it was")
        count = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.run(**nodes, steps=["skullstrip"], device="cpu", waitForCompletion=False)
        job.cancel()
        self.assertEqual(job.wait(), "cancelled")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Test passed")
