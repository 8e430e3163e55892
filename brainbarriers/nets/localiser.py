"""Stage-1 coarse localiser: an nnU-Net-like MONAI DynUNet segmenting all barrier structures at once.

Four resolution levels (three stride-2 downsamplings, so inputs must be divisible by 8), 3x3x3
kernels, instance norm, leaky ReLU (nnU-Net's defaults). ``filters`` is (32, 64, 128, 256) for real
data; the shipped demo model uses fewer.

``deep_supervision`` (0: none, the shipped demo model's layout): the number of extra output heads on
the decoder's coarser levels. In training mode the network then returns the full-resolution logits
and those heads' logits (upsampled to full resolution by MONAI) stacked on axis 1; in eval mode only
the full-resolution logits. The barrier trainer uses one head (``train.DS_HEADS_STAGE1``), weighted
as nnU-Net does (``train.nnunet_ds_weights``).
"""

from __future__ import annotations

from monai.networks.nets import DynUNet


def make_localiser(in_channels: int, out_channels: int = 7, filters=(32, 64, 128, 256),
                   deep_supervision: int = 0) -> DynUNet:
    n = len(filters)
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[3] * n,
        strides=[1] + [2] * (n - 1),
        upsample_kernel_size=[2] * (n - 1),
        filters=list(filters),
        norm_name="instance",
        deep_supervision=deep_supervision > 0,
        deep_supr_num=max(1, int(deep_supervision)),
        res_block=False,
    )
