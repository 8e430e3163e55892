"""HMRNet-p / HMRNet-s: shapes, the six BFC blocks and their fusion blocks, BFC attention by hand,
the parameter count against the paper, gradients, 2.5D kernels, the legacy layout of the demo set."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainbarriers.nets.hmrnet import BFC, HMRNet, pad_to_multiple

torch.set_num_threads(1)


def _convs(net):
    return [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]


@pytest.mark.parametrize("kind,axis,fusion", [("p", 2, "conv"), ("s", 0, "conv"), ("s", 2, "conv"),
                                               ("p", 2, "concat"), ("s", 0, "concat")])
def test_shapes_and_deep_supervision(kind, axis, fusion):
    torch.manual_seed(0)
    net = HMRNet(3, 2, kind=kind, slice_axis=axis, fusion=fusion)
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
    assert net.fusion == "conv" and net.config["fusion"] == "conv"
    assert len(net.bfcs) == 6
    assert [b.factor for b in net.bfcs] == [2, 4, 8, 4, 2, 1]  # the last BFC has no resampling
    assert len(net.hr_blocks) == 7 and len(net.mr_blocks) == 7
    mr_out = [blk[-1][0].out_channels for blk in net.mr_blocks]
    hr_out = [blk[-1][0].out_channels for blk in net.hr_blocks]
    assert mr_out == [16, 32, 64, 128, 64, 32, 16]
    assert hr_out == [8] * 7
    # Each block after the first takes its branch's own width (the fusion blocks narrowed it back);
    # decoder blocks take only the upsampled features (the skip joins the fusion).
    assert [blk[0][0].in_channels for blk in net.mr_blocks] == [3, 16, 32, 64, 128, 64, 32]
    assert [blk[0][0].in_channels for blk in net.hr_blocks] == [3] + [8] * 6
    # Fusion blocks: [F_h, up(F_m)] -> 8; [F_m, down(F_h), skip] -> that depth's width.
    assert [b.fuse_h[0][0].in_channels for b in net.bfcs] == [8 + c for c in (32, 64, 128, 64, 32, 16)]
    assert [b.fuse_h[-1][0].out_channels for b in net.bfcs] == [8] * 6
    assert [b.fuse_m[0][0].in_channels for b in net.bfcs] == [32 + 8, 64 + 8, 128 + 8, 64 + 8 + 64,
                                                              32 + 8 + 32, 16 + 8 + 16]
    assert [b.fuse_m[-1][0].out_channels for b in net.bfcs] == [32, 64, 128, 64, 32, 16]
    # Each BFC squeezes to one channel with pointwise convs; the output is a 1x1x1 conv.
    for b in net.bfcs:
        assert b.w_m.out_channels == 1 and b.w_m.kernel_size == (1, 1, 1)
        assert b.w_h.out_channels == 1 and b.w_h.kernel_size == (1, 1, 1)
    assert net.fuse.kernel_size == (1, 1, 1) and net.fuse.in_channels == 8 + 16
    # Each block: two convs, each with instance norm and ReLU.
    block = net.hr_blocks[0]
    assert len(block) == 2
    assert isinstance(block[0][1], torch.nn.InstanceNorm3d) and isinstance(block[0][2], torch.nn.ReLU)


def _block_params(cin: int, cout: int) -> int:
    """Two 3x3x3 convs with bias, each with an affine instance norm."""
    return 27 * cin * cout + cout + 2 * cout + 27 * cout * cout + cout + 2 * cout


def test_parameter_count_is_the_papers():
    """Paper 000, Section V: "The number of parameters of HMRNet is 3.4 million" (HMRNet-p; three
    inputs CT, T1, T2; two classes). Counted here block by block, and within 10 % of the paper's
    figure (the authors' code has one more fusion block and a 3x3x3 output conv: 3.12 M)."""
    ch, mc, n_in, n_out = 8, (16, 32, 64, 128, 64, 32, 16), 3, 2
    skip = {4: 64, 5: 32, 6: 16}
    expected = _block_params(n_in, ch) + 6 * _block_params(ch, ch)  # high-resolution branch
    expected += _block_params(n_in, mc[0]) + sum(_block_params(mc[d - 1], mc[d]) for d in range(1, 7))
    for d in range(1, 7):  # BFC d: two fusion blocks and two pointwise attention convs
        expected += _block_params(ch + mc[d], ch) + _block_params(mc[d] + ch + skip.get(d, 0), mc[d])
        expected += (mc[d] + 1) + (ch + 1)
    expected += (ch + mc[6]) * n_out + n_out  # the 1x1x1 output conv
    expected += (mc[4] + 1) * n_out + (mc[5] + 1) * n_out  # deep supervision heads
    net = HMRNet(n_in, n_out, kind="p")
    count = sum(p.numel() for p in net.parameters())
    assert count == expected
    assert abs(count - 3.4e6) / 3.4e6 < 0.10, count
    # The first layout (no fusion blocks) was half that: the size the issue found.
    legacy = sum(p.numel() for p in HMRNet(n_in, n_out, kind="p", fusion="concat").parameters())
    assert 1.5e6 < legacy < 1.7e6


def test_bfc_attention_multiplies_features_by_hand():
    torch.manual_seed(1)
    bfc = BFC(ch=2, cm=3, factor=2, fusion="concat")
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

    # With fusion blocks (the default): the same attention maps multiply the fused concatenations;
    # the multi-resolution side's concatenation also takes the decoder's skip.
    fused = BFC(ch=2, cm=3, factor=2, fusion="conv", skip=4)
    with torch.no_grad():
        fused.w_m.load_state_dict(bfc.w_m.state_dict())
        fused.w_h.load_state_dict(bfc.w_h.state_dict())
    skip = torch.randn(1, 4, 2, 2, 2)
    fh_c, fm_c = fused(fh, fm, skip)
    assert torch.allclose(fh_c, alpha_h * fused.fuse_h(torch.cat([fh, fm_up], 1)), atol=1e-6)
    assert torch.allclose(fm_c, alpha_m * fused.fuse_m(torch.cat([fm, fh_down, skip], 1)), atol=1e-6)
    assert fh_c.shape[1] == 2 and fm_c.shape[1] == 3  # back to each branch's width


def test_gradients_reach_every_parameter():
    torch.manual_seed(2)
    for fusion in ("conv", "concat"):
        net = HMRNet(2, 2, kind="s", slice_axis=0, hr_channels=4, mr_channels=(8, 16, 32, 64, 32, 16, 8),
                     fusion=fusion)
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
    assert kernels.count(inter) == 2 * (14 + 12)  # 14 branch blocks and 12 fusion blocks, two convs each


def test_hmrnet_p_is_3d():
    kernels = {c.kernel_size for c in _convs(HMRNet(1, 2, kind="p"))}
    assert kernels == {(3, 3, 3), (1, 1, 1)}


def test_pad_to_multiple_round_trip():
    x = torch.randn(1, 1, 13, 8, 19)
    xp, crop = pad_to_multiple(x, 8)
    assert tuple(xp.shape[2:]) == (16, 8, 24)
    assert torch.equal(xp[crop], x)
