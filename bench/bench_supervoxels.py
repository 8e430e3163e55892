"""Supervoxels on a 4 x 240 x 240 x 155 case: ours (SSLIC_Var + merge hierarchy) against SimpleITK's
SLICImageFilter (the ITK SLIC the paper builds on) and skimage.segmentation.slic.

The case: ``make_case(seed, zoom=1)`` (SRI24 anatomy on the BraTS grid with a synthetic glioma),
skull-stripped with its truth brain mask; every method gets the same four sequences scaled to [0, 1]
inside the mask, grid size 10 voxels and compactness 0.1. SimpleITK has no mask: it segments the whole
volume and is scored inside the brain. Each method runs in its own process (peak memory = that
process's peak resident set minus its resident set before the method), ``--repeat`` times; the time
reported is the fastest run (the machine is shared: the minimum is the least disturbed figure).
``ours_1thread`` is ours with one thread: on a loaded machine two PyTorch threads lose much time
waiting for each other at the end of every operation.

    python bench/bench_supervoxels.py --threads 2 --repeat 3
    python bench/bench_supervoxels.py --threads 2 --repeat 1 --real Brats18_2013_20_1

"Ours" is timed for the whole step: oversegmentation + the merge hierarchy; the row's count and
ASA are those of the hierarchy's level of 300 regions. ``step`` is the supervoxels step as it runs
now (cells of 7 voxels, the merging focused on the tumour, here the truth's standing in for the
model's): its time is the step's; its ASA would be optimistic, so it is not scored
(bench/supervoxels_focus.py scores the focus with the model's tumour).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEQ = ("t1", "t1ce", "t2", "flair")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    # VmHWM belongs to the process's address space, so it starts afresh at exec; ru_maxrss does not
    # (Linux carries it over from the parent across fork + exec).
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def make_inputs(seed: int, path: Path, real: str | None = None) -> None:
    from brainbarriers.supervoxels.slic import scale_to_unit

    if real:  # a real BraTS 2018 case: 240 x 240 x 155, skull-stripped, expert labels
        import nibabel as nib

        folder = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "brats18" / real
        images = [np.asarray(nib.load(folder / f"{real}_{s}.nii.gz").dataobj, np.float32)
                  for s in SEQ]
        mask = np.stack(images).max(0) > 0
        truth = np.asarray(nib.load(folder / f"{real}_seg.nii.gz").dataobj).astype(np.int16)
        features = np.stack([scale_to_unit(x, mask) for x in images]).astype(np.float32)
        np.savez(path, features=features, mask=mask, truth=truth)
        return
    from brainbarriers.phantom import make_case

    case = make_case(seed=seed, zoom=1)
    mask = case.truths["brain_mask"].array > 0
    features = np.stack([scale_to_unit(np.where(mask, case.sequences[s].array, 0), mask)
                         for s in SEQ]).astype(np.float32)
    np.savez(path, features=features, mask=mask, truth=case.truths["tumor"].array.astype(np.int16))


def run_method(method: str, data: Path, threads: int) -> dict:
    import torch

    if method == "ours_1thread":  # on a busy machine one thread can beat two (no waits at joins)
        threads = 1
    torch.set_num_threads(threads)
    d = np.load(data)
    features, mask, truth = d["features"], d["mask"], d["truth"]
    from brainbarriers.supervoxels import metrics

    result: dict = {"method": method}
    base = _rss_mb()
    t0 = time.perf_counter()
    if method in ("ours", "ours_1thread", "step"):
        from brainbarriers.supervoxels.hierarchy import FOCUS_FACTOR, build_hierarchy, focus_around
        from brainbarriers.supervoxels.slic import sslic
        from brainbarriers.supervoxels.step import DEFAULT_SIZE

        size = DEFAULT_SIZE if method == "step" else 10
        focus = focus_around(truth > 0, (1.0, 1.0, 1.0)) if method == "step" else None
        c0 = time.process_time()
        with torch.inference_mode():
            over = sslic(features, mask, size=(size,) * 3).numpy().astype(np.int32)
        t1 = time.perf_counter()
        hierarchy = build_hierarchy(over, list(features), focus=focus, focus_factor=FOCUS_FACTOR)
        t2 = time.perf_counter()
        cpu = time.process_time() - c0
        peak = _peak_mb()
        t3 = time.perf_counter()
        labels = hierarchy.labels(over, regions=300)  # a level: milliseconds
        result.update(seconds_level=time.perf_counter() - t3, cpu_seconds=cpu)
        result.update(seconds_oversegmentation=t1 - t0, seconds_merging=t2 - t1,
                      count_oversegmentation=metrics.supervoxel_count(over),
                      asa_oversegmentation=metrics.asa(over, truth, "tumor"))
    elif method == "sitk":
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(features, 0, -1)
                                                            .transpose(2, 1, 0, 3)), isVector=True)
        f = sitk.SLICImageFilter()
        f.SetSuperGridSize([10, 10, 10])
        f.SetSpatialProximityWeight(0.1)
        f.SetNumberOfThreads(threads)
        out = f.Execute(image)
        t2 = time.perf_counter()
        peak = _peak_mb()
        labels = sitk.GetArrayFromImage(out).transpose(2, 1, 0).astype(np.int64) + 1
        labels[~mask] = 0  # scored inside the brain
    elif method == "skimage":
        from skimage.segmentation import slic

        labels = slic(np.moveaxis(features, 0, -1), n_segments=int(mask.sum() / 1000),
                      compactness=0.1, mask=mask, channel_axis=-1, start_label=1)
        t2 = time.perf_counter()
        peak = _peak_mb()
    else:
        raise ValueError(method)
    result.update(seconds=t2 - t0, peak_mb=peak - base, count=metrics.supervoxel_count(labels),
                  asa_tumor=metrics.asa(labels, truth, "tumor"), asa_brain=metrics.asa(labels, truth, "all"))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--real", default=None, metavar="CASE",
                   help="a real BraTS 2018 case of ../shared/data/brats18 instead of make_case")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--methods", default="ours,ours_1thread,sitk,skimage")
    p.add_argument("--omp-passive", action="store_true",
                   help="OMP_WAIT_POLICY=PASSIVE for the workers: idle OpenMP threads sleep instead "
                   "of spinning, which on a machine shared with other jobs saves PyTorch much time "
                   "(SimpleITK uses its own thread pool and is unaffected)")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "DATA"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(run_method(args.worker[0], Path(args.worker[1]), args.threads)))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "case.npz"
        make_inputs(args.seed, data, args.real)
        runs: dict[str, list[dict]] = {}
        for _ in range(args.repeat):  # interleaved, so a busy spell hits every method alike
            for method in args.methods.split(","):
                out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                      "--worker", method, str(data)], env=env, check=True,
                                     capture_output=True, text=True).stdout
                runs.setdefault(method, []).append(json.loads(out.strip().splitlines()[-1]))
    name = args.real or f"make_case(seed={args.seed}, zoom=1)"
    print(f"case: {name}, 4 x 240 x 240 x 155, skull-stripped; "
          f"{args.threads} threads; best of {args.repeat}; load average {os.getloadavg()[0]:.2f}; "
          f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"{'method':<34}{'time s':>9}{'peak MB':>9}{'count':>8}{'ASA tumour':>12}{'ASA brain':>11}")
    for method, rs in runs.items():
        best = min(rs, key=lambda r: r["seconds"])
        if method.startswith("ours"):
            o = min(rs, key=lambda r: r["seconds_oversegmentation"])
            tag = " (1 thread)" if method == "ours_1thread" else ""
            print(f"{'ours: SSLIC_Var only' + tag:<34}{o['seconds_oversegmentation']:>9.2f}{'':>9}"
                  f"{o['count_oversegmentation']:>8}{o['asa_oversegmentation']:>12.4f}{'':>11}")
            label = "ours: SSLIC_Var + hierarchy, 300" + tag
            print(f"    CPU seconds (all threads) {o['cpu_seconds']:.2f}; a level from the "
                  f"hierarchy {1e3 * o['seconds_level']:.0f} ms")
        else:
            label = {"sitk": "SimpleITK SLICImageFilter", "skimage": "skimage slic",
                     "step": "the step (K 7, focus): time only"}[method]
        scores = (f"{'-':>12}{'-':>11}" if method == "step" else
                  f"{best['asa_tumor']:>12.4f}{best['asa_brain']:>11.4f}")
        print(f"{label:<34}{best['seconds']:>9.2f}{best['peak_mb']:>9.0f}{best['count']:>8}"
              + scores)
        times = ", ".join(f"{r['seconds']:.2f}" for r in rs)
        print(f"    all times: {times}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
