"""``brainbarriers evaluate PRED GT``: Dice and HD95 of ET, TC and WT with the BraTS conventions;
``brainbarriers evaluate --barriers BARRIERS LABELS``: falx and tentorium position on a head with
Neuromorphometrics labels (``brainbarriers.barriers.position``)."""

from __future__ import annotations

import argparse
import json


def _evaluate(args: argparse.Namespace) -> int:
    if args.barriers:
        return _barrier_position(args)
    from ..errors import InputError
    from ..geometry import reorient_to
    from ..io import load_volume
    from ..metrics import brats_scores

    pred = load_volume(args.pred, allow_empty=True)
    truth = load_volume(args.gt, allow_empty=True)
    if not pred.grid.same_as(truth.grid):
        try:  # the same grid in another orientation is fine; anything else is refused
            pred = reorient_to(pred, truth.grid)
        except Exception as e:
            raise InputError(args.pred, f"is not on the ground truth's grid "
                             f"({pred.grid.describe()} vs {truth.grid.describe()})") from e
        if not pred.grid.same_as(truth.grid):
            raise InputError(args.pred, f"is not on the ground truth's grid "
                             f"({pred.grid.describe()} vs {truth.grid.describe()})")
    scores = brats_scores(pred, truth)
    if args.json:
        print(json.dumps(scores))
    else:
        print(f"{'region':<7}{'Dice':>8}{'HD95 (mm)':>12}")
        for region, s in scores.items():
            print(f"{region:<7}{s['dice']:>8.4f}{s['hd95']:>12.3f}")
    return 0


def _barrier_position(args: argparse.Namespace) -> int:
    from ..barriers.position import TARGET, barrier_position
    from ..errors import InputError
    from ..io import load_volume

    pred = load_volume(args.pred, allow_empty=True)
    labels = load_volume(args.gt)
    try:
        scores = barrier_position(pred, labels)
    except ValueError as e:
        where = args.pred if "grids differ" in str(e) else args.gt
        raise InputError(where, f"cannot be measured: {e}") from None
    if args.json:
        print(json.dumps(scores))
        return 0
    print(f"{'sheet':<11}{'interface covered':>19}{'sheet on interface':>20}{'interface ml':>14}{'sheet ml':>10}")
    for name, s in scores.items():
        marks = ["" if s[k] >= TARGET else " *" for k in ("interface_covered", "sheet_on_interface")]
        print(f"{name:<11}{s['interface_covered']:>17.3f}{marks[0]:<2}{s['sheet_on_interface']:>18.3f}{marks[1]:<2}"
              f"{s['interface_ml']:>14.1f}{s['sheet_ml']:>10.1f}")
    print(f"(within 3 mm; target >= {TARGET:.2f}, * below it)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a tumour label map (Dice, HD95) or the barriers' position",
                       description="Compare a predicted BraTS label map with the ground truth: Dice "
                       "and the 95th-percentile Hausdorff distance for ET (4), TC (1+4) and WT "
                       "(1+2+4). Both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 373.13 mm. "
                       "Labels in the 2023 convention (3 = enhancing) are accepted. "
                       "With --barriers, PRED is a barrier label map (barriers.nii.gz) and GT a "
                       "Neuromorphometrics label map of the same head (MICCAI 2012 labels): for the "
                       "falx (1) and tentorium (2), the share of the anatomical interface they must "
                       "fill (falx: within 4 mm of both cerebral hemispheres, above the corpus "
                       "callosum; tentorium: within 4 mm of both the cerebellum and the occipital or "
                       "temporal cortex) that lies within 3 mm of the sheet, and the share of the "
                       "sheet within 3 mm of that interface or outside the brain.")
    p.add_argument("pred", metavar="PRED")
    p.add_argument("gt", metavar="GT")
    p.add_argument("--barriers", action="store_true",
                   help="PRED is a barrier map, GT a Neuromorphometrics label map: falx and tentorium position")
    p.add_argument("--json", action="store_true", help="print {\"ET\": {\"dice\", \"hd95\"}, ...} "
                   "(with --barriers: {\"falx\": {\"interface_covered\", \"sheet_on_interface\", ...}, ...})")
    p.set_defaults(func=_evaluate)
