"""Tumour inference per 240 x 240 x 155 case: time and peak memory, with and without TTA.

The case: the shipped 1 mm demo case (SRI24 anatomy on the BraTS grid with a synthetic glioma),
skull-stripped with its truth brain mask. Every configuration runs ``tumor.inference.segment`` (the
code the pipeline's ``tumor`` step runs: normalisation, brain box, sliding window with Gaussian
blending, TTA, label conversion, resampling to and from the model's spacing) in its own process;
peak memory is that process's peak resident set (``ru_maxrss``) minus its resident set just before
``segment`` runs (the model loaded). Configurations:

- ``demo``: the shipped demo package (small HNF-Netv2, 2 mm), its Dice WT on the demo case printed;
- ``segresnet``: MONAI's SegResNet with the brats_mri_segmentation bundle's architecture
  (init_filters 16, blocks 1-2-2-4; random weights: the figure is the cost, not the accuracy), 1 mm,
  the bundle's 240 x 240 x 160 window and its channel order/normalisation - the peer;
- ``hnfnetv2-paper``: the paper-sized HNF-Netv2 (16.7 M parameters, random weights) at 1 mm with
  128^3 windows (slow on CPU: opt in with ``--configs``).

    python bench/bench_tumor.py --threads 2 --configs demo,segresnet --tta both
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


def _package(config: str, tmp: Path):
    from brainbarriers.models import load_package, write_package

    if config == "demo":
        return load_package("demo-hnfnetv2-phantom")
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


def run_one(config: str, tta: bool, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from brainbarriers.demo import demo_case_folder
    from brainbarriers.io import load_volume
    from brainbarriers.metrics import dice
    from brainbarriers.tumor.inference import segment

    folder = demo_case_folder()
    mask = load_volume(folder / "brain_mask_truth.nii.gz")
    truth = load_volume(folder / "tumor_truth.nii.gz")
    images = {}
    for s in SEQ:
        v = load_volume(folder / f"{s}.nii.gz")
        images[s] = v.with_array(v.array * (mask.array > 0))
    with tempfile.TemporaryDirectory() as tmp:
        pkg = _package(config, Path(tmp))
        nets = pkg.networks("cpu")
        images = {s: images[s] for s in pkg.inputs}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        import psutil

        rss0 = psutil.Process().memory_info().rss / 1024
        t = time.perf_counter()
        pred = segment(images, mask, pkg, tta=tta, nets=nets)
        seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"config": config, "tta": tta, "threads": threads, "shape": list(mask.shape),
            "seconds": round(seconds, 1),
            "peak_mb_above_start": round((max(peak, before) - rss0) / 1024, 0),
            "peak_rss_mb": round(peak / 1024, 0),
            "dice_wt": round(dice(pred.array > 0, truth.array > 0), 4) if config == "demo" else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="demo,segresnet")
    ap.add_argument("--tta", default="both", choices=["on", "off", "both"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("CONFIG", "TTA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1] == "on", args.threads)))
        return 0
    ttas = {"on": ["on"], "off": ["off"], "both": ["off", "on"]}[args.tta]
    results = []
    for config in args.configs.split(","):
        for tta in ttas:
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            proc = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                   "--one", config, tta], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return proc.returncode
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{'config':<16}{'TTA':>5}{'time (s)':>10}{'peak MB':>10}{'Dice WT':>9}")
    for r in results:
        print(f"{r['config']:<16}{'on' if r['tta'] else 'off':>5}{r['seconds']:>10}"
              f"{r['peak_mb_above_start']:>10}{'' if r['dice_wt'] is None else r['dice_wt']:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
