"""Test-only: Slicer's own Python package of a released version on top of the slicer-core wheel,
with only the Qt layer stood in (not product code).

``install(version)`` makes ``import slicer`` give slicer-core's MRML, Segmentations and
Terminologies classes together with the released ``slicer.util``, ``slicer.i18n``,
``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper`` from
``../shared/slicer-python/<version>/Base/Python/slicer`` (used where they are, not copied). What
stands in is Qt and the Qt-level application object: ``qt`` and ``ctk`` modules, ``slicer.app``
(translation, signals, the main window, the core IO manager that reads volume files through
MRML storage nodes) and ``slicer.modules.terminologies``. Dialogs are recorded, not shown; timers
fire when the test calls ``tick()``. One version per process: Slicer's modules are cached.
"""

from __future__ import annotations

import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path

SHARED = Path(__file__).resolve().parents[3] / "shared" / "slicer-python"
MODULE_DIR = Path(__file__).resolve().parents[2] / "SlicerBrainBarriers"


# ------------------------------------------------------------------------------ permissive Qt
class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


class _Anything(metaclass=_Meta):
    """Any Qt class or object nobody looks at: every attribute and call gives another one."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __bool__(self):
        return False

    def __iter__(self):
        return iter(())

    def __or__(self, other):
        return self

    __ror__ = __or__


@dataclass
class Recorder:
    """What the stood-in Qt layer saw."""

    dialogs: list[dict] = field(default_factory=list)  # message boxes that were shown
    answers: list[int] = field(default_factory=list)  # replies to give, in order (default Ok)
    translations: list[tuple[str, str]] = field(default_factory=list)
    connections: list[tuple[str, object]] = field(default_factory=list)
    timers: list = field(default_factory=list)

    def tick(self) -> None:
        """One round of the event loop: every started timer fires once."""
        for timer in list(self.timers):
            if timer.active:
                for slot in list(timer.slots):
                    slot()

    def errors(self) -> list[dict]:
        return [d for d in self.dialogs if d["icon"] == QMessageBox.Critical]


class QMessageBox(_Anything):
    Ok, Cancel, Yes, No, Retry, Close = 0x400, 0x400000, 0x4000, 0x10000, 0x80000, 0x200000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4


def _make_qt(rec: Recorder) -> types.ModuleType:
    qt = types.ModuleType("qt")
    classes: dict[str, type] = {}

    class QTimer(_Anything):
        def __init__(self, *args, **kwargs):
            self.slots: list = []
            self.active = False
            rec.timers.append(self)

        def connect(self, signal, slot):
            assert signal == "timeout()", signal
            self.slots.append(slot)

        def setInterval(self, msec):
            pass

        def start(self, *args):
            self.active = True

        def stop(self):
            self.active = False

        @staticmethod
        def singleShot(msec, slot):
            slot()

    qt.QTimer = QTimer
    qt.QMessageBox = QMessageBox

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in classes:
            classes[name] = type(name, (_Anything,), {})
        return classes[name]

    qt.__getattr__ = __getattr__
    return qt


def _make_ctk(rec: Recorder) -> types.ModuleType:
    ctk = types.ModuleType("ctk")

    class ctkMessageBox(_Anything):
        text = windowTitle = detailedText = informativeText = ""
        icon = QMessageBox.NoIcon
        standardButtons = QMessageBox.Ok

        def exec_(self):
            rec.dialogs.append({"text": self.text, "windowTitle": self.windowTitle,
                                "detailedText": self.detailedText, "icon": self.icon})
            return rec.answers.pop(0) if rec.answers else QMessageBox.Ok

        def deleteLater(self):
            pass

    ctk.ctkMessageBox = ctkMessageBox
    ctk.__getattr__ = lambda name: _Anything if not name.startswith("__") else None
    return ctk


# ------------------------------------------------------------------------------ application
class _MainWindow(_Anything):
    objectName = "qSlicerMainWindow"


class _IOManager:
    """qSlicerCoreIOManager's loadNodes for volume files, through MRML storage nodes."""

    def __init__(self, slicer):
        self.slicer = slicer

    def fileType(self, filename):
        return "VolumeFile"

    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None):
        slicer = self.slicer
        labelmap = bool(properties.get("labelmap"))
        node = (slicer.vtkMRMLLabelMapVolumeNode() if labelmap
                else slicer.vtkMRMLScalarVolumeNode())
        name = properties.get("name") or Path(properties["fileName"]).name.split(".")[0]
        node.SetName(slicer.mrmlScene.GenerateUniqueName(name))
        slicer.mrmlScene.AddNode(node)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        slicer.mrmlScene.AddNode(storage)
        storage.SetFileName(properties["fileName"])
        node.SetAndObserveStorageNodeID(storage.GetID())
        if not storage.ReadData(node):
            slicer.mrmlScene.RemoveNode(node)
            return False
        node.CreateDefaultDisplayNodes()
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        return True


class _App:
    """The parts of qSlicerApplication the module and Slicer's Python package use."""

    applicationName = "Slicer"

    def __init__(self, rec: Recorder, slicer, version: str):
        self._rec = rec
        major, minor = version.lstrip("v").split(".")[:2]
        self.majorVersion, self.minorVersion = int(major), int(minor)
        self.temporaryPath = tempfile.mkdtemp(prefix="slicer-standin-")
        self._io = _IOManager(slicer)
        self._main = _MainWindow()

    def translate(self, context, text):
        self._rec.translations.append((context, text))
        return text

    def connect(self, signal, slot):
        self._rec.connections.append((signal, slot))

    def testingEnabled(self):
        return False

    def commandOptions(self):
        return types.SimpleNamespace(noMainWindow=False, testingEnabled=False)

    def topLevelWidgets(self):
        return [self._main]

    def coreIOManager(self):
        return self._io

    def processEvents(self):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


def install(version: str) -> Recorder:
    """Set up ``slicer`` as described above (once per process) and return the recorder."""
    folder = SHARED / version / "Base" / "Python" / "slicer"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: Slicer's Python package of {version} is not here")
    rec = Recorder()
    sys.modules["qt"] = _make_qt(rec)
    sys.modules["ctk"] = _make_ctk(rec)
    import slicer  # slicer-core: MRML, Segmentations, Terminologies (and its own util copy)

    # Slicer's released files take precedence over slicer-core's copies of the same modules.
    for name in [m for m in sys.modules if m == "slicer.util" or m.startswith("slicer.util.")]:
        del sys.modules[name]
    slicer.__path__.insert(0, str(folder))
    import slicer.util  # noqa: F401 - Slicer's own, now

    widgets: dict[str, type] = {}

    def widget_class(name):  # slicer.qMRMLNodeComboBox and the other Qt widgets of Slicer
        if not name.startswith("q"):
            raise AttributeError(f"module 'slicer' has no attribute {name!r}")
        return widgets.setdefault(name, type(name, (_Anything,), {}))

    slicer.__getattr__ = widget_class
    slicer.app = _App(rec, slicer, version)
    slicer.mrmlScene = slicer.vtkMRMLScene()
    # The modules' logics (C++ in slicer-core); Slicer makes them at startup, which also
    # registers the segmentation converters.
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(slicer.mrmlScene)
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    slicer.modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: segmentations),
        terminologies=types.SimpleNamespace(logic=lambda: terminologies))
    sys.path.insert(0, str(MODULE_DIR))
    return rec


def module_parent(module_file: Path) -> types.SimpleNamespace:
    """The qSlicerScriptedLoadableModule a module class gets as ``parent``."""
    return types.SimpleNamespace(path=str(module_file))
