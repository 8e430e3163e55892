"""HMRNet (High and Multi-Resolution Network) with Bidirectional Feature Calibration.

Wang et al., "HMRNet: High and Multi-Resolution Network with Bidirectional Feature Calibration for
Brain Structure Segmentation in Radiotherapy" (paper 000, Section III):

- a **high-resolution branch** of seven conv blocks at ``hr_channels`` (8) channels with no down- or
  up-sampling;
- a **multi-resolution branch**, U-shaped, of seven blocks with ``mr_channels`` (16, 32, 64, 128, 64,
  32, 16) channels: max pooling 2x2x2 before blocks 2-4, trilinear 2x upsampling before blocks 5-7,
  each decoder block also taking its encoder block's output (U-Net skip connection);
- each block: two conv + InstanceNorm + ReLU. HMRNet-p (``kind="p"``) uses 3x3x3 convs; HMRNet-s
  (``kind="s"``) replaces each 3x3x3 conv by a spatially separable one: two intra-slice 3x3x1 convs and
  one inter-slice 1x1x3 conv, each with IN + ReLU; ``slice_axis`` (0, 1 or 2 of the input's spatial
  axes) is the axis the "1" of 3x3x1 lies along;
- a **BFC block** after blocks 2-7 (six in all, none after block 1): with F_h the high-resolution
  features and F_m the multi-resolution ones at that depth,
  HRB: F_h' = F_h (+) up(F_m), alpha_h = sigmoid(W_m * up(F_m)), F_h^c = alpha_h . F_h';
  MRB: F_m' = F_m (+) down(F_h), alpha_m = sigmoid(W_h * down(F_h)), F_m^c = alpha_m . F_m';
  (+) is concatenation, W_* pointwise convs to one channel, up = trilinear, down = max pooling;
  the last BFC (depth 7, both at full resolution) has no resampling;
- **fusion** (``fusion="conv"``, the default): as in the authors' implementation, each concatenation
  passes through a conv block (the branch's own kind) back to the branch's width before the
  attention multiplies it, F_h' = Block([F_h, up(F_m)]) with ch channels and F_m' = Block([F_m,
  down(F_h), skip]) with that depth's mr channels; a decoder block takes only the upsampled F_m and
  its encoder skip joins the fusion. HMRNet-p with three inputs then has 3.10 M parameters (the
  paper's Section V: "3.4 million"; the authors' code, with one more fusion block and a 3x3x3
  output conv, 3.12 M). ``fusion="concat"`` is the lighter layout this package had first (the
  calibrated concatenations, ch + cm channels, feed the next blocks directly; decoder blocks take the
  skip; 1.62 M): the shipped phantom demo set (``data/models/barriers_demo``) was trained with it and
  its manifests say so;
- the two branches' final features are concatenated and fused by a 1x1x1 conv and softmax.

Deep supervision (paper IV-A): pointwise heads on decoder blocks 5 and 6 (1/4 and 1/2 resolution);
``forward`` returns logits ``[full, half, quarter]`` in training mode when ``deep_supervision`` is on,
else the full-resolution logits. ``predict_proba`` applies the softmax.

Inputs must have every spatial size divisible by 8 (three poolings); ``pad_to_multiple`` helps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MR_CHANNELS = (16, 32, 64, 128, 64, 32, 16)
HR_CHANNELS = 8
# Resolution level of each multi-resolution block (0 full, 1 half, ...).
LEVELS = (0, 1, 2, 3, 2, 1, 0)
FUSIONS = ("conv", "concat")


def _kernel(size: int, slice_axis: int, along: bool) -> tuple[int, int, int]:
    """A kernel that is 3 in-plane and 1 across slices (``along=False``), or 1x1x3 across (True)."""
    k = [1, 1, 1] if along else [size, size, size]
    k[slice_axis] = size if along else 1
    return tuple(k)


class ConvINReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int]):
        padding = tuple(k // 2 for k in kernel)
        super().__init__(nn.Conv3d(cin, cout, kernel, padding=padding),
                         nn.InstanceNorm3d(cout, affine=True), nn.ReLU(inplace=True))


class SeparableConv(nn.Sequential):
    """HMRNet-s's replacement of one 3x3x3 conv: 3x3x1 + 3x3x1 intra-slice, then 1x1x3 inter-slice."""

    def __init__(self, cin: int, cout: int, slice_axis: int):
        intra = _kernel(3, slice_axis, along=False)
        inter = _kernel(3, slice_axis, along=True)
        super().__init__(ConvINReLU(cin, cout, intra), ConvINReLU(cout, cout, intra),
                         ConvINReLU(cout, cout, inter))


class ConvBlock(nn.Sequential):
    """Two convs, each followed by IN + ReLU (separable ones for HMRNet-s)."""

    def __init__(self, cin: int, cout: int, kind: str, slice_axis: int):
        if kind == "p":
            super().__init__(ConvINReLU(cin, cout, (3, 3, 3)), ConvINReLU(cout, cout, (3, 3, 3)))
        else:
            super().__init__(SeparableConv(cin, cout, slice_axis), SeparableConv(cout, cout, slice_axis))


class BFC(nn.Module):
    """Bidirectional Feature Calibration between F_h (full resolution) and F_m (``factor`` coarser).

    ``fusion="concat"``: the attention multiplies the concatenations (ch + cm channels out on both
    sides). ``fusion="conv"``: a conv block (``kind``, ``slice_axis``) first fuses each concatenation
    back to ch (high-resolution side) and cm (multi-resolution side, whose concatenation also takes
    the decoder's ``skip`` channels of encoder features)."""

    def __init__(self, ch: int, cm: int, factor: int, *, fusion: str = "concat", kind: str = "p",
                 slice_axis: int = 2, skip: int = 0):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion is one of {FUSIONS}, not {fusion!r}")
        self.factor, self.fusion = factor, fusion
        self.w_m = nn.Conv3d(cm, 1, 1)  # squeezes the upsampled F_m into the attention map for HRB
        self.w_h = nn.Conv3d(ch, 1, 1)  # squeezes the downsampled F_h into the attention map for MRB
        if fusion == "conv":
            self.fuse_h = ConvBlock(ch + cm, ch, kind, slice_axis)
            self.fuse_m = ConvBlock(cm + ch + skip, cm, kind, slice_axis)
        self.last_attention: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, fh: torch.Tensor, fm: torch.Tensor, skip: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.factor > 1:
            fm_up = F.interpolate(fm, size=fh.shape[2:], mode="trilinear", align_corners=False)
            fh_down = F.max_pool3d(fh, self.factor)
        else:
            fm_up, fh_down = fm, fh
        alpha_h = torch.sigmoid(self.w_m(fm_up))
        alpha_m = torch.sigmoid(self.w_h(fh_down))
        self.last_attention = (alpha_h.detach(), alpha_m.detach())
        fh_cat = torch.cat([fh, fm_up], dim=1)
        fm_cat = torch.cat([fm, fh_down] + ([skip] if skip is not None else []), dim=1)
        if self.fusion == "conv":
            fh_cat, fm_cat = self.fuse_h(fh_cat), self.fuse_m(fm_cat)
        return alpha_h * fh_cat, alpha_m * fm_cat


class HMRNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int = 2,
        *,
        kind: str = "p",
        slice_axis: int = 2,
        hr_channels: int = HR_CHANNELS,
        mr_channels: tuple[int, ...] = MR_CHANNELS,
        deep_supervision: bool = True,
        fusion: str = "conv",
    ):
        super().__init__()
        if kind not in ("p", "s"):
            raise ValueError("kind is 'p' (3D) or 's' (2.5D)")
        if len(mr_channels) != 7:
            raise ValueError("HMRNet has seven multi-resolution blocks")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion is one of {FUSIONS}, not {fusion!r}")
        self.kind, self.slice_axis, self.deep_supervision, self.fusion = kind, slice_axis, deep_supervision, fusion
        self.config = {"in_channels": in_channels, "out_channels": out_channels, "kind": kind,
                       "slice_axis": slice_axis, "hr_channels": hr_channels,
                       "mr_channels": list(mr_channels), "deep_supervision": deep_supervision,
                       "fusion": fusion}
        ch, mc = hr_channels, list(mr_channels)
        self.hr_blocks = nn.ModuleList()
        self.mr_blocks = nn.ModuleList()
        self.bfcs = nn.ModuleList()
        conv = fusion == "conv"
        hr_in, mr_in = in_channels, in_channels
        skips: dict[int, int] = {}
        for d in range(7):
            self.hr_blocks.append(ConvBlock(hr_in, ch, kind, slice_axis))
            skip = skips[LEVELS[d]] if d >= 4 else 0  # decoder: the encoder's features at this level
            self.mr_blocks.append(ConvBlock(mr_in + (0 if conv else skip), mc[d], kind, slice_axis))
            if d < 3:
                skips[LEVELS[d]] = mc[d]
            if d == 0:
                hr_in, mr_in = ch, mc[0]
            else:
                self.bfcs.append(BFC(ch, mc[d], 2 ** LEVELS[d], fusion=fusion, kind=kind,
                                     slice_axis=slice_axis, skip=skip if conv else 0))
                hr_in, mr_in = (ch, mc[d]) if conv else (ch + mc[d], mc[d] + ch)
        self.fuse = nn.Conv3d(hr_in + mr_in, out_channels, 1)
        # Deep supervision heads on decoder blocks 5 and 6 (their BFC-calibrated outputs).
        widths = (mc[4], mc[5]) if conv else (mc[4] + ch, mc[5] + ch)
        self.ds_heads = nn.ModuleList([nn.Conv3d(w, out_channels, 1) for w in widths])

    def forward(self, x: torch.Tensor):
        if any(s % 8 for s in x.shape[2:]):
            raise ValueError(f"HMRNet needs spatial sizes divisible by 8, got {tuple(x.shape[2:])}")
        fh, fm = x, x
        conv = self.fusion == "conv"
        skips: dict[int, torch.Tensor] = {}
        ds: list[torch.Tensor] = []
        for d in range(7):
            fh = self.hr_blocks[d](fh)
            skip = skips[LEVELS[d]] if d >= 4 else None
            if 1 <= d <= 3:
                fm = F.max_pool3d(fm, 2)
            elif d >= 4:
                fm = F.interpolate(fm, scale_factor=2, mode="trilinear", align_corners=False)
                if not conv:
                    fm = torch.cat([fm, skip], dim=1)
            fm = self.mr_blocks[d](fm)
            if d < 3 and not conv:
                skips[LEVELS[d]] = fm  # the first layout kept the block's output, before the BFC
            if d >= 1:
                fh, fm = self.bfcs[d - 1](fh, fm, skip if conv else None)
            if d < 3 and conv:
                skips[LEVELS[d]] = fm
            if d in (4, 5):
                ds.append(fm)
        out = self.fuse(torch.cat([fh, fm], dim=1))
        if self.deep_supervision and self.training:
            return [out, self.ds_heads[1](ds[1]), self.ds_heads[0](ds[0])]
        return out

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            return torch.softmax(self(x), dim=1)
        finally:
            self.train(was)


def pad_to_multiple(x: torch.Tensor, multiple: int = 8) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes up to a multiple; returns the padded tensor and the crop back."""
    sizes = x.shape[2:]
    pads = [(-s) % multiple for s in sizes]
    pad_arg: list[int] = []
    for p in reversed(pads):
        pad_arg += [p // 2, p - p // 2]
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, sizes))
    return F.pad(x, pad_arg), (slice(None), slice(None), *crop)


def hmrnet_p(in_channels: int, **kw) -> HMRNet:
    return HMRNet(in_channels, kind="p", **kw)


def hmrnet_s(in_channels: int, slice_axis: int, **kw) -> HMRNet:
    return HMRNet(in_channels, kind="s", slice_axis=slice_axis, **kw)
