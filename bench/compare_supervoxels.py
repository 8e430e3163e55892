"""The paper's comparison (Pelluet et al. 2021, Table 1) on generated tumour cases, optionally also on
the two real BraTS cases of ../shared/data.

Rows: SSLIC (constant compactness, i.e. SLIC) and SSLIC_Var (variance-adaptive), each before and after
merging, monomodal (each sequence alone; scores averaged over the four sequences, as the paper does)
and multimodal (the four sequences stacked; wVar and MI keep the minimum across sequences).
Columns: ASA in the tumour's region (higher is better), wVar, MI, GS (lower is better), count.
Scores are averaged over the cases.

    python bench/compare_supervoxels.py                   # make_case seeds 1-4, zoom 2, K = 5 (10 mm)
    python bench/compare_supervoxels.py --real            # + the 16 real BraTS cases, 1 mm, K = 10
    python bench/compare_supervoxels.py --real --skip-generated --real-cases Brats18_2013_20_1

"Merged" is the merge hierarchy's level of 300 regions (``hierarchy``; the paper: about 300).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from brainbarriers.supervoxels import metrics
from brainbarriers.supervoxels.hierarchy import build_hierarchy
from brainbarriers.supervoxels.slic import scale_to_unit, sslic

SEQ = ("t1", "t1ce", "t2", "flair")
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "brats-gli"
METHODS = ("SSLIC", "SSLIC_Var", "SSLIC Merged", "SSLIC_Var Merged")


def generated_cases(seeds, zoom):
    from brainbarriers.phantom import make_case

    for seed in seeds:
        case = make_case(seed=seed, zoom=zoom)
        mask = case.truths["brain_mask"].array > 0
        images = [np.where(mask, case.sequences[s].array, 0).astype(np.float32) for s in SEQ]
        yield f"make_case({seed}, zoom={zoom})", images, mask, case.truths["tumor"].array


def real_cases(names=None):
    import nibabel as nib

    folders = sorted(REAL.glob("BraTS-*")) + sorted((REAL.parent / "brats18").glob("Brats18_*"))
    for folder in folders:
        if names and folder.name not in names:
            continue
        images = [np.asarray(nib.load(folder / f"{folder.name}_{s}.nii.gz").dataobj, np.float32)
                  for s in SEQ]
        truth = np.asarray(nib.load(folder / f"{folder.name}_seg.nii.gz").dataobj).astype(np.int16)
        yield folder.name, images, np.stack(images).max(0) > 0, truth


def score_all(features: np.ndarray, mask, truth, size, regions: int = 300) -> dict[str, dict]:
    """The four methods on one feature stack (M, X, Y, Z) in [0, 1]; merged = the hierarchy's
    level of ``regions`` regions."""
    out = {}
    for adaptive in (False, True):
        name = "SSLIC_Var" if adaptive else "SSLIC"
        labels = sslic(features, mask, size=size, adaptive=adaptive).numpy().astype(np.int32)
        merged = build_hierarchy(labels, list(features)).labels(labels, regions=regions)
        channels = list(features)
        for method, lab in ((name, labels), (f"{name} Merged", merged)):
            scores = metrics.evaluate(lab, channels, truth)
            out[method] = {"ASA": scores["ASA"], "wVar": scores["wVar"], "MI": scores["MI"],
                           "GS": scores["GS"], "count": scores["count"]}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="1,2,3,4")
    p.add_argument("--zoom", type=int, default=2)
    p.add_argument("--size", type=int, default=None,
                   help="K in voxels (default: 10 // zoom, i.e. 10 mm as the paper's 10 voxels)")
    p.add_argument("--real", action="store_true", help="also the real BraTS cases (1 mm, K = 10)")
    p.add_argument("--real-cases", default="", help="comma-separated names (default: all 16)")
    p.add_argument("--skip-generated", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = args.size or max(2, 10 // args.zoom)

    def run(cases, k):
        table = {(mode, m): [] for mode in ("Mono", "Multi") for m in METHODS}
        for name, images, mask, truth in cases:
            t0 = time.perf_counter()
            features = np.stack([scale_to_unit(x, mask) for x in images])
            mono = [score_all(features[i:i + 1], mask, truth, (k,) * 3) for i in range(len(SEQ))]
            for m in METHODS:
                table[("Mono", m)].append({key: np.mean([s[m][key] for s in mono])
                                           for key in mono[0][m]})
            multi = score_all(features, mask, truth, (k,) * 3)
            for m in METHODS:
                table[("Multi", m)].append(multi[m])
            print(f"  {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        return table

    def show(title, table):
        print(f"\n{title}")
        print(f"{'method':<26}{'ASA':>7}{'wVar':>7}{'MI':>7}{'GS':>7}{'count':>9}")
        for (mode, m), rows in table.items():
            if not rows:
                continue
            mean = {key: np.mean([r[key] for r in rows]) for key in rows[0]}
            print(f"{mode + ' ' + m:<26}{mean['ASA']:>7.3f}{mean['wVar']:>7.3f}{mean['MI']:>7.3f}"
                  f"{mean['GS']:>7.3f}{mean['count']:>9.1f}")

    seeds = [int(s) for s in args.seeds.split(",") if s]
    print(f"generated cases: seeds {seeds}, zoom {args.zoom}, K = {size} voxels")
    if not args.skip_generated:
        show(f"Generated tumour cases (n = {len(seeds)}, zoom {args.zoom}, K = {size})",
             run(generated_cases(seeds, args.zoom), size))
    if args.real:
        names = [n for n in args.real_cases.split(",") if n]
        print("real BraTS cases, 1 mm, K = 10")
        show(f"Real BraTS cases {names or 'all'} (1 mm, K = 10; merged: 300 regions)",
             run(real_cases(names), 10))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
