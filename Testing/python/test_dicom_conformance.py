"""DICOM conformance of what the export writes (dicom3tools' ``dciodvfy``: no error), and the RT
Structure Set's contours read back by an independent rasteriser against the label maps.

The rasteriser here shares no code with the product's writer: it reads the RTSTRUCT and the image
headers with pydicom, puts each contour point on its image's pixel grid from that image's own
ImagePositionPatient / ImageOrientationPatient / PixelSpacing, and fills the polygons by the
even-odd rule at pixel centres (matplotlib). The label maps are read with nibabel and sampled at the
same pixel centres through their own affine. Cases: the demo case (every product), a real BraTS
tumour, and a real clinical oblique thick-slice scan (TCGA, its brain mask).
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from brainbarriers.dicom.rtstruct import write_rtstruct
from brainbarriers.dicom.seg import write_seg
from brainbarriers.dicom.series import write_series
from brainbarriers.io import load_volume
from brainbarriers.labels import SEGMENTS_BY_OUTPUT

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BRATS = SHARED / "brats-gli" / "BraTS-GLI-00000-000"
TCGA = SHARED / "tcga-fg-6692"
DEMO = Path(str(resources.files("brainbarriers") / "data" / "demo"))
LPS = np.array([-1.0, -1.0, 1.0])

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                    reason="dciodvfy not installed (Debian package dicom3tools)")


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy prints for one file (warnings are not errors)."""
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def export_maps(maps: dict[str, Path], reference: Path, folder: Path, *, relabel=None):
    """Write a synthetic series of ``reference``, then an RTSTRUCT and a SEG of every segment of
    the label maps ``maps`` ({product: file}) on it, as the export does."""
    image = load_volume(reference)
    series = write_series(image, folder / "images")
    segments = []
    for product, path in maps.items():
        array = np.asarray(load_volume(path, allow_empty=True).array).astype(np.int16)
        for old, new in (relabel or {}).items():
            array[array == old] = new
        for value, spec in SEGMENTS_BY_OUTPUT[product].items():
            mask = array == value
            if mask.any():
                segments.append((product, spec, mask))
    write_rtstruct(folder / "rtstruct.dcm", series, segments, image.affine)
    write_seg(folder / "seg.dcm", series, [(spec, mask) for _, spec, mask in segments])
    return series


def rasterise_rtstruct(rtstruct: Path, images: Path) -> tuple[dict[str, dict], dict]:
    """{ROI name: {SOPInstanceUID: mask (Rows, Columns)}} and the image headers by SOPInstanceUID."""
    from matplotlib.path import Path as Polygon

    headers = {}
    for f in images.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        headers[ds.SOPInstanceUID] = ds
    rs = pydicom.dcmread(rtstruct)
    names = {roi.ROINumber: roi.ROIName for roi in rs.StructureSetROISequence}
    out: dict[str, dict] = {}
    for roi in rs.ROIContourSequence:
        masks = out.setdefault(names[roi.ReferencedROINumber], {})
        for contour in roi.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            image = headers[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            origin = np.asarray(image.ImagePositionPatient, float)
            row_dir, col_dir = np.asarray(image.ImageOrientationPatient, float).reshape(2, 3)
            normal = np.cross(row_dir, col_dir)
            points = np.asarray(contour.ContourData, float).reshape(-1, 3) - origin
            assert len(points) == contour.NumberOfContourPoints
            assert np.abs(points @ normal).max() < 0.01, "contour off its image's plane"
            row_spacing, col_spacing = (float(v) for v in image.PixelSpacing)
            cols, rows = points @ row_dir / col_spacing, points @ col_dir / row_spacing
            r0, r1 = max(int(np.floor(rows.min())), 0), min(int(np.ceil(rows.max())), image.Rows - 1)
            c0, c1 = max(int(np.floor(cols.min())), 0), min(int(np.ceil(cols.max())), image.Columns - 1)
            rr, cc = np.mgrid[r0:r1 + 1, c0:c1 + 1]
            inside = Polygon(np.column_stack([cols, rows])).contains_points(
                np.column_stack([cc.ravel(), rr.ravel()])).reshape(rr.shape)
            mask = masks.setdefault(image.SOPInstanceUID, np.zeros((image.Rows, image.Columns), bool))
            mask[r0:r1 + 1, c0:c1 + 1] ^= inside  # even-odd over the slice's contours
    return out, headers


def sample_labels(path: Path, headers: dict, relabel=None) -> dict[str, np.ndarray]:
    """The label map (nibabel) at every pixel centre of every image: {SOPInstanceUID: labels}."""
    img = nib.load(path)
    labels = np.asarray(img.dataobj).astype(np.int16)
    for old, new in (relabel or {}).items():
        labels[labels == old] = new
    inverse = np.linalg.inv(img.affine)
    out = {}
    for uid, image in headers.items():
        origin = np.asarray(image.ImagePositionPatient, float)
        row_dir, col_dir = np.asarray(image.ImageOrientationPatient, float).reshape(2, 3)
        row_spacing, col_spacing = (float(v) for v in image.PixelSpacing)
        rr, cc = np.mgrid[0:image.Rows, 0:image.Columns]
        lps = (origin + (cc * col_spacing)[..., None] * row_dir
               + (rr * row_spacing)[..., None] * col_dir)
        ijk = np.rint((lps * LPS) @ inverse[:3, :3].T + inverse[:3, 3]).astype(int)
        valid = np.all((ijk >= 0) & (ijk < labels.shape), axis=-1)
        values = np.zeros(rr.shape, np.int16)
        values[valid] = labels[tuple(ijk[valid].T)]
        out[uid] = values
    return out


def dice_per_structure(folder: Path, maps: dict[str, Path], relabel=None) -> dict[str, float]:
    drawn, headers = rasterise_rtstruct(folder / "rtstruct.dcm", folder / "images")
    scores = {}
    for product, path in maps.items():
        truth = sample_labels(path, headers, relabel)
        for value, spec in SEGMENTS_BY_OUTPUT[product].items():
            if not any((t == value).any() for t in truth.values()):
                assert spec.name not in drawn, f"{spec.name} drawn but absent from the label map"
                continue
            both = total = 0
            for uid, labels in truth.items():
                expected = labels == value
                got = drawn.get(spec.name, {}).get(uid, np.zeros_like(expected))
                both += int((expected & got).sum())
                total += int(expected.sum() + got.sum())
            scores[spec.name] = 2 * both / total
    return scores


def check_conformance(folder: Path, series) -> None:
    files = [folder / "rtstruct.dcm", folder / "seg.dcm"]
    n = len(series.datasets)
    files += [Path(series.datasets[k].filename) for k in sorted({0, n // 2, n - 1})]
    for f in files:
        errors = dciodvfy_errors(f)
        assert not errors, f"{f.name}: {errors}"


DEMO_MAPS = {"brain_mask": DEMO / "brain_mask_truth.nii.gz", "tumor": DEMO / "tumor_truth.nii.gz",
             "barriers": DEMO / "barriers_truth.nii.gz"}


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_export")
    series = export_maps(DEMO_MAPS, DEMO / "t1ce.nii.gz", folder)
    return folder, series


@needs_dciodvfy
def test_demo_export_passes_dciodvfy(demo_export):
    check_conformance(*demo_export)


def test_demo_rtstruct_rasterised_back_matches_the_label_maps(demo_export):
    folder, _ = demo_export
    scores = dice_per_structure(folder, DEMO_MAPS)
    expected = {spec.name for p in DEMO_MAPS for v, spec in SEGMENTS_BY_OUTPUT[p].items()
                if (np.asarray(nib.load(DEMO_MAPS[p]).dataobj) == v).any()}
    print("demo Dice per structure:", {k: round(v, 4) for k, v in scores.items()})
    assert set(scores) == expected and len(scores) >= 8, scores
    assert min(scores.values()) >= 0.95, scores


@pytest.mark.skipif(not BRATS.is_dir(), reason="shared/data/brats-gli not found")
def test_real_brats_tumour_round_trip(tmp_path):
    # BraTS 2023 labels (3 = enhancing) in the product's 2021 convention (4 = enhancing).
    maps = {"tumor": BRATS / "BraTS-GLI-00000-000_seg.nii.gz"}
    series = export_maps(maps, BRATS / "BraTS-GLI-00000-000_t1ce.nii.gz", tmp_path,
                         relabel={3: 4})
    scores = dice_per_structure(tmp_path, maps, relabel={3: 4})
    print("BraTS Dice per structure:", {k: round(v, 4) for k, v in scores.items()})
    assert len(scores) == 3 and min(scores.values()) >= 0.95, scores
    if shutil.which("dciodvfy"):
        check_conformance(tmp_path, series)


@pytest.mark.skipif(not TCGA.is_dir(), reason="shared/data/tcga-fg-6692 not found")
def test_real_oblique_thick_slice_round_trip(tmp_path):
    maps = {"brain_mask": TCGA / "t1ce_brain_mask.nii.gz"}
    affine = nib.load(maps["brain_mask"]).affine
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    assert np.abs(direction).max(axis=0).min() < 0.999, "the case is meant to be oblique"
    series = export_maps(maps, TCGA / "t1ce.nii.gz", tmp_path)
    orientation = np.asarray(series.datasets[0].ImageOrientationPatient, float)
    assert not np.allclose(np.abs(orientation), np.round(np.abs(orientation)), atol=1e-3)
    scores = dice_per_structure(tmp_path, maps)
    print("TCGA oblique Dice:", {k: round(v, 4) for k, v in scores.items()})
    assert list(scores) == ["Brain"] and scores["Brain"] >= 0.95, scores
    if shutil.which("dciodvfy"):
        check_conformance(tmp_path, series)


def test_the_rasteriser_sees_a_shifted_contour(demo_export, tmp_path):
    """The check has teeth: contours moved by one voxel along a row lose Dice on thin structures."""
    folder, _ = demo_export
    rs = pydicom.dcmread(folder / "rtstruct.dcm")
    for roi in rs.ROIContourSequence:
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            points[:, 0] += 3.0  # 3 mm to the patient's left
            contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
    shutil.copytree(folder / "images", tmp_path / "images")
    rs.save_as(tmp_path / "rtstruct.dcm")
    scores = dice_per_structure(tmp_path, {"barriers": DEMO_MAPS["barriers"]})
    assert scores["Falx cerebri"] < 0.5 and scores["Cerebellum"] < 0.95, scores


def test_derived_series_marks_unknown_acquisition_attributes_empty(demo_export):
    _, series = demo_export
    ds = pydicom.dcmread(series.datasets[0].filename, stop_before_pixels=True)
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and len(ds.ImageType) == 3
    for key in ("Laterality", "PatientPosition", "RepetitionTime", "EchoTime", "EchoTrainLength"):
        assert key in ds and ds[key].value in ("", None), key
    rs = pydicom.dcmread(demo_export[0] / "rtstruct.dcm")
    assert rs.FrameOfReferenceUID == ds.FrameOfReferenceUID
