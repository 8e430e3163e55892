"""``brainbarriers ctv``: the CTV from label maps already on disk (no pipeline run needed)."""

from __future__ import annotations

import argparse
import sys


def _ctv(args: argparse.Namespace) -> int:
    from ..ctv.ctv import DEFAULT_BARRIERS, VENTRICLES, grow_ctv
    from ..errors import InputError
    from ..io import load_volume, save_volume

    out = args.out
    if not (out.endswith(".nii") or out.endswith(".nii.gz")):
        raise InputError(out, "the CTV is written as NIfTI: give a .nii or .nii.gz name")
    tumor = load_volume(args.tumor)
    brain = load_volume(args.brain_mask)
    barriers = load_volume(args.barriers, allow_empty=True) if args.barriers else None
    labels = tuple(DEFAULT_BARRIERS) + ((VENTRICLES,) if args.ventricles else ())
    ctv = grow_ctv(tumor, brain, barriers, margin_mm=args.margin, gtv=args.gtv,
                   add_edema=args.add_edema, barrier_labels=labels,
                   warn=lambda m: print(f"brainbarriers: warning: {m}", file=sys.stderr))
    save_volume(tumor.with_array(ctv.array), out)
    ml = float(ctv.array.sum()) * ctv.voxel_volume_ml
    print(f"{out}: CTV of {ml:.1f} ml (GTV {args.gtv}{' + oedema' if args.add_edema else ''} "
          f"+ {args.margin:g} mm geodesic margin)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ctv", help="CTV from a tumour label map: a geodesic margin that avoids the barriers",
        description="Grow the GTV (from a BraTS-labelled tumour map: 1 necrotic core, 2 oedema, "
        "4 enhancing) by a margin measured along paths inside the brain mask that do not cross "
        "the barriers (falx, tentorium, sagittal and transverse sinus; ventricles on request), and "
        "write the CTV on the tumour map's grid. Maps on other grids are resampled to it, with a "
        "warning. Inside a pipeline run use `brainbarriers run --steps ctv --set ctv.KEY=VALUE`.")
    p.add_argument("--tumor", required=True, metavar="FILE", help="tumour label map (BraTS labels)")
    p.add_argument("--brain-mask", required=True, metavar="FILE", help="brain mask")
    p.add_argument("--barriers", metavar="FILE", default=None,
                   help="barrier label map (1 falx, 2 tentorium, 3 sagittal sinus, "
                   "4 transverse sinus, 6 ventricles)")
    p.add_argument("--out", required=True, metavar="FILE", help="CTV to write (.nii.gz)")
    p.add_argument("--margin", type=float, default=15.0, metavar="MM",
                   help="margin in mm (default 15, ESTRO-EANO 2023)")
    p.add_argument("--gtv", choices=("enhancing", "core", "whole"), default="enhancing",
                   help="enhancing: enhancing tumour + necrotic core (default); core: tumour "
                   "core; whole: whole tumour")
    p.add_argument("--add-edema", action="store_true", help="add the oedema to the GTV")
    p.add_argument("--ventricles", action="store_true",
                   help="treat the ventricles as a barrier too")
    p.set_defaults(func=_ctv)
