"""``brainbarriers supervoxels``: multimodal supervoxels and their merged map for one case.

Runs the ``supervoxels`` step (and the skull-stripping it needs) and writes supervoxels.nii.gz and
supervoxels_merged.nii.gz (with brain_mask.nii.gz and the manifest) into OUT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline import SEQUENCES


def _supervoxels(args: argparse.Namespace) -> int:
    from .run import execute

    inputs = {s: getattr(args, s) for s in SEQUENCES if getattr(args, s)}
    extra: dict = {}
    if args.size is not None:
        extra["size"] = args.size if len(args.size) == 3 else args.size[0]
    if args.compactness is not None:
        extra["m"] = args.compactness
    if args.plain_slic:
        extra["adaptive"] = False
    if args.regions is not None:
        extra["regions"] = args.regions
    args.steps = "supervoxels"
    return execute(inputs, Path(args.out), args, extra_options={"supervoxels": extra})


def add_parser(sub) -> None:
    p = sub.add_parser(
        "supervoxels", help="multimodal supervoxels (SSLIC_Var) and their merging",
        description="Oversegment the skull-stripped sequences inside the brain mask into "
        "supervoxels (multimodal SLIC with variance-adaptive compactness), merge similar touching "
        "supervoxels, and write OUT/supervoxels.nii.gz and OUT/supervoxels_merged.nii.gz on the "
        "reference grid; the merged map is the merge hierarchy's level of 300 regions. Further "
        "options: --set supervoxels.KEY=VALUE (regions, threshold, eps, max_factor, iterations, "
        "alpha, beta, gamma, bins, texture, order, threshold_edges).")
    for s in SEQUENCES:
        p.add_argument(f"--{s}", metavar="FILE",
                       help=f"{s.upper()} image (NIfTI, NRRD, MHA or a DICOM folder)")
    p.add_argument("--reference", choices=SEQUENCES, default=None,
                   help="sequence whose grid the outputs use (default: t1ce if given)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the computation runs (auto: CUDA when available)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="STEP.KEY=VALUE",
                   help="a step option, e.g. supervoxels.eps=0.02; may be repeated")
    p.add_argument("--json-progress", action="store_true",
                   help="print one JSON object per line instead of progress bars")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (created if needed)")
    p.add_argument("--size", type=int, nargs="+", default=None, metavar="K",
                   help="supervoxel grid size in voxels: one number or three (default 7)")
    p.add_argument("--compactness", type=float, default=None, metavar="M",
                   help="compactness m (default 0.1, for sequences scaled to [0, 1])")
    p.add_argument("--regions", type=int, default=None, metavar="N",
                   help="regions in the merged map (default 300): a level of the merge hierarchy")
    p.add_argument("--plain-slic", action="store_true",
                   help="constant compactness (SLIC) instead of the variance-adaptive one")
    p.set_defaults(func=_supervoxels)
