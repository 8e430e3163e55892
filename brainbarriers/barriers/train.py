"""``brainbarriers train barriers``: train the two-stage barrier models, write a model set.

Data (one of):

- ``--data FOLDER``: the ABCs 2020 challenge layout, read directly: per case ``NNN_ct.nii.gz``,
  ``NNN_t1.nii.gz`` (contrast-enhanced T1, used as our ``t1ce``), ``NNN_t2.nii.gz`` and
  ``NNN_labelmap_task1.nii.gz`` (task 1 labels 1 cerebellum, 2 falx, 3 sinuses, 4 tentorium,
  5 ventricles; ``--abcs-labels`` changes this mapping). The challenge's joined sinuses are split into
  sagittal (within 8 mm of the brain's mid-sagittal plane) and transverse (the rest). ABCs has no brain
  mask: z-scoring uses the labelled structures' region dilated by 15 mm, filled.
- ``--phantom N``: N generated cases with barrier truths (``barriers.phantom``), seeds 1000.. .

Inputs (``--sequences``): by default CT + T1ce + T2 when every case has a CT (the paper's best
setting, Table III), else T1ce + T2.

Training follows paper 000 (IV-A): stage 1 a DynUNet on the whole volume at ``--stage1-spacing``
with Dice + CE and deep supervision as nnU-Net does it (an extra head on the decoder's half-resolution
level; losses weighted 1 and 1/2, normalised, the coarsest decoder level left out:
``nnunet_ds_weights``), its truth brought to that spacing keeping thin structures whole
(``coarse_labels``); stage 2 one HMRNet per structure (with the authors' fusion blocks, ``--fusion``) (HMRNet-s for falx and sinuses with their slice
axis, HMRNet-p for the others) on crops of the bounding box of stage-1 predictions + 10 voxels, the
prediction taken, per iteration, from one of three stage-1 checkpoints (1/3, 2/3 and all of the
iterations - the paper's epochs 100, 200, 300) at random; loss L_fn-Dice (theta per structure) + CE
with deep supervision 0.4/0.3/0.3. SGD (Nesterov momentum 0.99, as nnU-Net) with weight decay 1e-5, lr 0.01 with poly
decay (power 0.9) over the iterations (``--optimizer adam`` for short runs, see ``make_optimizer``); augmentation: left-right flip, rotation (+-10 degrees about
each axis), elastic deformation (smooth displacement, up to 2 voxels), gamma (0.7-1.5); z-score
normalisation inside the brain. Crops larger than ``--patch`` are trained on random patches (half of
them centred on the structure) and inferred with a sliding window. ``--reach`` only goes into the
stage-2 manifests: how far from the coarse mask inference lets stage 2 label (``barriers.infer``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..errors import InputError
from ..geometry import resample_to
from ..io import load_volume
from ..volume import Volume
from . import N_CLASSES, STRUCTURES
from .infer import bbox, grid_at_spacing, pad8, stack_inputs
from .losses import coarse_loss, deep_supervision_loss
from .package import write_package

DS_HEADS_STAGE1 = 1  # extra deep-supervision heads of the stage-1 DynUNet (see nnunet_ds_weights)
DEFAULT_SEQUENCES = ("t1ce", "t2")
DEFAULT_SEQUENCES_WITH_CT = ("ct", "t1ce", "t2")  # the paper's best inputs (Table III)
ABCS_LABELS = {1: 5, 2: 1, 3: 3, 4: 2, 5: 6}  # challenge task-1 value -> our label (3: sinuses, split)
ABCS_FILES = {"ct": "ct", "t1ce": "t1", "t2": "t2"}


# ------------------------------------------------------------------------------------- data
class Case:
    def __init__(self, name: str, images: dict[str, Volume], labels: Volume, brain: np.ndarray):
        self.name, self.images, self.labels, self.brain = name, images, labels, brain


def split_sinuses(labels: np.ndarray, brain: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Our labels 3/4 from a joined sinus label (3): near the mid-sagittal plane -> sagittal."""
    ic = np.argwhere(brain)[:, 0].mean() if brain.any() else labels.shape[0] / 2
    xs = np.arange(labels.shape[0])[:, None, None]
    sinus = labels == 3
    out = labels.copy()
    out[sinus & (np.abs(xs - ic) * spacing[0] > 8.0)] = 4
    return out


def load_abcs(folder: str | Path, mapping: dict[int, int] = ABCS_LABELS) -> list[Case]:
    from ..geometry import to_canonical

    folder = Path(folder)
    label_files = sorted(folder.glob("*_labelmap_task1.nii.gz"))
    if not label_files:
        raise InputError(folder, "holds no ABCs case (NNN_labelmap_task1.nii.gz with NNN_t1/_t2/_ct)")
    cases = []
    for lf in label_files:
        stem = lf.name[: -len("_labelmap_task1.nii.gz")]
        raw = to_canonical(load_volume(lf, allow_empty=True))
        lab = np.zeros(raw.shape, np.uint8)
        for src, dst in mapping.items():
            lab[np.round(raw.array).astype(int) == src] = dst
        images = {}
        for ours, theirs in ABCS_FILES.items():
            p = folder / f"{stem}_{theirs}.nii.gz"
            if p.exists():
                v = to_canonical(load_volume(p))
                images[ours] = v if v.grid.same_as(raw.grid) else resample_to(v, raw.grid)
        region = ndi.binary_dilation(lab > 0, iterations=max(1, int(round(15 / raw.spacing.min()))))
        brain = ndi.binary_fill_holes(region)
        lab = split_sinuses(lab, brain, raw.spacing)
        cases.append(Case(stem, images, raw.with_array(lab), brain))
    return cases


def phantom_cases(n: int, seed0: int = 1000, zoom: int = 2) -> list[Case]:
    from .phantom import make_barrier_case

    cases = []
    for s in range(seed0, seed0 + n):
        c = make_barrier_case(s, zoom)
        cases.append(Case(f"phantom{s}", c.sequences, c.truths["barriers"],
                          c.truths["brain_mask"].array > 0))
    return cases


# ------------------------------------------------------------------------------- augmentation
def augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (C, D, H, W) float, y (D, H, W) long: flip, rotation + elastic, gamma."""
    if rng.random() < 0.5:
        x, y = x.flip(1), y.flip(0)
    shape = x.shape[1:]
    a = np.radians(rng.uniform(-10, 10, 3))
    c, s = np.cos(a), np.sin(a)
    rot = (np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
           @ np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
           @ np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]]))
    theta = torch.zeros(1, 3, 4)
    theta[0, :, :3] = torch.from_numpy(rot[::-1, ::-1].copy())  # grid_sample's xyz = our k, j, i
    grid = F.affine_grid(theta, [1, 1, *shape], align_corners=False)
    # Elastic: a coarse random displacement upsampled smoothly (up to ~2 voxels).
    coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 4, 4, 4)).astype(np.float32))
    disp = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    disp = disp * torch.tensor([2.0 / max(s, 1) for s in shape[::-1]]).view(1, 3, 1, 1, 1) * 2
    grid = grid + disp.permute(0, 2, 3, 4, 1)
    x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    y = F.grid_sample(y[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                      align_corners=False)[0, 0].long()
    gamma = float(rng.uniform(0.7, 1.5))
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = ((x - lo) / (hi - lo + 1e-6)).clamp(0, 1) ** gamma * (hi - lo) + lo
    return x, y


def poly_lr(optimizer, base: float, it: int, total: int) -> None:
    for g in optimizer.param_groups:
        g["lr"] = base * (1 - it / max(total, 1)) ** 0.9


def make_optimizer(net: torch.nn.Module, lr: float, kind: str = "sgd") -> torch.optim.Optimizer:
    """The paper's SGD (weight decay 1e-5; Nesterov momentum 0.99 as nnU-Net), or Adam.

    Adam is for short runs (the CPU demo: a few hundred iterations where the paper had ~10^5).
    With SGD the rare classes' softmax saturates within ~20 iterations (CE first teaches the
    background prior), after which their Dice gradient, scaled by p (1 - p), is too small for SGD to
    move the features in a few hundred steps; Adam's per-parameter scaling keeps them moving.
    """
    if kind == "adam":
        return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    if kind != "sgd":
        raise ValueError(f"optimizer is 'sgd' or 'adam', not {kind!r}")
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.99, nesterov=True, weight_decay=1e-5)


# ---------------------------------------------------------------------------------- stage 1
def nnunet_ds_weights(n_outputs: int, n_poolings: int) -> list[float]:
    """nnU-Net's deep-supervision weights for outputs at full, 1/2, 1/4, ... resolution: halved per
    level, zero for the outputs at the coarsest decoder level and below (the n_poolings-th output
    on), normalised to sum 1."""
    weights = [0.5 ** i if i < n_poolings - 1 else 0.0 for i in range(n_outputs)]
    total = sum(weights)
    return [w / total for w in weights]


def stage1_loss(outputs: torch.Tensor, target: torch.Tensor, n_poolings: int) -> torch.Tensor:
    """Dice + CE of the stage-1 net's output; with deep supervision (outputs stacked on axis 1, as
    MONAI's DynUNet returns them in training) the heads' losses weighted by ``nnunet_ds_weights``."""
    if outputs.dim() == target.dim() + 1:  # (B, C, ...) logits, no deep supervision
        return coarse_loss(outputs, target)
    weights = nnunet_ds_weights(outputs.shape[1], n_poolings)
    return sum(w * coarse_loss(outputs[:, i], target) for i, w in enumerate(weights) if w > 0)


def stage1_data(cases: list[Case], sequences: list[str], spacing: float) -> list[tuple[np.ndarray, np.ndarray]]:
    data = []
    for c in cases:
        ref = c.images[sequences[0]]
        g1 = grid_at_spacing(ref.grid, spacing)
        x = stack_inputs(c.images, sequences, c.brain, g1)
        data.append((x, coarse_labels(c.labels, g1).astype(np.int64)))
    return data


def coarse_labels(labels: Volume, grid, background_weight: float = 0.35) -> np.ndarray:
    """``labels`` on a coarser ``grid`` keeping thin structures whole.

    Nearest-neighbour sampling of a 1-2 voxel thick falx, tentorium or sinus onto voxels twice as
    large keeps only the voxels whose centre happens to fall on it: the coarse truth becomes a
    broken, seemingly random scatter that stage 1 cannot learn. Instead each class's fraction of
    the coarse voxel is measured (one-hot, smoothed over the voxel, linear sampling) and a
    structure wins the voxel when its fraction beats background's weighted down (a structure
    covering about a quarter of the voxel gets it).
    """
    if labels.grid.same_as(grid):
        return labels.array.astype(np.uint8)
    ratio = np.asarray(grid.spacing) / labels.spacing
    fractions = []
    for value in range(N_CLASSES):
        onehot = (labels.array == value).astype(np.float32)
        if ratio.max() > 1.2:
            onehot = ndi.uniform_filter(onehot, size=np.maximum(1, np.round(ratio)).astype(int))
        fractions.append(resample_to(labels.with_array(onehot), grid).array)
    frac = np.stack(fractions)
    frac[0] *= background_weight
    return np.argmax(frac, axis=0).astype(np.uint8)


def train_stage1(cases: list[Case], args, log) -> tuple[torch.nn.Module, list[dict], dict]:
    from ..nets.localiser import make_localiser

    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    sequences = args.sequences
    data = stage1_data(cases, sequences, args.stage1_spacing)
    net_cfg = {"in_channels": len(sequences), "out_channels": N_CLASSES, "filters": list(args.filters),
               "deep_supervision": DS_HEADS_STAGE1}
    net = make_localiser(**net_cfg)
    n_poolings = len(args.filters) - 1
    opt = make_optimizer(net, args.lr, args.optimizer)
    total = args.iterations1
    marks = {max(1, total // 3), max(1, 2 * total // 3), total}
    checkpoints = []
    net.train()
    for it in range(1, total + 1):
        poly_lr(opt, args.lr, it - 1, total)
        x, y = data[int(rng.integers(len(data)))]
        xt, yt = augment(torch.from_numpy(x), torch.from_numpy(y), rng)
        xt, crop = pad8(xt[None])
        yt = F.pad(yt[None, None].float(), _pads(crop, xt.shape[2:]))[:, 0].long()
        loss = stage1_loss(net(xt), yt, n_poolings)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 25 == 0 or it == total:
            log(f"stage1 it {it}/{total} loss {loss.item():.4f}")
        if it in marks:
            checkpoints.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    config = {"net": net_cfg, "sequences": sequences, "spacing_mm": args.stage1_spacing, "stage": 1}
    return net.eval(), checkpoints, config


def _pads(crop: tuple, padded_shape) -> list[int]:
    """F.pad arguments that pad an unpadded tensor back to ``padded_shape`` like ``pad8`` did."""
    out: list[int] = []
    for sl, size in reversed(list(zip(crop[2:], padded_shape))):
        out += [sl.start, size - sl.stop]
    return out


# ---------------------------------------------------------------------------------- stage 2
def coarse_predictions(net, config: dict, checkpoints: list[dict], cases: list[Case]) -> list[list[np.ndarray]]:
    """For each checkpoint, each case's stage-1 labels on the case's grid (the paper's trick)."""
    from .infer import run_stage1

    preds = []
    for state in checkpoints:
        net.load_state_dict(state)
        net.eval()
        manifest = {"config": config, "inputs": config["sequences"]}
        preds.append([np.argmax(run_stage1(net, manifest, c.images, c.brain), 0).astype(np.uint8)
                      for c in cases])
    net.load_state_dict(checkpoints[-1])
    return preds


def train_stage2(label: int, cases: list[Case], preds: list[list[np.ndarray]], args, log
                 ) -> tuple[torch.nn.Module, dict]:
    from ..nets.hmrnet import HMRNet

    s = STRUCTURES[label]
    rng = np.random.default_rng(args.seed + label)
    torch.manual_seed(args.seed + label)
    sequences = args.sequences
    net_cfg = {"in_channels": len(sequences), "out_channels": 2, "kind": s.kind, "slice_axis": s.slice_axis,
               "hr_channels": args.hr_channels, "mr_channels": list(args.mr_channels),
               "deep_supervision": True, "fusion": args.fusion}
    net = HMRNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in net_cfg.items()})
    lr = args.lr if args.lr2 is None else args.lr2
    opt = make_optimizer(net, lr, args.optimizer)
    # Stage-2 inputs on the stage-2 spacing, precomputed per case.
    inputs = []
    for c in cases:
        ref = c.images[sequences[0]]
        g2 = grid_at_spacing(ref.grid, args.stage2_spacing)
        same = g2.same_as(ref.grid, atol=1e-3)
        x = stack_inputs(c.images, sequences, c.brain, None if same else g2)
        y = c.labels.array if same else resample_to(c.labels, g2, label=True).array
        inputs.append((x, (y == label).astype(np.int64), same, g2, ref))
    patch = np.array(args.patch)
    total = args.iterations2
    net.train()
    for it in range(1, total + 1):
        poly_lr(opt, lr, it - 1, total)
        ci = int(rng.integers(len(cases)))
        x, y, same, g2, ref = inputs[ci]
        coarse = preds[int(rng.integers(len(preds)))][ci] == label
        if not same:
            coarse = resample_to(Volume(coarse.astype(np.float32), ref.affine), g2).array > 0.5
        box = bbox(coarse, args.margin) or bbox(y > 0, args.margin)
        if box is None:
            continue
        xb, yb = x[(slice(None), *box)], y[box]
        # A random patch of the crop (half of them centred on the structure).
        size = np.minimum(np.array(yb.shape), patch)
        fg = np.argwhere(yb > 0)
        if len(fg) and rng.random() < 0.5:
            centre = fg[int(rng.integers(len(fg)))]
            start = np.clip(centre - size // 2, 0, np.array(yb.shape) - size)
        else:
            start = np.array([int(rng.integers(0, n - k + 1)) for n, k in zip(yb.shape, size)])
        sl = tuple(slice(int(a), int(a + k)) for a, k in zip(start, size))
        xt, yt = augment(torch.from_numpy(np.ascontiguousarray(xb[(slice(None), *sl)])),
                         torch.from_numpy(np.ascontiguousarray(yb[sl])), rng)
        xt, crop = pad8(xt[None])
        yt = F.pad(yt[None, None].float(), _pads(crop, xt.shape[2:]))[:, 0].long()
        loss = deep_supervision_loss(net(xt), yt, s.theta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 25 == 0 or it == total:
            log(f"stage2 {s.key} it {it}/{total} loss {loss.item():.4f}")
    config = {"net": net_cfg, "sequences": sequences, "spacing_mm": args.stage2_spacing, "stage": 2,
              "label": label, "structure": s.key, "margin": args.margin, "reach": args.reach,
              "patch": [int(p) for p in patch],
              "theta": s.theta}
    return net.eval(), config


# ---------------------------------------------------------------------------------- CLI
def default_sequences(cases: list[Case]) -> list[str]:
    """CT + T1ce + T2 when every case has a CT (the paper's best inputs), else T1ce + T2."""
    with_ct = bool(cases) and all("ct" in c.images for c in cases)
    return list(DEFAULT_SEQUENCES_WITH_CT if with_ct else DEFAULT_SEQUENCES)


def _ints(text) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()] if isinstance(text, str) else list(text)


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sequences is not None:
        args.sequences = [s.strip() for s in args.sequences.split(",") if s.strip()]
    args.filters, args.mr_channels, args.patch = _ints(args.filters), _ints(args.mr_channels), _ints(args.patch)
    if len(args.mr_channels) != 7:
        raise InputError(None, "--mr-channels needs seven values (HMRNet's seven blocks)")
    keys = {s.key: label for label, s in STRUCTURES.items()}
    wanted = [k.strip() for k in args.structures.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in keys]
    if unknown:
        raise InputError(None, f"unknown structure(s) {unknown}; known: {sorted(keys)}")
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    if args.data:
        mapping = ABCS_LABELS if args.abcs_labels is None else {int(k): int(v) for k, v in json.loads(args.abcs_labels).items()}
        cases = load_abcs(args.data, mapping)
    else:
        cases = phantom_cases(args.phantom)
    if args.sequences is None:
        args.sequences = default_sequences(cases)
        log(f"inputs {'+'.join(args.sequences)} (default for these cases)")
    missing = [s for s in args.sequences if any(s not in c.images for c in cases)]
    if missing:
        raise InputError(args.data, f"sequence(s) {missing} missing in some case")
    log(f"{len(cases)} cases")
    out = Path(args.out)
    notes = {"cases": len(cases), "source": "ABCs" if args.data else "phantom", "iterations": args.iterations1,
             "optimizer": args.optimizer, "lr": args.lr, "lr_schedule": "poly 0.9", "seed": args.seed,
             "description": args.description or "barriers model (paper 000 two-stage framework)"}
    if args.stage1_from:
        # Reuse a trained stage 1 (its package is copied): stage-2 crops then come from its final
        # weights only, not from three checkpoints.
        import shutil

        from .package import load_network

        net1, man1 = load_network(args.stage1_from)
        cfg1 = dict(man1["config"], net=man1["architecture"]["params"], sequences=man1["inputs"])
        if cfg1["sequences"] != args.sequences:
            raise InputError(args.stage1_from, f"takes {cfg1['sequences']}, not {args.sequences}")
        checkpoints = [{k: v.detach().clone() for k, v in net1.state_dict().items()}]
        if Path(args.stage1_from).resolve() != (out / "stage1").resolve():
            shutil.copytree(args.stage1_from, out / "stage1", dirs_exist_ok=True)
        log(f"stage 1 from {args.stage1_from}")
    else:
        net1, checkpoints, cfg1 = train_stage1(cases, args, log)
        write_package(out / "stage1", net1, "dynunet", cfg1, notes, half=args.half)
    preds = coarse_predictions(net1, cfg1, checkpoints, cases)
    from ..metrics import dice

    scores = [np.mean([dice(p == v, c.labels.array == v) for p, c in zip(preds[-1], cases)])
              for v in range(1, N_CLASSES)]
    log("stage1 training-case Dice per structure: " + " ".join(f"{d:.2f}" for d in scores))
    for key in wanted:
        net2, cfg2 = train_stage2(keys[key], cases, preds, args, log)
        write_package(out / f"stage2_{key}", net2, "hmrnet", cfg2,
                      dict(notes, iterations=args.iterations2, lr=args.lr if args.lr2 is None else args.lr2),
                      half=args.half)
    log(f"wrote {out}")
    return 0

