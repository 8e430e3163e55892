"""HMRNet-p / HMRNet-s: shapes, the six BFC blocks, BFC attention by hand, gradients, 2.5D kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainbarriers.nets.hmrnet import BFC, HMRNet, pad_to_multiple

torch.set_num_threads(1)


def _convs(net):
    return [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]


@pytest.mark.parametrize("kind,axis", [("p", 2), ("s", 0), ("s", 2)])
def test_shapes_and_deep_supervision(kind, axis):
    torch.manual_seed(0)
    net = HMRNet(3, 2, kind=kind, slice_axis=axis)
    x = torch.randn(1, 3, 16, 24, 16)
    outs = net.train()(x)
    assert [tuple(o.shape) for o in outs] == [(1, 2, 16, 24, 16), (1, 2, 8, 12, 8), (1, 2, 4, 6, 4)]
    y = net.eval()(x)
    assert tuple(y.shape) == (1, 2, 16, 24, 16)
    p = net.predict_proba(x)
    assert torch.allclose(p.sum(1), torch.ones(1, 16, 24, 16), atol=1e-5)
    with pytest.raises(ValueError):
        net(torch.randn(1, 3, 12, 16, 16))


def test_paper_channels_and_six_bfcs():
    net = HMRNet(3, 2)
    assert len(net.bfcs) == 6
    assert [b.factor for b in net.bfcs] == [2, 4, 8, 4, 2, 1]  # the last BFC has no resampling
    assert len(net.hr_blocks) == 7 and len(net.mr_blocks) == 7
    mr_out = [blk[-1][0].out_channels for blk in net.mr_blocks]
    hr_out = [blk[-1][0].out_channels for blk in net.hr_blocks]
    assert mr_out == [16, 32, 64, 128, 64, 32, 16]
    assert hr_out == [8] * 7
    # Each BFC squeezes to one channel with pointwise convs; fusion is a 1x1x1 conv.
    for b in net.bfcs:
        assert b.w_m.out_channels == 1 and b.w_m.kernel_size == (1, 1, 1)
        assert b.w_h.out_channels == 1 and b.w_h.kernel_size == (1, 1, 1)
    assert net.fuse.kernel_size == (1, 1, 1) and net.fuse.in_channels == (8 + 16) * 2
    # Each block: two convs, each with instance norm and ReLU.
    block = net.hr_blocks[0]
    assert len(block) == 2
    assert isinstance(block[0][1], torch.nn.InstanceNorm3d) and isinstance(block[0][2], torch.nn.ReLU)


def test_bfc_attention_multiplies_features_by_hand():
    torch.manual_seed(1)
    bfc = BFC(ch=2, cm=3, factor=2)
    with torch.no_grad():
        bfc.w_m.weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1, 1))
        bfc.w_m.bias.fill_(0.1)
        bfc.w_h.weight.copy_(torch.tensor([0.7, 1.5]).view(1, 2, 1, 1, 1))
        bfc.w_h.bias.fill_(-0.2)
    fh = torch.randn(1, 2, 4, 4, 4)
    fm = torch.randn(1, 3, 2, 2, 2)
    fh_c, fm_c = bfc(fh, fm)
    fm_up = F.interpolate(fm, size=(4, 4, 4), mode="trilinear", align_corners=False)
    alpha_h = torch.sigmoid(fm_up[:, 0] - 2 * fm_up[:, 1] + 0.5 * fm_up[:, 2] + 0.1)[:, None]
    fh_down = F.max_pool3d(fh, 2)
    alpha_m = torch.sigmoid(0.7 * fh_down[:, 0] + 1.5 * fh_down[:, 1] - 0.2)[:, None]
    assert torch.allclose(fh_c, alpha_h * torch.cat([fh, fm_up], 1), atol=1e-6)
    assert torch.allclose(fm_c, alpha_m * torch.cat([fm, fh_down], 1), atol=1e-6)
    assert fh_c.shape[1] == 5 and fm_c.shape[1] == 5
    # The attention really is spatial: not a constant factor.
    assert alpha_h.std() > 0.05 and alpha_m.std() > 0.01


def test_gradients_reach_every_parameter():
    torch.manual_seed(2)
    net = HMRNet(2, 2, kind="s", slice_axis=0, hr_channels=4, mr_channels=(8, 16, 32, 64, 32, 16, 8))
    outs = net.train()(torch.randn(1, 2, 16, 16, 16))
    sum(o.float().pow(2).mean() for o in outs).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
    for b in net.bfcs:
        assert b.w_m.weight.grad.abs().sum() > 0 and b.w_h.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("axis,intra,inter", [(0, (1, 3, 3), (3, 1, 1)), (1, (3, 1, 3), (1, 3, 1)),
                                              (2, (3, 3, 1), (1, 1, 3))])
def test_hmrnet_s_kernels_per_slice_axis(axis, intra, inter):
    net = HMRNet(1, 2, kind="s", slice_axis=axis)
    kernels = [c.kernel_size for c in _convs(net)]
    assert (3, 3, 3) not in kernels
    assert set(kernels) == {intra, inter, (1, 1, 1)}
    # Per 3x3x3 conv of HMRNet-p: two intra-slice convs and one inter-slice conv.
    assert kernels.count(intra) == 2 * kernels.count(inter)
    assert kernels.count(inter) == 2 * 14  # 14 blocks of two separable convs


def test_hmrnet_p_is_3d():
    kernels = {c.kernel_size for c in _convs(HMRNet(1, 2, kind="p"))}
    assert kernels == {(3, 3, 3), (1, 1, 1)}


def test_pad_to_multiple_round_trip():
    x = torch.randn(1, 1, 13, 8, 19)
    xp, crop = pad_to_multiple(x, 8)
    assert tuple(xp.shape[2:]) == (16, 8, 24)
    assert torch.equal(xp[crop], x)
