"""Losses of the paper (000, III-C and IV-A).

- ``fn_dice_loss``: the false-negative-weighted Dice loss of a binary segmentation,
  L = 1 - (2 sum p g + eps) / (2 sum p g + theta sum (1-p) g + sum p (1-g) + eps);
  theta = 1 is the ordinary Dice loss, theta > 1 penalises missed foreground more.
- ``fine_loss``: L_fn-Dice + cross-entropy (stage 2, one structure).
- ``deep_supervision_loss``: sum_s lambda_s L(P_s, G_s) over three resolution levels with the truth
  nearest-downsampled to each level; lambda = 0.4 at full resolution, 0.3 at 1/2 and 0.3 at 1/4.
- ``coarse_loss``: multi-class soft Dice (over the classes present in the truth) + cross-entropy
  (stage 1, all structures at once).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DS_WEIGHTS = (0.4, 0.3, 0.3)  # full, 1/2, 1/4 resolution


def fn_dice_loss(prob: torch.Tensor, target: torch.Tensor, theta: float, eps: float = 1e-5) -> torch.Tensor:
    """``prob``: foreground probability, ``target``: 0/1, same shape (batch summed together)."""
    target = target.to(prob.dtype)
    tp = (prob * target).sum()
    fn = ((1 - prob) * target).sum()
    fp = (prob * (1 - target)).sum()
    return 1 - (2 * tp + eps) / (2 * tp + theta * fn + fp + eps)


def fine_loss(logits: torch.Tensor, target: torch.Tensor, theta: float) -> torch.Tensor:
    """``logits`` (B, 2, ...), ``target`` (B, ...) in {0, 1}."""
    prob = torch.softmax(logits, dim=1)[:, 1]
    return fn_dice_loss(prob, target, theta) + F.cross_entropy(logits, target.long())


def _downsample_target(target: torch.Tensor, size) -> torch.Tensor:
    if tuple(target.shape[1:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].to(target.dtype)


def deep_supervision_loss(outputs, target: torch.Tensor, theta: float, weights=DS_WEIGHTS) -> torch.Tensor:
    """``outputs``: logits [full, half, quarter] (or one tensor: no deep supervision)."""
    if isinstance(outputs, torch.Tensor):
        return fine_loss(outputs, target, theta)
    total = outputs[0].new_zeros(())
    for w, out in zip(weights, outputs):
        total = total + w * fine_loss(out, _downsample_target(target, out.shape[2:]), theta)
    return total


def coarse_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Multi-class soft Dice (mean over the foreground classes in the truth) + cross-entropy."""
    n = logits.shape[1]
    prob = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target.long(), n).movedim(-1, 1).to(prob.dtype)
    dims = (0, *range(2, prob.ndim))
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    present = onehot.sum(dims)[1:] > 0  # classes absent from the truth would only add noise
    dice_loss = (1 - dice[1:])[present].mean() if present.any() else logits.new_zeros(())
    return dice_loss + F.cross_entropy(logits, target.long())
