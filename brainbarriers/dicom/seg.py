"""DICOM Segmentation (binary, one segment per structure) with highdicom."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..io import atomic_path
from ..labels import SegmentSpec
from .series import SourceSeries


def _concept(code: tuple[str, str, str]):
    from highdicom.sr import CodedConcept

    scheme, value, meaning = code
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def write_seg(
    path: str | Path,
    source: SourceSeries,
    segments: Sequence[tuple[SegmentSpec, np.ndarray]],
    *,
    series_description: str = "brainbarriers segmentation",
) -> Path:
    """Write a binary DICOM SEG of ``segments`` (masks on ``source.grid``) referring to ``source``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    path = Path(path)
    if not segments:
        raise ValueError("no segments to write")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="brainbarriers", version=__version__, family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    frames = np.zeros((source.grid.shape[2], source.grid.shape[1], source.grid.shape[0],
                       len(segments)), dtype=bool)
    for number, (spec, mask) in enumerate(segments, start=1):
        if tuple(mask.shape) != tuple(source.grid.shape):
            raise ValueError(f"segment {spec.name} is not on the source series' grid")
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name[:64],
            segmented_property_category=_concept(spec.category),
            segmented_property_type=_concept(spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=spec.key,
            anatomic_regions=[_concept(spec.region)] if spec.region else None,
            display_color=hd.color.CIELabColor.from_rgb(*(int(round(c * 255)) for c in spec.color)),
        ))
        frames[..., number - 1] = np.asarray(mask, bool).transpose(2, 1, 0)  # (k, row=j, col=i)
    # highdicom reads SliceThickness from the source headers; it is type 2 in MR and often
    # missing (GDCM-written series): fill it from the grid on copies, never on the files.
    sources = []
    for ds in source.datasets:
        if ds.get("SliceThickness") in (None, ""):
            ds = copy.deepcopy(ds)
            ds.SliceThickness = f"{source.grid.spacing[2]:.6g}"
        sources.append(ds)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="brainbarriers",
        manufacturer_model_name="brainbarriers",
        software_versions=__version__,
        device_serial_number="none",
        content_description=series_description[:64],
        content_label="BRAINBARRIERS",
        series_description=series_description[:64],
        omit_empty_frames=True,
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path
