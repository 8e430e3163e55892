"""Supervoxels on the real BraTS cases of ../shared/data (brats18: 14 cases, 240 x 240 x 155; brats-gli:
2 cases, 182 x 218 x 182): oversegmentation (SSLIC_Var, K = 10) + merge hierarchy, per case:

- time (wall and CPU seconds of this process) of the oversegmentation and of the hierarchy;
- tumour ASA (sub-regions: the expert's labels) of the oversegmentation and at 300 regions, for the
  hierarchy orders and texture settings compared (``--variants``);
- the time to get a level (lookup table, and the full label map);
- with ``--clamp``: the oversegmentation again without the [m, 10 m] compactness clamp.

Results: one JSON line per case on stdout (and in ``--out``), then the means.

    OMP_NUM_THREADS=2 python bench/supervoxels_cohort.py --threads 2 [--cases 4] [--clamp]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from brainbarriers.supervoxels import metrics
from brainbarriers.supervoxels.hierarchy import build_hierarchy
from brainbarriers.supervoxels.slic import scale_to_unit, sslic

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SEQ = ("t1", "t1ce", "t2", "flair")
VARIANTS = {
    "ward+texture": dict(order="ward", texture=True),
    "ward": dict(order="ward", texture=False),
    "weight+texture": dict(order="weight", texture=True),
}


def real_cases(limit: int | None = None):
    """(name, images, brain mask, expert labels) of every real BraTS case, brats18 first."""
    import nibabel as nib

    folders = sorted((DATA / "brats18").glob("Brats18_*")) + sorted((DATA / "brats-gli").glob("BraTS-*"))
    for folder in folders[:limit]:
        images = [np.asarray(nib.load(folder / f"{folder.name}_{s}.nii.gz").dataobj, np.float32)
                  for s in SEQ]
        truth = np.asarray(nib.load(folder / f"{folder.name}_seg.nii.gz").dataobj).astype(np.int16)
        yield folder.name, images, np.stack(images).max(0) > 0, truth


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run_case(name, images, mask, truth, variants, clamp: bool, regions: int) -> dict:
    features, t_scale, c_scale = _timed(lambda: np.stack([scale_to_unit(x, mask) for x in images]))
    with torch.inference_mode():
        over, t_over, c_over = _timed(lambda: sslic(features, mask).numpy().astype(np.int32))
    row = {"case": name, "shape": list(mask.shape), "n": int(over.max()),
           "seconds_scale": t_scale, "seconds_over": t_over, "cpu_over": c_scale + c_over,
           "asa_over": metrics.asa(over, truth, "tumor"),
           "load": os.getloadavg()[0]}
    for key, options in variants.items():
        h, t_h, c_h = _timed(lambda o=options: build_hierarchy(over, list(features), **o))
        lut, t_lut, _ = _timed(lambda h=h: h.lookup(regions=regions))
        level, t_map, _ = _timed(lambda lut=lut: lut[over])
        row[key] = {"seconds": t_h, "cpu": c_h, "asa_300": metrics.asa(level, truth, "tumor"),
                    "count": metrics.supervoxel_count(level), "ms_lookup": 1e3 * t_lut,
                    "ms_map": 1e3 * t_map,
                    "asa_150": metrics.asa(h.labels(over, regions=150), truth, "tumor"),
                    "asa_600": metrics.asa(h.labels(over, regions=600), truth, "tumor")}
        if options["order"] == "weight":
            paper = h.labels(over, threshold=h.threshold)
            row[key].update(threshold=h.threshold, paper_count=metrics.supervoxel_count(paper),
                            asa_paper=metrics.asa(paper, truth, "tumor"))
    if clamp:
        with torch.inference_mode():
            free, t_free, _ = _timed(lambda: sslic(features, mask, max_factor=float("inf"))
                                     .numpy().astype(np.int32))
        key = next(iter(variants))
        h = build_hierarchy(free, list(features), **variants[key])
        row["no_clamp"] = {"n": int(free.max()), "seconds_over": t_free,
                           "asa_over": metrics.asa(free, truth, "tumor"),
                           "asa_300": metrics.asa(h.labels(free, regions=regions), truth, "tumor")}
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=None, help="only the first N cases")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--regions", type=int, default=300)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--clamp", action="store_true", help="also SSLIC_Var without the clamp")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = {k: VARIANTS[k] for k in args.variants.split(",")}
    rows = []
    for case in real_cases(args.cases):
        row = run_case(*case, variants, args.clamp, args.regions)
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    print(f"\n{len(rows)} cases, {args.threads} threads; mean (min .. max)")

    def show(label, values):
        v = np.asarray(values, float)
        print(f"  {label:<40}{v.mean():8.3f}  ({v.min():.3f} .. {v.max():.3f})")

    show("supervoxels (oversegmentation)", [r["n"] for r in rows])
    show("oversegmentation wall s", [r["seconds_over"] + r["seconds_scale"] for r in rows])
    show("oversegmentation CPU s", [r["cpu_over"] for r in rows])
    show("tumour ASA, oversegmentation", [r["asa_over"] for r in rows])
    for key in variants:
        show(f"{key}: hierarchy wall s", [r[key]["seconds"] for r in rows])
        show(f"{key}: hierarchy CPU s", [r[key]["cpu"] for r in rows])
        show(f"{key}: tumour ASA at {args.regions}", [r[key]["asa_300"] for r in rows])
        show(f"{key}: tumour ASA at 150", [r[key]["asa_150"] for r in rows])
        show(f"{key}: tumour ASA at 600", [r[key]["asa_600"] for r in rows])
        show(f"{key}: level lookup ms", [r[key]["ms_lookup"] for r in rows])
        show(f"{key}: level map ms", [r[key]["ms_map"] for r in rows])
        if "paper_count" in rows[0][key]:
            show(f"{key}: count at the paper's T", [r[key]["paper_count"] for r in rows])
            show(f"{key}: tumour ASA at the paper's T", [r[key]["asa_paper"] for r in rows])
    if args.clamp:
        show("no clamp: supervoxels", [r["no_clamp"]["n"] for r in rows])
        show("no clamp: tumour ASA, oversegmentation", [r["no_clamp"]["asa_over"] for r in rows])
        show(f"no clamp: tumour ASA at {args.regions}", [r["no_clamp"]["asa_300"] for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
