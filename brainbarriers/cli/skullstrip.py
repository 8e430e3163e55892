"""``brainbarriers skullstrip``: the brain mask of one head MRI, written on the input's own grid.

No run folder: the image is read, the mask is computed by the same code as the pipeline's
``skullstrip`` step, and written (atomically) as NIfTI; ``--brain`` also writes the skull-stripped
image. Inside a pipeline run the step is ``brainbarriers run --steps skullstrip``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _nifti_name(path: str, what: str) -> Path:
    from ..errors import InputError

    if not (path.endswith(".nii") or path.endswith(".nii.gz")):
        raise InputError(path, f"the {what} is written as NIfTI: give a .nii or .nii.gz name")
    return Path(path)


def _skullstrip(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io import load_volume, save_volume
    from ..pipeline.core import check_output_folder, resolve_device
    from ..skullstrip.core import brain_mask

    out = _nifti_name(args.out, "mask")
    brain = _nifti_name(args.brain, "skull-stripped image") if args.brain else None
    for path in (out, brain):
        if path is not None:
            check_output_folder(path.parent)
    device = resolve_device(args.device)
    volume = load_volume(args.input)
    tta = args.tta if args.tta is not None else device == "cuda"
    result = brain_mask(volume, backend=args.backend, device=device, threshold=args.threshold,
                        folds=args.folds, tta=tta)
    for message in result.warnings:
        print(f"brainbarriers: warning: {message}", file=sys.stderr)
    save_volume(result.mask, out, np.uint8)
    if brain is not None:
        inside = result.mask.array > 0
        save_volume(volume.with_array(np.where(inside, volume.array, 0).astype(volume.array.dtype)),
                    brain)
    how = f"{args.backend}{', resampled for the network' if result.resampled else ''}"
    print(f"{out}: brain mask of {result.volume_ml:.0f} ml ({how})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "skullstrip", help="brain mask of a head MRI (deepbet or HD-BET)",
        description="Compute the brain mask of one head MRI (any orientation and voxel size) and "
        "write it on the input's own grid. deepbet (default) is trained on T1-weighted images "
        "(T1, T1ce); HD-BET (pip install 'brainbarriers[hdbet]') works on T1, T1ce, T2 and FLAIR.")
    p.add_argument("input", metavar="INPUT", help="head image (NIfTI, NRRD, MHA or a DICOM folder)")
    p.add_argument("--out", required=True, metavar="MASK", help="brain mask to write (.nii.gz)")
    p.add_argument("--brain", metavar="FILE", default=None,
                   help="also write the skull-stripped image (.nii.gz)")
    p.add_argument("--backend", choices=("deepbet", "hdbet"), default="deepbet",
                   help="deepbet (default) or hdbet")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the network runs (auto: CUDA when available)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="threshold on the brain probability (default 0.5)")
    p.add_argument("--folds", type=int, choices=range(1, 6), default=5, metavar="N",
                   help="HD-BET: how many of its five folds to average (default 5)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="HD-BET: mirroring test-time augmentation (default: on with CUDA)")
    p.set_defaults(func=_skullstrip)
