"""Ventricles drawn voxel by voxel by a small classifier learnt from the OASIS heads' own labels.

The CSF model (``multiatlas.csf_refine``) keeps the voxels darker than one threshold; the
Neuromorphometrics ventricles also take in part of the partial-volume border and tissue-bright
voxels inside them (choroid plexus), which no single threshold separates (README, "Cerebellum and
ventricles on real heads": even with the true ventricles as the prior the best threshold reached
0.84-0.89). The classifier sees, per voxel near the registered ventricles, the intensity on a
scale set by the case itself (0 at the ventricles' CSF, 1 at the tissue around them, so T1, T1ce,
T2 or FLAIR give the same range), its local minimum, maximum and blur, the fused atlas
probability and its blur, and the signed distance to the CSF model's mask; a perceptron with two
hidden layers (``FEATURES`` -> 32 -> 32 -> 1) says ventricle or not. Its blurs and neighbourhoods
are counted in voxels and it learnt at 1 mm, so it is used on grids of about 1 mm only
(``suits``); elsewhere the CSF model's mask stands.

It is trained (``train``) on the three OASIS heads, each seen through atlases other than itself
(``scripts/train_ventricle_classifier.py``); the weights (about 1,400 numbers) ship in
``data/anatomy/oasis/ventricles_classifier.npz`` with their record beside them. Measured
leave-one-out - the head segmented is never in the training set, nor among the atlases that made
the training heads' priors (``bench/barriers_accuracy.py --oasis``) - README.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

FEATURES = ("intensity", "intensity blurred 1 voxel", "intensity blurred 2 voxels",
            "atlas probability", "atlas probability blurred 2 voxels",
            "signed distance to the CSF model's mask (mm)", "intensity minimum 3x3x3",
            "intensity maximum 3x3x3", "intensity minimum 5x5x5")
HIDDEN = 32
#: Voxels the classifier decides: fused probability above this, or within ``NEAR_MM`` of the CSF
#: model's mask (on the OASIS heads these held 98-99.8 % of the true ventricles).
CANDIDATE_PROBABILITY = 0.05
NEAR_MM = 3.0
WEIGHTS = "ventricles_classifier.npz"
#: The voxel sizes (mm) the classifier is used at: it learnt on the OASIS heads' 1 mm voxels.
SPACING_MM = (0.8, 1.25)


def suits(spacing) -> bool:
    """Whether a grid's voxels are close enough to the training's 1 mm for the classifier."""
    return all(SPACING_MM[0] <= float(v) <= SPACING_MM[1] for v in spacing)


@dataclass(frozen=True)
class Classifier:
    mean: np.ndarray  # feature standardisation
    std: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (weight [out, in], bias [out]) per layer

    def probability(self, x: np.ndarray) -> np.ndarray:
        h = (np.asarray(x, np.float64) - self.mean) / self.std
        for n, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if n < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return 1.0 / (1.0 + np.exp(-h[:, 0]))

    def save(self, path: Path, record: dict) -> None:
        arrays = {"mean": self.mean, "std": self.std}
        for n, (w, b) in enumerate(self.layers):
            arrays[f"w{n}"], arrays[f"b{n}"] = w, b
        np.savez(path, **arrays)
        Path(path).with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Classifier:
        with np.load(path) as data:
            n = sum(1 for k in data.files if k.startswith("w"))
            return cls(data["mean"], data["std"],
                       tuple((data[f"w{i}"], data[f"b{i}"]) for i in range(n)))


@lru_cache(maxsize=1)
def shipped() -> Classifier | None:
    """The classifier shipped with the atlases, or None when its file is absent."""
    from .multiatlas import atlas_folder

    path = atlas_folder() / WEIGHTS
    return Classifier.load(path) if path.exists() else None


def features(image: np.ndarray, brain: np.ndarray, prob: np.ndarray, refined: np.ndarray,
             spacing) -> tuple[np.ndarray, np.ndarray]:
    """(candidate mask, features [n, len(FEATURES)] of the candidates) on ``image``'s grid.

    ``prob``: the fused atlas probability of the ventricles; ``refined``: the CSF model's mask
    (``multiatlas.csf_refine``). The intensity scale: 0 at the median of the ventricles' core
    (probability >= 0.9), 1 at the median of the tissue 2-6 mm around them."""
    spacing = np.asarray(spacing, float)
    near = ndi.distance_transform_edt(~refined, sampling=spacing)
    candidates = brain & ((prob > CANDIDATE_PROBABILITY) | (near <= NEAR_MM))
    if not candidates.any():
        return candidates, np.zeros((0, len(FEATURES)))
    # Everything below is local: work in the candidates' box, grown by enough for the filters.
    idx = np.argwhere(candidates)
    lo, hi = np.maximum(idx.min(0) - 8, 0), np.minimum(idx.max(0) + 9, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    from .multiatlas import csf_and_tissue, ventricle_core

    v, p, inside, ref = (np.asarray(a[box]) for a in (image, prob, brain, refined))
    v = v.astype(np.float32)
    csf, tissue = csf_and_tissue(v, inside, p, ventricle_core(inside, p), spacing)
    z = (v - csf) / (tissue - csf)
    signed = near[box] - ndi.distance_transform_edt(ref, sampling=spacing)
    channels = (z, ndi.gaussian_filter(z, 1), ndi.gaussian_filter(z, 2), p,
                ndi.gaussian_filter(p, 2), signed, ndi.minimum_filter(z, 3),
                ndi.maximum_filter(z, 3), ndi.minimum_filter(z, 5))
    chosen = candidates[box]
    return candidates, np.stack([c[chosen] for c in channels], 1)


def classify(image: np.ndarray, brain: np.ndarray, prob: np.ndarray, refined: np.ndarray,
             spacing, classifier: Classifier) -> np.ndarray:
    """The ventricles: candidates the classifier gives more than one half, in the connected
    pieces that meet the CSF model's mask (no island away from the ventricles)."""
    from .multiatlas import pieces_meeting

    candidates, x = features(image, brain, prob, refined, spacing)
    out = np.zeros(brain.shape, bool)
    if len(x):
        out[candidates] = classifier.probability(x) > 0.5
    return pieces_meeting(out, refined)


def train(examples: list[tuple[np.ndarray, np.ndarray]], *, seed: int = 0,
          steps: int = 300) -> Classifier:
    """A classifier from (features, is-ventricle) pairs: full-batch Adam (learning rate 0.01) on
    the binary cross-entropy, ``steps`` steps, seeded, on one thread (the same weights every
    time)."""
    import torch

    x = np.concatenate([e[0] for e in examples]).astype(np.float64)
    y = np.concatenate([e[1] for e in examples]).astype(np.float32)
    mean, std = x.mean(0), x.std(0) + 1e-6
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), HIDDEN), torch.nn.ReLU(),
                                  torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
                                  torch.nn.Linear(HIDDEN, 1))
        xt = torch.tensor((x - mean) / std, dtype=torch.float32)
        yt = torch.from_numpy(y)
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(steps):
            optimiser.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt)[:, 0], yt)
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    layers = tuple((m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
                   for m in net if isinstance(m, torch.nn.Linear))
    return Classifier(mean, std, layers)


def priors(image, brain_mask, atlases) -> list[np.ndarray]:
    """The ventricles' probability on ``image``'s grid as each of ``atlases`` alone gives it after
    registration, and, when there are several, as their fusion gives it (the classifier learns
    from both: the shipped stage fuses three atlases, a leave-one-out measurement fewer)."""
    from .multiatlas import _CHANNEL, VENTRICLES, multiatlas_structures

    singles = [multiatlas_structures(image, brain_mask, atlases=(atlas,), refine_ventricles=False)[1]
               [_CHANNEL[VENTRICLES]] for atlas in atlases]
    return singles + ([np.mean(singles, axis=0)] if len(singles) > 1 else [])


def examples(t1, neuromorphometrics, atlases) -> list[tuple[np.ndarray, np.ndarray]]:
    """Training pairs (features, is-ventricle) of a labelled head - a skull-stripped T1 and its
    Neuromorphometrics labels, as the OASIS heads come - one per prior of ``priors``; ``atlases``
    must not include the head."""
    from .multiatlas import VENTRICLES, csf_refine, structures_from_neuromorphometrics

    truth = structures_from_neuromorphometrics(neuromorphometrics.array) == VENTRICLES
    brain = t1.array > 0
    out = []
    for prob in priors(t1, t1.with_array(brain.astype(np.uint8)), atlases):
        refined, _ = csf_refine(t1.array, brain, prob, t1.spacing)
        candidates, x = features(t1.array, brain, prob, refined & brain, t1.spacing)
        out.append((x, truth[candidates]))
    return out
