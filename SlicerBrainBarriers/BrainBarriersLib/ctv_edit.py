"""The edit loop's last step, without Qt: the CTV recomputed from the edited tumour segments with the
brain mask and barriers already in the segmentation (no network, no worker process).

The segments are read on the reference volume's grid (``scene.segment_array``), the core's
``ctv_from_gtv`` grows the margin, and the CTV segment is replaced in place (same ID, name, colour
and terminology) or created when the segmentation has none.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from brainbarriers.ctv import DEFAULT_BARRIERS, GTV_LABELS, ctv_from_gtv
from brainbarriers.ctv.ctv import EDEMA
from brainbarriers.labels import SEGMENTS_BY_OUTPUT
from brainbarriers.volume import Volume

from .scene import (
    SceneError,
    _array_to_matrix,
    node_affine,
    node_array,
    parent_to_world,
    set_segment_properties,
)

CTV_SEGMENT_ID = "ctv_" + SEGMENTS_BY_OUTPUT["ctv"][1].key
BRAIN_SEGMENT_ID = "brain_mask_" + SEGMENTS_BY_OUTPUT["brain_mask"][1].key


def gtv_segment_ids(gtv: str = "enhancing", add_edema: bool = False) -> list[str]:
    """The tumour segments that make the GTV (as the ``ctv`` step's ``gtv`` choice)."""
    labels = GTV_LABELS[gtv] + ((EDEMA,) if add_edema else ())
    specs = SEGMENTS_BY_OUTPUT["tumor"]
    return [f"tumor_{specs[v].key}" for v in labels if v in specs]


def reference_volume(scene, segmentation_node):
    role = segmentation_node.GetReferenceImageGeometryReferenceRole()
    reference = segmentation_node.GetNodeReference(role)
    if reference is None:
        raise SceneError(f"segmentation '{segmentation_node.GetName()}' has no reference volume")
    return reference


def _export(scene, seg_node, segment_ids: list[str], reference) -> np.ndarray:
    """Segments on the reference grid as one label map: the i-th segment's voxels hold i + 1
    (a later segment wins where they overlap)."""
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    try:
        ids = vtk.vtkStringArray()
        for segment_id in segment_ids:
            ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                seg_node, ids, labelmap, reference):
            raise SceneError(f"cannot export the segments {segment_ids}")
        return node_array(labelmap)
    finally:
        scene.RemoveNode(labelmap)


def recompute_ctv(scene, segmentation_node, *, margin_mm: float = 15.0, gtv: str = "enhancing",
                  add_edema: bool = False, barrier_labels: Iterable[int] = DEFAULT_BARRIERS,
                  gtv_segments: list[str] | None = None, reference=None) -> str:
    """Recompute the CTV segment from the (edited) GTV segments; returns the CTV segment's ID.

    ``gtv_segments`` overrides the tumour segments chosen by ``gtv``/``add_edema``. Missing
    barrier segments are simply not blocked (e.g. a run without the barriers step).
    """
    segmentation = segmentation_node.GetSegmentation()
    reference = reference or reference_volume(scene, segmentation_node)
    affine = node_affine(reference, world=True)
    present = set(segmentation.GetSegmentIDs())
    wanted = gtv_segments or gtv_segment_ids(gtv, add_edema)
    gtv_ids = [s for s in wanted if s in present]
    if not gtv_ids:
        raise SceneError(f"none of the GTV segments {wanted} is in '{segmentation_node.GetName()}'")
    if BRAIN_SEGMENT_ID not in present:
        raise SceneError(f"the brain mask segment '{BRAIN_SEGMENT_ID}' is missing: run the "
                         "skull-stripping step first")
    gtv_array = _export(scene, segmentation_node, gtv_ids, reference) > 0
    brain = _export(scene, segmentation_node, [BRAIN_SEGMENT_ID], reference) > 0
    barrier_specs = SEGMENTS_BY_OUTPUT["barriers"]
    blocked = [v for v in sorted(set(barrier_labels)) if f"barriers_{barrier_specs[v].key}" in present]
    barriers = None
    if blocked:
        exported = _export(scene, segmentation_node,
                           [f"barriers_{barrier_specs[v].key}" for v in blocked], reference)
        barriers = Volume(np.concatenate([[0], blocked])[exported], affine)
    ctv = ctv_from_gtv(Volume(gtv_array.astype(np.uint8), affine), Volume(brain.astype(np.uint8), affine),
                       barriers, margin_mm=margin_mm, barrier_labels=blocked)
    if CTV_SEGMENT_ID not in present:
        spec = SEGMENTS_BY_OUTPUT["ctv"][1]
        segmentation.AddEmptySegment(CTV_SEGMENT_ID, spec.name, list(spec.color))
        set_segment_properties(segmentation.GetSegment(CTV_SEGMENT_ID), spec)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*ctv.shape)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
        np.ascontiguousarray(ctv.array.transpose(2, 1, 0)).ravel(), deep=True,
        array_type=vtk.VTK_UNSIGNED_CHAR))
    # A segmentation's labelmaps live in its node's frame: undo its parent transforms.
    frame = np.linalg.inv(parent_to_world(segmentation_node))
    image.SetImageToWorldMatrix(_array_to_matrix(frame @ affine))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, CTV_SEGMENT_ID,
                                            logic.MODE_REPLACE, image.GetExtent()):
        raise SceneError("updating the CTV segment failed")
    return CTV_SEGMENT_ID
