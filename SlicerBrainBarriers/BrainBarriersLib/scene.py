"""Scene bridge: MRML volume nodes <-> NIfTI files, label maps -> segmentation nodes.

Works in Slicer and, for the tests, with the ``slicer-core`` wheel (Slicer's MRML and Segmentations
logic without Qt). It uses only MRML/VTK calls that both have; no widgets, no dialogs.

Geometry rules:
- A volume is exported in world coordinates: a *linear* parent transform (and its parents) is
  hardened into the exported header, the scene node itself is left as it is. A non-linear (warping)
  transform is refused with a clear error: resampling it silently would change the voxels.
- Results come back on the reference volume's own grid. When the reference volume sits under a
  linear transform, the new nodes are placed under the same transform node with the reference's
  local geometry, so they move with it (and match its voxels exactly).
- Every import is all-or-nothing: on any error the nodes it created are removed again, so the
  scene is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from brainbarriers.io import load_volume, save_volume
from brainbarriers.labels import SEGMENTS_BY_OUTPUT, SegmentSpec
from brainbarriers.volume import Volume

# Products imported as segmentation layers, in this order; supervoxel maps become labelmap volumes;
# the tumour model's uncertainty (0..1) a scalar volume to overlay.
SEGMENTATION_PRODUCTS = ("brain_mask", "tumor", "barriers", "ctv")
LABELMAP_PRODUCTS = ("supervoxels", "supervoxels_merged")
SCALAR_PRODUCTS = ("tumor_uncertainty",)
# Slicer's file colour tables have IDs "vtkMRMLColorTableNodeFile<name>.txt"; slicer-core has none.
UNCERTAINTY_COLORS = "vtkMRMLColorTableNodeFileInferno.txt"
UNCERTAINTY_SHOWN_FROM = 0.05  # below this the overlay is transparent (the passes agree)


class SceneError(Exception):
    """A scene object cannot be used as asked (the message says why and what to do)."""


# ----------------------------------------------------------------------------------- helpers
def _matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def parent_to_world(node) -> np.ndarray:
    """The node's parent transform chain as a 4x4 matrix (identity when there is none).

    Raises SceneError for a non-linear transform: we refuse rather than resample silently.
    """
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise SceneError(
            f"'{node.GetName()}' is under the non-linear transform '{transform.GetName()}'. "
            "Harden it first (Data module: right-click the volume, 'Harden transform'), or move "
            "the volume out of it."
        )
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(matrix)
    return _matrix_to_array(matrix)


def node_affine(node, *, world: bool = True) -> np.ndarray:
    """IJK -> RAS (mm) of a volume node; with ``world`` its linear parent transforms included."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    affine = _matrix_to_array(matrix)
    return parent_to_world(node) @ affine if world else affine


def node_array(node) -> np.ndarray:
    """The voxels of a scalar volume node as array[i, j, k] (a copy)."""
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise SceneError(f"'{node.GetName()}' has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise SceneError(f"'{node.GetName()}' has {image.GetNumberOfScalarComponents()} components "
                         "per voxel; a scalar volume is needed")
    ni, nj, nk = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return np.array(flat.reshape(nk, nj, ni).transpose(2, 1, 0))


def _image_data(array: np.ndarray) -> vtk.vtkImageData:
    array = np.asarray(array)
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    # VTK runs i fastest: the C-order ravel of array[k, j, i].
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array.transpose(2, 1, 0)).ravel(),
                                         deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def node_to_volume(node) -> Volume:
    """A volume node as a core Volume in world coordinates (linear transforms hardened)."""
    return Volume(node_array(node), node_affine(node, world=True))


def export_volume(node, path: str | Path) -> Path:
    """Write a scalar volume node to NIfTI with its world geometry (see module notes)."""
    if node is None:
        raise SceneError("no volume node given")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise SceneError(f"'{node.GetName()}' is a {node.GetClassName()}; a scalar image volume "
                         "is needed")
    volume = node_to_volume(node)
    array = volume.array
    dtype = array.dtype if array.dtype.kind in "iuf" and array.dtype.itemsize <= 4 else np.float32
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_volume(volume, path, dtype=dtype)


def _set_geometry(node, affine: np.ndarray) -> None:
    node.SetIJKToRASMatrix(_array_to_matrix(affine))


def _local_affine(volume_affine: np.ndarray, reference) -> np.ndarray:
    """World affine -> the reference node's local frame (undo its parent transform)."""
    return np.linalg.inv(parent_to_world(reference)) @ volume_affine


def _place_beside(scene, node, reference) -> None:
    """Same parent transform and subject-hierarchy folder as the reference volume."""
    if reference is None:
        return
    transform = reference.GetParentTransformNode()
    if transform is not None:
        node.SetAndObserveTransformNodeID(transform.GetID())
    # Slicer always has one; GetSubjectHierarchyNode() would add one to a bare scene.
    sh = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")
    if sh is None:
        return
    ref_item = sh.GetItemByDataNode(reference)
    item = sh.GetItemByDataNode(node)
    if ref_item and item:
        sh.SetItemParent(item, sh.GetItemParent(ref_item))


def _check_same_grid(volume: Volume, reference, what: str) -> None:
    if reference is None:
        return
    ref_shape = node_array(reference).shape
    ref_affine = node_affine(reference, world=True)
    if tuple(volume.shape) != tuple(ref_shape) or not np.allclose(volume.affine, ref_affine,
                                                                  atol=1e-3):
        raise SceneError(f"{what} is not on the grid of '{reference.GetName()}' "
                         f"({volume.shape} vs {ref_shape})")


def ensure_segmentation_logic(scene):
    """Slicer registers the segmentation converter rules at startup; slicer-core does not until a
    Segmentations logic exists. Returns the logic made (keep it alive) or None."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules()
    if rules is not None and len(rules) > 0:
        return None
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    return logic


class _Created:
    """Nodes made by one import; removed again if the import fails."""

    def __init__(self, scene):
        self.scene = scene
        self.nodes: list = []

    def add(self, node):
        self.scene.AddNode(node)
        self.nodes.append(node)
        return node

    def forget(self, node) -> None:
        self.nodes.remove(node)

    def rollback(self) -> None:
        for node in reversed(self.nodes):
            for i in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes")
                           else 0):
                display = node.GetNthDisplayNode(i)
                if display is not None and self.scene.IsNodePresent(display):
                    self.scene.RemoveNode(display)
            if self.scene.IsNodePresent(node):
                self.scene.RemoveNode(node)
        self.nodes.clear()


# ------------------------------------------------------------------------------ segmentations
def set_segment_properties(segment, spec: SegmentSpec) -> None:
    segment.SetName(spec.name)
    segment.SetColor(*spec.color)
    # Slicer >= 5.10 (the extension's minimum: older Slicers bundle Python 3.9, which the core
    # cannot run on) has vtkSegment.SetTerminology; the SetTag fallback is gone with them.
    segment.SetTerminology(spec.terminology_string())


def _add_label_layer(created: _Created, seg_node, volume: Volume, specs: Mapping[int, SegmentSpec],
                     reference, prefix: str) -> list[str]:
    """Import one label map as segments (one per spec, empty ones included). Returns segment IDs."""
    values = np.unique(volume.array)
    unknown = [int(v) for v in values if v != 0 and int(v) not in specs]
    if unknown:
        raise SceneError(f"{prefix}: label value(s) {unknown} have no segment definition "
                         f"(known: {sorted(specs)})")
    top = max(specs)
    labelmap = created.add(slicer.vtkMRMLLabelMapVolumeNode())
    labelmap.SetName(f"{prefix}_import")
    labelmap.SetAndObserveImageData(_image_data(volume.array.astype(np.uint8 if top < 256
                                                                    else np.uint16)))
    _set_geometry(labelmap, _local_affine(volume.affine, reference) if reference is not None
                  else volume.affine)
    ids = vtk.vtkStringArray()
    wanted = {}
    for value in range(1, top + 1):
        spec = specs.get(value)
        segment_id = f"{prefix}_{spec.key}" if spec else f"{prefix}_unused_{value}"
        ids.InsertNextValue(segment_id)
        if spec:
            wanted[segment_id] = spec
    existing = set(seg_node.GetSegmentation().GetSegmentIDs())
    clash = existing & set(wanted)
    if clash:
        raise SceneError(f"segmentation '{seg_node.GetName()}' already has {sorted(clash)}")
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        labelmap, seg_node, ids)
    if not ok:
        raise SceneError(f"{prefix}: importing the label map into the segmentation failed")
    segmentation = seg_node.GetSegmentation()
    for segment_id in list(segmentation.GetSegmentIDs()):
        if segment_id in existing:
            continue
        if segment_id not in wanted:  # values between the defined ones (e.g. BraTS's 3)
            segmentation.RemoveSegment(segment_id)
            continue
        set_segment_properties(segmentation.GetSegment(segment_id), wanted[segment_id])
    for segment_id, spec in wanted.items():  # a value past the data's maximum makes no segment
        if segmentation.GetSegment(segment_id) is None:
            segmentation.AddEmptySegment(segment_id, spec.name, list(spec.color))
            set_segment_properties(segmentation.GetSegment(segment_id), spec)
    created.scene.RemoveNode(labelmap)
    created.forget(labelmap)
    return list(wanted)


def import_segmentation(scene, layers: Iterable[tuple[str, Volume]], reference, name: str):
    """One segmentation node holding every label map in ``layers`` ((output key, Volume) pairs, the
    keys of ``brainbarriers.labels.SEGMENTS_BY_OUTPUT``), named, coloured and tagged, with
    ``reference`` as its reference geometry. All or nothing."""
    logic = ensure_segmentation_logic(scene)  # noqa: F841 - must outlive the import
    created = _Created(scene)
    try:
        seg_node = created.add(slicer.vtkMRMLSegmentationNode())
        seg_node.SetName(scene.GenerateUniqueName(name) if hasattr(scene, "GenerateUniqueName")
                         else name)
        seg_node.CreateDefaultDisplayNodes()
        if reference is not None:
            seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
            seg_node.SetNodeReferenceID(seg_node.GetReferenceImageGeometryReferenceRole(),
                                        reference.GetID())
        for key, volume in layers:
            if key not in SEGMENTS_BY_OUTPUT:
                raise SceneError(f"no segment definitions for output '{key}'")
            _check_same_grid(volume, reference, key)
            _add_label_layer(created, seg_node, volume, SEGMENTS_BY_OUTPUT[key], reference, key)
        _place_beside(scene, seg_node, reference)
        return seg_node
    except BaseException:
        created.rollback()
        raise


def import_labelmap_volume(scene, volume: Volume, reference, name: str):
    """A label map (e.g. supervoxels) as a labelmap volume node on the reference's grid."""
    created = _Created(scene)
    try:
        _check_same_grid(volume, reference, name)
        top = int(volume.array.max()) if volume.array.size else 0
        dtype = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.int32)
        node = created.add(slicer.vtkMRMLLabelMapVolumeNode())
        node.SetName(scene.GenerateUniqueName(name) if hasattr(scene, "GenerateUniqueName")
                     else name)
        node.SetAndObserveImageData(_image_data(volume.array.astype(dtype)))
        _set_geometry(node, _local_affine(volume.affine, reference) if reference is not None
                      else volume.affine)
        node.CreateDefaultDisplayNodes()
        _place_beside(scene, node, reference)
        return node
    except BaseException:
        created.rollback()
        raise


def import_uncertainty_volume(scene, volume: Volume, reference, name: str):
    """A 0..1 map (the tumour model's uncertainty) as a scalar volume node on the reference's grid,
    shown 0 to 1 in a heat colour map, transparent below ``UNCERTAINTY_SHOWN_FROM`` when overlaid."""
    created = _Created(scene)
    try:
        _check_same_grid(volume, reference, name)
        node = created.add(slicer.vtkMRMLScalarVolumeNode())
        node.SetName(scene.GenerateUniqueName(name) if hasattr(scene, "GenerateUniqueName")
                     else name)
        node.SetAndObserveImageData(_image_data(volume.array.astype(np.float32)))
        _set_geometry(node, _local_affine(volume.affine, reference) if reference is not None
                      else volume.affine)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
        display.AutoThresholdOff()
        display.SetLowerThreshold(UNCERTAINTY_SHOWN_FROM)
        display.SetUpperThreshold(1.0)
        display.ApplyThresholdOn()
        if scene.GetNodeByID(UNCERTAINTY_COLORS) is not None:
            display.SetAndObserveColorNodeID(UNCERTAINTY_COLORS)
        _place_beside(scene, node, reference)
        return node
    except BaseException:
        created.rollback()
        raise


def _move_onto_reference(scene, node, matrix: np.ndarray, name: str):
    """A linear transform node that carries ``node`` by ``matrix`` (RAS, world to world), put
    between the node and its own parent transform so that nothing else moves."""
    parent = node.GetParentTransformNode()
    to_world = parent_to_world(node)
    transform = slicer.vtkMRMLLinearTransformNode()
    transform.SetName(name)
    scene.AddNode(transform)
    transform.SetMatrixTransformToParent(_array_to_matrix(np.linalg.inv(to_world) @ matrix @ to_world))
    if parent is not None:
        transform.SetAndObserveTransformNodeID(parent.GetID())
    node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def import_outputs(scene, outputs: Mapping[str, str | Path], reference, name: str,
                   moves: Mapping[str, tuple[object, np.ndarray]] | None = None) -> dict:
    """Import a run's final outputs (product -> file, as in the worker's ``done`` event): one
    segmentation node with every label output, one labelmap node per supervoxel map, one scalar
    volume for the tumour model's uncertainty. ``moves``: {sequence: (its input node, RAS matrix
    onto the reference)}, the run's co-registrations: each input node is put under a new linear
    transform node ("<name> <sequence> to reference"), so that it shows aligned with the results.
    Returns {"segmentation": node or None, product: node, "<sequence>_to_reference": node, ...}.
    All or nothing."""
    volumes = {}
    for product in SEGMENTATION_PRODUCTS + LABELMAP_PRODUCTS + SCALAR_PRODUCTS:
        if product in outputs:
            volumes[product] = load_volume(outputs[product], allow_empty=True)
    result: dict = {"segmentation": None}
    made = []
    parents = []  # (input node, its parent transform's ID before), to put back on failure
    try:
        layers = [(p, volumes[p]) for p in SEGMENTATION_PRODUCTS if p in volumes]
        if layers:
            result["segmentation"] = import_segmentation(scene, layers, reference, name)
            made.append(result["segmentation"])
        for product in LABELMAP_PRODUCTS:
            if product in volumes:
                result[product] = import_labelmap_volume(scene, volumes[product], reference,
                                                         f"{name} {product}")
                made.append(result[product])
        for product in SCALAR_PRODUCTS:
            if product in volumes:
                result[product] = import_uncertainty_volume(scene, volumes[product], reference,
                                                            f"{name} {product}")
                made.append(result[product])
        for sequence, (node, matrix) in (moves or {}).items():
            parents.append((node, node.GetTransformNodeID()))
            result[f"{sequence}_to_reference"] = _move_onto_reference(
                scene, node, matrix, f"{name} {sequence} to reference")
            made.append(result[f"{sequence}_to_reference"])
        return result
    except BaseException:
        for node, parent_id in reversed(parents):
            node.SetAndObserveTransformNodeID(parent_id)
        for node in reversed(made):
            for i in range(node.GetNumberOfDisplayNodes()):
                display = node.GetNthDisplayNode(i)
                if display is not None and scene.IsNodePresent(display):
                    scene.RemoveNode(display)
            if scene.IsNodePresent(node):
                scene.RemoveNode(node)
        raise


def segment_array(scene, seg_node, segment_id: str, reference) -> np.ndarray:
    """A segment's binary labelmap on the reference volume's grid, as array[i, j, k] (uint8)."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            seg_node, ids, labelmap, reference)
        if not ok:
            raise SceneError(f"cannot export segment {segment_id}")
        return (node_array(labelmap) > 0).astype(np.uint8)
    finally:
        # The export adds display, colour (and perhaps storage) nodes: the scene is left as it was.
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before:
                scene.RemoveNode(node)
