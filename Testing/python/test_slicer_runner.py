"""A whole run from the scene to the worker and back (what the Logic does), with slicer-core and a
real worker process: failure and cancel leave the scene as it was and remove the exported images;
a real run imports its outputs voxel-exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SlicerBrainBarriers"))
sys.path.insert(0, str(Path(__file__).parent))

from BrainBarriersLib import scene as bridge  # noqa: E402
from BrainBarriersLib.runner import PipelineJob, link_supervoxel_maps  # noqa: E402
from test_worker import runnable_step  # noqa: E402

from brainbarriers.io import load_volume  # noqa: E402
from brainbarriers.volume import Volume  # noqa: E402


def _node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


@pytest.fixture()
def case_scene(small_case):
    scene = slicer.vtkMRMLScene()
    scene.keep_logic = bridge.ensure_segmentation_logic(scene)
    nodes = {}
    for name, volume in small_case.sequences.items():
        node = bridge.import_labelmap_volume(scene, volume, None, name)  # geometry + voxels
        scalar = slicer.vtkMRMLScalarVolumeNode()  # inputs must be scalar volumes
        scene.AddNode(scalar)
        scalar.SetName(name)
        scalar.SetAndObserveImageData(node.GetImageData())
        scalar.SetIJKToRASMatrix(bridge._array_to_matrix(volume.affine))
        scene.RemoveNode(node)
        nodes[name] = scalar
    return scene, nodes


def test_failed_run_leaves_scene_unchanged(case_scene, tmp_path):
    scene, nodes = case_scene
    far = slicer.vtkMRMLScalarVolumeNode()  # another patient: does not overlap the reference
    scene.AddNode(far)
    far.SetAndObserveImageData(nodes["t1"].GetImageData())
    affine = bridge.node_affine(nodes["t1"])
    affine[:3, 3] += 5000.0
    far.SetIJKToRASMatrix(bridge._array_to_matrix(affine))
    before = _node_ids(scene)
    step = runnable_step()
    job = PipelineJob(scene, {"t1ce": nodes["t1ce"], "flair": far},
                      steps=[step] if step else None, device="cpu", python=[sys.executable],
                      work_dir=tmp_path)
    assert job.start().wait() == "failed"
    assert job.status.error["kind"] == "input"
    assert _node_ids(scene) == before
    folder = Path(job.status.error["log_path"]).parent
    assert not (folder / "inputs").exists()  # the exported images are gone, the log stays
    assert (folder / "worker.log").read_text().strip()


def test_cancelled_run_cleans_up(case_scene, tmp_path):
    scene, nodes = case_scene
    before = _node_ids(scene)
    job = PipelineJob(scene, {"t1": nodes["t1"]}, device="cpu", python=[sys.executable],
                      work_dir=tmp_path)
    job.start()
    folder = job.folder
    assert (folder / "inputs" / "t1.nii.gz").exists()
    job.cancel()
    assert job.wait() == "cancelled"
    assert _node_ids(scene) == before
    assert not folder.exists()


def test_exported_inputs_keep_the_geometry(case_scene, small_case, tmp_path):
    scene, nodes = case_scene
    job = PipelineJob(scene, {"t2": nodes["t2"]}, device="cpu", python=[sys.executable],
                      work_dir=tmp_path, keep_files=True)
    job.start()
    job.cancel()
    exported = load_volume(job.folder / "inputs" / "t2.nii.gz")
    np.testing.assert_allclose(exported.affine, small_case.sequences["t2"].affine, atol=1e-5)
    np.testing.assert_array_equal(exported.array, small_case.sequences["t2"].array)


def test_real_run_imports_its_outputs(case_scene, tmp_path):
    step = runnable_step()
    if step is None:
        pytest.skip("no pipeline step can run from the MR sequences alone yet")
    scene, nodes = case_scene
    updates = []
    job = PipelineJob(scene, nodes, steps=[step], device="cpu", python=[sys.executable],
                      work_dir=tmp_path, keep_files=True, on_update=lambda j: updates.append(
                          j.status.fraction))
    assert job.start().wait() == "done", job.status.error
    assert updates[-1] == 1.0 and all(0 <= f <= 1 for f in updates)
    run = job.folder / "run"
    seg = job.nodes.get("segmentation")
    for product in ("brain_mask", "tumor", "barriers", "ctv"):
        path = run / f"{product}.nii.gz"
        if not path.exists():
            continue
        labels = load_volume(path, allow_empty=True).array
        from brainbarriers.labels import SEGMENTS_BY_OUTPUT

        for value, spec in SEGMENTS_BY_OUTPUT[product].items():
            mask = bridge.segment_array(scene, seg, f"{product}_{spec.key}", nodes["t1ce"])
            np.testing.assert_array_equal(mask, (labels == value).astype(np.uint8))
    for product in ("supervoxels", "supervoxels_merged"):
        path = run / f"{product}.nii.gz"
        if path.exists():
            np.testing.assert_array_equal(bridge.node_array(job.nodes[product]),
                                          load_volume(path, allow_empty=True).array)
    assert isinstance(bridge.node_to_volume(nodes["t1ce"]), Volume)


def test_supervoxel_maps_name_their_images_and_the_runs_uncertainty(case_scene, small_case):
    """What the Segment Editor's Supervoxels effect reads from a run's map nodes."""
    scene, nodes = case_scene
    volume = small_case.sequences["t1"]
    made = {p: bridge.import_labelmap_volume(scene, volume.with_array(np.ones(volume.shape, np.int16)),
                                             None, p) for p in ("supervoxels", "supervoxels_merged")}
    link_supervoxel_maps(made, nodes)
    sources = made["supervoxels"].GetAttribute("BrainBarriers.SupervoxelSources").split(",")
    assert sorted(sources) == sorted(n.GetID() for n in nodes.values())
    assert made["supervoxels"].GetAttribute("BrainBarriers.Uncertainty") is None  # no map: none named
    made["tumor_uncertainty"] = bridge.import_uncertainty_volume(
        scene, volume.with_array(np.zeros(volume.shape, np.float32)), None, "uncertainty")
    link_supervoxel_maps(made, nodes)
    for p in ("supervoxels", "supervoxels_merged"):
        assert made[p].GetAttribute("BrainBarriers.Uncertainty") == made["tumor_uncertainty"].GetID()


def test_a_sequence_that_moved_is_coregistered_and_shown_aligned(case_scene, tmp_path):
    """The FLAIR node sits under a transform (as if the patient had moved): the run co-registers
    it, and the scene puts it under the move found, which undoes the displacement."""
    step = runnable_step()
    if step is None:
        pytest.skip("no pipeline step can run from the MR sequences alone yet")
    scene, nodes = case_scene
    original = bridge.node_affine(nodes["flair"])
    displaced = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(displaced)
    matrix = np.eye(4)
    angle = np.radians(5.0)
    matrix[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    matrix[:3, 3] = (4.0, -3.0, 2.0)
    displaced.SetMatrixTransformToParent(bridge._array_to_matrix(matrix))
    nodes["flair"].SetAndObserveTransformNodeID(displaced.GetID())
    job = PipelineJob(scene, {"t1ce": nodes["t1ce"], "flair": nodes["flair"]}, steps=[step],
                      device="cpu", python=[sys.executable], work_dir=tmp_path)
    assert job.start().wait() == "done", job.status.error
    move = job.nodes["flair_to_reference"]
    assert nodes["flair"].GetParentTransformNode() is move and move.GetParentTransformNode() is displaced
    corners = np.array([[i, j, k, 1.0] for i in (20, 100) for j in (20, 100) for k in (15, 60)])
    error = np.linalg.norm((bridge.node_affine(nodes["flair"]) @ corners.T - original @ corners.T)[:3], axis=0)
    assert error.max() < 1.5, error  # back where it was, to the registration's accuracy
    assert "t1ce_to_reference" not in job.nodes
