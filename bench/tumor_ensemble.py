"""Two cross-validated tumour packages and their ensemble on the held-out BraTS cases.

Each held-out case is segmented by the fold of each package that did not see it (the two packages
must share their split). Every network runs once per flip variant (the identity and the 7 flips),
and the probabilities are combined these ways:

- ``A``: the first package alone, its eight flips (the tumour step's TTA for one network);
- ``B``: the second package alone, its eight flips;
- ``A+B shared``: A's even and B's odd flip variants, as the step shares the flips among the nets
  of a package (same number of network passes as one package);
- ``A+B all``: both packages' eight flips (twice the passes);
- with ``--weights``, ``A+B shared w=W``: as ``A+B shared`` but B weighted W against A's 1 - W,
  and ``A+B shared, w nested``: W chosen for each fold's cases by the mean WT Dice of the other
  folds' cases (ties: the smaller W).

The case is prepared and the labels decided by the tumour step's own code
(``tumor.inference.prepare_input`` and ``decide``, with the first package's ``postprocess``). The
brain mask is the skullstrip step's (deepbet on the T1, as ``brainbarriers run`` gives it) unless
``--brain-mask nonzero``. The two packages must share ``spacing_mm`` and ``normalisation`` (the
input is prepared once); each keeps its own window size.

    python bench/tumor_ensemble.py --packages default brats-conresnet-cpu --json out.json
    python bench/tumor_ensemble.py --weights 0 0.25 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tumor_validation import REGIONS, held_out_by, held_out_cases, mean_line  # noqa: E402


def main() -> int:
    import torch

    from brainbarriers.metrics import brats_scores
    from brainbarriers.models import load_package
    from brainbarriers.skullstrip.core import brain_mask
    from brainbarriers.tumor.inference import decide, prepare_input, to_input_grid
    from brainbarriers.tumor.step import DEFAULT_MODEL
    from brainbarriers.tumor.train import find_cases, load_case_volumes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packages", nargs=2, default=["default", "brats-conresnet-cpu"])
    ap.add_argument("--brain-mask", choices=("nonzero", "skullstrip"), default="skullstrip")
    ap.add_argument("--cases", nargs="*", default=None, help="only these held-out case ids")
    ap.add_argument("--weights", type=float, nargs="*", default=[],
                    help="also B weighted w against A's 1 - w (flips shared), and w chosen for "
                         "each fold's cases by the mean WT of the other folds' cases")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write every figure to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a, b = (load_package(DEFAULT_MODEL if p == "default" else p) for p in args.packages)
    for key in ("spacing_mm", "normalisation"):
        if a.manifest.get(key) != b.manifest.get(key):
            raise SystemExit(f"the packages differ in {key}: {a.manifest.get(key)} and "
                             f"{b.manifest.get(key)}")

    rows = {}
    for folder in held_out_cases(a):
        case = find_cases(folder)[0]
        if args.cases and case["id"] not in args.cases:
            continue
        folds = held_out_by(a, case["id"]), held_out_by(b, case["id"])
        if folds[0] != folds[1]:
            raise SystemExit(f"{case['id']} is held out by {folds[0]} of one package and "
                             f"{folds[1]} of the other: not the same split")
        t = time.perf_counter()
        vols, mask, truth = load_case_volumes(case)
        if args.brain_mask == "skullstrip":
            mask = brain_mask(vols["t1"]).mask
        prepared = prepare_input({s: vols[s] for s in a.inputs}, mask, a)
        crop = prepared.crop()

        pa, pb = (flip_passes(pkg.build_network(folds[0]), crop, pkg.manifest["patch_size"])
                  for pkg in (a, b))
        combined = {"A": np.mean(pa, 0), "B": np.mean(pb, 0),
                    "A+B shared": np.mean(pa[0::2] + pb[1::2], 0), "A+B all": np.mean(pa + pb, 0)}
        for w in args.weights:
            combined[f"A+B shared w={w:g}"] = ((1 - w) * np.mean(pa[0::2], 0)
                                               + w * np.mean(pb[1::2], 0))
        row = {}
        for name, prob in combined.items():
            labels, _, _ = decide(to_input_grid(prepared, prob), mask, a)
            row[name] = brats_scores(mask.with_array(labels), truth)
        rows[case["id"]] = row
        print(f"{case['id']:<24}{folds[0]}  " + "  ".join(
            f"{n} " + "/".join(f"{r[k]['dice']:.3f}" for k in REGIONS) for n, r in row.items())
            + f"  {time.perf_counter() - t:.0f} s", flush=True)

    if args.weights:  # w chosen on the other folds' cases (ties: the smaller w)
        fold_of = {cid: held_out_by(a, cid) for cid in rows}
        for cid, row in rows.items():
            others = [o for o in rows if fold_of[o] != fold_of[cid]]
            best = max(sorted(args.weights), key=lambda w: (np.mean(
                [rows[o][f"A+B shared w={w:g}"]["WT"]["dice"] for o in others]), -w))
            row["A+B shared, w nested"] = {**row[f"A+B shared w={best:g}"], "w": best}
        print("nested w:", {cid: row["A+B shared, w nested"]["w"] for cid, row in rows.items()})

    print(f"\nmean over {len(rows)} held-out cases (Dice / HD95 mm), brain mask: {args.brain_mask}; "
          f"A = {a.name}, B = {b.name}")
    for name in next(iter(rows.values())):
        sel = [r[name] for r in rows.values()]
        print(f"{name:<22}" + mean_line(sel, digits=4))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def flip_passes(net, crop, roi) -> list:
    """The network's probabilities for a C x spatial crop, one array per flip variant."""
    import torch

    from brainbarriers.tumor.inference import FLIPS, predict_array

    out = []
    for flip in FLIPS:
        dims = [f - 1 for f in flip]  # FLIPS name the axes of a batch; the crop has none
        x = torch.flip(crop, dims) if flip else crop
        p = torch.from_numpy(predict_array([net], x, roi=roi, tta=False))
        out.append((torch.flip(p, dims) if flip else p).numpy())
    return out


if __name__ == "__main__":
    raise SystemExit(main())
