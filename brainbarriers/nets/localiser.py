"""Stage-1 coarse localiser: an nnU-Net-like MONAI DynUNet segmenting all barrier structures at once.

Four resolution levels (three stride-2 downsamplings, so inputs must be divisible by 8), 3x3x3
kernels, instance norm, leaky ReLU (nnU-Net's defaults). ``filters`` is (32, 64, 128, 256) for real
data; the shipped demo model uses fewer.
"""

from __future__ import annotations

from monai.networks.nets import DynUNet


def make_localiser(in_channels: int, out_channels: int = 7, filters=(32, 64, 128, 256)) -> DynUNet:
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
        deep_supervision=False,
        res_block=False,
    )
