"""HNF-Netv2 (Jia et al., BraTS 2021): high-resolution, non-local feature network with SDE blocks.

Structure (paper Sect. 3, Figs. 2-4), built from MONAI blocks:

- original scale: two encoding conv blocks (``Convolution``: conv + norm + activation) and, at the
  end, two decoding conv blocks; the decoder's input is the up-sampled EMA output *added* to the
  encoder's full-resolution features;
- a 2-stride conv to 1/2 scale, then four cascaded Parallel Multi-scale Fusion (PMF) modules; module
  ``m`` has ``m`` parallel branches at 1/2 ... 1/2^m (a new, lower branch is made by a 2-stride conv
  from the lowest branch before each module, so the high resolution is kept throughout). Every branch
  is ``blocks`` residual blocks (MONAI ``UnetResBlock``) followed by an *intra-scale SDE* block
  (global average pooling, two layers, a sigmoid re-weighting of the channels: MONAI
  ``ChannelSELayer``). The branches are then fused fully connected: each output branch sums all
  branches, lower ones through conv 1x1 + trilinear up-sampling, higher ones through 2-stride convs;
- one *inter-scale SDE* block between the 3rd and the 4th PMF module: global average pooling of the
  smallest branch, a conv to one channel, up-sampled (broadcast) to every branch, concatenated with
  it and fused back by a conv;
- after the 4th PMF module the four scales are brought to 1/2 scale, concatenated and passed through
  an Expectation-Maximisation Attention (EMA) module (Li et al. 2019): ``bases`` bases refined by
  ``em_iters`` E/M steps, the features reconstructed from them (non-local attention at the cost of
  N x K instead of N x N), with a residual connection; the bases' initialisation is a running
  average updated in training;
- all down-sampling is 2-stride convolution; all up-sampling is convolution + trilinear interpolation.

SDE blocks at the paper's cost. Table 1 of the paper gives HNF-Net 16.85 M, + intra-scale SDE
17.31 M (+0.46 M), + inter-scale SDE 17.91 M (+0.60 M) parameters. The text leaves the blocks' sizes
open; the reading that reproduces both figures (``sde_layout="paper"``, the default) is:

- intra-scale SDE inside every residual block of every branch, between its second conv and the
  residual addition (as in SE-ResNet), with two full-width layers (C -> C -> C, no reduction):
  2 C^2 + 2 C per block, +0.46 M for the paper configuration;
- inter-scale SDE: the smallest branch's global average is broadcast to each branch's resolution, a
  3x3x3 conv reduces it to one channel, it is concatenated with the branch and fused back by a 3x3x3
  conv block (C + 1 -> C): +0.60 M.

``sde_layout="branch"`` is the earlier, lighter reading (one SE block with reduction 4 after each
branch, 1x1x1 convs in the inter-scale block: +0.08 M); the phantom demo package was trained with
it and its manifest says so.

Parameter count. The paper reports 17.91 M parameters but not the channel widths of the branches
nor the number of residual blocks per branch (they are in the HNF-Net papers it cites). We use
``paper_config()``: 32 channels at the original scale (the paper's "recovered to ... 32 channels"),
HRNet-style doubling widths (32, 64, 128, 256) for the 1/2 ... 1/16 branches, two residual blocks per
branch, a 256-channel EMA with 64 bases: 16.63 M without SDE (paper: 16.85 M), 17.69 M with both
(paper: 17.91 M; the test prints the exact figures). The 1 % gap comes from what the paper leaves
open (EMA width, norm layers' affine parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer, Convolution, UnetResBlock
from torch import nn

NORM = ("instance", {"affine": True})
ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


def conv_block(cin: int, cout: int, stride: int = 1, kernel: int = 3, act: bool = True,
               norm=NORM) -> Convolution:
    return Convolution(3, cin, cout, strides=stride, kernel_size=kernel, norm=norm,
                       act=ACT if act else None)


def _up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)


class SDEResBlock(nn.Module):
    """Residual block (conv-norm-act, conv-norm) with the intra-scale SDE before the addition."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv_block(channels, channels)
        self.conv2 = conv_block(channels, channels, act=False)
        self.sde = ChannelSELayer(3, channels, r=1, acti_type_1=("relu", {"inplace": True}))
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x):
        return self.act(x + self.sde(self.conv2(self.conv1(x))))


class Branch(nn.Module):
    """Residual blocks at one scale with the intra-scale SDE (channel re-weighting by global context).

    ``layout="paper"``: SDE inside every residual block; ``"branch"``: one SDE after the blocks.
    """

    def __init__(self, channels: int, blocks: int, sde_reduction: int = 4, intra_sde: bool = True,
                 layout: str = "paper"):
        super().__init__()
        if intra_sde and layout == "paper":
            self.blocks = nn.Sequential(*[SDEResBlock(channels) for _ in range(blocks)])
            self.sde = nn.Identity()
            return
        self.blocks = nn.Sequential(*[
            UnetResBlock(3, channels, channels, kernel_size=3, stride=1, norm_name=NORM, act_name=ACT)
            for _ in range(blocks)])
        self.sde = (ChannelSELayer(3, channels, r=sde_reduction, acti_type_1=("relu", {"inplace": True}))
                    if intra_sde else nn.Identity())

    def forward(self, x):
        return self.sde(self.blocks(x))


class Fuse(nn.Module):
    """Fully connected fusion: output branch j = sum over input branches i (resampled to j)."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        n = len(widths)
        self.paths = nn.ModuleList()
        for j in range(n):
            row = nn.ModuleList()
            for i in range(n):
                if i == j:
                    row.append(nn.Identity())
                elif i > j:  # lower resolution: conv 1x1 then trilinear up-sampling in forward
                    row.append(conv_block(widths[i], widths[j], kernel=1, act=False))
                else:  # higher resolution: (j - i) 2-stride convs
                    steps = [conv_block(widths[i], widths[i], stride=2) for _ in range(j - i - 1)]
                    steps.append(conv_block(widths[i], widths[j], stride=2, act=False))
                    row.append(nn.Sequential(*steps))
            self.paths.append(row)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for j, row in enumerate(self.paths):
            total = xs[j]
            for i, path in enumerate(row):
                if i == j:
                    continue
                y = path(xs[i])
                total = total + (_up(y, xs[j].shape[2:]) if i > j else y)
            out.append(self.act(total))
        return out


class InterScaleSDE(nn.Module):
    """Global context of the smallest branch, reduced to 1 channel, concatenated to each branch and
    fused in.

    ``layout="paper"``: broadcast to the branch's size, then 3x3x3 convs (reduce, fuse);
    ``"branch"``: 1x1x1 convs on the pooled vector, then broadcast.
    """

    def __init__(self, widths: Sequence[int], layout: str = "paper"):
        super().__init__()
        k = 3 if layout == "paper" else 1
        self.layout = layout
        self.reduce = nn.ModuleList([nn.Conv3d(widths[-1], 1, kernel_size=k, padding=k // 2)
                                     for _ in widths])
        self.fuse = nn.ModuleList([conv_block(w + 1, w, kernel=k) for w in widths])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        g = F.adaptive_avg_pool3d(xs[-1], 1)
        out = []
        for x, reduce, fuse in zip(xs, self.reduce, self.fuse):
            if self.layout == "paper":
                ctx = reduce(g.expand(-1, -1, *x.shape[2:]))
            else:
                ctx = _up(reduce(g), x.shape[2:])  # up-sampling a 1x1x1 map = broadcast
            out.append(fuse(torch.cat([x, ctx], dim=1)))
        return out


class PMF(nn.Module):
    """Parallel Multi-scale Fusion module with ``len(widths)`` branches."""

    def __init__(self, widths: Sequence[int], blocks: int, intra_sde: bool = True,
                 sde_reduction: int = 4, sde_layout: str = "paper"):
        super().__init__()
        self.branches = nn.ModuleList([Branch(w, blocks, sde_reduction, intra_sde, sde_layout)
                                       for w in widths])
        self.fuse = Fuse(widths) if len(widths) > 1 else None

    def forward(self, xs):
        xs = [b(x) for b, x in zip(self.branches, xs)]
        return self.fuse(xs) if self.fuse is not None else xs


class EMA(nn.Module):
    """Expectation-Maximisation Attention over ``bases`` bases with ``iters`` EM steps."""

    def __init__(self, channels: int, bases: int = 64, iters: int = 3, momentum: float = 0.9):
        super().__init__()
        self.iters, self.momentum = iters, momentum
        mu = torch.randn(1, channels, bases) * (2.0 / bases) ** 0.5
        self.register_buffer("mu", F.normalize(mu, dim=1))
        self.conv_in = nn.Conv3d(channels, channels, 1)
        self.conv_out = Convolution(3, channels, channels, kernel_size=1, norm=NORM, act=None)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x):
        identity = x
        b, c = x.shape[:2]
        feats = self.conv_in(x).reshape(b, c, -1)  # B x C x N
        mu = self.mu.expand(b, -1, -1)
        with torch.no_grad():  # EM steps (as in EMANet, gradients only through the last step)
            for _ in range(self.iters - 1):
                z = torch.softmax(torch.einsum("bcn,bck->bnk", feats, mu), dim=2)
                mu = F.normalize(torch.einsum("bcn,bnk->bck", feats, z / (1e-6 + z.sum(1, keepdim=True))), dim=1)
        z = torch.softmax(torch.einsum("bcn,bck->bnk", feats, mu), dim=2)
        mu = F.normalize(torch.einsum("bcn,bnk->bck", feats, z / (1e-6 + z.sum(1, keepdim=True))), dim=1)
        if self.training:
            with torch.no_grad():
                self.mu.mul_(self.momentum).add_(mu.mean(0, keepdim=True), alpha=1 - self.momentum)
                self.mu.copy_(F.normalize(self.mu, dim=1))
        recon = torch.einsum("bck,bnk->bcn", mu, z).reshape_as(x)
        return self.act(self.conv_out(F.relu(recon)) + identity)


class HNFNetv2(nn.Module):
    """HNF-Netv2. Output: ``out_channels`` logits at the input's resolution.

    The input's spatial size must be divisible by 16 (five scales).
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 3, base: int = 32,
                 widths: Sequence[int] = (32, 64, 128, 256), blocks: int = 2, ema_channels: int = 256,
                 ema_bases: int = 64, ema_iters: int = 3, intra_sde: bool = True,
                 inter_sde: bool = True, sde_reduction: int = 4, sde_layout: str = "paper"):
        super().__init__()
        widths = tuple(widths)
        if sde_layout not in ("paper", "branch"):
            raise ValueError(f"sde_layout must be 'paper' or 'branch', not {sde_layout!r}")
        if len(widths) != 4:
            raise ValueError("HNF-Netv2 has four PMF scales: widths needs 4 values")
        self.encoder = nn.Sequential(conv_block(in_channels, base), conv_block(base, base))
        self.down = conv_block(base, widths[0], stride=2)
        self.transitions = nn.ModuleList(
            [conv_block(widths[m - 1], widths[m], stride=2) for m in range(1, 4)])
        self.pmfs = nn.ModuleList(
            [PMF(widths[: m + 1], blocks, intra_sde, sde_reduction, sde_layout) for m in range(4)])
        self.inter_sde = InterScaleSDE(widths[:3], sde_layout) if inter_sde else None
        self.ema_in = conv_block(sum(widths), ema_channels, kernel=1)
        self.ema = EMA(ema_channels, ema_bases, ema_iters)
        self.ema_out = conv_block(ema_channels, base, kernel=1)
        self.decoder = nn.Sequential(conv_block(base, base), conv_block(base, base))
        self.head = nn.Conv3d(base, out_channels, kernel_size=1)

    def forward(self, x):
        full = self.encoder(x)
        xs = [self.down(full)]
        for m, pmf in enumerate(self.pmfs):
            if m > 0:
                xs = xs + [self.transitions[m - 1](xs[-1])]
            xs = pmf(xs)
            if m == 2 and self.inter_sde is not None:  # between the 3rd and the 4th PMF
                xs = self.inter_sde(xs)
        half = xs[0].shape[2:]
        mixed = torch.cat([xs[0]] + [_up(t, half) for t in xs[1:]], dim=1)
        y = self.ema_out(self.ema(self.ema_in(mixed)))
        y = _up(y, full.shape[2:]) + full
        return self.head(self.decoder(y))


def paper_config() -> dict:
    """The configuration whose size is closest to the paper's 17.91 M parameters."""
    return {"in_channels": 4, "out_channels": 3, "base": 32, "widths": (32, 64, 128, 256),
            "blocks": 2, "ema_channels": 256, "ema_bases": 64, "ema_iters": 3}


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
