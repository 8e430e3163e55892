"""``brainbarriers train tumor --data DIR --out OUT``: train tumour models into a model package.

- Data: BraTS-layout case folders under DIR (any depth), 2021 naming
  ``BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz`` or 2023 naming
  ``BraTS-GLI-XXXXX-XXX-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (2023's label 3 = enhancing is read as 4).
- Splits: ``--folds`` (5) folds of a seeded permutation; ``--fold`` trains one fold or ``all``.
- Pre-processing as at inference (``tumor.preprocess``): each sequence clipped to its [0.5, 99.5]
  percentiles and z-scored inside the brain (non-zero voxels of the skull-stripped BraTS images),
  cropped to the brain's box. MONAI transforms: foreground-biased random crops
  (``RandCropByPosNegLabeld``), padding, flips on the three axes, small rotations, intensity scaling
  and shifts.
- Networks: ``--arch hnfnetv2`` (default), ``conresnet`` (with its context-residual deep
  supervision) or ``segresnet``; ``--base`` sets the width. Heads: ``--head regions`` (WT/TC/ET
  sigmoid, Dice + BCE) or ``labels`` (softmax over 0/1/2/4, Dice + CE).
- Adam(W), linear warm-up then polynomial decay; AMP on CUDA (``--no-amp`` to switch off);
  checkpoints every ``--save-every`` iterations in ``OUT/checkpoints/fold<k>/last.pt``; a rerun with
  the same OUT resumes from there (``--restart`` to ignore them).
- Several GPUs: ``torchrun --nproc_per_node=N -m brainbarriers.cli.main train tumor ...``; with
  ``WORLD_SIZE > 1`` the model is wrapped in DistributedDataParallel and each rank samples its own
  share of the cases; rank 0 writes checkpoints and the package.
- Result: the model package ``OUT/package`` with one weights file per trained fold.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from ..errors import InputError

NAMING = {
    "2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
SEQUENCES = ["t1", "t1ce", "t2", "flair"]


def find_cases(data: str | Path, need_seg: bool = True) -> list[dict]:
    """BraTS case folders under ``data``: [{"id", "t1", "t1ce", "t2", "flair", "seg"}]."""
    data = Path(data)
    if not data.is_dir():
        raise InputError(data, "is not a folder of BraTS cases")
    cases = []
    for folder in sorted({p.parent for p in data.rglob("*.nii.gz")}):
        names = {p.name for p in folder.glob("*.nii.gz")}
        for release, suffixes in NAMING.items():
            pattern = re.compile(r"^(.*)" + re.escape(suffixes["flair"]) + r"\.nii\.gz$")
            for name in sorted(names):
                m = pattern.match(name)
                if not m:
                    continue
                case_id = m.group(1)
                files = {k: folder / f"{case_id}{s}.nii.gz" for k, s in suffixes.items()}
                wanted = SEQUENCES + (["seg"] if need_seg else [])
                missing = [k for k in wanted if not files[k].is_file()]
                if missing:
                    raise InputError(folder, f"case {case_id} ({release} naming) lacks "
                                     + ", ".join(files[k].name for k in missing))
                cases.append({"id": case_id, "release": release,
                              **{k: str(files[k]) for k in wanted}})
    if not cases:
        raise InputError(data, "holds no BraTS cases (expected e.g. BraTS2021_00000_flair.nii.gz "
                         "or BraTS-GLI-00000-000-t2f.nii.gz with their t1/t1ce/t2/seg files)")
    return cases


def kfold(n: int, folds: int, fold: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) of fold ``fold`` of a seeded permutation."""
    folds = max(1, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(int(i) for i in order[fold % folds::folds])
    train = sorted(set(range(n)) - set(val)) or val
    return train, val


def load_case(case: dict, head: str = "regions") -> dict:
    """Normalised, cropped image (4 x ...) and target (3 region channels or 1 label channel)."""
    from ..geometry import to_canonical
    from ..io import load_volume
    from .preprocess import brain_box, normalise_stack, regions_from_labels

    vols = [to_canonical(load_volume(case[s])) for s in SEQUENCES]
    ref = vols[0]
    for s, v in zip(SEQUENCES, vols):
        if v.shape != ref.shape:
            raise InputError(case[s], f"has shape {v.shape}, other sequences {ref.shape}")
    mask = np.any([v.array != 0 for v in vols], axis=0)
    image = normalise_stack([v.array for v in vols], mask)
    seg = to_canonical(load_volume(case["seg"], allow_empty=True)).array.astype(np.uint8)
    if head == "regions":
        target = regions_from_labels(seg)
    else:
        seg = np.where(seg == 3, 4, seg) if not np.any(seg == 4) else seg
        target = np.select([seg == 1, seg == 2, seg == 4], [1, 2, 3], 0)[None].astype(np.float32)
    box = (slice(None),) + brain_box(mask)
    return {"image": image[box], "label": target[box], "id": case["id"]}


def transforms(patch: tuple[int, int, int], head: str):
    from monai import transforms as T

    keys = ["image", "label"]
    fg = "label"
    return T.Compose([
        T.SpatialPadd(keys, spatial_size=patch),
        T.RandCropByPosNegLabeld(keys, label_key=fg, spatial_size=patch, pos=2, neg=1,
                                 num_samples=1, image_key="image", image_threshold=-1e9),
        T.RandFlipd(keys, prob=0.5, spatial_axis=0),
        T.RandFlipd(keys, prob=0.5, spatial_axis=1),
        T.RandFlipd(keys, prob=0.5, spatial_axis=2),
        T.RandRotated(keys, range_x=0.17, range_y=0.17, range_z=0.17, prob=0.2,
                      mode=("bilinear", "nearest"), padding_mode="zeros"),
        T.RandScaleIntensityd("image", factors=0.1, prob=1.0),
        T.RandShiftIntensityd("image", offsets=0.1, prob=1.0),
        T.EnsureTyped(keys, dtype=np.float32, track_meta=False),
    ])


def build_net(arch: str, base: int, head: str) -> tuple[object, dict]:
    out = 3 if head == "regions" else 4
    if arch == "hnfnetv2":
        params = {"in_channels": 4, "out_channels": out, "base": base,
                  "widths": [base, base * 2, base * 4, base * 8], "blocks": 2 if base >= 16 else 1,
                  "ema_channels": base * 8, "ema_bases": 64 if base >= 16 else 16}
    elif arch == "conresnet":
        params = {"in_channels": 4, "out_channels": out, "base": base}
    elif arch == "segresnet":
        params = {"spatial_dims": 3, "in_channels": 4, "out_channels": out, "init_filters": base,
                  "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2}
    else:
        raise InputError(None, f"unknown --arch {arch!r} (hnfnetv2, conresnet, segresnet)")
    from ..models import ARCHITECTURES

    return ARCHITECTURES[arch](**params), params


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder of BraTS 2021/2023 case folders")
    p.add_argument("--out", required=True, help="output folder (checkpoints/, package/)")
    p.add_argument("--arch", default="hnfnetv2", choices=["hnfnetv2", "conresnet", "segresnet"])
    p.add_argument("--base", type=int, default=32, help="network width (channels at full scale)")
    p.add_argument("--head", default="regions", choices=["regions", "labels"])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold", default="0", help="fold index or 'all'")
    p.add_argument("--iterations", type=int, default=20000, help="iterations per fold")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 2%%)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="package name (default tumor-<arch>)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


class _Cycle:
    """An endless shuffled stream of augmented samples from the cached, pre-processed cases."""

    def __init__(self, data: list[dict], tf, rank: int, world: int, seed: int):
        self.data = data[rank::world] or data
        self.tf = tf
        self.rng = np.random.default_rng(seed + rank)
        self.tf.set_random_state(seed=seed + rank)

    def next(self):
        d = self.data[int(self.rng.integers(len(self.data)))]
        out = self.tf({"image": d["image"], "label": d["label"]})
        return out[0] if isinstance(out, list) else out


def train_fold(args, cases: list[dict], fold: int, device: str, rank: int, world: int) -> dict:
    import torch

    from .losses import ConResLoss, LabelLoss, RegionLoss

    out = Path(args.out)
    ckpt_dir = out / "checkpoints" / f"fold{fold}"
    ckpt = ckpt_dir / "last.pt"
    tr, val = kfold(len(cases), args.folds, fold, args.seed)
    data = [load_case(cases[i], args.head) for i in tr]
    patch = tuple(int(p) for p in args.patch)
    stream = _Cycle(data, transforms(patch, args.head), rank, world, args.seed + fold)
    torch.manual_seed(args.seed + fold)
    net, params = build_net(args.arch, args.base, args.head)
    net.to(device)
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    if args.arch == "conresnet" and args.head == "regions":
        loss_fn = ConResLoss()
    else:
        loss_fn = RegionLoss() if args.head == "regions" else LabelLoss()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warmup = args.warmup if args.warmup is not None else max(1, args.iterations // 50)

    def lr_at(it: int) -> float:  # linear warm-up, then the polynomial (0.9) decay
        if it < warmup:
            return (it + 1) / warmup
        return (1 - (it - warmup) / max(1, args.iterations - warmup)) ** 0.9

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    use_amp = device.startswith("cuda") and not args.no_amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start = 0
    if ckpt.is_file() and not args.restart:
        state = torch.load(ckpt, map_location=device, weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        if rank == 0:
            print(f"fold {fold}: resumed from {ckpt} at iteration {start}", flush=True)
    log = ckpt_dir / "log.jsonl"
    net.train()
    t0 = time.time()
    it = start
    for it in range(start + 1, args.iterations + 1):
        batch = [stream.next() for _ in range(args.batch_size)]
        x = torch.stack([torch.as_tensor(b["image"]) for b in batch]).to(device)
        y = torch.stack([torch.as_tensor(b["label"]) for b in batch]).to(device)
        with torch.autocast("cuda", enabled=use_amp):
            outputs = model(x)
            loss = loss_fn(outputs, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        if rank == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as f:
                f.write(json.dumps({"iteration": it, "loss": round(loss.item(), 5),
                                    "lr": sched.get_last_lr()[0], "s": round(time.time() - t0, 2)}) + "\n")
            if it % args.save_every == 0 or it == args.iterations:
                from ..io import atomic_path

                with atomic_path(ckpt) as tmp:
                    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                                "iteration": it}, tmp)
    return {"fold": fold, "iteration": it, "train_cases": [cases[i]["id"] for i in tr],
            "val_cases": [cases[i]["id"] for i in val], "state_dict": net.state_dict(),
            "params": params}


def main(args: argparse.Namespace) -> int:
    import torch

    from ..models import write_package
    from ..pipeline.core import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(args.device)
    if world > 1:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "cuda":
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    cases = find_cases(args.data)
    folds = range(min(args.folds, len(cases))) if args.fold == "all" else [int(args.fold)]
    results = [train_fold(args, cases, k, device, rank, world) for k in folds]
    if rank == 0:
        manifest = {
            "name": args.name or f"tumor-{args.arch}", "version": time.strftime("%Y.%m.%d"),
            "task": "tumor",
            "description": f"{args.arch} trained by `brainbarriers train tumor` on {len(cases)} "
                           f"cases from {args.data}",
            "licence": "as the training data's licence allows",
            "architecture": {"name": args.arch, "params": results[0]["params"]},
            "inputs": SEQUENCES,
            "normalisation": {"kind": "brain-zscore", "clip_percentiles": [0.5, 99.5]},
            "spacing_mm": [1.0, 1.0, 1.0],
            "patch_size": [int(p) for p in args.patch],
            "output": ({"type": "regions", "channels": ["WT", "TC", "ET"]} if args.head == "regions"
                       else {"type": "labels", "label_map": {"0": 0, "1": 1, "2": 2, "3": 4}}),
            "postprocess": {"small_et_ml": 0.2},
            "training": {"folds": [{k: r[k] for k in ("fold", "iteration", "train_cases", "val_cases")}
                                   for r in results],
                         "iterations": args.iterations, "batch_size": args.batch_size,
                         "lr": args.lr, "world_size": world, "head": args.head},
        }
        pkg = write_package(Path(args.out) / "package", manifest,
                            {f"fold{r['fold']}": r["state_dict"] for r in results})
        print(f"model package written to {pkg}", flush=True)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0
