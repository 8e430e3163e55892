"""``brainbarriers train tumor --data DIR [DIR ...] --out OUT``: train tumour models into a package.

- Data: BraTS case folders under each DIR (any depth), with the BraTS 2018-2021 file names
  ``<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` (``Brats18_2013_20_1_t1.nii.gz``,
  ``BraTS2021_00000_t1.nii.gz``) or the 2023 names ``<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz``. Labels:
  1 necrotic core, 2 oedema, enhancing tumour 4 (2018-2021) or 3 (2023: always with 2023 names, and
  in any case whose map holds 3 but no 4).
- Geometry: each case is brought to the canonical (RAS) orientation of its T1ce grid and to the
  configuration's voxel size (``spacing_mm``) in world space, exactly as inference does
  (``tumor.inference.work_grid``), so cases on different grids and orientations train together.
  Label regions (WT/TC/ET) are resampled linearly: soft targets at a coarser voxel size.
- Pre-processing as at inference (``tumor.preprocess``): each sequence clipped to its [0.5, 99.5]
  percentiles and z-scored inside the brain, cropped to the brain's box.
- Configurations (``--config``): ``paper`` is the network's own paper, exactly (HNF-Netv2: full width,
  128^3 crops at 1 mm, batch 4, Adam 1e-3, weight decay 1e-5, 250 epochs with a 5-epoch linear
  warm-up and polynomial decay, generalised Dice + BCE; ConResNet: Adam 1e-4, weight decay 5e-4,
  batch 2, 80x160x160 crops, polynomial decay); ``cpu`` is a narrower, coarser configuration that
  trains on 2 CPU cores in about two hours and says so in its manifest. Any option given on the
  command line overrides the configuration's value (``--loss dice+bce``: plain Dice + BCE, whose
  Dice counts WT, TC and ET alike where the generalised Dice counts the whole tumour least).
- Augmentation (HNF-Netv2 paper): foreground-biased random crops, flips on the three axes, rotations
  up to 10 degrees, per-channel intensity shift (+-0.1) and scale (x 0.9-1.1). ``--augmentation
  strong`` adds nnU-Net's kinds (larger rotations, scaling, noise, blur, brightness, gamma);
  ``strong-thick`` also shows sequences as thick-sliced clinical scans (slabs of 4-6 mm).
- Prepared cases (``--prepare``): the cases pre-processed as above at the configuration's voxel size,
  written to ``OUT/prepared`` (``prepared.json`` and one float16 ``.npz`` per case) so that training
  can run where the original files are not, as nnU-Net trains from its pre-processed folder:
  ``--data OUT/prepared``. The final validation needs the original volumes, so such a run packages
  without it; running again on the original data with the same ``--out`` validates the finished
  folds without retraining them.
- Sample preparation (``--workers N``): the augmentation runs in N processes ahead of the network
  (a GPU otherwise waits for the CPU); each iteration's batch stays a pure function of (seed, fold,
  iteration), so the run is the same with any N.
- Reproducible and resumable: every iteration's samples are drawn from generators seeded by
  (seed, fold, iteration), so a run resumed from a checkpoint (every ``--save-every`` iterations,
  ``OUT/checkpoints/fold<k>/last.pt``) continues exactly as an uninterrupted one; ``--restart``
  ignores checkpoints. ``OUT/checkpoints/fold<k>/log.jsonl`` logs every iteration's loss and the
  periodic validation Dice (``--val-every``).
- Several GPUs: ``torchrun --nproc_per_node=N -m brainbarriers.cli.main train tumor ...``; with
  ``WORLD_SIZE > 1`` the model is wrapped in DistributedDataParallel and each rank samples its own
  share of the cases; rank 0 writes checkpoints and the package.
- Result: the model package ``OUT/package`` with one weights file per trained fold; its manifest
  holds the cases used, the configuration, iterations, wall time and the validation figures per
  case and region (the held-out cases of each fold, segmented by the package as the tumour step
  does, with test-time flips), with the licence and the data's terms.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
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

# Training configurations. ``paper``: the paper's settings; ``cpu``: what 2 CPU cores train in hours.
CONFIGS: dict[str, dict[str, dict]] = {
    "hnfnetv2": {
        "paper": {"net": {"base": 32, "widths": [32, 64, 128, 256], "blocks": 2,
                          "ema_channels": 256, "ema_bases": 64},
                  "spacing": 1.0, "patch": [128, 128, 128], "batch_size": 4, "epochs": 250,
                  "warmup_epochs": 5, "lr": 1e-3, "weight_decay": 1e-5, "loss": "gdl+bce",
                  "val_every": 0},
        "cpu": {"net": {"base": 16, "widths": [16, 32, 64, 128], "blocks": 1,
                        "ema_channels": 128, "ema_bases": 32},
                "spacing": 2.0, "patch": [64, 64, 64], "batch_size": 2, "iterations": 600,
                "warmup_epochs": 5, "lr": 1e-3, "weight_decay": 1e-5, "loss": "gdl+bce",
                "val_every": 200,
                "note": "CPU configuration: half the paper's width at every scale, one residual "
                        "block per branch, EMA 128 channels / 32 bases, 2 mm voxels, 64^3 crops "
                        "(128 mm), batch 2, 600 iterations; the paper: full width, 1 mm, 128^3 "
                        "crops, batch 4, 250 epochs of about 1000 cases"},
    },
    "conresnet": {
        # The paper does not give its number of iterations T; 40,000 is our choice.
        "paper": {"net": {"base": 32}, "spacing": 1.0, "patch": [160, 160, 80], "batch_size": 2,
                  "iterations": 40000, "warmup_epochs": 0, "lr": 1e-4, "weight_decay": 5e-4,
                  "loss": "conres", "val_every": 0},
        "cpu": {"net": {"base": 8}, "spacing": 2.0, "patch": [80, 80, 48], "batch_size": 2,
                "iterations": 1600, "warmup_epochs": 0, "lr": 1e-4 * 4, "weight_decay": 5e-4,
                "loss": "conres", "val_every": 200,
                "note": "CPU configuration: base width 8 (paper 32), 2 mm voxels, 80x80x48 crops "
                        "(the paper's 80x160x160 at 1 mm covers 160x160x80 mm; ours 160x160x96 mm), "
                        "learning rate x4 for the 25x fewer iterations"},
    },
    "segresnet": {
        "paper": {"net": {"base": 32}, "spacing": 1.0, "patch": [128, 128, 128], "batch_size": 2,
                  "iterations": 20000, "warmup_epochs": 5, "lr": 1e-4, "weight_decay": 1e-5,
                  "loss": "dice+bce", "val_every": 0},
        "cpu": {"net": {"base": 8}, "spacing": 2.0, "patch": [64, 64, 64], "batch_size": 2,
                "iterations": 1600, "warmup_epochs": 5, "lr": 1e-3, "weight_decay": 1e-5,
                "loss": "dice+bce", "val_every": 200, "note": "CPU configuration: width 8, 2 mm"},
    },
}


PREPARED_INDEX = "prepared.json"


def find_cases(data: str | Path | list, need_seg: bool = True) -> list[dict]:
    """BraTS cases under one or several folders: [{"id", "release", "t1", ..., "seg"}], or a
    prepared folder's cases: [{"id", "release", "prepared", "spacing", "head"}]."""
    if isinstance(data, (list, tuple)):
        cases = [c for d in data for c in find_cases(d, need_seg)]
        ids = [c["id"] for c in cases]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise InputError(None, f"case id(s) {dup} found in more than one --data folder")
        return cases
    data = Path(data)
    if not data.is_dir():
        raise InputError(data, "is not a folder of BraTS cases")
    if (data / PREPARED_INDEX).is_file():
        return prepared_cases(data)
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
        raise InputError(data, "holds no BraTS cases (expected e.g. Brats18_2013_2_1_flair.nii.gz, "
                         "BraTS2021_00000_flair.nii.gz or BraTS-GLI-00000-000-t2f.nii.gz with their "
                         "t1/t1ce/t2/seg files)")
    return cases


def kfold(n: int, folds: int, fold: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) of fold ``fold`` of a seeded permutation."""
    folds = max(1, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(int(i) for i in order[fold % folds::folds])
    train = sorted(set(range(n)) - set(val)) or val
    return train, val


def brats_labels(seg: np.ndarray, release: str) -> np.ndarray:
    """Labels 0/1/2/4 from a 2018-2021 map or a 2023 map (enhancing 3 -> 4)."""
    seg = np.asarray(seg).astype(np.uint8)
    if release == "2023" or (np.any(seg == 3) and not np.any(seg == 4)):
        seg = np.where(seg == 3, 4, seg).astype(np.uint8)
    return seg


def load_case_volumes(case: dict) -> tuple[dict, object, object]:
    """The case's sequences and labels on its T1ce grid: ({seq: Volume}, brain mask, labels 0/1/2/4)."""
    from ..geometry import resample_to
    from ..io import load_volume

    vols = {s: load_volume(case[s]) for s in SEQUENCES}
    ref = vols["t1ce"]
    vols = {s: resample_to(v, ref.grid) for s, v in vols.items()}
    seg = resample_to(load_volume(case["seg"], allow_empty=True), ref.grid, label=True)
    labels = ref.with_array(brats_labels(seg.array, case.get("release", "2021")))
    mask = ref.with_array(np.any([v.array != 0 for v in vols.values()], axis=0).astype(np.uint8))
    return vols, mask, labels


def load_case(case: dict, head: str = "regions", spacing: float | None = None) -> dict:
    """Normalised, cropped image (4 x ...) and target (3 region channels or 1 label channel) on the
    canonical grid at ``spacing`` mm, as inference prepares its input."""
    if "prepared" in case:
        return load_prepared(case, head, spacing)
    from ..volume import Volume
    from .inference import onto, work_grid
    from .preprocess import brain_box, normalise_stack, regions_from_labels

    vols, mask, labels = load_case_volumes(case)
    grid = work_grid(mask.grid, None if spacing is None else [spacing] * 3)
    mask = onto(mask, grid, label=True).array > 0
    image = normalise_stack([onto(vols[s], grid).array for s in SEQUENCES], mask)
    if head == "regions":
        regions = regions_from_labels(labels.array)
        target = np.stack([np.clip(onto(Volume(r, labels.affine), grid).array, 0, 1)
                           for r in regions]).astype(np.float32)
    else:
        lab = onto(labels, grid, label=True).array
        target = np.select([lab == 1, lab == 2, lab == 4], [1, 2, 3], 0)[None].astype(np.float32)
    box = (slice(None),) + brain_box(mask, margin=4)
    return {"image": np.ascontiguousarray(image[box]), "label": np.ascontiguousarray(target[box]),
            "id": case["id"]}


def prepare_cases(cases: list[dict], folder: Path, head: str, spacing: float) -> Path:
    """Write ``load_case`` of every case into ``folder`` (float16 arrays, ``prepared.json``)."""
    from ..io import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for c in cases:
        d = load_case(c, head, spacing)
        name = f"{c['id']}.npz"
        with atomic_path(folder / name) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, image=d["image"].astype(np.float16),
                                label=d["label"].astype(np.float16))
        entries.append({"id": c["id"], "release": c["release"], "file": name,
                        "sources": {k: Path(c[k]).name for k in SEQUENCES + ["seg"] if k in c}})
        print(f"prepared {c['id']}: {d['image'].shape[1:]} voxels of {spacing} mm", flush=True)
    index = {"format": 1, "head": head, "spacing": spacing, "dtype": "float16",
             "preprocessing": "tumor.train.load_case", "cases": entries}
    with atomic_path(folder / PREPARED_INDEX) as tmp:
        Path(tmp).write_text(json.dumps(index, indent=1))
    return folder


def prepared_cases(folder: Path) -> list[dict]:
    index_path = folder / PREPARED_INDEX
    try:
        index = json.loads(index_path.read_text())
        return [{"id": e["id"], "release": e["release"], "prepared": str(folder / e["file"]),
                 "spacing": float(index["spacing"]), "head": index["head"]}
                for e in index["cases"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(index_path, f"is not a readable index of prepared cases ({e})") from None


def load_prepared(case: dict, head: str, spacing: float | None) -> dict:
    if case["head"] != head or spacing is None or abs(case["spacing"] - spacing) > 1e-6:
        raise InputError(case["prepared"], f"was prepared for --head {case['head']} at "
                         f"{case['spacing']} mm; this run needs --head {head} at {spacing} mm")
    try:
        with np.load(case["prepared"]) as z:
            image, label = z["image"].astype(np.float32), z["label"].astype(np.float32)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(case["prepared"], f"cannot be read as a prepared case ({e})") from None
    return {"image": image, "label": label, "id": case["id"]}


AUGMENTATIONS = ("paper", "strong", "strong-thick")


def transforms(patch: tuple[int, int, int], head: str, augmentation: str = "paper"):
    """The HNF-Netv2 paper's online augmentation (see the module docstring); ``strong`` adds
    nnU-Net's kinds before it, for training on few cases: rotation up to 30 degrees and scaling
    x 0.7-1.3 (together, probability 0.3), Gaussian noise (0.1) and blur (0.2), brightness
    x 0.75-1.25 (0.15) and gamma 0.7-1.5 (0.3); ``strong-thick`` adds thick-sliced sequences
    (``augment.RandThickSlicesd``) after the crop."""
    from monai import transforms as T

    from .augment import RandThickSlicesd

    if augmentation not in AUGMENTATIONS:
        raise InputError(None, f"--augmentation {augmentation!r}: one of {', '.join(AUGMENTATIONS)}")
    keys = ["image", "label"]
    label_mode = "bilinear" if head == "regions" else "nearest"  # soft region targets stay soft
    strong = [
        T.RandAffined(keys, prob=0.3, rotate_range=(0.52, 0.52, 0.52),
                      scale_range=(0.3, 0.3, 0.3), mode=("bilinear", label_mode),
                      padding_mode="zeros"),
        T.RandGaussianNoised("image", prob=0.1, std=0.1),
        T.RandGaussianSmoothd("image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0),
                              sigma_z=(0.5, 1.0)),
        T.RandScaleIntensityd("image", factors=0.25, prob=0.15),
        T.RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
    ] if augmentation.startswith("strong") else []
    thick = [RandThickSlicesd()] if augmentation == "strong-thick" else []
    return T.Compose([
        T.SpatialPadd(keys, spatial_size=patch),
        T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch, pos=2, neg=1,
                                 num_samples=1, image_key="image", image_threshold=-1e9),
        *thick,
        *strong,
        T.RandFlipd(keys, prob=0.5, spatial_axis=0),
        T.RandFlipd(keys, prob=0.5, spatial_axis=1),
        T.RandFlipd(keys, prob=0.5, spatial_axis=2),
        T.RandRotated(keys, range_x=0.17, range_y=0.17, range_z=0.17, prob=0.2,
                      mode=("bilinear", label_mode), padding_mode="zeros"),
        T.RandScaleIntensityd("image", factors=0.1, prob=1.0, channel_wise=True),
        T.RandShiftIntensityd("image", offsets=0.1, prob=1.0, channel_wise=True),
        T.EnsureTyped(keys, dtype=np.float32, track_meta=False),
    ])


def build_net(arch: str, net: dict, head: str) -> tuple[object, dict]:
    out = 3 if head == "regions" else 4
    base = int(net["base"])
    if arch == "hnfnetv2":
        widths = list(net.get("widths", [base, base * 2, base * 4, base * 8]))
        params = {"in_channels": 4, "out_channels": out, "base": base, "widths": widths,
                  "blocks": int(net.get("blocks", 2 if base >= 16 else 1)),
                  "ema_channels": int(net.get("ema_channels", widths[-1])),
                  "ema_bases": int(net.get("ema_bases", 64 if base >= 32 else 32)),
                  "sde_layout": "paper"}
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
    p.add_argument("--data", required=True, nargs="+", action="extend",
                   help="folder(s) of BraTS 2018/2021/2023 case folders")
    p.add_argument("--out", required=True, help="output folder (checkpoints/, package/)")
    p.add_argument("--arch", default="hnfnetv2", choices=sorted(CONFIGS))
    p.add_argument("--config", default="paper", choices=["paper", "cpu"],
                   help="the paper's training (default) or the CPU configuration; options below "
                        "override single values")
    p.add_argument("--base", type=int, default=None, help="network width (channels at full scale)")
    p.add_argument("--head", default="regions", choices=["regions", "labels"])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold", default="0",
                   help="fold index, several (0,1,2) or 'all'; folds whose checkpoints are "
                        "finished are not retrained, so folds trained in separate runs (same "
                        "--out) are packaged together by naming them all")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs (one epoch = each training case sampled once)")
    p.add_argument("--iterations", type=int, default=None, help="iterations per fold (or --epochs)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--patch", type=int, nargs=3, default=None)
    p.add_argument("--spacing", type=float, default=None, help="voxel size in mm for training")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-epochs", type=float, default=None)
    p.add_argument("--val-every", type=int, default=None,
                   help="validation Dice on the held-out cases every N iterations (0: at the end only)")
    p.add_argument("--modality-dropout", type=float, default=None,
                   help="probability that a training sample keeps only a random subset of its "
                        "sequences (the rest zero): the model then accepts any non-empty subset")
    p.add_argument("--dropout-subsets", nargs="+", default=None, metavar="SUBSET",
                   help="the subsets that modality dropout keeps, e.g. t1+flair flair (default: "
                        "all 14 non-empty proper subsets, uniformly)")
    p.add_argument("--loss", default=None, choices=["gdl+bce", "dice+bce"],
                   help="region loss: generalised Dice + BCE (HNF-Netv2's paper) or Dice + BCE, "
                        "whose Dice weighs WT, TC and ET alike (generalised Dice weighs each by "
                        "the inverse square of its volume, so the whole tumour least)")
    p.add_argument("--augmentation", default=None, choices=AUGMENTATIONS,
                   help="the paper's augmentation (default) or 'strong': nnU-Net's kinds added "
                        "(rotation, scaling, noise, blur, brightness, gamma), for few cases; "
                        "'strong-thick': also sequences seen as thick-sliced scans")
    p.add_argument("--init", default=None,
                   help="fine-tune: start from this model package's weights (same architecture; "
                        "its fold of the same number, so held-out cases stay unseen)")
    p.add_argument("--prepare", action="store_true",
                   help="write the cases pre-processed for this configuration into OUT/prepared "
                        "and stop; --data OUT/prepared then trains without the original files")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that prepare the augmented samples ahead of the network "
                        "(0: in the training process); the run is the same with any number")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="package name (default tumor-<arch>-<config>)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-tta-validation", action="store_true",
                   help="final validation without test-time flips (faster)")


def resolve_config(args: argparse.Namespace, n_train: int) -> dict:
    """The configuration's values with the command line's overrides; iterations from epochs."""
    cfg = json.loads(json.dumps(CONFIGS[args.arch][args.config]))
    cfg["name"] = args.config
    if args.base is not None:
        b = args.base
        cfg["net"] = {"base": b} if args.arch != "hnfnetv2" else {
            **cfg["net"], "base": b, "widths": [b, b * 2, b * 4, b * 8], "ema_channels": b * 8}
    for key in ("batch_size", "patch", "spacing", "lr", "weight_decay", "warmup_epochs", "val_every",
                "modality_dropout", "augmentation", "loss"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.dropout_subsets is not None:
        if not cfg.get("modality_dropout"):
            raise InputError(None, "--dropout-subsets needs --modality-dropout above 0")
        cfg["dropout_subsets"] = ["+".join(SEQUENCES[c] for c in parse_subset(s))
                                  for s in args.dropout_subsets]
    cfg["iterations_per_epoch"] = math.ceil(n_train / cfg["batch_size"])
    if args.iterations is not None:
        cfg["iterations"] = args.iterations
        cfg.pop("epochs", None)
    elif args.epochs is not None:
        cfg["epochs"] = args.epochs
        cfg.pop("iterations", None)
    if "iterations" not in cfg:
        cfg["iterations"] = cfg["epochs"] * cfg["iterations_per_epoch"]
    cfg["warmup_iterations"] = int(round(cfg["warmup_epochs"] * cfg["iterations_per_epoch"]))
    return cfg


def lr_factor(it: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` iterations, then (1 - t/T)^0.9 over the rest."""
    if it < warmup:
        return (it + 1) / warmup
    return max(0.0, 1 - (it - warmup) / max(1, total - warmup)) ** 0.9


# The non-empty proper subsets of the four sequences (as channel indices), for modality dropout.
PARTIAL_SUBSETS = [c for n in range(1, len(SEQUENCES))
                   for c in itertools.combinations(range(len(SEQUENCES)), n)]


def parse_subset(text: str) -> tuple:
    """'t1+flair' -> (0, 3): a non-empty proper subset of the sequences, as channel indices."""
    names = text.lower().split("+")
    bad = [n for n in names if n not in SEQUENCES]
    if bad or len(set(names)) != len(names):
        raise InputError(None, f"--dropout-subsets {text!r}: give sequences from {SEQUENCES} "
                         "joined by '+', each once")
    subset = tuple(sorted(SEQUENCES.index(n) for n in names))
    if subset not in PARTIAL_SUBSETS:
        raise InputError(None, f"--dropout-subsets {text!r}: all four is no dropout")
    return subset


def sample_batch(data: list[dict], tf, size: int, seed: int, fold: int, it: int, rank: int,
                 modality_dropout: float = 0.0, subsets: list | None = None) -> list:
    """The augmented samples of iteration ``it``: a pure function of (seed, fold, rank, it).

    With ``modality_dropout`` p, each sample keeps, with probability p, only one of ``subsets``
    (channel-index tuples; default the 14 non-empty proper subsets of its sequences), uniformly
    chosen; the others become zeros, as an absent sequence is fed at inference. With p = 0 no
    extra random numbers are drawn, so runs without dropout sample exactly as before.
    """
    subsets = subsets or PARTIAL_SUBSETS
    rng = np.random.default_rng([seed, fold, rank, it])
    tf.set_random_state(seed=int(rng.integers(2**31)))
    out = []
    for _ in range(size):
        d = data[int(rng.integers(len(data)))]
        s = tf({"image": d["image"], "label": d["label"]})
        s = s[0] if isinstance(s, list) else s
        if modality_dropout > 0 and rng.random() < modality_dropout:
            keep = subsets[int(rng.integers(len(subsets)))]
            # In place: the augmentation's intensity scaling (prob 1) made a new array.
            s["image"][[c for c in range(len(SEQUENCES)) if c not in keep]] = 0
        out.append(s)
    return out


class IterationBatches:
    """Iteration -> that iteration's (images, targets): a map-style dataset, so a DataLoader's
    worker processes can prepare batches ahead in any order and the run stays the same."""

    def __init__(self, data, tf, cfg: dict, seed: int, fold: int, rank: int, iterations: range):
        self.data, self.tf, self.seed, self.fold, self.rank = data, tf, seed, fold, rank
        self.size = cfg["batch_size"]
        self.dropout = cfg.get("modality_dropout", 0.0)
        self.subsets = [parse_subset(t) for t in cfg.get("dropout_subsets", [])]
        self.iterations = iterations

    def __len__(self) -> int:
        return len(self.iterations)

    def __getitem__(self, i: int):
        import torch

        batch = sample_batch(self.data, self.tf, self.size, self.seed, self.fold,
                             self.iterations[i], self.rank, self.dropout, self.subsets)
        return (torch.stack([torch.as_tensor(b["image"]) for b in batch]),
                torch.stack([torch.as_tensor(b["label"]) for b in batch]))


def quick_dice(net, cases: list[dict], patch, head: str, device: str) -> dict:
    """Mean Dice per region of the held-out cases at the training voxel size (no flips)."""
    import torch
    from monai.inferers import sliding_window_inference

    from .inference import _forward

    net.eval()
    scores = {"WT": [], "TC": [], "ET": []}
    with torch.inference_mode():
        for c in cases:
            x = torch.from_numpy(c["image"])[None].to(device)
            logits = sliding_window_inference(x, tuple(patch), 4, lambda t: _forward(net, t),
                                              overlap=0.25, mode="gaussian")
            pred = (torch.sigmoid(logits)[0] > 0.5).cpu().numpy()
            for i, r in enumerate(("WT", "TC", "ET")):
                t = c["label"][i] > 0.5
                denom = pred[i].sum() + t.sum()
                scores[r].append(1.0 if denom == 0 else 2 * (pred[i] & t).sum() / denom)
    net.train()
    return {r: round(float(np.mean(v)), 4) for r, v in scores.items()}


def initial_weights(package_name: str, fold: int, arch: str, params: dict) -> dict:
    """Fine-tuning starts from a package's weights: its fold ``fold`` (the same split, so the
    held-out cases stay unseen), else its only weights; the architecture must be the same."""
    from ..models import load_package

    package = load_package(package_name)
    theirs = package.manifest["architecture"]
    if theirs.get("name") != arch or {k: _plain(v) for k, v in theirs.get("params", {}).items()} \
            != {k: _plain(v) for k, v in params.items()}:
        raise InputError(package.path, f"--init: its architecture {theirs} differs from the one "
                         f"being trained ({arch} {params})")
    key = f"fold{fold}"
    if key not in package.weight_keys:
        if len(package.weight_keys) != 1:
            raise InputError(package.path, f"--init: no weights {key!r} (has "
                             f"{', '.join(package.weight_keys)})")
        key = package.weight_keys[0]
    return package.state_dict(key)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def train_fold(args, cfg: dict, cases: list[dict], fold: int, device: str, rank: int,
               world: int) -> dict:
    import torch

    from .losses import ConResLoss, LabelLoss, RegionLoss

    out = Path(args.out)
    ckpt_dir = out / "checkpoints" / f"fold{fold}"
    ckpt = ckpt_dir / "last.pt"
    tr, val = kfold(len(cases), args.folds, fold, args.seed)
    t_load = time.time()
    data = [load_case(cases[i], args.head, cfg["spacing"]) for i in tr]
    data = data[rank::world] or data
    val_data = ([load_case(cases[i], args.head, cfg["spacing"]) for i in val]
                if cfg["val_every"] and args.head == "regions" and rank == 0 else [])
    if rank == 0:
        print(f"fold {fold}: {len(tr)} training, {len(val)} validation cases loaded in "
              f"{time.time() - t_load:.0f} s", flush=True)
    patch = tuple(int(p) for p in cfg["patch"])
    tf = transforms(patch, args.head, cfg.get("augmentation", "paper"))
    torch.manual_seed(args.seed + fold)
    net, params = build_net(args.arch, cfg["net"], args.head)
    if getattr(args, "init", None):
        net.load_state_dict(initial_weights(args.init, fold, args.arch, params))
    net.to(device)
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    if cfg["loss"] == "conres" and args.head == "regions":
        loss_fn = ConResLoss()
    elif args.head == "regions":
        loss_fn = RegionLoss(generalised=cfg["loss"] == "gdl+bce")
    else:
        loss_fn = LabelLoss()
    # Adam with L2 weight decay (both papers), betas (0.9, 0.999).
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], betas=(0.9, 0.999),
                           weight_decay=cfg["weight_decay"])
    total, warmup = cfg["iterations"], cfg["warmup_iterations"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, warmup, total))
    use_amp = device.startswith("cuda") and not args.no_amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start, wall = 0, 0.0
    if ckpt.is_file() and not args.restart:
        state = torch.load(ckpt, map_location=device, weights_only=True)
        net.load_state_dict(state["model"])
        start, wall = int(state["iteration"]), float(state.get("wall_s", 0.0))
        if start < total:  # a finished fold needs its weights only (they may travel alone)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        if rank == 0:
            print(f"fold {fold}: resumed from {ckpt} at iteration {start}", flush=True)
    log = ckpt_dir / "log.jsonl"
    net.train()
    t0 = time.time() - wall
    it = start
    batches = IterationBatches(data, tf, cfg, args.seed, fold, rank, range(start + 1, total + 1))
    workers = getattr(args, "workers", 0)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None,
                                         pin_memory=device.startswith("cuda"))
    for it, (x, y) in zip(batches.iterations, loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast("cuda", enabled=use_amp):
            outputs = model(x)
            loss = loss_fn(outputs, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        if rank != 0:
            continue
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        entry = {"iteration": it, "loss": round(loss.item(), 5), "lr": sched.get_last_lr()[0],
                 "s": round(time.time() - t0, 2)}
        if val_data and cfg["val_every"] and (it % cfg["val_every"] == 0 or it == total):
            entry["val_dice"] = quick_dice(net, val_data, patch, args.head, device)
        with open(log, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if it % 20 == 0 or "val_dice" in entry:
            rate = (time.time() - t0) / it
            print(f"fold {fold} iteration {it}/{total} loss {entry['loss']:.4f} "
                  f"{rate:.2f} s/it, {(total - it) * rate / 60:.0f} min left"
                  + (f" val Dice {entry['val_dice']}" if "val_dice" in entry else ""), flush=True)
        if it % args.save_every == 0 or it == total:
            from ..io import atomic_path

            with atomic_path(ckpt) as tmp:
                torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                            "iteration": it, "wall_s": time.time() - t0}, tmp)
    return {"fold": fold, "iteration": it, "wall_s": round(time.time() - t0, 1),
            "train_cases": [cases[i]["id"] for i in tr],
            "val_cases": [cases[i]["id"] for i in val], "state_dict": net.state_dict(),
            "params": params}


def validate(package_path: Path, cases: list[dict], results: list[dict], tta: bool,
             device: str) -> dict:
    """Each fold's held-out cases segmented by that fold's network as the tumour step does:
    {"cases": {id: {"fold", "ET": {"dice", "hd95"}, ...}}, "mean": {...}}."""
    from ..metrics import brats_scores
    from ..models import load_package
    from .inference import segment

    package = load_package(package_path)
    by_id = {c["id"]: c for c in cases}
    per_case = {}
    for r in results:
        net = package.build_network(f"fold{r['fold']}", device)
        for cid in r["val_cases"]:
            vols, mask, labels = load_case_volumes(by_id[cid])
            t = time.time()
            pred = segment(vols, mask, package, tta=tta, device=device, nets=[net])
            per_case[cid] = {"fold": r["fold"], **brats_scores(pred, labels),
                             "seconds": round(time.time() - t, 1)}
            print(f"validation {cid}: " + ", ".join(
                f"{k} {per_case[cid][k]['dice']:.3f}" for k in ("WT", "TC", "ET")), flush=True)
    mean = {k: {m: round(float(np.mean([c[k][m] for c in per_case.values()])), 4)
                for m in ("dice", "hd95")} for k in ("WT", "TC", "ET")}
    return {"cases": per_case, "mean": mean, "tta": tta}


def parse_folds(text: str, n_folds: int) -> list[int]:
    """``--fold``: "all", one index or a comma-separated list of indices below ``n_folds``."""
    if text == "all":
        return list(range(n_folds))
    try:
        folds = sorted({int(f) for f in text.split(",")})
    except ValueError:
        raise InputError(None, f"--fold {text!r}: give a fold index, a list like 0,1,2 or 'all'"
                         ) from None
    if not folds or folds[0] < 0 or folds[-1] >= n_folds:
        raise InputError(None, f"--fold {text!r}: folds run from 0 to {n_folds - 1}")
    return folds


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
    folds = parse_folds(args.fold, min(args.folds, len(cases)))
    n_train = len(kfold(len(cases), args.folds, 0, args.seed)[0])
    cfg = resolve_config(args, n_train)
    if args.prepare:
        folder = prepare_cases(cases, Path(args.out) / "prepared", args.head, cfg["spacing"])
        print(f"{len(cases)} prepared cases in {folder}; train with --data {folder}", flush=True)
        return 0
    prepared = any("prepared" in c for c in cases)
    if rank == 0:
        print(f"{len(cases)} cases; configuration {args.arch}/{args.config}: "
              + json.dumps({k: v for k, v in cfg.items() if k != "note"}), flush=True)
    results = [train_fold(args, cfg, cases, k, device, rank, world) for k in folds]
    if rank == 0:
        manifest = {
            "name": args.name or f"tumor-{args.arch}-{args.config}",
            "version": time.strftime("%Y.%m.%d"),
            "task": "tumor",
            "description": f"{args.arch} ({args.config} configuration) trained by `brainbarriers "
                           f"train tumor` on {len(cases)} cases",
            "licence": "weights: Apache-2.0, as the code; see data_terms for the training data",
            "data_terms": "as the training data's terms allow",
            "architecture": {"name": args.arch, "params": results[0]["params"]},
            "inputs": SEQUENCES,
            **({"absent_inputs": "zero"} if cfg.get("modality_dropout", 0) > 0 else {}),
            "normalisation": {"kind": "brain-zscore", "clip_percentiles": [0.5, 99.5]},
            "spacing_mm": [float(cfg["spacing"])] * 3,
            "patch_size": [int(p) for p in cfg["patch"]],
            "output": ({"type": "regions", "channels": ["WT", "TC", "ET"]} if args.head == "regions"
                       else {"type": "labels", "label_map": {"0": 0, "1": 1, "2": 2, "3": 4}}),
            "postprocess": {"small_et_ml": 0.2},
            "training": {
                "data": [str(d) for d in args.data],
                "cases": [{"id": c["id"], "release": c["release"]} for c in cases],
                "folds": [{k: r[k] for k in ("fold", "iteration", "wall_s", "train_cases",
                                             "val_cases")} for r in results],
                "configuration": cfg, "head": args.head, "seed": args.seed,
                **({"initialised_from": args.init} if args.init else {}),
                "world_size": world, "device": device,
                "torch": torch.__version__,
            },
        }
        pkg_dir = Path(args.out) / "package"
        pkg = write_package(pkg_dir, manifest, {f"fold{r['fold']}": r["state_dict"] for r in results})
        if prepared:
            print("no final validation: prepared cases hold no original volumes; run again on "
                  "the original data with the same --out and --fold to validate", flush=True)
        elif args.head == "regions":
            manifest["validation"] = validate(pkg, cases, results, not args.no_tta_validation,
                                              device)
            write_package(pkg_dir, manifest,
                          {f"fold{r['fold']}": r["state_dict"] for r in results})
        print(f"model package written to {pkg}", flush=True)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0
