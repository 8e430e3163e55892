"""DICOM export of a run's label maps: DICOM Segmentation (highdicom) and RT Structure Set (pydicom).

Both refer to an image series: the run's reference input when it was a DICOM series folder (or a
series given explicitly), else a synthetic MR series written from the reference image (see
``series.write_series``). See ``export.export_run``.
"""

from __future__ import annotations

from .export import FORMATS, export_run

__all__ = ["FORMATS", "export_run"]
