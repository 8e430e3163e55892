"""Per-structure Dice on held-out generated cases: stage 1 alone, two-stage, and the atlas stage.

    python bench/barriers_accuracy.py [--models FOLDER] [--seeds 9001 9002 9003] [--no-atlas]

The cases are ``barriers.phantom.make_barrier_case(seed)`` at 2 mm (the demo models were trained on
seeds 1000-1011, so 9000+ are unseen). Prints one row per case and method and the means; the last
column is the mean over the six structures (the figure the paper's claim is about).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=None, help="model-set folder (default: the shipped demo set)")
    p.add_argument("--seeds", type=int, nargs="+", default=[9001, 9002, 9003])
    p.add_argument("--no-atlas", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from brainbarriers.barriers import STRUCTURES
    from brainbarriers.barriers.infer import two_stage
    from brainbarriers.barriers.package import load_model_set
    from brainbarriers.barriers.phantom import make_barrier_case
    from brainbarriers.barriers.step import demo_models_folder
    from brainbarriers.metrics import dice

    models = load_model_set(args.models or demo_models_folder())
    keys = [s.key for s in STRUCTURES.values()]
    print(f"{'case':>6} {'method':>10} " + " ".join(f"{k[:10]:>10}" for k in keys) + f" {'mean':>6} {'s':>5}")
    rows: dict[str, list[list[float]]] = {}
    for seed in args.seeds:
        case = make_barrier_case(seed)
        truth = case.truths["barriers"].array
        brain = case.truths["brain_mask"].array > 0
        t0 = time.perf_counter()
        fine, coarse, _ = two_stage(models, {s: case.sequences[s] for s in models["stage1"][1]["inputs"]}, brain)
        results = {"stage1": (coarse, None), "two-stage": (fine, time.perf_counter() - t0)}
        if not args.no_atlas:
            from brainbarriers.barriers.atlas import atlas_barriers

            t0 = time.perf_counter()
            labels, _ = atlas_barriers(case.sequences["t1"], case.truths["brain_mask"])
            results["atlas"] = (labels, time.perf_counter() - t0)
        for method, (labels, seconds) in results.items():
            scores = [dice(labels == v, truth == v) for v in STRUCTURES]
            rows.setdefault(method, []).append(scores)
            took = f"{seconds:5.1f}" if seconds is not None else "    -"
            print(f"{seed:>6} {method:>10} " + " ".join(f"{d:10.3f}" for d in scores)
                  + f" {np.mean(scores):6.3f} {took}", flush=True)
    for method, scores in rows.items():
        m = np.mean(scores, axis=0)
        print(f"{'mean':>6} {method:>10} " + " ".join(f"{d:10.3f}" for d in m) + f" {np.mean(m):6.3f}")


if __name__ == "__main__":
    main()
