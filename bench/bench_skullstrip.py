"""Benchmark: our skull-stripping vs calling deepbet directly, on the same volume, in one run.

Each measurement runs alone in a fresh Python process (so peak RSS is its own), interleaved over
the repeats so that load on the machine falls on every variant alike:

- ``deepbet``: deepbet's own API, ``BrainExtraction().run(nibabel image)``, writing the mask;
- ``ours``: ``brainbarriers skullstrip INPUT --out MASK`` (our I/O, checks, canonical grid, pinned
  weights, deepbet's networks, clean-up, the mask written on the input's grid);
- ``pipeline``: a pipeline run of the ``skullstrip`` step (also writes the skull-stripped image, the
  work files, the manifest, the ``.seg.nrrd`` and the overview picture).

Reported: wall time of the work (after imports) and of the whole process, peak RSS (and how much
of it is the imports), the overhead of ours against deepbet (target <= 10 %), the step's own run
time inside the pipeline, and the Dice of our mask against deepbet's.

    python bench/bench_skullstrip.py [--input HEAD.nii.gz] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT / "brainbarriers" / "data" / "anatomy" / "sri24_t1_head.nii.gz"

CHILD = r"""
import json, os, resource, sys, time
t_start = time.perf_counter()
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
mode, source, out = sys.argv[1], sys.argv[2], sys.argv[3]
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB on Linux
# Each variant first imports what it uses (not timed as work), then does the work.
if mode == "deepbet":
    import nibabel as nib
    from deepbet import BrainExtraction
    base = rss_mb()
    t0 = time.perf_counter()
    bet = BrainExtraction(no_gpu=True)
    bet.run(nib.load(source), mask_path=out)
elif mode == "ours":
    import deepbet, brainbarriers.io, brainbarriers.skullstrip.core
    from brainbarriers.cli.main import main
    base = rss_mb()
    t0 = time.perf_counter()
    code = main(["skullstrip", source, "--out", out, "--device", "cpu"])
    assert code == 0
else:
    import dataclasses, deepbet, brainbarriers.export
    from brainbarriers.pipeline import PipelineRun
    from brainbarriers.skullstrip.step import STEP
    def timed(ctx):  # the step's own run, without the pipeline's writing of its products
        t = time.perf_counter()
        try:
            return STEP.run(ctx)
        finally:
            step_s.append(time.perf_counter() - t)
    step_s = []
    base = rss_mb()
    t0 = time.perf_counter()
    PipelineRun({"t1": source}, out, [dataclasses.replace(STEP, run=timed)], device="cpu").run()
t1 = time.perf_counter()
print("BENCH " + json.dumps({"work_s": t1 - t0, "process_s": t1 - t_start, "rss_mb": rss_mb(),
                             "imports_rss_mb": base, "work_rss_mb": rss_mb() - base,
                             "step_s": step_s[0] if mode == "pipeline" else None}))
"""


def measure(mode: str, source: Path, out: Path, threads: int) -> dict:
    env = dict(os.environ, BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(source), str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH "))
    result = json.loads(line[6:])
    result["wall_s"] = wall
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np

    img = nib.load(str(args.input))
    print(f"input: {args.input} {img.shape} {tuple(float(z) for z in img.header.get_zooms()[:3])} "
          f"mm, {''.join(nib.aff2axcodes(img.affine))}; torch threads {args.threads}, CPU")
    modes = ("deepbet", "ours", "pipeline")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.repeats):
            # Rotate the order so no variant always runs first (cold disk cache, load drift).
            for m in modes[r % 3:] + modes[: r % 3]:
                out = tmp / (f"{m}_{r}.nii.gz" if m != "pipeline" else f"run_{r}")
                results[m].append(measure(m, args.input, out, args.threads))
                print(f"  repeat {r + 1} {m:8s} work {results[m][-1]['work_s']:6.2f} s  "
                      f"rss {results[m][-1]['rss_mb']:7.0f} MB", flush=True)
        theirs = np.asanyarray(nib.load(str(tmp / "deepbet_0.nii.gz")).dataobj) > 0
        ours = np.asanyarray(nib.load(str(tmp / "ours_0.nii.gz")).dataobj) > 0
        agreement = 2 * (theirs & ours).sum() / (theirs.sum() + ours.sum())

    med = {m: {k: statistics.median(x[k] for x in results[m]) for k in results[m][0]
               if k != "step_s"} for m in modes}
    print()
    print(f"{'variant':10s} {'work s':>8s} {'process s':>10s} {'peak RSS MB':>12s} "
          f"{'after imports':>14s} {'for the work':>13s}   (median of {args.repeats})")
    for m in modes:
        print(f"{m:10s} {med[m]['work_s']:8.2f} {med[m]['process_s']:10.2f} "
              f"{med[m]['rss_mb']:12.0f} {med[m]['imports_rss_mb']:14.0f} "
              f"{med[m]['work_rss_mb']:13.0f}")
    base = med["deepbet"]

    def pct(m: str, key: str) -> str:
        return f"{100 * (med[m][key] / base[key] - 1):+.1f} %"

    for m in ("ours", "pipeline"):
        print(f"overhead of {m:8s} vs deepbet: work time {pct(m, 'work_s')}, process time "
              f"{pct(m, 'process_s')}, peak RSS {pct(m, 'rss_mb')} (of which the work's "
              f"{pct(m, 'work_rss_mb')})")
    step = statistics.median(x["step_s"] for x in results["pipeline"])
    print(f"the skullstrip step's own run inside the pipeline: {step:.2f} s "
          f"({100 * (step / base['work_s'] - 1):+.1f} % vs deepbet's work; the rest of the "
          "pipeline's time is writing the run folder)")
    print(f"Dice of our mask vs deepbet's own: {agreement:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
