"""Inference-time variants of a tumour package on its held-out BraTS cases, side by side.

Each case is segmented by the fold that did not see it (on the scans' non-zero voxels, as in
training) prepared as the tumour step prepares it, and every variant's probabilities go through
the step's decisions (``tumor.inference.prepare_input`` and ``decide``: threshold 0.5, the
main-tumour rule, small enhancing regions relabelled). The variants:

- ``windows``: the tumour step as it is (sliding windows of the package's patch size);
- ``whole-window``: one window over the whole brain box instead;
- ``shift``: probabilities averaged over the input shifted by -0.1, 0 and +0.1 z inside the brain
  (a global scale is no variant at all: the network's first instance norm cancels it);
- ``normal-brain oracle`` / ``normal-brain first pass``: each sequence re-scaled so that the brain
  outside the tumour has the cohort's mean normal-brain mean and spread, the tumour taken from the
  expert (an upper bound) or from the ``windows`` pass (what inference could do);
- ``hysteresis T``: the whole tumour is every component of probability > T that holds a voxel
  above 0.5 (``windows``' probabilities); ``hysteresis nested``: T chosen for each fold's cases by
  the mean WT Dice of the other folds' cases, among 0.5 (none), 0.4, 0.3, 0.2;
- ``filled``: holes in the whole tumour filled;
- ``expert labels via the grid``: no network, the expert's regions taken to the package's grid and
  back as probabilities are, without the step's rules (what the voxel size alone costs).

    python bench/tumor_inference_variants.py [--flips] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tumor_validation import held_out_by, held_out_cases, mean_line  # noqa: E402

HYSTERESIS = (0.5, 0.4, 0.3, 0.2)
SHIFT_Z = 0.1


def main() -> int:
    import torch
    from scipy import ndimage

    from brainbarriers.metrics import brats_scores
    from brainbarriers.models import load_package
    from brainbarriers.tumor.inference import (
        decide,
        onto,
        predict_array,
        prepare_input,
        to_input_grid,
    )
    from brainbarriers.tumor.step import DEFAULT_MODEL
    from brainbarriers.tumor.train import find_cases, load_case_volumes
    from brainbarriers.volume import Volume

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", default=DEFAULT_MODEL)
    ap.add_argument("--flips", action="store_true", help="test-time flips in every variant")
    ap.add_argument("--cases", nargs="*", default=None,
                    help="only these held-out case ids (the cohort's normal brain then from them)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write every figure to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pkg = load_package(args.package)
    m = pkg.manifest

    cases = []
    for folder in held_out_cases(pkg):
        case = find_cases(folder)[0]
        if args.cases and case["id"] not in args.cases:
            continue
        vols, mask, truth = load_case_volumes(case)
        prepared = prepare_input({s: vols[s] for s in pkg.inputs}, mask, pkg)
        expert_wt = (onto(truth, prepared.grid, label=True).array > 0) & prepared.brain
        cases.append({"id": case["id"], "fold": held_out_by(pkg, case["id"]), "mask": mask,
                      "truth": truth, "prepared": prepared, "expert_wt": expert_wt})

    # The cohort's normal brain (outside the expert's tumour), per sequence, in z units.
    def outside_tumour(c):
        return c["prepared"].brain & ~c["expert_wt"]

    normal = np.array([[(c["prepared"].x[k][outside_tumour(c)].mean(),
                         c["prepared"].x[k][outside_tumour(c)].std()) for k in range(len(pkg.inputs))]
                       for c in cases]).mean(0)

    def renormalised(x, brain, tumour):
        y = x.copy()
        for k, (mean, std) in enumerate(normal):
            v = x[k][brain & ~tumour]
            y[k][brain] = (x[k][brain] - v.mean()) / v.std() * std + mean
        return y

    networks = {}  # one per fold, built once

    def probabilities(c, x, whole=False):
        """WT/TC/ET probabilities on the case's own grid."""
        crop = c["prepared"].crop(x)
        roi = ([int(np.ceil(s / 16) * 16) for s in crop.shape[1:]] if whole else m["patch_size"])
        if c["fold"] not in networks:
            networks[c["fold"]] = pkg.build_network(c["fold"])
        prob = predict_array([networks[c["fold"]]], crop, roi=roi, head="regions", tta=args.flips)
        return to_input_grid(c["prepared"], prob)

    def scores(c, prob, wt=None, decided=True):
        """The tumour step's decisions (none of its rules unless ``decided``), the whole tumour
        ``wt`` in place of the probabilities' when given."""
        if wt is not None:
            prob = np.concatenate([wt[None].astype(np.float32), prob[1:]])
        rules = {} if decided else {"small_et_ml": 0, "min_component_ml": 0, "focus_core_ml": 0}
        labels, _, _ = decide(prob, c["mask"], pkg, **rules)
        return brats_scores(c["mask"].with_array(labels), c["truth"])

    rows = {}
    for c in cases:
        x, brain = c["prepared"].x, c["prepared"].brain
        base = probabilities(c, x)
        shifted = [probabilities(c, x + s * brain) for s in (-SHIFT_Z, SHIFT_Z)]
        first_wt = (onto(Volume(base[0], c["mask"].affine), c["prepared"].grid).array > 0.5) & brain
        variants = {
            "windows": base,
            "whole-window": probabilities(c, x, whole=True),
            "shift": (base + shifted[0] + shifted[1]) / 3,
            "normal-brain oracle": probabilities(c, renormalised(x, brain, c["expert_wt"])),
            "normal-brain first pass": probabilities(c, renormalised(x, brain, first_wt)),
        }
        row = {name: scores(c, p) for name, p in variants.items()}
        for low in HYSTERESIS:
            parts, _ = ndimage.label(base[0] > low)
            seeds = np.unique(parts[base[0] > 0.5])
            row[f"hysteresis {low}"] = scores(c, base, wt=np.isin(parts, seeds[seeds > 0]))
        row["filled"] = scores(c, base, wt=ndimage.binary_fill_holes(base[0] > 0.5))
        expert = [(c["truth"].array > 0), np.isin(c["truth"].array, (1, 4)), c["truth"].array == 4]
        grid = c["prepared"].grid
        via_grid = np.stack([onto(onto(c["truth"].with_array(r.astype(np.float32)), grid),
                                  c["mask"].grid).array for r in expert])
        row["expert labels via the grid"] = scores(c, via_grid, decided=False)
        rows[c["id"]] = row
        print(f"{c['id']:<24}" + "  ".join(f"{n} {r['WT']['dice']:.3f}" for n, r in row.items()),
              flush=True)

    for c in cases:  # T chosen on the other folds' cases
        others = [o["id"] for o in cases if o["fold"] != c["fold"]]
        best = max(HYSTERESIS, key=lambda t: (np.mean([rows[i][f"hysteresis {t}"]["WT"]["dice"]
                                                       for i in others]), t))
        rows[c["id"]]["hysteresis nested"] = {**rows[c["id"]][f"hysteresis {best}"], "T": best}

    print(f"\nmean over {len(cases)} held-out cases (Dice / HD95 mm), flips {'on' if args.flips else 'off'}")
    for name in rows[cases[0]["id"]]:
        sel = [r[name] for r in rows.values()]
        print(f"{name:<28}" + mean_line(sel, digits=4))
    print("hysteresis nested chose", {c["id"]: rows[c["id"]]["hysteresis nested"]["T"] for c in cases})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
