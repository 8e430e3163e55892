"""``brainbarriers export``: a run's segments as DICOM SEG or DICOM RT Structure Set."""

from __future__ import annotations

import argparse
import sys


def _export(args: argparse.Namespace) -> int:
    from ..dicom import export_run
    from ..errors import InputError

    products = [p.strip() for p in args.products.split(",") if p.strip()] if args.products else None
    if args.images_out and args.dicom:
        raise InputError(None, "--images-out is for runs without DICOM input; it cannot be "
                         "combined with --dicom")
    result = export_run(args.run, args.format, args.out, dicom=args.dicom,
                        images_out=args.images_out, products=products,
                        note=lambda m: print(f"brainbarriers: {m}", file=sys.stderr))
    kind = "DICOM SEG" if args.format == "seg" else "RT Structure Set"
    print(f"{result.path}: {kind} with {len(result.segments)} segments "
          f"({', '.join(result.segments)}) referring to {len(result.series.datasets)} images of "
          f"series {result.series.datasets[0].SeriesInstanceUID}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a run's segments as DICOM SEG or RT Structure Set",
        description="Write the segments of a run folder (brain mask, tumour sub-regions, barriers, "
        "CTV) as one DICOM Segmentation (--format seg) or one DICOM RT Structure Set "
        "(--format rtstruct). The object refers to an image series: the series given with "
        "--dicom, else the run's reference input when it was a DICOM folder, else a synthetic MR "
        "series written from the reference image into --images-out (default: beside OUT, named "
        "<OUT>_images). Structures are marked UNAPPROVED/AUTOMATIC: review them before use.")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder (from brainbarriers run)")
    p.add_argument("--format", required=True, choices=("seg", "rtstruct"),
                   help="seg: DICOM Segmentation; rtstruct: DICOM RT Structure Set")
    p.add_argument("--out", required=True, metavar="FILE", help="DICOM file to write")
    p.add_argument("--dicom", metavar="SERIES_DIR", default=None,
                   help="DICOM image series to refer to (default: the run's reference input if "
                   "it was a DICOM folder); segments are resampled onto it if its grid differs")
    p.add_argument("--images-out", metavar="DIR", default=None,
                   help="where to write the synthetic image series when the input was not DICOM")
    p.add_argument("--products", default=None, metavar="LIST",
                   help="comma-separated label maps to export (brain_mask, tumor, barriers, ctv; "
                   "default: all the run made)")
    p.set_defaults(func=_export)
