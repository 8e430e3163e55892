"""The DICOM image series a SEG or RT Structure Set refers to: read one, or write a synthetic one.

A series is kept as its pydicom headers **in the order of the volume's k axis** (the order
SimpleITK reads the series in, checked against each slice's ImagePositionPatient), so that slice
``k`` of a label map on the series' grid is frame ``k``: pixel (row r, column c) is voxel
``[c, r, k]`` (DICOM rows run along the volume's j axis, columns along its i axis).
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InputError
from ..io import WRITE_ERRNOS, folder_mode, load_volume, write_error
from ..volume import Grid, Volume

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class SourceSeries:
    datasets: list  # pydicom Datasets (headers), frame k = slice k of the grid
    grid: Grid
    folder: Path
    synthetic: bool = False


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"[:16]


def read_series(folder: str | Path) -> SourceSeries:
    """The single-frame image series in ``folder``, its headers ordered along the volume's k axis."""
    import pydicom
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder of DICOM images")
    volume = load_volume(folder, allow_empty=True)  # validates and gives the grid
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    if len(datasets) != volume.shape[2]:
        raise InputError(folder, f"has {len(datasets)} images for {volume.shape[2]} slices: "
                         "multi-frame or mixed series are not supported")
    for ds in datasets:
        for key in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID",
                    "FrameOfReferenceUID", "ImagePositionPatient"):
            if key not in ds:
                raise InputError(folder, f"image {Path(ds.filename).name} has no {key}")
    # Put each header at the slice its position falls on (robust to any reading order).
    inverse = np.linalg.inv(volume.affine)
    order: list = [None] * len(datasets)
    for ds in datasets:
        ras = _LPS @ np.asarray(ds.ImagePositionPatient, float)
        ijk = inverse[:3, :3] @ ras + inverse[:3, 3]
        k = int(round(ijk[2]))
        if not (0 <= k < len(order)) or order[k] is not None or abs(ijk[2] - k) > 0.05:
            raise InputError(folder, "slice positions do not form one regular stack")
        order[k] = ds
    return SourceSeries(order, volume.grid, folder)


def write_series(
    volume: Volume,
    folder: str | Path,
    *,
    patient_name: str = "Anonymous^",
    patient_id: str = "brainbarriers",
    study_uid: str | None = None,
    description: str = "brainbarriers reference image",
) -> SourceSeries:
    """Write ``volume`` as a synthetic MR image series (one file per k slice) and return it.

    Used when the run's input was not DICOM: a DICOM SEG or RT Structure Set must refer to images.
    The images are marked DERIVED/SECONDARY; intensities are rescaled to 16 bits with
    RescaleSlope/Intercept. The folder is written under a temporary name and renamed into place.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(folder, "exists and is not empty; give another folder for the images")
    direction = volume.grid.direction
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputError(volume.source or None, "has sheared (non-orthogonal) voxel axes, which a "
                         "DICOM image series cannot hold")
    array = np.asarray(volume.array, dtype=np.float64)
    lo, hi = float(array.min()), float(array.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    pixels = np.rint((array - lo) / slope).clip(0, 65535).astype(np.uint16)

    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    spacing = volume.spacing
    row_dir = _LPS @ direction[:, 0]  # along a row: increasing column index = the i axis
    col_dir = _LPS @ direction[:, 1]  # down a column: increasing row index = the j axis
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as e:
        raise write_error(folder, e) from e
    datasets = []
    try:
        for k in range(volume.shape[2]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = MR_IMAGE_STORAGE
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = "MR"
            ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
            ds.PatientName, ds.PatientID = patient_name, patient_id
            ds.PatientBirthDate, ds.PatientSex = "", ""
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
            ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
            ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
            ds.SeriesDescription = description
            # Type 2/2C attributes the source volume does not tell: present and empty, as the
            # MR Image IOD allows for unknown values (checked with dciodvfy).
            ds.Laterality, ds.PatientPosition = "", ""
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "", "", ""
            ds.Manufacturer = "brainbarriers"
            ds.SoftwareVersions = __version__
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
            ds.MRAcquisitionType = "3D"
            ds.DerivationDescription = "resampled from a NIfTI/NRRD volume by brainbarriers"
            ds.BurnedInAnnotation = "NO"
            ras0 = volume.affine[:3, :3] @ np.array([0.0, 0.0, k]) + volume.affine[:3, 3]
            ds.ImagePositionPatient = [_ds(v) for v in _LPS @ ras0]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (j), column (i)
            ds.SliceThickness = _ds(spacing[2])
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(lo), _ds(slope), "US"
            ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
            ds.save_as(tmp / f"IM{k + 1:05d}.dcm", enforce_file_format=True)
            datasets.append(ds)
        if folder.exists():
            folder.rmdir()
        os.chmod(tmp, folder_mode())  # mkdtemp made it 0700
        os.replace(tmp, folder)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(folder, e) from e
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for k, ds in enumerate(datasets):
        ds.filename = str(folder / f"IM{k + 1:05d}.dcm")
    return SourceSeries(datasets, volume.grid, folder, synthetic=True)
