"""Train the shipped demo tumour model: a small-width HNF-Netv2 on generated phantom cases.

The cases come from ``brainbarriers.phantom.make_case`` (2 mm, zoom=2) with random tumour size,
oedema width and hemisphere; the inputs are the skull-stripped sequences (sequence x brain mask), as
the ``tumor`` step receives them. Region heads (WT, TC, ET) with Dice + BCE. The package is rewritten
every ``--save-every`` iterations, so an interrupted run still leaves a usable package.

    python scripts/train_demo_tumor.py --out brainbarriers/data/models/demo-hnfnetv2-phantom \
        --iterations 1200 --threads 1 > train_demo.log 2>&1

These weights are for the demo only: clinical use needs weights trained on real, annotated data.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from brainbarriers.metrics import dice
from brainbarriers.models import write_package
from brainbarriers.nets.hnfnet import HNFNetv2, count_parameters
from brainbarriers.phantom import make_case
from brainbarriers.tumor.losses import RegionLoss
from brainbarriers.tumor.preprocess import brain_box, normalise_stack, regions_from_labels

SMALL = {"in_channels": 4, "out_channels": 3, "base": 8, "widths": [8, 16, 32, 64], "blocks": 1,
         "ema_channels": 32, "ema_bases": 16, "ema_iters": 3,
         "sde_layout": "branch"}  # the lighter SDE reading this package was trained with
SEQ = ["t1", "t1ce", "t2", "flair"]


def prepare(seed: int, zoom: int = 2):
    rng = np.random.default_rng(10_000 + seed)
    case = make_case(seed, zoom=zoom, radius_mm=float(rng.uniform(8, 26)),
                     edema_mm=float(rng.uniform(3, 14)))
    mask = case.truths["brain_mask"].array > 0
    x = normalise_stack([case.sequences[s].array * mask for s in SEQ], mask)
    y = regions_from_labels(case.truths["tumor"].array)
    box = brain_box(mask)
    return x[(slice(None),) + box].astype(np.float16), y[(slice(None),) + box].astype(np.uint8)


def sample(x, y, patch, rng, fg_prob=0.67):
    shape = np.array(x.shape[1:])
    size = np.minimum(patch, shape)
    if rng.random() < fg_prob and y[0].any():
        fg = np.argwhere(y[0])
        centre = fg[rng.integers(len(fg))]
    else:
        centre = rng.integers(0, shape)
    lo = np.clip(centre - size // 2, 0, shape - size)
    sl = tuple(slice(int(a), int(a + s)) for a, s in zip(lo, size))
    xp, yp = x[(slice(None),) + sl].astype(np.float32), y[(slice(None),) + sl].astype(np.float32)
    pad = [(0, 0)] + [(0, int(p - s)) for p, s in zip(patch, size)]
    xp, yp = np.pad(xp, pad), np.pad(yp, pad)
    for axis in (1, 2, 3):  # random flips on every axis (TTA uses all of them)
        if rng.random() < 0.5:
            xp, yp = np.flip(xp, axis), np.flip(yp, axis)
    scale = rng.uniform(0.9, 1.1, (4, 1, 1, 1))
    shift = rng.uniform(-0.1, 0.1, (4, 1, 1, 1))
    return (xp * scale + shift).astype(np.float32), np.ascontiguousarray(yp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=1200)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    data = [prepare(1000 + i) for i in range(args.cases)]  # seeds 1000+: tests hold out seeds < 1000
    print(f"prepared {len(data)} cases in {time.time() - t0:.0f}s", flush=True)
    net = HNFNetv2(**SMALL)
    print(f"parameters: {count_parameters(net)}", flush=True)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.iterations,
                                                pct_start=0.05)
    loss_fn = RegionLoss()
    patch = np.array([args.patch] * 3)
    manifest = {
        "name": "demo-hnfnetv2-phantom", "version": "1.0", "task": "tumor",
        "description": "Small-width HNF-Netv2 trained on generated phantom gliomas (DEMO ONLY: "
                       "synthetic training data; clinical use needs weights trained on real data).",
        "licence": "Apache-2.0",
        "architecture": {"name": "hnfnetv2", "params": SMALL},
        "inputs": SEQ,
        "normalisation": {"kind": "brain-zscore", "clip_percentiles": [0.5, 99.5]},
        "spacing_mm": [2.0, 2.0, 2.0],
        # Inference windows = the training patch: instance norm, the SDE pooling and the EMA see the
        # window's statistics, and larger windows (96^3) over-segmented the oedema.
        "patch_size": [args.patch] * 3,
        "output": {"type": "regions", "channels": ["WT", "TC", "ET"]},
        "postprocess": {"small_et_ml": 0.2},
    }
    net.train()
    running = 0.0
    for it in range(1, args.iterations + 1):
        batch = [sample(*data[int(rng.integers(len(data)))], patch, rng) for _ in range(args.batch)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        y = torch.from_numpy(np.stack([b[1] for b in batch]))
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = 0.95 * running + 0.05 * loss.item() if it > 1 else loss.item()
        if it % 10 == 0:
            print(f"it {it} loss {running:.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{time.time() - t0:.0f}s", flush=True)
        if it % args.save_every == 0 or it == args.iterations:
            manifest["training"] = {"iterations": it, "cases": args.cases, "patch": args.patch,
                                    "batch": args.batch, "loss": round(running, 4),
                                    "data": "brainbarriers.phantom.make_case seeds 1000+, zoom=2"}
            write_package(args.out, manifest, {"model": net.state_dict()})
            print(f"saved package at iteration {it}", flush=True)
    # A quick held-out check (the test does the full pipeline).
    from brainbarriers.tumor.inference import predict_regions_array

    net.eval()
    for seed in (1, 2):
        x, y = prepare(seed)
        prob = predict_regions_array([net], torch.from_numpy(x.astype(np.float32)), roi=(args.patch,) * 3,
                                     tta=False)
        print(json.dumps({"seed": seed, "dice_wt": dice(prob[0] > 0.5, y[0] > 0)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
