"""Tumour inference per 240 x 240 x 155 case: time and peak memory, with and without TTA.

The case: a real BraTS 2018 case (``--case``, a folder with ``*_{t1,t1ce,t2,flair,seg}.nii.gz``;
default: the first held-out case of the default model), or the shipped 1 mm demo case
(``--case demo``: SRI24 anatomy on the BraTS grid with a synthetic glioma). Every configuration runs
``tumor.inference.segment`` (the code the pipeline's ``tumor`` step runs: normalisation, brain box,
sliding window with Gaussian blending, TTA, label conversion, resampling to and from the model's
spacing) in its own process; peak memory is that process's peak resident set (``ru_maxrss``) minus
its resident set just before ``segment`` runs (the model loaded). Configurations:

- ``default``: the tumour step's default package (an ensemble of HNF-Netv2 folds trained on real
  BraTS cases, 2 mm; with TTA the ``--flips`` flip variants are shared among its folds, as the step
  does; its Dice on the default case is optimistic: the other folds trained on it);
- ``phantom``: the phantom-trained demo package (small HNF-Netv2, 2 mm);
- ``conresnet``: the ConResNet package trained on the same real cases (``brats-conresnet-cpu``,
  four folds, 2 mm, 80 x 80 x 48 windows), the alternative by name;
- ``segresnet``: MONAI's SegResNet with the brats_mri_segmentation bundle's architecture
  (init_filters 16, blocks 1-2-2-4; random weights: the figure is the cost, not the accuracy), 1 mm,
  the bundle's 240 x 240 x 160 window and its channel order/normalisation - the peer;
- ``hnfnetv2-paper``: the paper-sized HNF-Netv2 (17.7 M parameters, random weights) at 1 mm with
  128^3 windows (slow on CPU: opt in with ``--configs``).

Dice (WT, TC, ET) is printed for the trained packages. With ``--device cuda`` each configuration
runs once untimed first (CUDA start-up, cuDNN's algorithm search), and the peak is the GPU memory
that PyTorch allocated. ``--package PATH`` stands another package in for ``default`` (a model of
the same architecture, to time where the default's weights are not).

    python bench/bench_tumor.py --threads 2 --configs default,phantom,segresnet,conresnet --tta both
    python bench/bench_tumor.py --device cuda --case demo --configs default,segresnet
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ = ("t1", "t1ce", "t2", "flair")


def _package(config: str, tmp: Path, package: str | None = None):
    from brainbarriers.models import load_package, write_package

    if config == "default" and package:
        return load_package(package)
    if config == "default":
        from brainbarriers.tumor.step import DEFAULT_MODEL

        return load_package(DEFAULT_MODEL)
    if config == "phantom":
        return load_package("demo-hnfnetv2-phantom")
    if config == "conresnet":
        return load_package("brats-conresnet-cpu")
    if config == "segresnet":
        from monai.networks.nets import SegResNet

        params = {"spatial_dims": 3, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1],
                  "init_filters": 16, "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2}
        net = SegResNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
        manifest = {"name": "bench-segresnet", "version": "0", "task": "tumor",
                    "architecture": {"name": "segresnet", "params": params},
                    "inputs": ["t1ce", "t1", "t2", "flair"],
                    "normalisation": {"kind": "nonzero-zscore"}, "spacing_mm": [1, 1, 1],
                    "patch_size": [240, 240, 160],
                    "output": {"type": "regions", "channels": ["TC", "WT", "ET"]}}
        return load_package(write_package(tmp / "segresnet", manifest, net.state_dict()))
    if config == "hnfnetv2-paper":
        from brainbarriers.nets.hnfnet import HNFNetv2, paper_config

        params = {k: list(v) if isinstance(v, tuple) else v for k, v in paper_config().items()}
        manifest = {"name": "bench-hnfnetv2", "version": "0", "task": "tumor",
                    "architecture": {"name": "hnfnetv2", "params": params},
                    "inputs": list(SEQ), "spacing_mm": [1, 1, 1], "patch_size": [128, 128, 128],
                    "output": {"type": "regions", "channels": ["WT", "TC", "ET"]}}
        return load_package(write_package(tmp / "hnf", manifest, HNFNetv2(**paper_config()).state_dict()))
    raise SystemExit(f"unknown config {config}")


def _default_case() -> str:
    """The first held-out case of the default model, if the shared data is beside the project."""
    from brainbarriers.models import load_package
    from brainbarriers.tumor.step import DEFAULT_MODEL

    val = load_package(DEFAULT_MODEL).manifest.get("training", {}).get("folds", [{}])[0]
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats18"
    for cid in val.get("val_cases", []):
        if (root / cid).is_dir():
            return str(root / cid)
    return "demo"


def _load_case(case: str):
    from brainbarriers.demo import demo_case_folder
    from brainbarriers.io import load_volume
    from brainbarriers.tumor.train import find_cases, load_case_volumes

    if case == "demo":
        folder = demo_case_folder()
        mask = load_volume(folder / "brain_mask_truth.nii.gz")
        images = {}
        for s in SEQ:
            v = load_volume(folder / f"{s}.nii.gz")
            images[s] = v.with_array(v.array * (mask.array > 0))
        return images, mask, load_volume(folder / "tumor_truth.nii.gz")
    return load_case_volumes(find_cases(case)[0])


def run_one(config: str, tta: bool, threads: int, case: str, flips: int = 8,
            device: str = "cpu", package: str | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    from brainbarriers.metrics import brats_scores
    from brainbarriers.tumor.inference import segment

    images, mask, truth = _load_case(case)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = _package(config, Path(tmp), package)
        nets = pkg.networks(device)
        images = {s: images[s] for s in pkg.inputs}
        if device == "cuda":  # start-up and cuDNN's algorithm search are not the model's cost
            segment(images, mask, pkg, tta=tta, nets=nets, flips=flips, device=device)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        import psutil

        rss0 = psutil.Process().memory_info().rss / 1024
        t = time.perf_counter()
        pred = segment(images, mask, pkg, tta=tta, nets=nets, flips=flips, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trained = config in ("default", "phantom", "conresnet")
    scores = brats_scores(pred, truth) if trained else None
    return {"config": config, "tta": tta, "flips": flips if tta else 0, "folds": len(nets),
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "threads": threads, "case": Path(case).name,
            "shape": list(mask.shape), "seconds": round(seconds, 2),
            "peak_mb_above_start": round((max(peak, before) - rss0) / 1024, 0),
            "peak_rss_mb": round(peak / 1024, 0),
            **({"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 0)}
               if device == "cuda" else {}),
            "dice": {k: v["dice"] for k, v in scores.items()} if scores else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="default,phantom,segresnet,conresnet")
    ap.add_argument("--case", default=None, help="BraTS case folder, or 'demo'")
    ap.add_argument("--tta", default="both", choices=["on", "off", "both"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flips", type=int, default=8, help="flip variants with TTA (tumor.tta_flips)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--package", default=None,
                    help="a package of the default's architecture to run as 'default'")
    ap.add_argument("--one", nargs=2, metavar=("CONFIG", "TTA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    case = args.case or _default_case()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1] == "on", args.threads, case,
                                 args.flips, args.device, args.package)))
        return 0
    ttas = {"on": ["on"], "off": ["off"], "both": ["off", "on"]}[args.tta]
    results = []
    for config in args.configs.split(","):
        for tta in ttas:
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            proc = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                   "--case", case, "--flips", str(args.flips),
                                   "--device", args.device,
                                   *(["--package", args.package] if args.package else []),
                                   "--one", config, tta],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return proc.returncode
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\ncase {Path(case).name} {results[0]['shape']}, {results[0]['device']}, "
          f"{args.threads} threads")
    print(f"{'config':<16}{'TTA':>5}{'time (s)':>10}{'peak MB':>10}{'GPU MB':>8}"
          f"{'Dice WT/TC/ET':>20}")
    for r in results:
        d = r["dice"]
        dice = "" if d is None else f"{d['WT']:.3f}/{d['TC']:.3f}/{d['ET']:.3f}"
        print(f"{r['config']:<16}{'on' if r['tta'] else 'off':>5}{r['seconds']:>10}"
              f"{r['peak_mb_above_start']:>10}{r.get('peak_gpu_mb', '-'):>8}{dice:>20}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
