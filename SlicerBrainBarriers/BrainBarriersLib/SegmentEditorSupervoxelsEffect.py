"""Segment Editor effect "Supervoxels": click a region to add it to the selected segment
(Ctrl + click removes it), at the granularity set by the "Regions" slider. Undo is the Segment
Editor's (the state is saved before every click).

Thin glue: everything but Qt and the view interaction is in ``supervoxel_edit`` (Qt-free, tested
with slicer-core). Registered by the BrainBarriers module at startup
(``BrainBarriers.registerEditorEffect``).
"""

import logging
import os

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

REGIONS_PARAMETER = "BrainBarriersSupervoxels.Regions"
MAP_REFERENCE_ROLE = "BrainBarriersSupervoxels.Map"
# The supervoxel map node's attribute listing the image node IDs its hierarchy is built from.
SOURCES_ATTRIBUTE = "BrainBarriers.SupervoxelSources"


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Click-to-edit with supervoxel regions."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Supervoxels"
        scriptedEffect.perSegment = True  # edits the selected segment
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self._regions = None  # SupervoxelRegions of the chosen map, built on first use
        self._regionsKey = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "..", "Resources", "Icons",
                                "BrainBarriers.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return ("<html>Add a supervoxel region to the selected segment by clicking it in a slice "
                "view; <b>Ctrl + click</b> removes it. The <b>Regions</b> slider sets the "
                "granularity (fewer regions: larger ones). The map is the oversegmentation "
                "('supervoxels') of a BrainBarriers run.</html>")

    def setupOptionsFrame(self):
        self.mapSelector = slicer.qMRMLNodeComboBox()
        self.mapSelector.nodeTypes = ["vtkMRMLLabelMapVolumeNode"]
        self.mapSelector.addEnabled = False
        self.mapSelector.removeEnabled = False
        self.mapSelector.noneEnabled = True
        self.mapSelector.setMRMLScene(slicer.mrmlScene)
        self.mapSelector.setToolTip("The supervoxel map (oversegmentation) of a BrainBarriers run")
        self.scriptedEffect.addLabeledOptionsWidget("Supervoxels:", self.mapSelector)
        self.mapSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateMRMLFromGUI)

        import ctk

        self.regionsSlider = ctk.ctkSliderWidget()
        self.regionsSlider.decimals = 0
        self.regionsSlider.minimum = 1
        self.regionsSlider.maximum = 2000
        self.regionsSlider.singleStep = 1
        self.regionsSlider.setToolTip("Number of regions in the brain: fewer means larger regions")
        self.scriptedEffect.addLabeledOptionsWidget("Regions:", self.regionsSlider)
        self.regionsSlider.connect("valueChanged(double)", self.updateMRMLFromGUI)

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault(REGIONS_PARAMETER, 300)

    def _mapNode(self):
        parameterNode = self.scriptedEffect.parameterSetNode()
        return parameterNode.GetNodeReference(MAP_REFERENCE_ROLE) if parameterNode else None

    def updateGUIFromMRML(self):
        mapNode = self._mapNode()
        wasBlocked = self.mapSelector.blockSignals(True)
        self.mapSelector.setCurrentNode(mapNode)
        self.mapSelector.blockSignals(wasBlocked)
        regions = self._regionsFor(mapNode, build=False)
        wasBlocked = self.regionsSlider.blockSignals(True)
        if regions is not None:
            self.regionsSlider.minimum = regions.hierarchy.min_regions
            self.regionsSlider.maximum = regions.hierarchy.n
        self.regionsSlider.value = self.scriptedEffect.integerParameter(REGIONS_PARAMETER)
        self.regionsSlider.blockSignals(wasBlocked)

    def updateMRMLFromGUI(self):
        parameterNode = self.scriptedEffect.parameterSetNode()
        if parameterNode is None:
            return
        mapNode = self.mapSelector.currentNode()
        parameterNode.SetNodeReferenceID(MAP_REFERENCE_ROLE, mapNode.GetID() if mapNode else None)
        self.scriptedEffect.setParameter(REGIONS_PARAMETER, int(self.regionsSlider.value))

    def _regionsFor(self, mapNode, build=True):
        """The map's SupervoxelRegions (hierarchy built once per map, from the images listed on
        the map node, else from the Segment Editor's source volume)."""
        if mapNode is None:
            return None
        key = (mapNode.GetID(), mapNode.GetImageData().GetMTime() if mapNode.GetImageData() else 0)
        if self._regionsKey == key:
            return self._regions
        if not build:
            return None
        from BrainBarriersLib.supervoxel_edit import SupervoxelRegions

        ids = [i for i in (mapNode.GetAttribute(SOURCES_ATTRIBUTE) or "").split(",") if i]
        volumes = [slicer.mrmlScene.GetNodeByID(i) for i in ids]
        volumes = [v for v in volumes if v is not None]
        if not volumes:
            source = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
            volumes = [source] if source is not None else []
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            self._regions = SupervoxelRegions.from_nodes(mapNode, volumes)
        finally:
            qt.QApplication.restoreOverrideCursor()
        self._regionsKey = key
        self.updateGUIFromMRML()
        return self._regions

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if eventId != vtk.vtkCommand.LeftButtonPressEvent:
            return False
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        parameterNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterNode.GetSegmentationNode()
        if segmentationNode is None or not parameterNode.GetSelectedSegmentID():
            return False
        try:
            regions = self._regionsFor(self._mapNode())
        except Exception as e:  # a map the hierarchy cannot be built for: say why, edit nothing
            logging.error(f"Supervoxels effect: {e}")
            slicer.util.errorDisplay(f"The supervoxel regions could not be built: {e}")
            return True
        if regions is None:
            slicer.util.showStatusMessage("Supervoxels: choose a supervoxel map first", 3000)
            return True
        ras = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        level = self.scriptedEffect.integerParameter(REGIONS_PARAMETER)
        modifier = regions.modifier(ras, level, segmentationNode,
                                    reference=self.scriptedEffect.defaultModifierLabelmap())
        if modifier is None:
            return True  # outside the supervoxels: nothing to do
        remove = bool(callerInteractor.GetControlKey())
        self.scriptedEffect.saveStateForUndo()
        mode = (slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeRemove if remove
                else slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd)
        self.scriptedEffect.modifySelectedSegmentByLabelmap(modifier, mode)
        return True
