"""The scene bridge against Slicer's real MRML and Segmentations logic (the slicer-core wheel):
volume export with the exact IJK-to-RAS (oblique, anisotropic, under a transform), label maps to
segmentation nodes (names, colours, terminology, reference geometry, voxel-exact segments),
supervoxels as a labelmap node, and a scene left unchanged when an import fails."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SlicerBrainBarriers"))

from BrainBarriersLib import scene as bridge  # noqa: E402

from brainbarriers.io import load_volume  # noqa: E402
from brainbarriers.labels import OWN_CONTEXT, SEGMENTS_BY_OUTPUT  # noqa: E402
from brainbarriers.volume import Volume  # noqa: E402

TERM_FILE = ROOT / "SlicerBrainBarriers" / "Resources" / "BrainBarriers.term.json"


def _rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


SPACING = np.array([0.7, 1.3, 3.0])
DIRECTIONS = _rotation([0.3, -0.5, 0.8], 0.6) @ np.diag([-1.0, 1.0, 1.0])  # oblique, left-handed
ORIGIN = np.array([-12.5, 30.25, -7.0])
SHAPE = (17, 13, 9)


def _expected_affine():
    affine = np.eye(4)
    affine[:3, :3] = DIRECTIONS @ np.diag(SPACING)
    affine[:3, 3] = ORIGIN
    return affine


@pytest.fixture()
def scene():
    s = slicer.vtkMRMLScene()
    s.keep_logic = bridge.ensure_segmentation_logic(s)
    return s


def _volume_node(scene, array):
    """A scalar volume node set up the way Slicer's readers do (origin, spacing, directions)."""
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    from vtkmodules.util import numpy_support

    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
        np.ascontiguousarray(array.transpose(2, 1, 0)).ravel(), deep=True))
    node.SetAndObserveImageData(image)
    node.SetSpacing(*SPACING)
    node.SetOrigin(*ORIGIN)
    directions = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            directions.SetElement(r, c, DIRECTIONS[r, c])
    node.SetIJKToRASDirectionMatrix(directions)
    node.SetName("oblique")
    node.CreateDefaultDisplayNodes()
    return node


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(100, 30, SHAPE).astype(np.float32)


def _node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def _linear_transform(scene, angle=0.4, shift=(5.0, -3.0, 12.0)):
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation([1, 1, 0], angle)
    matrix[:3, 3] = shift
    transform.SetMatrixTransformToParent(bridge._array_to_matrix(matrix))
    return transform, matrix


# ------------------------------------------------------------------------------ volume export
def test_oblique_anisotropic_volume_round_trip(scene, tmp_path):
    array = _image()
    node = _volume_node(scene, array)
    path = bridge.export_volume(node, tmp_path / "t1.nii.gz")
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, _expected_affine(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), array)
    # Slicer's own writer (NRRD, LPS) read back by the core gives the same geometry and voxels.
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "slicer.nrrd"))
    assert storage.WriteData(node)
    theirs = load_volume(tmp_path / "slicer.nrrd")
    ours = load_volume(path)
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-4)
    np.testing.assert_array_equal(ours.array, theirs.array)
    # and back into a node: the same IJK-to-RAS and voxels
    again = bridge.import_labelmap_volume(scene, Volume((array > 100).astype(np.uint8),
                                                        ours.affine), node, "back")
    np.testing.assert_allclose(bridge.node_affine(again), _expected_affine(), atol=1e-5)
    np.testing.assert_array_equal(bridge.node_array(again), (array > 100).astype(np.uint8))


def test_linear_parent_transform_is_hardened_on_export(scene, tmp_path):
    node = _volume_node(scene, _image())
    transform, matrix = _linear_transform(scene)
    node.SetAndObserveTransformNodeID(transform.GetID())
    before = bridge.node_affine(node, world=False)
    img = nib.load(str(bridge.export_volume(node, tmp_path / "t.nii.gz")))
    np.testing.assert_allclose(img.affine, matrix @ _expected_affine(), atol=1e-5)
    # the scene node itself is untouched
    np.testing.assert_allclose(bridge.node_affine(node, world=False), before)
    assert node.GetParentTransformNode() is transform


def test_non_linear_transform_is_refused(scene, tmp_path):
    node = _volume_node(scene, _image())
    grid = slicer.vtkMRMLGridTransformNode()
    scene.AddNode(grid)
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(bridge.SceneError, match="non-linear"):
        bridge.export_volume(node, tmp_path / "t.nii.gz")
    assert not (tmp_path / "t.nii.gz").exists()


def test_labelmap_node_is_refused_as_input(scene, tmp_path):
    node = bridge.import_labelmap_volume(scene, Volume(np.ones(SHAPE, np.uint8),
                                                       _expected_affine()), None, "lab")
    with pytest.raises(bridge.SceneError, match="scalar image"):
        bridge.export_volume(node, tmp_path / "x.nii.gz")


# ------------------------------------------------------------------------------ segmentations
def _tumor_labels():
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:9, 2:8, 2:6] = 2
    labels[4:8, 3:7, 3:5] = 4
    labels[5:7, 4:6, 3:5] = 1
    return labels


def _barrier_labels():
    labels = np.zeros(SHAPE, np.uint8)
    labels[8, :, :] = 1  # falx
    labels[2:6, 1:4, 6:8] = 5  # cerebellum
    labels[10:13, 5:8, 2:4] = 6  # ventricles
    return labels  # no tentorium, no sinuses: their segments are empty


def test_labels_become_named_coloured_tagged_segments(scene):
    reference = _volume_node(scene, _image())
    tumor, barriers = _tumor_labels(), _barrier_labels()
    affine = _expected_affine()
    seg = bridge.import_segmentation(
        scene, [("tumor", Volume(tumor, affine)), ("barriers", Volume(barriers, affine))],
        reference, "BrainBarriers")
    segmentation = seg.GetSegmentation()
    terminology = slicer.vtkSlicerTerminologiesModuleLogic
    expected_ids = []
    for key, labels in (("tumor", tumor), ("barriers", barriers)):
        for value, spec in SEGMENTS_BY_OUTPUT[key].items():
            segment_id = f"{key}_{spec.key}"
            expected_ids.append(segment_id)
            segment = segmentation.GetSegment(segment_id)
            assert segment is not None, segment_id
            assert segment.GetName() == spec.name
            np.testing.assert_allclose(segment.GetColor(), spec.color, atol=1e-6)
            entry = slicer.vtkSlicerTerminologyEntry()
            assert terminology.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
            assert entry.GetTerminologyContextName() == spec.context
            assert entry.GetTypeObject().GetCodeValue() == spec.type[1]
            assert entry.GetCategoryObject().GetCodeValue() == spec.category[1]
            # voxel-exact: the segment is our label map's voxels of that value, on the grid
            mask = bridge.segment_array(scene, seg, segment_id, reference)
            np.testing.assert_array_equal(mask, (labels == value).astype(np.uint8))
    assert sorted(segmentation.GetSegmentIDs()) == sorted(expected_ids)  # no BraTS "3" segment
    # reference geometry from the volume, for the Segment Editor and DICOM SEG export
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == \
        reference.GetID()
    assert "0.7" in segmentation.GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())


def test_segmentation_follows_a_transformed_reference(scene):
    reference = _volume_node(scene, _image())
    transform, matrix = _linear_transform(scene)
    reference.SetAndObserveTransformNodeID(transform.GetID())
    labels = _tumor_labels()
    world = matrix @ _expected_affine()  # what the worker returns: the exported (world) grid
    seg = bridge.import_segmentation(scene, [("tumor", Volume(labels, world))], reference, "T")
    assert seg.GetParentTransformNode() is transform
    for value, spec in SEGMENTS_BY_OUTPUT["tumor"].items():
        mask = bridge.segment_array(scene, seg, f"tumor_{spec.key}", reference)
        np.testing.assert_array_equal(mask, (labels == value).astype(np.uint8))


def test_supervoxels_become_a_labelmap_node(scene):
    reference = _volume_node(scene, _image())
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 700, SHAPE).astype(np.int32)  # more labels than uint8 holds
    node = bridge.import_labelmap_volume(scene, Volume(labels, _expected_affine()), reference,
                                         "supervoxels")
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(bridge.node_array(node), labels)
    np.testing.assert_allclose(bridge.node_affine(node), _expected_affine(), atol=1e-6)


def test_failed_import_leaves_the_scene_unchanged(scene):
    reference = _volume_node(scene, _image())
    before = _node_ids(scene)
    bad = _tumor_labels()
    bad[0, 0, 0] = 3  # BraTS has no label 3
    affine = _expected_affine()
    with pytest.raises(bridge.SceneError, match=r"\[3\]"):
        bridge.import_segmentation(scene, [("barriers", Volume(_barrier_labels(), affine)),
                                           ("tumor", Volume(bad, affine))], reference, "X")
    assert _node_ids(scene) == before
    shifted = affine.copy()
    shifted[:3, 3] += 1.0
    with pytest.raises(bridge.SceneError, match="not on the grid"):
        bridge.import_segmentation(scene, [("tumor", Volume(_tumor_labels(), shifted))],
                                   reference, "X")
    assert _node_ids(scene) == before


def test_import_outputs_is_all_or_nothing(scene, tmp_path):
    from brainbarriers.io import save_volume

    reference = _volume_node(scene, _image())
    affine = _expected_affine()
    save_volume(Volume(_tumor_labels(), affine), tmp_path / "tumor.nii.gz")
    save_volume(Volume(np.ones((4, 4, 4), np.uint16), affine), tmp_path / "supervoxels.nii.gz")
    before = _node_ids(scene)
    with pytest.raises(bridge.SceneError):
        bridge.import_outputs(scene, {"tumor": tmp_path / "tumor.nii.gz",
                                      "supervoxels": tmp_path / "supervoxels.nii.gz"},
                              reference, "Run")
    assert _node_ids(scene) == before
    save_volume(Volume(np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(np.uint16) % 50, affine),
                tmp_path / "supervoxels.nii.gz")
    nodes = bridge.import_outputs(scene, {"tumor": tmp_path / "tumor.nii.gz",
                                          "supervoxels": tmp_path / "supervoxels.nii.gz"},
                                  reference, "Run")
    assert nodes["segmentation"].GetSegmentation().GetNumberOfSegments() == 3
    assert nodes["supervoxels"].IsA("vtkMRMLLabelMapVolumeNode")


def test_a_coregistered_sequence_is_put_under_its_move_and_nothing_else_moves(scene, tmp_path):
    from brainbarriers.io import save_volume

    reference = _volume_node(scene, _image())
    flair, t2 = _volume_node(scene, _image(1)), _volume_node(scene, _image(2))
    parent, parent_matrix = _linear_transform(scene)  # the user's own transform above the T2
    t2.SetAndObserveTransformNodeID(parent.GetID())
    move = np.eye(4)
    move[:3, :3] = _rotation([0.2, 1, 0.4], 0.15)
    move[:3, 3] = (4.0, -2.5, 7.0)
    before = {n: bridge.node_affine(n) for n in (reference, flair, t2)}
    save_volume(Volume(_tumor_labels(), _expected_affine()), tmp_path / "tumor.nii.gz")
    nodes = bridge.import_outputs(scene, {"tumor": tmp_path / "tumor.nii.gz"}, reference, "Run",
                                  moves={"flair": (flair, move), "t2": (t2, move)})
    assert nodes["flair_to_reference"].GetName() == "Run flair to reference"
    assert flair.GetParentTransformNode() is nodes["flair_to_reference"]
    assert nodes["t2_to_reference"].GetParentTransformNode() is parent  # put in between
    for node in (flair, t2):  # in world space each moved by the move, whatever it was under
        np.testing.assert_allclose(bridge.node_affine(node), move @ before[node], atol=1e-6)
    np.testing.assert_allclose(bridge.node_affine(reference), before[reference])
    kept = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToParent(kept)
    np.testing.assert_allclose(bridge._matrix_to_array(kept), parent_matrix)
    # What the batch script saves it as (ITK's HDF5 transform file) reads back the same.
    storage = slicer.vtkMRMLTransformStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "flair_to_reference.h5"))
    assert storage.WriteData(nodes["flair_to_reference"])
    back = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(back)
    assert storage.ReadData(back)
    read = vtk.vtkMatrix4x4()
    back.GetMatrixTransformToParent(read)
    np.testing.assert_allclose(bridge._matrix_to_array(read), move, atol=1e-9)

    # A failing import puts every node back under its own parent and removes what it added.
    other = _volume_node(scene, _image(3))
    warp = slicer.vtkMRMLGridTransformNode()  # a non-linear transform: refused
    scene.AddNode(warp)
    other.SetAndObserveTransformNodeID(warp.GetID())
    flair.SetAndObserveTransformNodeID(None)
    ids = _node_ids(scene)
    with pytest.raises(bridge.SceneError, match="non-linear"):
        bridge.import_outputs(scene, {}, reference, "Again",
                              moves={"flair": (flair, move), "t1": (other, move)})
    assert _node_ids(scene) == ids
    assert flair.GetParentTransformNode() is None and other.GetParentTransformNode() is warp


def test_uncertainty_comes_in_as_a_scalar_overlay_on_the_reference_grid(scene, tmp_path):
    from brainbarriers.io import save_volume

    reference = _volume_node(scene, _image())
    affine = _expected_affine()
    uncertainty = np.zeros(SHAPE, np.float32)
    uncertainty[3:9, 4:8, 2:5] = 0.75
    save_volume(Volume(uncertainty, affine), tmp_path / "tumor_uncertainty.nii.gz")
    nodes = bridge.import_outputs(scene, {"tumor_uncertainty": tmp_path / "tumor_uncertainty.nii.gz"},
                                  reference, "Run")
    node = nodes["tumor_uncertainty"]
    assert node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
    assert np.allclose(bridge.node_affine(node), affine, atol=1e-5)
    assert np.array_equal(bridge.node_array(node), uncertainty)
    display = node.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.05)
    before = _node_ids(scene)
    shifted = affine.copy()
    shifted[:3, 3] += 2.0
    save_volume(Volume(uncertainty, shifted), tmp_path / "off.nii.gz")
    with pytest.raises(bridge.SceneError, match="not on the grid"):
        bridge.import_outputs(scene, {"tumor_uncertainty": tmp_path / "off.nii.gz"}, reference, "X")
    assert _node_ids(scene) == before


# ------------------------------------------------------------------------------ terminology
def test_every_segment_is_found_in_a_context_slicer_loads():
    """Slicer's Terminologies logic loads the extension's context, and every segment's category
    and type are in it, with the segment's name and colour."""
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    context = logic.LoadTerminologyFromFile(str(TERM_FILE))
    assert context == OWN_CONTEXT
    names = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    loaded = {names.GetValue(i) for i in range(names.GetNumberOfValues())}
    types = {}
    category = slicer.vtkSlicerTerminologyCategory()
    for i in range(logic.GetNumberOfCategoriesInTerminology(context)):
        logic.GetNthCategoryInTerminology(context, i, category)
        for j in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            t = slicer.vtkSlicerTerminologyType()
            logic.GetNthTypeInTerminologyCategory(context, category, j, t)
            types[(category.GetCodeValue(), t.GetCodeValue())] = (
                t.GetCodeMeaning(), tuple(t.GetRecommendedDisplayRGBValue()), t.GetSlicerLabel())
    specs = [s for specs in SEGMENTS_BY_OUTPUT.values() for s in specs.values()]
    for spec in specs:
        assert spec.context in loaded, spec.key
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(spec.terminology_string(), entry)
        key = (entry.GetCategoryObject().GetCodeValue(), entry.GetTypeObject().GetCodeValue())
        assert key in types, f"{spec.key}: {key} is not in {context}"
        meaning, rgb, label = types[key]
        assert meaning == spec.type[2] and label == spec.name
        assert rgb == tuple(round(c * 255) for c in spec.color)
    assert len(types) == len({(s.category[1], s.type[1]) for s in specs})
