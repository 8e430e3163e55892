"""ConResNet (Zhang et al., IEEE TMI 2021): inter-slice context residual learning.

- Shared encoder of nine pre-activation residual blocks (two 3x3x3 convs, GroupNorm with 8 groups,
  weight-standardised convolutions): stage 1 a conv with ``base`` (32) kernels and one block; stages
  2-4 a 2-stride conv doubling the channels and two blocks (32 -> 256, 1/8 of the input size);
  stage 5 two blocks with dilation 2.
- Two decoders over three scales (1/4, 1/2, 1): the segmentation decoder up-samples trilinearly,
  halves the channels and sums the encoder's skip features; the context-residual (ConRes) decoder
  is fed, at each scale, by the context residual module (``ContextResidualModule``):

      F     = Conv(I_seg + I_skip)                      (conv + GN + ReLU)
      G     = |sigmoid(F[s+1]) - sigmoid(F[s])|          along the slice axis, first slice 0-padded
      O_res = Conv(Conv(G) + I_res)
      O_seg = F * (1 + sigmoid(O_res))                   (context attention)

  The ConRes decoder's first input is the context residual of the encoder's output.
- Heads: a 1x1x1 conv on the last segmentation features (``out_channels`` region logits: the paper's
  ET/WT/TC sigmoid heads), and one 1x1x1 conv per scale predicting the context-residual mask, each
  up-sampled to the input size (deep supervision, weighted BCE in ``tumor.losses.ConResLoss``).

In training mode ``forward`` returns ``(segmentation_logits, [residual_logits x 3])`` (coarse to
fine); in eval mode only the segmentation logits. The slice axis is the last spatial axis by default
(axial slices on our canonical RAS grid), as in the paper (S x H x W with S the axial slices).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WSConv3d(nn.Conv3d):
    """Conv3d with weight standardisation (zero mean, unit variance per output filter)."""

    def forward(self, x):
        w = self.weight
        mean = w.mean(dim=(1, 2, 3, 4), keepdim=True)
        std = w.view(w.shape[0], -1).std(dim=1).view(-1, 1, 1, 1, 1) + 1e-5
        return F.conv3d(x, (w - mean) / std, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


def gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            gn(channels), nn.ReLU(inplace=True),
            WSConv3d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            gn(channels), nn.ReLU(inplace=True),
            WSConv3d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False))

    def forward(self, x):
        return x + self.body(x)


def conv_gn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(WSConv3d(cin, cout, kernel, padding=kernel // 2, bias=False), gn(cout),
                         nn.ReLU(inplace=True))


def context_residual(f: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """G[s+1] = |sigmoid(f[s+1]) - sigmoid(f[s])| along ``axis``; G[0] = 0 (padded first slice)."""
    s = torch.sigmoid(f)
    n = f.shape[axis]
    diff = (s.narrow(axis, 1, n - 1) - s.narrow(axis, 0, n - 1)).abs()
    return torch.cat([torch.zeros_like(s.narrow(axis, 0, 1)), diff], dim=axis)


class ContextResidualModule(nn.Module):
    def __init__(self, channels: int, slice_axis: int = -1):
        super().__init__()
        self.axis = slice_axis
        self.fuse = conv_gn_relu(channels, channels)       # F = Conv(I_seg + I_skip)
        self.res_in = conv_gn_relu(channels, channels)     # Conv(G)
        self.res_out = conv_gn_relu(channels, channels)    # Conv(Conv(G) + I_res)

    def forward(self, i_seg, i_skip, i_res):
        f = self.fuse(i_seg + i_skip)
        g = context_residual(f, self.axis)
        o_res = self.res_out(self.res_in(g) + i_res)
        o_seg = f * (1.0 + torch.sigmoid(o_res))
        return o_seg, o_res


class ConResNet(nn.Module):
    def __init__(self, in_channels: int = 4, out_channels: int = 3, base: int = 32,
                 slice_axis: int = -1):
        super().__init__()
        c = [base, base * 2, base * 4, base * 8]
        self.axis = slice_axis
        self.stem = WSConv3d(in_channels, c[0], 3, padding=1, bias=False)
        self.enc1 = ResBlock(c[0])
        self.down = nn.ModuleList([WSConv3d(c[i], c[i + 1], 3, stride=2, padding=1, bias=False)
                                   for i in range(3)])
        self.enc = nn.ModuleList([nn.Sequential(ResBlock(c[i + 1]), ResBlock(c[i + 1]))
                                  for i in range(3)])
        self.dilated = nn.Sequential(ResBlock(c[3], dilation=2), ResBlock(c[3], dilation=2))
        self.bottleneck_act = nn.Sequential(gn(c[3]), nn.ReLU(inplace=True))
        # Decoder stages to 1/4, 1/2, 1: halve channels after each up-sampling.
        self.seg_reduce = nn.ModuleList([conv_gn_relu(c[3 - i], c[2 - i], 1) for i in range(3)])
        self.res_reduce = nn.ModuleList([conv_gn_relu(c[3 - i], c[2 - i], 1) for i in range(3)])
        self.modules_cr = nn.ModuleList([ContextResidualModule(c[2 - i], slice_axis) for i in range(3)])
        self.res_heads = nn.ModuleList([nn.Conv3d(c[2 - i], out_channels, 1) for i in range(3)])
        self.seg_head = nn.Conv3d(c[0], out_channels, 1)

    def forward(self, x):
        size = x.shape[2:]
        skips = [self.enc1(self.stem(x))]
        h = skips[0]
        for down, enc in zip(self.down, self.enc):
            h = enc(down(h))
            skips.append(h)
        h = self.bottleneck_act(self.dilated(h))
        seg = h
        res = context_residual(h, self.axis)  # the ConRes decoder starts from the encoder's residual
        residuals = []
        for i in range(3):
            skip = skips[2 - i]
            target = skip.shape[2:]
            seg = self.seg_reduce[i](F.interpolate(seg, size=target, mode="trilinear", align_corners=False))
            res = self.res_reduce[i](F.interpolate(res, size=target, mode="trilinear", align_corners=False))
            seg, res = self.modules_cr[i](seg, skip, res)
            if self.training:
                r = self.res_heads[i](res)
                residuals.append(F.interpolate(r, size=size, mode="trilinear", align_corners=False)
                                 if tuple(r.shape[2:]) != tuple(size) else r)
        out = self.seg_head(seg)
        return (out, residuals) if self.training else out
