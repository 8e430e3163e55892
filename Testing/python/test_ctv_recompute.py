"""CTV recompute after editing the GTV, with slicer-core's real MRML: the segmentation holds the
brain, tumour, barrier and CTV segments of a run; the tumour is edited; the recompute gives exactly
the core's CTV of the edited GTV (the barrier blocks the margin), in place of the old CTV segment,
on an oblique grid under a transform; and ``ctv_from_gtv`` agrees with ``grow_ctv``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from brainbarriers.ctv import ctv_from_gtv, grow_ctv
from brainbarriers.volume import Volume

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SlicerBrainBarriers"))

from BrainBarriersLib import scene as bridge  # noqa: E402
from BrainBarriersLib.ctv_edit import CTV_SEGMENT_ID, recompute_ctv  # noqa: E402
from BrainBarriersLib.supervoxel_edit import SupervoxelRegions, edit_segment  # noqa: E402

from brainbarriers.supervoxels.hierarchy import Hierarchy  # noqa: E402

SHAPE = (30, 26, 12)


def _affine():
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, 1.2, 2.5])
    affine[:3, 3] = [-20, 10, 5]
    return affine


def _case():
    brain = np.zeros(SHAPE, np.uint8)
    brain[2:-2, 2:-2, 1:-1] = 1
    barriers = np.zeros(SHAPE, np.uint8)
    barriers[15, 2:-2, 1:-1] = 1  # a falx-like wall at i = 15, across the whole brain
    tumor = np.zeros(SHAPE, np.uint8)
    tumor[8:12, 10:14, 4:8] = 4  # enhancing
    tumor[9:11, 11:13, 5:7] = 1  # necrotic core
    tumor[20:23, 10:13, 4:7] = 4  # a second lesion across the wall
    return brain, barriers, tumor


def test_ctv_from_gtv_is_grow_ctv_of_the_same_gtv():
    brain, barriers, tumor = _case()
    a = _affine()
    by_labels = grow_ctv(Volume(tumor, a), Volume(brain, a), Volume(barriers, a), margin_mm=6)
    by_mask = ctv_from_gtv(Volume(np.isin(tumor, [1, 4]).astype(np.uint8), a), Volume(brain, a),
                           Volume(barriers, a), margin_mm=6)
    np.testing.assert_array_equal(by_labels.array, by_mask.array)
    assert not by_mask.array[15].any()  # the wall is never crossed by the margin


def test_recompute_after_an_edit_replaces_the_ctv_segment(tmp_path):
    scene = slicer.vtkMRMLScene()
    scene.keep_logic = bridge.ensure_segmentation_logic(scene)
    brain, barriers, tumor = _case()
    a = _affine()
    reference = bridge.import_labelmap_volume(scene, Volume(brain * 100, a), None, "t1ce")
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    moved = np.eye(4)
    moved[:3, 3] = [3.0, -4.0, 7.0]
    transform.SetMatrixTransformToParent(bridge._array_to_matrix(moved))
    reference.SetAndObserveTransformNodeID(transform.GetID())
    world = moved @ a
    old_ctv = grow_ctv(Volume(tumor, world), Volume(brain, world), Volume(barriers, world),
                       margin_mm=6).array
    seg = bridge.import_segmentation(scene, [
        ("brain_mask", Volume(brain, world)), ("tumor", Volume(tumor, world)),
        ("barriers", Volume(barriers, world)), ("ctv", Volume(old_ctv, world))], reference, "run")
    segment = seg.GetSegmentation().GetSegment(CTV_SEGMENT_ID)
    name, color = segment.GetName(), segment.GetColor()

    # edit: remove the second lesion (one supervoxel holding it) from the enhancing segment
    over = np.zeros(SHAPE, np.int32)
    over[brain > 0] = 1
    over[19:24, 9:14, 3:8] = 2
    sv_node = bridge.import_labelmap_volume(scene, Volume(over, world), reference, "sv")
    regions = SupervoxelRegions(sv_node, Hierarchy(2, [(1, 2)], [0.5], 0.2))
    ras = (world @ np.array([21, 11, 5, 1.0]))[:3]
    assert edit_segment(seg, "tumor_enhancing_tumor", regions, ras, level=2, remove=True)

    assert recompute_ctv(scene, seg, margin_mm=6) == CTV_SEGMENT_ID
    edited = tumor.copy()
    edited[over == 2] = 0
    expected = ctv_from_gtv(Volume(np.isin(edited, [1, 4]).astype(np.uint8), world),
                            Volume(brain, world), Volume(barriers, world), margin_mm=6).array
    got = bridge.segment_array(scene, seg, CTV_SEGMENT_ID, reference)
    np.testing.assert_array_equal(got, expected)
    assert expected.sum() < old_ctv.sum() and not got[16:].any()  # nothing left past the wall
    segment = seg.GetSegmentation().GetSegment(CTV_SEGMENT_ID)
    assert segment.GetName() == name and segment.GetColor() == color
    assert len([s for s in seg.GetSegmentation().GetSegmentIDs() if s.startswith("ctv")]) == 1

    # a segmentation without a CTV segment gets one
    seg.GetSegmentation().RemoveSegment(CTV_SEGMENT_ID)
    recompute_ctv(scene, seg, margin_mm=6)
    np.testing.assert_array_equal(bridge.segment_array(scene, seg, CTV_SEGMENT_ID, reference),
                                  expected)
