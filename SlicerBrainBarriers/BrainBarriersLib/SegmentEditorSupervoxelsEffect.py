"""Segment Editor effect "Supervoxels": click a region to add it to the selected segment
(Ctrl + click removes it), at the granularity set by the "Regions" slider. Undo is the Segment
Editor's (the state is saved before every click). With the tumour model's uncertainty map chosen,
the panel lists the regions the model doubts most, most uncertain first; clicking one centres the
slice views on it, so review starts where the model doubts.

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
UNCERTAINTY_REFERENCE_ROLE = "BrainBarriersSupervoxels.Uncertainty"
# Attributes the module sets on a run's supervoxel map nodes: the image node IDs its hierarchy is
# built from, and the run's uncertainty node ID.
SOURCES_ATTRIBUTE = "BrainBarriers.SupervoxelSources"
UNCERTAINTY_ATTRIBUTE = "BrainBarriers.Uncertainty"
LISTED_REGIONS = 20


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Click-to-edit with supervoxel regions."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Supervoxels"
        scriptedEffect.perSegment = True  # edits the selected segment
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self._regions = None  # SupervoxelRegions of the chosen map, built on first use
        self._regionsKey = None
        self._listed = []  # UncertainRegion of each row of the review list
        self._listedKey = None

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
                "('supervoxels') of a BrainBarriers run. With the run's <b>Uncertainty</b> map, "
                "<b>Review first</b> lists the regions where the tumour model doubts most (once "
                "the first click has built the map's regions); click one to centre the views on "
                "it.</html>")

    def _addNodeSelector(self, label, nodeType, toolTip):
        """A node combo box of the scene's ``nodeType`` nodes (or none), in the options frame."""
        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = [nodeType]
        selector.addEnabled = False
        selector.removeEnabled = False
        selector.noneEnabled = True
        selector.setMRMLScene(slicer.mrmlScene)
        selector.setToolTip(toolTip)
        self.scriptedEffect.addLabeledOptionsWidget(label, selector)
        selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateMRMLFromGUI)
        return selector

    def setupOptionsFrame(self):
        self.mapSelector = self._addNodeSelector(
            "Supervoxels:", "vtkMRMLLabelMapVolumeNode",
            "The supervoxel map (oversegmentation) of a BrainBarriers run")

        import ctk

        self.regionsSlider = ctk.ctkSliderWidget()
        self.regionsSlider.decimals = 0
        self.regionsSlider.minimum = 1
        self.regionsSlider.maximum = 2000
        self.regionsSlider.singleStep = 1
        self.regionsSlider.setToolTip("Number of regions in the brain: fewer means larger regions")
        self.scriptedEffect.addLabeledOptionsWidget("Regions:", self.regionsSlider)
        self.regionsSlider.connect("valueChanged(double)", self.updateMRMLFromGUI)

        self.uncertaintySelector = self._addNodeSelector(
            "Uncertainty:", "vtkMRMLScalarVolumeNode",
            "The tumour model's uncertainty map of the run (tumor_uncertainty): lists where the "
            "model doubts")

        self.uncertainList = qt.QListWidget()
        self.uncertainList.setToolTip("Regions at the chosen granularity, the most uncertain first; "
                                      "click one to centre the slice views on it")
        self.scriptedEffect.addLabeledOptionsWidget("Review first:", self.uncertainList)
        self.uncertainList.connect("itemClicked(QListWidgetItem*)", self.onUncertainRegionClicked)

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault(REGIONS_PARAMETER, 300)

    def _mapNode(self):
        parameterNode = self.scriptedEffect.parameterSetNode()
        return parameterNode.GetNodeReference(MAP_REFERENCE_ROLE) if parameterNode else None

    def _uncertaintyNode(self):
        """The chosen uncertainty map, else the one of the run that made the supervoxel map."""
        parameterNode = self.scriptedEffect.parameterSetNode()
        node = parameterNode.GetNodeReference(UNCERTAINTY_REFERENCE_ROLE) if parameterNode else None
        mapNode = self._mapNode()
        if node is None and mapNode is not None and mapNode.GetAttribute(UNCERTAINTY_ATTRIBUTE):
            node = slicer.mrmlScene.GetNodeByID(mapNode.GetAttribute(UNCERTAINTY_ATTRIBUTE))
        return node

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
        uncertaintyNode = self._uncertaintyNode()
        wasBlocked = self.uncertaintySelector.blockSignals(True)
        self.uncertaintySelector.setCurrentNode(uncertaintyNode)
        self.uncertaintySelector.blockSignals(wasBlocked)
        self._updateUncertainList(regions, uncertaintyNode)

    def _updateUncertainList(self, regions, uncertaintyNode):
        level = self.scriptedEffect.integerParameter(REGIONS_PARAMETER)
        # The GUI is refreshed on every parameter change: rank again only when the inputs changed.
        key = (id(regions), level, uncertaintyNode.GetID() if uncertaintyNode else None,
               uncertaintyNode.GetMTime() if uncertaintyNode else 0)
        if key == self._listedKey:
            return
        self._listedKey = key
        self.uncertainList.clear()
        self._listed = []
        if regions is None or uncertaintyNode is None:
            return
        try:
            self._listed = regions.most_uncertain(uncertaintyNode, level, LISTED_REGIONS)
        except Exception as e:  # e.g. an uncertainty node without image data: say so, list nothing
            logging.error(f"Supervoxels effect: {e}")
            self.uncertainList.addItem(f"(uncertainty not readable: {e})")
            return
        for item in self._listed:
            self.uncertainList.addItem(f"region {item.region}: uncertainty {item.uncertainty:.2f}, "
                                       f"{item.volume_ml:.1f} ml")

    def onUncertainRegionClicked(self, item):
        row = self.uncertainList.row(item)
        if 0 <= row < len(self._listed):
            r, a, s = self._listed[row].ras
            slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, r, a, s,
                                                  slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    def updateMRMLFromGUI(self):
        parameterNode = self.scriptedEffect.parameterSetNode()
        if parameterNode is None:
            return
        mapNode = self.mapSelector.currentNode()
        parameterNode.SetNodeReferenceID(MAP_REFERENCE_ROLE, mapNode.GetID() if mapNode else None)
        uncertaintyNode = self.uncertaintySelector.currentNode()
        parameterNode.SetNodeReferenceID(UNCERTAINTY_REFERENCE_ROLE,
                                         uncertaintyNode.GetID() if uncertaintyNode else None)
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
        # Regions stay fine around the segment being edited, as it is at this first build.
        parameterNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterNode.GetSegmentationNode()
        segmentId = parameterNode.GetSelectedSegmentID()
        focus = (segmentationNode, segmentId) if segmentationNode and segmentId else None
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            self._regions = SupervoxelRegions.from_nodes(mapNode, volumes, focus_segment=focus)
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
