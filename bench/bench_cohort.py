"""Cohort throughput through Dask: cases per hour with 1 and 2 LocalCluster workers, and the peak
memory of each worker process.

    python bench/bench_cohort.py                          # 4 phantom cases at 1 mm, every step
    python bench/bench_cohort.py --data /data/BraTS2021 --cases 8
    python bench/bench_cohort.py --cases 2 --zoom 4 --steps skullstrip   # a quick check that it runs

Each worker count runs the same cases into a fresh folder (no case is skipped). Throughput is
cases / wall time (cluster start included, as a user sees it); the scaling is the ratio of the two
throughputs; the peak memory is each worker process's largest resident size (``peak_rss_mb`` in the
table), which is what ``--memory-limit`` must leave room for. Writes a JSON summary beside the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from brainbarriers.cli.run import parse_options
from brainbarriers.cohort import ClusterSpec, find_cohort, run_cohort
from brainbarriers.pipeline import plan


def phantom_cohort(folder: Path, n: int, zoom: int) -> Path:
    """``n`` generated glioma cases in BraTS 2021 names, with their truths as ``seg``."""
    from brainbarriers.io import save_volume
    from brainbarriers.phantom import make_case

    for i in range(n):
        case = make_case(seed=100 + i, zoom=zoom)
        cid = f"BraTS2021_{i:05d}"
        (folder / cid).mkdir(parents=True, exist_ok=True)
        for s in ("t1", "t1ce", "t2", "flair"):
            save_volume(case.sequences[s], folder / cid / f"{cid}_{s}.nii.gz")
        save_volume(case.truths["tumor"], folder / cid / f"{cid}_seg.nii.gz")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="a cohort (default: generated phantom cases)")
    p.add_argument("--cases", type=int, default=4, help="cases to run (the first N)")
    p.add_argument("--zoom", type=int, default=1, help="phantom voxel size in mm (1, 2 or 4)")
    p.add_argument("--workers", default="1,2", help="worker counts to compare")
    p.add_argument("--steps", default=None, help="as for `brainbarriers run` (default: all)")
    p.add_argument("--set", dest="options", action="append", default=[])
    p.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    args = p.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="bench_cohort_"))
    data = Path(args.data) if args.data else phantom_cohort(out / "data", args.cases, args.zoom)
    cases = find_cohort(data)[: args.cases]
    steps = plan(args.steps.split(",") if args.steps else None)
    options = parse_options(args.options)
    results = []
    print(f"{len(cases)} cases, steps {','.join(s.name for s in steps)}, {os.cpu_count()} cores")
    for workers in (int(w) for w in args.workers.split(",")):
        t0 = time.perf_counter()
        result = run_cohort(cases, out / f"workers{workers}", steps, options=options,
                            device="cpu", cluster=ClusterSpec(workers=workers))
        wall = time.perf_counter() - t0
        peaks: dict[str, float] = {}
        for row in result.rows:
            if row.get("peak_rss_mb"):
                peaks[row["worker"]] = max(peaks.get(row["worker"], 0.0), row["peak_rss_mb"])
        entry = {"workers": workers, "cases": len(cases), "counts": result.counts,
                 "wall_s": round(wall, 1), "cases_per_hour": round(3600 * len(cases) / wall, 1),
                 "mean_case_s": round(sum(r.get("seconds", 0) for r in result.rows)
                                      / max(len(result.rows), 1), 1),
                 "peak_rss_mb_per_worker": sorted(peaks.values())}
        results.append(entry)
        print(json.dumps(entry))
    if len(results) > 1:
        print(f"scaling {results[0]['workers']} -> {results[-1]['workers']} workers: "
              f"x{results[-1]['cases_per_hour'] / results[0]['cases_per_hour']:.2f}")
    (out / "bench_cohort.json").write_text(json.dumps(results, indent=1))
    print(f"runs and bench_cohort.json in {out}")


if __name__ == "__main__":
    main()
