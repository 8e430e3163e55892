"""Tumour models on real held-out BraTS cases: Dice and HD95 per case and region, side by side.

For each case (default: the held-out cases recorded in the default package's manifest, read from
``../shared/data``; or ``--cases DIR [DIR ...]``, BraTS case folders), every package in
``--packages`` segments the case as the tumour step does, but keeping every tumour component
(``tumor.inference.segment``, test-time flips unless ``--no-tta``), and the labels are scored with
the BraTS conventions (``metrics.brats_scores``, as ``brainbarriers evaluate --json``). A package
trained by cross-validation segments each of its held-out cases with the one fold that did not
see it (its other folds did); other packages run all their folds. The first package is also
scored after post-processing: with ``--main-tumour`` (on every subset too), keeping only the main
tumour (``tumor.inference.keep_main_tumour``, what the step does with the package's
``focus_core_ml``); removing tumour components other than the largest below each
``--min-component-ml`` threshold; with ``--snap``, snapping its labels to the case's supervoxels as
``--set tumor.refine_supervoxels=true`` does (the supervoxels step's merged map of 300 regions, and
the oversegmentation itself; a supervoxel at least half tumour becomes tumour, one less than half
is cleared). ``--brain-mask skullstrip`` gives the model the skullstrip step's mask (deepbet on
the T1, as ``brainbarriers run`` does) instead of the scans' own non-zero voxels (what training
used). With ``--subsets`` it runs on subsets of the sequences (the absent ones fed as zeros,
as the tumour step does for a model that accepts subsets).

    python bench/tumor_validation.py --packages default demo-hnfnetv2-phantom --json out.json
    python bench/tumor_validation.py --packages default --no-tta \
        --subsets t1ce+flair t1+flair t1ce+t2 flair t1ce
    python bench/tumor_validation.py --packages default --no-tta --snap
    python bench/tumor_validation.py --packages default --no-tta --main-tumour inf 1
    python bench/tumor_validation.py --packages default --main-tumour 1 --brain-mask skullstrip
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REGIONS = ("WT", "TC", "ET")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def held_out_cases(package) -> list[Path]:
    ids = [c for f in package.manifest.get("training", {}).get("folds", []) for c in f["val_cases"]]
    found = {p.name: p for p in SHARED.glob("*/*") if p.is_dir()}
    missing = [i for i in ids if i not in found]
    if missing:
        raise SystemExit(f"held-out case(s) {missing} not found under {SHARED}")
    return [found[i] for i in ids]


def mean_line(scores: list[dict], digits: int = 3) -> str:
    """Mean Dice / HD95 (mm) per region over cases' ``brats_scores``."""
    return " ".join(f"{k} {np.mean([s[k]['dice'] for s in scores]):.{digits}f}/"
                    f"{np.mean([s[k]['hd95'] for s in scores]):6.1f}" for k in REGIONS)


def held_out_by(package, case_id: str) -> str | None:
    """The weights key of the fold that held ``case_id`` out, if the package was cross-validated."""
    for f in package.manifest.get("training", {}).get("folds", []):
        if case_id in f.get("val_cases", []) and f"fold{f['fold']}" in package.weight_keys:
            return f"fold{f['fold']}"
    return None


def main() -> int:
    import torch

    from brainbarriers.metrics import brats_scores
    from brainbarriers.models import load_package
    from brainbarriers.skullstrip.core import brain_mask
    from brainbarriers.supervoxels.snap import snap_to_supervoxels
    from brainbarriers.tumor.inference import keep_main_tumour, remove_small_components, segment
    from brainbarriers.tumor.step import DEFAULT_MODEL
    from brainbarriers.tumor.train import find_cases, load_case_volumes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packages", nargs="+", default=["default", "demo-hnfnetv2-phantom"])
    ap.add_argument("--cases", nargs="*", default=None)
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--min-component-ml", type=float, nargs="*", default=[0.1, 0.5, 1.0, 2.0])
    ap.add_argument("--main-tumour", type=float, nargs="*", default=[],
                    help="also score the first package keeping only the largest tumour component "
                         "and other foci with at least this much core in ml (inf: largest only)")
    ap.add_argument("--subsets", nargs="*", default=[],
                    help="sequence subsets for the first package, e.g. t1ce+flair flair")
    ap.add_argument("--snap", action="store_true",
                    help="also score the first package's labels snapped to the supervoxels")
    ap.add_argument("--overlap", type=float, default=None,
                    help="sliding-window overlap (default: the tumour step's)")
    ap.add_argument("--brain-mask", choices=("nonzero", "skullstrip"), default="nonzero",
                    help="the scans' non-zero voxels (as in training) or the skullstrip step's mask")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write every figure to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    names = [DEFAULT_MODEL if p == "default" else p for p in args.packages]
    packages = {n: load_package(n) for n in names}
    folders = [Path(c) for c in args.cases] if args.cases else held_out_cases(packages[names[0]])
    subsets = [tuple(s.split("+")) for s in args.subsets]
    overlap = {} if args.overlap is None else {"overlap": args.overlap}
    rows = []
    for folder in folders:
        case = find_cases(folder)[0]
        vols, mask, truth = load_case_volumes(case)
        if args.brain_mask == "skullstrip":
            mask = brain_mask(vols["t1"]).mask
        for name, pkg in packages.items():
            key = held_out_by(pkg, case["id"])
            nets = [pkg.build_network(key)] if key else None
            runs = [("all", tuple(pkg.inputs))] + ([("+".join(s), s) for s in subsets]
                                                   if name == names[0] else [])
            for label, given in runs:
                t = time.perf_counter()
                pred = segment({s: vols[s] for s in given}, mask, _subset_view(pkg, given),
                               tta=not args.no_tta, min_component_ml=0.0, focus_core_ml=0.0,
                               nets=nets, **overlap)
                seconds = time.perf_counter() - t
                rows.append({"case": case["id"], "package": name, "post": 0.0,
                             "sequences": "+".join(given), "network": key or "all folds",
                             "seconds": round(seconds, 1), **brats_scores(pred, truth)})
                r = rows[-1]
                if name == names[0]:
                    for core_ml in args.main_tumour:
                        kept, _ = keep_main_tumour(pred.array, pred.voxel_volume_ml, core_ml)
                        rows.append({"case": case["id"], "package": name,
                                     "post": f"main tumour, foci with core >= {core_ml:g} ml",
                                     "sequences": r["sequences"],
                                     **brats_scores(pred.with_array(kept), truth)})
                if name == names[0] and label == "all":
                    for ml in args.min_component_ml:
                        cleaned = remove_small_components(pred.array, pred.voxel_volume_ml, ml)
                        rows.append({"case": case["id"], "package": name, "post": ml,
                                     "sequences": r["sequences"],
                                     **brats_scores(pred.with_array(cleaned), truth)})
                    if args.snap:
                        for level, regions in _supervoxel_maps(vols, mask).items():
                            snapped = snap_to_supervoxels(pred.array, regions, 0.5)
                            rows.append({"case": case["id"], "package": name, "post": level,
                                         "sequences": r["sequences"],
                                         **brats_scores(pred.with_array(snapped), truth)})
                print(f"{case['id']:<24}{name:<26}{label:<12}" + " ".join(
                    f"{k} {r[k]['dice']:.3f}/{r[k]['hd95']:6.1f}" for k in REGIONS)
                    + f"  {seconds:.0f} s", flush=True)

    print(f"\nmean over {len(folders)} cases (Dice / HD95 mm), TTA {'off' if args.no_tta else 'on'}, "
          f"brain mask: {args.brain_mask}")
    keys = sorted({(r["package"], r["post"], r["sequences"]) for r in rows},
                  key=lambda k: (names.index(k[0]), str(k[1]), -len(k[2])))
    for pkg, post, given in keys:
        sel = [r for r in rows if (r["package"], r["post"], r["sequences"]) == (pkg, post, given)]
        post_label = (f" +remove<{post:g}ml" if isinstance(post, float) else f" +{post}") if post else ""
        label = pkg + post_label + (
            "" if given == "+".join(packages[pkg].inputs) else f" [{given}]")
        print(f"{label:<44} " + mean_line(sel))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def _supervoxel_maps(vols, mask) -> dict:
    """The supervoxels step's maps for a case (its defaults, the four skull-stripped sequences)."""
    from brainbarriers.supervoxels.step import compute_supervoxels

    inside = mask.array > 0
    over, merged, _ = compute_supervoxels([np.where(inside, vols[s].array, 0) for s in
                                           ("t1", "t1ce", "t2", "flair")], inside)
    return {"snap to 300 regions": merged, "snap to the oversegmentation": over}


def _subset_view(package, given):
    """The package as the tumour step sees it for a subset: absent inputs fed as zeros (for a
    package not trained for subsets this shows what it does when a sequence is missing)."""
    if tuple(given) == tuple(package.inputs) or package.accepts_subsets:
        return package
    from brainbarriers.models import ModelPackage

    return ModelPackage(package.path, {**package.manifest, "absent_inputs": "zero"})


if __name__ == "__main__":
    raise SystemExit(main())
