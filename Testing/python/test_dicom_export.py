"""DICOM SEG and RT Structure Set export of a run, checked with pydicom (and highdicom reading back).

The DICOM source series is written here with SimpleITK/GDCM (independently of the product's own
synthetic-series writer); a pipeline run with the ``ctv`` step on it gives the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from brainbarriers.cli.main import main as cli_main
from brainbarriers.ctv.step import STEP as CTV_STEP
from brainbarriers.dicom import export_run
from brainbarriers.geometry import resample_to
from brainbarriers.io import load_volume, to_sitk
from brainbarriers.pipeline.core import PipelineRun, Step
from brainbarriers.volume import Volume

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def write_dicom_series(volume: Volume, folder, uids: dict) -> None:
    """A single-frame MR series of ``volume`` written by SimpleITK (GDCM)."""
    folder.mkdir(parents=True)
    image = sitk.Cast(to_sitk(volume), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        tags = {
            "0008|0060": "MR", "0008|0016": MR_IMAGE_STORAGE,
            "0020|000d": uids["study"], "0020|000e": uids["series"], "0020|0052": uids["frame"],
            "0010|0010": "Phantom^Test", "0010|0020": "PH001",
            "0020|0037": "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1), "0008|0018": pydicom.uid.generate_uid(),
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        # Files named in reverse slice order: the export must not rely on file names.
        writer.SetFileName(str(folder / f"img{image.GetDepth() - k:03d}.dcm"))
        writer.Execute(plane)


def truth_step(case) -> Step:
    """Stands in for skullstrip/tumor/barriers: the phantom's truths plus a synthetic falx."""

    def run(ctx):
        brain = resample_to(case.truths["brain_mask"], ctx.grid, label=True)
        tumor = resample_to(case.truths["tumor"], ctx.grid, label=True)
        barriers = np.zeros(ctx.grid.shape, np.uint8)
        mid = int(round(np.argwhere(brain.array > 0)[:, 0].mean()))  # canonical axis 0 = R
        barriers[mid] = np.where(brain.array[mid] > 0, 1, 0)
        return {"brain_mask": brain, "tumor": tumor, "barriers": ctx.new_volume(barriers)}

    return Step("truths", run, outputs=("brain_mask", "tumor", "barriers"),
                labels=("brain_mask", "tumor", "barriers"))


@pytest.fixture(scope="module")
def dicom_run(small_case, tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom_run")
    uids = {k: pydicom.uid.generate_uid() for k in ("study", "series", "frame")}
    write_dicom_series(small_case.sequences["t1"], root / "t1_dicom", uids)
    run = PipelineRun({"t1": root / "t1_dicom"}, root / "run", [truth_step(small_case), CTV_STEP],
                      device="cpu", options={"ctv": {"margin_mm": 10}})
    run.run()
    return root, uids


def source_headers(folder):
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    return {h.SOPInstanceUID: h for h in headers}


def test_ctv_step_in_a_pipeline_run(dicom_run):
    root, _ = dicom_run
    run = root / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["outputs"]["ctv"] == "ctv.nii.gz"
    ctv = load_volume(run / "ctv.nii.gz")
    tumor = load_volume(run / "tumor.nii.gz")
    t1 = load_volume(root / "t1_dicom")
    assert ctv.grid.same_as(t1.grid), "the CTV is written on the input's own grid"
    gtv = np.isin(tumor.array, (1, 4))
    assert np.all(ctv.array[gtv] == 1) and ctv.array.sum() > gtv.sum()
    assert ctv.array.dtype == np.uint8
    import slicerio

    seg = slicerio.read_segmentation(str(run / "segmentation.seg.nrrd"))
    assert "CTV" in [s["name"] for s in seg["segments"]]


def test_seg_refers_to_the_source_series(dicom_run, tmp_path):
    root, uids = dicom_run
    out = tmp_path / "seg.dcm"
    assert cli_main(["export", "--run", str(root / "run"), "--format", "seg",
                     "--out", str(out)]) == 0
    seg = pydicom.dcmread(out)
    sources = source_headers(root / "t1_dicom")
    assert seg.SOPClassUID == SEG_STORAGE
    assert seg.StudyInstanceUID == uids["study"]
    assert seg.FrameOfReferenceUID == uids["frame"]
    assert seg.SeriesInstanceUID != uids["series"]
    assert seg.PatientID == "PH001"
    refs = seg.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == uids["series"]
    referenced = {r.ReferencedSOPInstanceUID for r in refs.ReferencedInstanceSequence}
    assert referenced == set(sources)
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert "CTV" in labels and "Falx cerebri" in labels and "Brain" in labels
    ctv_item = seg.SegmentSequence[labels.index("CTV")]
    assert ctv_item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "228792002"

    # Every frame points at the source image of its slice, and the masks match the run's maps.
    import highdicom as hd

    seg_hd = hd.seg.segread(out)
    ctv = load_volume(root / "run" / "ctv.nii.gz").array > 0
    t1 = load_volume(root / "t1_dicom")
    inverse = np.linalg.inv(t1.affine)
    number = labels.index("CTV") + 1
    frames = 0
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        if frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber != number:
            continue
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        assert np.allclose(np.asarray(sources[ref].ImagePositionPatient, float), position)
        ras = np.diag([-1.0, -1.0, 1.0]) @ position
        k = int(round((inverse[:3, :3] @ ras + inverse[:3, 3])[2]))
        pixels = seg_hd.pixel_array[f] if seg_hd.pixel_array.ndim == 3 else seg_hd.pixel_array[f, ..., 0]
        assert np.array_equal(pixels.astype(bool), ctv[:, :, k].T)
        frames += 1
    assert frames == int(ctv.any(axis=(0, 1)).sum())


def test_rtstruct_refers_to_the_source_series(dicom_run, tmp_path):
    root, uids = dicom_run
    out = tmp_path / "rtstruct.dcm"
    assert cli_main(["export", "--run", str(root / "run"), "--format", "rtstruct",
                     "--out", str(out)]) == 0
    rs = pydicom.dcmread(out)
    sources = source_headers(root / "t1_dicom")
    assert rs.SOPClassUID == RTSTRUCT_STORAGE and rs.Modality == "RTSTRUCT"
    assert rs.StudyInstanceUID == uids["study"] and rs.PatientID == "PH001"
    frame_ref = rs.ReferencedFrameOfReferenceSequence[0]
    assert frame_ref.FrameOfReferenceUID == uids["frame"]
    study_ref = frame_ref.RTReferencedStudySequence[0]
    assert study_ref.ReferencedSOPInstanceUID == uids["study"]
    series_ref = study_ref.RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == uids["series"]
    assert {c.ReferencedSOPInstanceUID for c in series_ref.ContourImageSequence} == set(sources)
    names = [r.ROIName for r in rs.StructureSetROISequence]
    assert "CTV" in names
    number = rs.StructureSetROISequence[names.index("CTV")].ROINumber
    assert all(r.ReferencedFrameOfReferenceUID == uids["frame"] for r in rs.StructureSetROISequence)
    observation = next(o for o in rs.RTROIObservationsSequence if o.ReferencedROINumber == number)
    assert observation.RTROIInterpretedType == "CTV"

    # Contours lie in the plane of the image they name, and enclose the CTV's voxel centres.
    from matplotlib.path import Path as Polygon

    contour = next(c for c in rs.ROIContourSequence if c.ReferencedROINumber == number)
    ctv = load_volume(root / "run" / "ctv.nii.gz")
    inverse = np.linalg.inv(ctv.affine)
    by_slice: dict[int, list] = {}
    for item in contour.ContourSequence:
        points = np.asarray(item.ContourData, float).reshape(-1, 3)
        assert item.NumberOfContourPoints == len(points)
        image = sources[item.ContourImageSequence[0].ReferencedSOPInstanceUID]
        assert np.allclose(points[:, 2], float(image.ImagePositionPatient[2]), atol=1e-3)
        ijk = (np.diag([-1.0, -1.0, 1.0]) @ points.T).T @ inverse[:3, :3].T + inverse[:3, 3]
        k = int(round(ijk[0, 2]))
        by_slice.setdefault(k, []).append(ijk[:, :2])
    assert set(by_slice) == set(np.flatnonzero(ctv.array.any(axis=(0, 1))))
    for k, polygons in by_slice.items():
        centres = np.argwhere(np.ones(ctv.shape[:2], bool))
        inside = np.zeros(len(centres), bool)
        for poly in polygons:  # even-odd rule over the slice's contours
            inside ^= Polygon(poly).contains_points(centres)
        assert np.array_equal(inside.reshape(ctv.shape[:2]), ctv.array[:, :, k] > 0), k


def test_nifti_input_gets_a_synthetic_series(small_case, small_case_dir, tmp_path):
    """A run on NIfTI input: the export writes a consistent MR series and refers to it."""
    run_dir = tmp_path / "run"
    run = PipelineRun({"t1": small_case_dir / "t1.nii.gz"}, run_dir,
                      [truth_step(small_case), CTV_STEP], device="cpu")
    run.run()
    out = tmp_path / "case.dcm"
    messages = []
    result = export_run(run_dir, "seg", out, note=messages.append)
    images = tmp_path / "case_images"
    assert result.series.synthetic and result.series.folder == images
    assert any("synthetic MR series" in m for m in messages)
    back = load_volume(images)  # SimpleITK reads the written series back on the same grid
    t1 = load_volume(small_case_dir / "t1.nii.gz")
    assert back.grid.same_as(t1.grid)
    assert np.corrcoef(back.array.ravel(), t1.array.ravel())[0, 1] > 0.999
    seg = pydicom.dcmread(out)
    sources = source_headers(images)
    first = next(iter(sources.values()))
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    refs = seg.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == first.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in refs.ReferencedInstanceSequence} == set(sources)
    # A second export into the same image folder is refused rather than mixing two series.
    assert cli_main(["export", "--run", str(run_dir), "--format", "rtstruct",
                     "--out", str(tmp_path / "rs.dcm"), "--images-out", str(images)]) == 2


def test_series_on_another_grid_gets_resampled_segments(dicom_run, small_case, tmp_path):
    root, _ = dicom_run
    coarse = small_case.sequences["t1"]
    # Every other voxel: a 4 mm series covering the same head.
    affine = coarse.affine.copy()
    affine[:3, :3] *= 2
    volume = Volume(np.ascontiguousarray(coarse.array[::2, ::2, ::2]), affine)
    uids = {k: pydicom.uid.generate_uid() for k in ("study", "series", "frame")}
    write_dicom_series(volume, tmp_path / "coarse", uids)
    messages = []
    result = export_run(root / "run", "seg", tmp_path / "s.dcm", dicom=tmp_path / "coarse",
                        note=messages.append)
    assert any("resampled" in m for m in messages)
    assert len(result.series.datasets) == volume.shape[2]
    seg = pydicom.dcmread(tmp_path / "s.dcm")
    assert seg.FrameOfReferenceUID == uids["frame"]
    # Where the SEG puts the CTV, from its own frame positions, orientation and pixel spacing
    # (read with pydicom/highdicom), lies in the run's CTV (read with nibabel), and covers about
    # as much of the head: a shifted or flipped resampling would not.
    import highdicom as hd
    import nibabel as nib

    labels = [item.SegmentLabel for item in seg.SegmentSequence]
    number = labels.index("CTV") + 1
    pixels = hd.seg.segread(tmp_path / "s.dcm").pixel_array
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_spacing, col_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    points = []
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        if frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber != number:
            continue
        origin = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        mask = pixels[f] if pixels.ndim == 3 else pixels[f, ..., 0]
        rows, cols = np.nonzero(mask)
        points.append(origin + np.outer(cols * col_spacing, orientation[:3])
                      + np.outer(rows * row_spacing, orientation[3:]))
    ras = np.concatenate(points) * [-1.0, -1.0, 1.0]
    ctv_img = nib.load(root / "run" / "ctv.nii.gz")
    ctv = np.asarray(ctv_img.dataobj) > 0
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(ctv_img.affine), ras)).astype(int)
    assert (ijk >= 0).all() and (ijk < ctv.shape).all()
    assert ctv[tuple(ijk.T)].mean() > 0.98
    seg_ml = len(ras) * row_spacing * col_spacing * float(volume.spacing[2]) / 1000
    ctv_ml = ctv.sum() * abs(np.linalg.det(ctv_img.affine[:3, :3])) / 1000
    assert abs(seg_ml - ctv_ml) < 0.15 * ctv_ml


def test_export_bad_input_exits_2(dicom_run, tmp_path, capsys):
    root, _ = dicom_run
    cases = [
        ["--run", str(tmp_path / "nothing"), "--format", "seg", "--out", str(tmp_path / "a.dcm")],
        ["--run", str(root / "run"), "--format", "seg", "--out", str(tmp_path / "no" / "a.dcm")],
        ["--run", str(root / "run"), "--format", "seg", "--out", str(tmp_path / "a.dcm"),
         "--products", "supervoxels"],
        ["--run", str(root / "run"), "--format", "seg", "--out", str(tmp_path / "a.dcm"),
         "--dicom", str(tmp_path)],
    ]
    for args in cases:
        assert cli_main(["export", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("brainbarriers: error:"), err
        assert not (tmp_path / "a.dcm").exists()


def test_empty_gtv_warns_and_writes_no_ctv(small_case, small_case_dir, tmp_path):
    def no_tumour(ctx):
        brain = resample_to(small_case.truths["brain_mask"], ctx.grid, label=True)
        tumor = np.where(resample_to(small_case.truths["tumor"], ctx.grid, label=True).array == 2,
                         2, 0).astype(np.uint8)  # oedema only: the enhancing GTV is empty
        return {"brain_mask": brain, "tumor": ctx.new_volume(tumor)}

    step = Step("truths", no_tumour, outputs=("brain_mask", "tumor"), labels=("brain_mask", "tumor"))
    run = PipelineRun({"t1": small_case_dir / "t1.nii.gz"}, tmp_path / "run", [step, CTV_STEP],
                      device="cpu")
    outputs = run.run()
    assert "ctv" not in outputs and not (tmp_path / "run" / "ctv.nii.gz").exists()
    assert "tumor" in outputs  # the rest of the run is still exported
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert any(w["step"] == "ctv" and "GTV is empty" in w["message"] for w in manifest["warnings"])
    assert any("no barrier map" in w["message"] for w in manifest["warnings"])


def test_ctv_step_options_are_checked(small_case, small_case_dir, tmp_path):
    from brainbarriers.errors import InputError

    for options, match in (({"gtv": "all"}, "unknown gtv"), ({"margin": 3}, "unknown option"),
                           ({"barriers": [9]}, "barrier labels"), ({"add_edema": "maybe"}, "true or false")):
        run = PipelineRun({"t1": small_case_dir / "t1.nii.gz"}, tmp_path / "r", [truth_step(small_case), CTV_STEP],
                          device="cpu", options={"ctv": options})
        with pytest.raises(InputError, match=match):
            run.run()



def _copy_run(root, tmp_path, **changes):
    """A copy of the DICOM run folder with its manifest changed."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(changes)
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_export_refuses_unfinished_runs_and_paths_outside_the_run(dicom_run, tmp_path, capsys):
    root, _ = dicom_run
    for status in ("failed", "cancelled", "running"):
        run = _copy_run(root, tmp_path / status, status=status)
        assert cli_main(["export", "--run", str(run), "--format", "seg",
                         "--out", str(tmp_path / "a.dcm")]) == 2
        assert f"status is '{status}'" in capsys.readouterr().err
    # A manifest naming an output outside the run folder (by '..' or a link) is not followed.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "tumor.nii.gz").write_bytes((root / "run" / "tumor.nii.gz").read_bytes())
    manifest = json.loads((root / "run" / "manifest.json").read_text())
    for name, outputs in [("dots", {**manifest["outputs"], "tumor": "../elsewhere/tumor.nii.gz"}),
                          ("absolute", {**manifest["outputs"], "tumor": str(outside / "tumor.nii.gz")})]:
        run = _copy_run(root, tmp_path / name, outputs=outputs)
        (run.parent / "elsewhere").symlink_to(outside)
        assert cli_main(["export", "--run", str(run), "--format", "seg",
                         "--out", str(tmp_path / "a.dcm")]) == 2
        assert "which is outside" in capsys.readouterr().err
    run = _copy_run(root, tmp_path / "link")
    (run / "tumor.nii.gz").unlink()
    (run / "tumor.nii.gz").symlink_to(outside / "tumor.nii.gz")
    assert cli_main(["export", "--run", str(run), "--format", "seg",
                     "--out", str(tmp_path / "a.dcm")]) == 2
    assert "which is outside" in capsys.readouterr().err
    assert not (tmp_path / "a.dcm").exists()


def test_export_refuses_a_reference_image_changed_since_the_run(small_case, small_case_dir, tmp_path):
    import shutil

    from brainbarriers.errors import InputError

    t1 = tmp_path / "t1.nii.gz"
    shutil.copy(small_case_dir / "t1.nii.gz", t1)
    PipelineRun({"t1": t1}, tmp_path / "run", [truth_step(small_case)], device="cpu").run()
    shutil.copy(small_case_dir / "t2.nii.gz", t1)  # another image under the same name
    with pytest.raises(InputError, match="has changed since the run"):
        export_run(tmp_path / "run", "seg", tmp_path / "a.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "t1.nii.gz"]


def _read_only(monkeypatch, folder):
    """Simulate a read-only file system at ``folder`` (tests run as root: chmod would not stop
    them): creating a file or folder there fails with EROFS, as the kernel would say."""
    import errno
    import tempfile

    def guard(function):
        def wrapper(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
                raise OSError(errno.EROFS, "Read-only file system", str(dir))
            return function(*args, dir=dir, **kwargs)
        return wrapper

    for name in ("mkstemp", "mkdtemp", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, guard(getattr(tempfile, name)))


def test_export_to_a_read_only_folder_is_one_line_and_leaves_nothing(
        small_case, small_case_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    PipelineRun({"t1": small_case_dir / "t1.nii.gz"}, run, [truth_step(small_case)],
                device="cpu").run()
    readonly, images = tmp_path / "ro", tmp_path / "images"
    readonly.mkdir()
    _read_only(monkeypatch, readonly)
    for extra in ([], ["--images-out", str(images)]):
        code = cli_main(["export", "--run", str(run), "--format", "seg",
                         "--out", str(readonly / "seg.dcm"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "Read-only file system" in err[0], err
    assert list(readonly.iterdir()) == [] and not images.exists()


def test_a_failed_export_leaves_no_synthetic_series(small_case, small_case_dir, tmp_path,
                                                    monkeypatch, capsys):
    import errno

    import highdicom as hd

    run = tmp_path / "run"
    PipelineRun({"t1": small_case_dir / "t1.nii.gz"}, run, [truth_step(small_case)],
                device="cpu").run()

    def disk_full(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"DICM half")
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", disk_full)
    code = cli_main(["export", "--run", str(run), "--format", "seg", "--out", str(tmp_path / "s.dcm")])
    err = capsys.readouterr().err.strip().splitlines()  # a note on the series, then the error
    assert code == 2 and "No space left on device" in err[-1] and "Traceback" not in str(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no s.dcm, no s_images
