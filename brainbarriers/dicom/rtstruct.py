"""DICOM RT Structure Set written with pydicom: planar contours of each segment on every slice.

Contours are traced per image slice at the half-way level between voxel centres
(``skimage.measure.find_contours`` at 0.5), so a contour encloses exactly the voxel centres of the
mask. A slice with holes (or several islands) gives several CLOSED_PLANAR contours; planning
systems combine them by the usual even-odd (XOR) rule.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..io import atomic_path
from ..labels import SegmentSpec
from .series import SourceSeries

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# Referenced in RT Referenced Study Sequence by convention (the retired Detached Study Management).
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
_LPS = np.diag([-1.0, -1.0, 1.0])


def interpreted_type(product: str, spec: SegmentSpec) -> str:
    """RTROIInterpretedType of a segment."""
    if product == "ctv":
        return "CTV"
    if product == "tumor":
        return "GTV" if spec.key in ("enhancing_tumor", "necrotic_core") else ""
    return "ORGAN"


def slice_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours (N, 2) in (i, j) voxel coordinates of one slice ``mask2d[i, j]``."""
    from skimage import measure

    padded = np.pad(mask2d.astype(np.float32), 1)
    contours = []
    for c in measure.find_contours(padded, 0.5):
        c = measure.approximate_polygon(c, tolerance=0.05) - 1.0  # drop collinear points
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        if len(c) >= 3:
            contours.append(c)
    return contours


def _ds_list(values: np.ndarray) -> list[str]:
    return [f"{v:.3f}" for v in values]


def write_rtstruct(
    path: str | Path,
    source: SourceSeries,
    segments: Sequence[tuple[str, SegmentSpec, np.ndarray]],
    affine: np.ndarray,
    *,
    label: str = "BrainBarriers",
) -> Path:
    """Write an RT Structure Set of ``segments`` (product, spec, mask on ``source.grid``; ``affine``
    is that grid's voxel -> RAS matrix) referring to the images of ``source``."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path = Path(path)
    first = source.datasets[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    now = datetime.datetime.now()
    ds.InstanceCreationDate = ds.StructureSetDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.StructureSetTime = ds.SeriesTime = now.strftime("%H%M%S")
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, key, getattr(first, key, ""))
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 301
    ds.InstanceNumber = 1
    ds.SeriesDescription = "brainbarriers structures"
    ds.Manufacturer = "brainbarriers"
    ds.ManufacturerModelName = "brainbarriers"
    ds.SoftwareVersions = __version__
    ds.OperatorsName = ""
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.ApprovalStatus = "UNAPPROVED"  # generated automatically: a clinician must review it

    frame_uid = first.FrameOfReferenceUID
    # The Frame of Reference module (in the RT Structure Set IOD since 2019): the source's.
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    contour_images = []
    for image in source.datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = image.SOPClassUID
        item.ReferencedSOPInstanceUID = image.SOPInstanceUID
        contour_images.append(item)
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = DicomSequence(contour_images)
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame_uid
    frame_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_ref])

    rois, roi_contours, observations = [], [], []
    to_lps = _LPS @ affine[:3, :3], _LPS @ affine[:3, 3]
    for number, (product, spec, mask) in enumerate(segments, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = spec.name[:64]
        roi.ROIDescription = f"{product}: {spec.name}"[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)

        contours = []
        for k in np.flatnonzero(np.asarray(mask).any(axis=(0, 1))):
            image = source.datasets[k]
            for c in slice_contours(np.asarray(mask)[:, :, k]):
                ijk = np.column_stack([c, np.full(len(c), float(k))])
                lps = ijk @ to_lps[0].T + to_lps[1]
                item = Dataset()
                ref = Dataset()
                ref.ReferencedSOPClassUID = image.SOPClassUID
                ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
                item.ContourImageSequence = DicomSequence([ref])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(lps)
                item.ContourData = _ds_list(lps.ravel())
                contours.append(item)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = [int(round(v * 255)) for v in spec.color]
        roi_contour.ContourSequence = DicomSequence(contours)
        roi_contours.append(roi_contour)

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = interpreted_type(product, spec)
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)

    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return path
