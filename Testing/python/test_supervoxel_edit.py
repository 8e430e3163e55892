"""Click-to-edit with supervoxels against Slicer's real MRML and Segmentations logic (slicer-core):
a RAS point on an oblique, anisotropic map under a linear transform finds the right supervoxel,
its region at a level of the hierarchy, and adds it to or removes it from a segment voxel for voxel;
the CTV recompute of the module's Logic is tested in test_ctv_recompute."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SlicerBrainBarriers"))

from BrainBarriersLib import scene as bridge  # noqa: E402
from BrainBarriersLib.supervoxel_edit import SupervoxelRegions, edit_segment  # noqa: E402

from brainbarriers.supervoxels.hierarchy import Hierarchy  # noqa: E402
from brainbarriers.volume import Volume  # noqa: E402


def _rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


SHAPE = (12, 10, 6)
AFFINE = np.eye(4)
AFFINE[:3, :3] = _rotation([0.3, -0.5, 0.8], 0.6) @ np.diag([-1.0, 1.0, 1.0]) @ np.diag([0.8, 1.1, 3.0])
AFFINE[:3, 3] = [-12.5, 30.25, -7.0]


def _blocks():
    """Eight supervoxels: 2 x 2 x 2 blocks of 6 x 5 x 3 voxels, ids 1..8; a border of 0 on i=0."""
    over = np.zeros(SHAPE, np.int32)
    for n, (a, b, c) in enumerate(np.ndindex(2, 2, 2)):
        over[a * 6:(a + 1) * 6, b * 5:(b + 1) * 5, c * 3:(c + 1) * 3] = n + 1
    over[0] = 0
    return over


# merges: 1+2 (level 7), 3+4 (6), 1+3 (5: {1,2,3,4}), 5+6 (4), ...
MERGES = [(1, 2), (3, 4), (1, 3), (5, 6), (7, 8), (5, 7), (1, 5)]


@pytest.fixture()
def scene():
    s = slicer.vtkMRMLScene()
    s.keep_logic = bridge.ensure_segmentation_logic(s)
    return s


@pytest.fixture()
def setup(scene):
    over = _blocks()
    node = bridge.import_labelmap_volume(scene, Volume(over, AFFINE), None, "supervoxels")
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    moved = np.eye(4)
    moved[:3, :3] = _rotation([1, 1, 0], 0.4)
    moved[:3, 3] = [5.0, -3.0, 12.0]
    transform.SetMatrixTransformToParent(bridge._array_to_matrix(moved))
    node.SetAndObserveTransformNodeID(transform.GetID())
    hierarchy = Hierarchy(8, MERGES, np.linspace(0.1, 0.7, 7), 0.35)
    regions = SupervoxelRegions(node, hierarchy)
    seg = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(seg)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    seg.SetAndObserveTransformNodeID(transform.GetID())
    seg.GetSegmentation().AddEmptySegment("gtv", "GTV")
    return scene, node, regions, seg, over, moved @ AFFINE


def _ras(world_affine, ijk):
    return (world_affine @ np.array([*ijk, 1.0]))[:3]


def _segment(scene, seg, node):
    return bridge.segment_array(scene, seg, "gtv", node).astype(bool)


def test_point_finds_its_voxel_on_an_oblique_transformed_map(setup):
    _, _, regions, _, over, world = setup
    for ijk in [(1, 0, 0), (7, 6, 4), (11, 9, 5), (3, 7, 2)]:
        # a point a third of a voxel off the centre still falls in that voxel
        ras = _ras(world, np.array(ijk) + [0.3, -0.3, 0.2])
        assert regions.ijk_of(ras) == ijk
        assert regions.supervoxel_at(ras) == over[ijk]
    assert regions.supervoxel_at(_ras(world, (-2, 0, 0))) == 0  # off the map
    assert regions.supervoxel_at(_ras(world, (0, 3, 3))) == 0  # background


def test_levels_come_from_the_recorded_merges(setup):
    _, _, regions, _, _, world = setup
    ras = _ras(world, (2, 1, 1))  # supervoxel 1
    assert regions.region_at(ras, 8)[1].tolist() == [1]
    assert regions.region_at(ras, 7)[1].tolist() == [1, 2]
    assert regions.region_at(ras, 5)[1].tolist() == [1, 2, 3, 4]
    assert regions.region_at(ras, 1)[1].tolist() == list(range(1, 9))
    assert regions.region_at(ras, 0)[1].tolist() == list(range(1, 9))  # clamped


def test_click_adds_and_removes_the_region_voxel_for_voxel(setup):
    scene, node, regions, seg, over, world = setup
    ras = _ras(world, (8, 2, 1))  # supervoxel 5 (block a=1, b=0, c=0)
    assert over[8, 2, 1] == 5
    assert edit_segment(seg, "gtv", regions, ras, level=4)  # region {5, 6}
    np.testing.assert_array_equal(_segment(scene, seg, node), np.isin(over, [5, 6]))
    ras1 = _ras(world, (2, 7, 4))  # supervoxel 4
    assert edit_segment(seg, "gtv", regions, ras1, level=6)  # region {3, 4}
    np.testing.assert_array_equal(_segment(scene, seg, node), np.isin(over, [3, 4, 5, 6]))
    # remove one supervoxel at the finest level: its neighbours in the segment stay
    assert edit_segment(seg, "gtv", regions, _ras(world, (8, 2, 4)), level=8, remove=True)
    np.testing.assert_array_equal(_segment(scene, seg, node), np.isin(over, [3, 4, 5]))
    # a click outside the supervoxels changes nothing
    assert not edit_segment(seg, "gtv", regions, _ras(world, (0, 5, 2)), level=8)
    np.testing.assert_array_equal(_segment(scene, seg, node), np.isin(over, [3, 4, 5]))


def test_modifier_resampled_onto_a_reference_geometry(setup):
    scene, node, regions, seg, over, world = setup
    reference = slicer.vtkOrientedImageData()
    reference.SetDimensions(*SHAPE)
    reference.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    reference.SetImageToWorldMatrix(bridge._array_to_matrix(AFFINE))  # the segmentation's frame
    image = regions.modifier(_ras(world, (8, 2, 1)), 4, seg, reference=reference)
    assert image.GetDimensions() == SHAPE
    from vtkmodules.util import numpy_support

    got = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(SHAPE[::-1])
    np.testing.assert_array_equal(got.transpose(2, 1, 0) > 0, np.isin(over, [5, 6]))


def test_hierarchy_built_from_the_image_nodes(scene):
    """from_nodes: the sequences, on another grid, are resampled onto the map's grid; two
    intensity plateaus split the eight blocks into two regions at level 2."""
    over = _blocks()
    node = bridge.import_labelmap_volume(scene, Volume(over, AFFINE), None, "supervoxels")
    image = np.where(np.isin(over, [1, 2, 3, 4]), 100.0, 300.0).astype(np.float32)
    image += np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32)
    vol = bridge.import_labelmap_volume(scene, Volume(image.astype(np.int16), AFFINE), None, "t1")
    regions = SupervoxelRegions.from_nodes(node, [vol], texture=False)
    lut = regions.regions_at(2)
    assert len(set(lut[[1, 2, 3, 4]])) == 1 and len(set(lut[[5, 6, 7, 8]])) == 1
    assert lut[1] != lut[5]


def test_hierarchy_keeps_fine_regions_around_the_segment_being_edited(setup):
    """With the segment about to be edited as focus, the hierarchy is the one the core builds
    with that segment, on the map's grid, grown by 5 mm (``hierarchy.focus_around``); the scene
    is left as it was."""
    from brainbarriers.supervoxels.hierarchy import FOCUS_FACTOR, build_hierarchy, focus_around
    from brainbarriers.supervoxels.slic import scale_to_unit

    scene, node, regions, seg, over, world = setup
    image = np.where(np.isin(over, [1, 2, 3, 4]), 100.0, 300.0).astype(np.float32)
    image += np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32)
    vol = bridge.import_labelmap_volume(scene, Volume(image.astype(np.int16), AFFINE), None, "t1")
    vol.SetAndObserveTransformNodeID(node.GetTransformNodeID())  # on the map, voxel for voxel
    assert edit_segment(seg, "gtv", regions, _ras(world, (8, 2, 1)), level=8)  # supervoxel 5
    np.testing.assert_array_equal(_segment(scene, seg, node), over == 5)
    nodes = scene.GetNumberOfNodes()
    focused = SupervoxelRegions.from_nodes(node, [vol], focus_segment=(seg, "gtv"), texture=False)
    assert scene.GetNumberOfNodes() == nodes
    spacing = np.linalg.norm(AFFINE[:3, :3], axis=0)
    features = [scale_to_unit(image.astype(np.int16).astype(np.float32), over > 0)]
    expected = build_hierarchy(over, features, texture=False, focus_factor=FOCUS_FACTOR,
                               focus=focus_around(over == 5, spacing))
    plain = build_hierarchy(over, features, texture=False)
    np.testing.assert_array_equal(focused.hierarchy.merges, expected.merges)
    np.testing.assert_allclose(focused.hierarchy.heights, expected.heights)
    assert not np.allclose(focused.hierarchy.heights, plain.heights)


def test_most_uncertain_regions_come_first_with_a_point_inside_each(setup):
    """Uncertainty 0.9 on supervoxel 7 and 0.3 on supervoxel 5, given on another grid (the map's
    world grid with its first axis reversed): at 4 regions ({1..4}, {5, 6}, {7}, {8}) the list is
    {7} (mean 0.9) then {5, 6} (0.15); the calm regions are left out; each point lies in its region."""
    scene, _, regions, _, over, world = setup
    uncertainty = np.zeros(SHAPE, np.float32)
    uncertainty[over == 7] = 0.9
    uncertainty[over == 5] = 0.3
    reverse_i = np.eye(4)
    reverse_i[0, 0], reverse_i[0, 3] = -1.0, SHAPE[0] - 1
    node = bridge.import_uncertainty_volume(
        scene, Volume(uncertainty[::-1].copy(), world @ reverse_i), None, "uncertainty")
    ranked = regions.most_uncertain(node, level=4)
    assert [regions.region_at(r.ras, 4)[1].tolist() for r in ranked] == [[7], [5, 6]]
    assert ranked[0].uncertainty == pytest.approx(0.9, abs=1e-5)
    assert ranked[1].uncertainty == pytest.approx(0.15, abs=1e-5)
    voxel_ml = 0.8 * 1.1 * 3.0 / 1000
    assert ranked[0].volume_ml == pytest.approx((over == 7).sum() * voxel_ml)
    assert ranked[1].volume_ml == pytest.approx(np.isin(over, [5, 6]).sum() * voxel_ml)
    assert len(regions.most_uncertain(node, level=4, limit=1)) == 1
    # at the finest level supervoxel 6 (no uncertainty) drops out of the list
    assert [regions.region_at(r.ras, 8)[1].tolist() for r in regions.most_uncertain(node, 8)] == [[7], [5]]
