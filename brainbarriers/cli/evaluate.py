"""``brainbarriers evaluate PRED GT``: Dice and HD95 of ET, TC and WT with the BraTS conventions."""

from __future__ import annotations

import argparse
import json


def _evaluate(args: argparse.Namespace) -> int:
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


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice and HD95 (ET, TC, WT) of a tumour label map",
                       description="Compare a predicted BraTS label map with the ground truth: Dice "
                       "and the 95th-percentile Hausdorff distance for ET (4), TC (1+4) and WT "
                       "(1+2+4). Both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 373.13 mm. "
                       "Labels in the 2023 convention (3 = enhancing) are accepted.")
    p.add_argument("pred", metavar="PRED")
    p.add_argument("gt", metavar="GT")
    p.add_argument("--json", action="store_true", help="print {\"ET\": {\"dice\", \"hd95\"}, ...}")
    p.set_defaults(func=_evaluate)
