"""Losses: region-based Dice + BCE (HNF-Netv2 uses generalised Dice + BCE), label Dice + CE, and
ConResNet's context-residual supervision (weighted BCE with deep supervision)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, GeneralizedDiceLoss
from torch import nn


class RegionLoss(nn.Module):
    """Sigmoid (generalised) Dice + binary cross-entropy over region channels (WT/TC/ET)."""

    def __init__(self, generalised: bool = False):
        super().__init__()
        self.dice = (GeneralizedDiceLoss(sigmoid=True, batch=True) if generalised
                     else DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5))

    def forward(self, logits, target):
        return self.dice(logits, target) + F.binary_cross_entropy_with_logits(logits, target)


class LabelLoss(nn.Module):
    """Softmax Dice + cross-entropy over label classes (target: B x 1 x ... class indices)."""

    def __init__(self):
        super().__init__()
        self.loss = DiceCELoss(softmax=True, to_onehot_y=True, batch=True)

    def forward(self, logits, target):
        return self.loss(logits, target)


def context_residual_target(mask: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Y_res[s+1] = |Y[s+1] - Y[s]| along the slice axis, first slice 0 (ConResNet Eq. 1)."""
    diff = (mask.narrow(axis, 1, mask.shape[axis] - 1) - mask.narrow(axis, 0, mask.shape[axis] - 1)).abs()
    pad = torch.zeros_like(mask.narrow(axis, 0, 1))
    return torch.cat([pad, diff], dim=axis)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with class weights w_k = log(V / V_k) (ConResNet Eq. 7), V_k counted in the batch."""
    v = float(target.numel())
    v_fg = float(target.sum().clamp(min=1.0))
    v_bg = max(v - v_fg, 1.0)
    w_fg, w_bg = math.log(v / v_fg), math.log(v / v_bg)
    weight = torch.where(target > 0.5, w_fg, w_bg)
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight)


class ConResLoss(nn.Module):
    """L = L_seg + L_res; L_res = l(last residual) + lambda * sum(l(earlier residuals))."""

    def __init__(self, lam: float = 0.5, slice_axis: int = -1):
        super().__init__()
        self.seg = RegionLoss()
        self.lam, self.axis = lam, slice_axis

    def forward(self, outputs, target):
        if isinstance(outputs, torch.Tensor):
            return self.seg(outputs, target)
        seg, residuals = outputs
        loss = self.seg(seg, target)
        res_target = context_residual_target(target, self.axis)
        *front, last = residuals
        loss = loss + weighted_bce(last, res_target)
        for r in front:
            loss = loss + self.lam * weighted_bce(r, res_target)
        return loss
