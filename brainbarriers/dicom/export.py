"""Export the label maps of a run folder as DICOM SEG or RT Structure Set."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import grids_overlap, resample_to
from ..io import check_writable_folder, inside, load_volume, sha256_file
from ..labels import SEGMENTS_BY_OUTPUT
from ..pipeline.core import FINAL_OUTPUTS, MANIFEST
from ..volume import Volume
from .series import SourceSeries, read_series, write_series

FORMATS = ("seg", "rtstruct")


@dataclass
class ExportResult:
    path: Path
    series: SourceSeries
    segments: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _manifest(run_dir: Path) -> dict:
    """The manifest of a finished run (a failed, cancelled or running one is refused)."""
    path = run_dir / MANIFEST
    if not run_dir.is_dir():
        raise InputError(run_dir, "is not a run folder")
    try:
        manifest = json.loads(path.read_text())
    except OSError:
        raise InputError(run_dir, f"has no {MANIFEST}: not a brainbarriers run folder") from None
    except ValueError as e:
        raise InputError(path, f"is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise InputError(path, "must hold a JSON object")
    status = manifest.get("status")
    if status != "done":
        raise InputError(run_dir, f"holds a run whose status is {status!r}, not 'done': "
                         "rerun it before exporting")
    return manifest


def run_label_maps(run_dir: Path, products: Sequence[str] | None = None) -> dict[str, Volume]:
    """The run's final label maps (on the user's reference grid) that hold any segment."""
    manifest = _manifest(run_dir)
    outputs = manifest.get("outputs", {})
    wanted = list(products) if products else [p for p in SEGMENTS_BY_OUTPUT if p in outputs]
    unknown = [p for p in wanted if p not in SEGMENTS_BY_OUTPUT]
    if unknown:
        raise InputError(None, f"unknown product(s) {', '.join(unknown)} "
                         f"(label maps: {', '.join(SEGMENTS_BY_OUTPUT)})")
    maps = {}
    for product in wanted:
        path = inside(run_dir, outputs.get(product, FINAL_OUTPUTS[product]), run_dir / MANIFEST)
        if not path.exists():
            if products:
                raise InputError(path, f"does not exist: the run made no {product}")
            continue
        maps[product] = load_volume(path, allow_empty=True)
    if not maps:
        raise InputError(run_dir, "holds no label map to export (brain mask, tumour, barriers, CTV)")
    return maps


def _reference_input(run_dir: Path, manifest: dict) -> Path | None:
    reference = manifest.get("reference")
    entry = manifest.get("inputs", {}).get(reference, {})
    path = entry.get("path")
    if not path:
        return None
    path = Path(path)
    return path if path.is_absolute() else (run_dir / path)


def choose_series(
    run_dir: Path,
    out: Path,
    *,
    dicom: Path | None,
    images_out: Path | None,
    grid_volume: Volume,
    note: Callable[[str], None],
) -> SourceSeries:
    """The series to refer to: ``dicom`` if given, else the run's reference input when it is a
    DICOM folder, else a synthetic series written to ``images_out``."""
    if dicom is not None:
        return read_series(dicom)
    manifest = _manifest(run_dir)
    reference = _reference_input(run_dir, manifest)
    if reference is None or not reference.exists():
        raise InputError(reference or run_dir, "the run's reference image is not there; give the "
                         "DICOM series to refer to with --dicom")
    # The image must be the one the run saw: another would carry the run's labels to a new scan.
    expected = manifest.get("inputs", {}).get(manifest.get("reference"), {}).get("sha256")
    if sha256_file(reference) != expected:
        raise InputError(reference, "has changed since the run (its sha256 differs from the "
                         "manifest's): rerun, or give the DICOM series to refer to with --dicom")
    if reference.is_dir():
        note(f"referring to the run's reference DICOM series {reference}")
        return read_series(reference)
    image = load_volume(reference)
    if not image.grid.same_as(grid_volume.grid):
        raise InputError(reference, "is not on the grid of the run's outputs; give --dicom")
    folder = images_out or out.with_name(out.name.split(".")[0] + "_images")
    note(f"the run's input was not DICOM: writing a synthetic MR series of {reference.name} to "
         f"{folder} (the export refers to it; send both)")
    return write_series(image, folder)


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    *,
    dicom: str | Path | None = None,
    images_out: str | Path | None = None,
    products: Sequence[str] | None = None,
    note: Callable[[str], None] | None = None,
) -> ExportResult:
    """Write the run's segments (every label present in brain_mask, tumor, barriers, ctv, or the
    ``products`` asked for) as a DICOM SEG (``fmt="seg"``) or RT Structure Set (``"rtstruct"``)."""
    if fmt not in FORMATS:
        raise InputError(None, f"unknown format {fmt!r} (use {' or '.join(FORMATS)})")
    run_dir, out = Path(run_dir), Path(out)
    if out.is_dir():
        raise InputError(out, "is a folder; give the file to write (e.g. segmentation.dcm)")
    if not out.parent.exists():
        raise InputError(out.parent, "does not exist")
    check_writable_folder(out.parent)  # before the synthetic series is written
    messages: list[str] = []

    def tell(message: str) -> None:
        messages.append(message)
        if note:
            note(message)

    maps = run_label_maps(run_dir, products)
    first = next(iter(maps.values()))
    series = choose_series(run_dir, out, dicom=Path(dicom) if dicom else None,
                           images_out=Path(images_out) if images_out else None,
                           grid_volume=first, note=tell)
    try:
        segments = _write(run_dir, out, fmt, maps, series, tell)
    except BaseException:
        if series.synthetic:  # written for this export only: a failed export leaves none
            shutil.rmtree(series.folder, ignore_errors=True)
        raise
    return ExportResult(out, series, segments, messages)


def _write(run_dir: Path, out: Path, fmt: str, maps: dict[str, Volume], series: SourceSeries,
           tell: Callable[[str], None]) -> list[str]:
    """Write the SEG or RT Structure Set; returns the names of the segments written."""
    segments = []
    for product, volume in maps.items():
        if not volume.grid.same_as(series.grid):
            if grids_overlap(series.grid, volume.grid) < 0.3:
                raise InputError(series.folder, f"does not overlap the run's {product} in space: "
                                 "another patient or another frame of reference?")
            tell(f"{product} ({volume.grid.describe()}) is not on the DICOM series' grid "
                 f"({series.grid.describe()}); resampled to it (nearest neighbour)")
            volume = resample_to(volume, series.grid, label=True)
        for value, spec in SEGMENTS_BY_OUTPUT[product].items():
            mask = np.asarray(volume.array) == value
            if mask.any():
                segments.append((product, spec, mask))
    if not segments:
        raise InputError(run_dir, "the run's label maps are all empty: nothing to export")
    if fmt == "seg":
        from .seg import write_seg

        write_seg(out, series, [(spec, mask) for _, spec, mask in segments])
    else:
        from .rtstruct import write_rtstruct

        write_rtstruct(out, series, segments, series.grid.affine)
    return [spec.name for _, spec, _ in segments]
