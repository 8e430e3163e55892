"""HNF-Netv2 and ConResNet: sizes, shapes, gradients, the SDE/EMA blocks, the context residual."""

from __future__ import annotations

import pytest
import torch

from brainbarriers.nets.conresnet import (
    ConResNet,
    ContextResidualModule,
    WSConv3d,
    context_residual,
)
from brainbarriers.nets.hnfnet import (
    EMA,
    PMF,
    HNFNetv2,
    InterScaleSDE,
    count_parameters,
    paper_config,
)
from brainbarriers.tumor.losses import ConResLoss, context_residual_target, weighted_bce

torch.set_num_threads(1)
SMALL = dict(base=4, widths=(4, 8, 8, 16), blocks=1, ema_channels=8, ema_bases=4)


def test_hnfnetv2_paper_size_and_sde_cost(capsys):
    cfg = paper_config()
    n = count_parameters(HNFNetv2(**cfg))
    plain = count_parameters(HNFNetv2(**cfg, intra_sde=False, inter_sde=False))
    intra = count_parameters(HNFNetv2(**cfg, inter_sde=False)) - plain
    inter = n - plain - intra
    with capsys.disabled():
        print(f"\nHNF-Netv2 paper configuration: {n / 1e6:.2f} M parameters (paper: 17.91 M); "
              f"intra-scale SDE +{intra / 1e6:.3f} M (paper +0.46 M), inter-scale SDE "
              f"+{inter / 1e6:.3f} M (paper +0.60 M)")
    # The paper's Table 1: HNF-Net 16.85 M, +0.46 M with intra-scale SDE, +0.60 M with inter-scale SDE.
    assert abs(n - 17.91e6) < 0.02 * 17.91e6
    assert abs(intra - 0.46e6) < 0.01e6
    assert abs(inter - 0.60e6) < 0.01e6
    # The earlier, lighter layout (the phantom demo package's) stays buildable, and is lighter.
    light = count_parameters(HNFNetv2(**cfg, sde_layout="branch"))
    assert plain < light < plain + 0.1e6


def test_intra_scale_sde_sits_in_every_residual_block():
    net = HNFNetv2(in_channels=4, out_channels=3, **SMALL)
    for pmf in net.pmfs:
        for branch in pmf.branches:
            assert all(hasattr(b, "sde") for b in branch.blocks)
    block = net.pmfs[0].branches[0].blocks[0]
    x = torch.randn(1, 4, 8, 8, 8)
    # Zeroing the SDE's last layer gates the residual branch to half (sigmoid(0)): the output changes.
    before = block(x.clone())
    with torch.no_grad():
        block.sde.fc[2].weight.zero_()
        block.sde.fc[2].bias.zero_()
    assert not torch.allclose(before, block(x.clone()))


def test_hnfnetv2_shapes_and_gradients():
    torch.manual_seed(0)
    net = HNFNetv2(in_channels=4, out_channels=3, **SMALL)
    x = torch.randn(2, 4, 32, 32, 16)
    y = net(x)
    assert y.shape == (2, 3, 32, 32, 16)
    y.square().mean().backward()
    # Gradients reach the first encoder conv, every PMF branch and the EMA.
    first = net.encoder[0].conv.weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    for pmf in net.pmfs:
        for branch in pmf.branches:
            g = branch.blocks[0].conv1.conv.weight.grad
            assert g is not None and g.abs().sum() > 0
    assert net.ema.conv_in.weight.grad.abs().sum() > 0
    assert len(net.pmfs[3].branches) == 4 and len(net.pmfs[0].branches) == 1


def test_pmf_fuses_every_branch_into_every_branch():
    pmf = PMF((4, 8, 16), blocks=1).eval()
    xs = [torch.randn(1, 4, 16, 16, 16), torch.randn(1, 8, 8, 8, 8), torch.randn(1, 16, 4, 4, 4)]
    out = pmf(xs)
    assert [o.shape for o in out] == [x.shape for x in xs]
    # Changing only the lowest branch changes the highest-resolution output (fully connected fusion).
    xs2 = [xs[0], xs[1], xs[2] + 1.0]
    assert not torch.allclose(pmf(xs2)[0], out[0])


def test_inter_scale_sde_uses_global_context_of_smallest_branch():
    sde = InterScaleSDE((4, 8)).eval()
    xs = [torch.randn(1, 4, 8, 8, 8), torch.randn(1, 8, 4, 4, 4)]
    a = sde(xs)
    # A permutation of the smallest branch's voxels keeps its global average: same output at scale 0.
    perm = xs[1].flatten(2)[:, :, torch.randperm(64)].reshape_as(xs[1])
    b = sde([xs[0], perm])
    assert torch.allclose(a[0], b[0], atol=1e-5)
    c = sde([xs[0], xs[1] + 2.0])  # a different global average changes it
    assert not torch.allclose(a[0], c[0])


def test_ema_updates_bases_in_training_only():
    ema = EMA(8, bases=4)
    x = torch.randn(2, 8, 6, 6, 6)
    mu0 = ema.mu.clone()
    ema.eval()
    y = ema(x)
    assert y.shape == x.shape and torch.equal(ema.mu, mu0)
    ema.train()
    ema(x)
    assert not torch.equal(ema.mu, mu0)
    assert torch.allclose(ema.mu.norm(dim=1), torch.ones(1, 4), atol=1e-5)


def test_context_residual_hand_example():
    # One channel, slices along the last axis: values whose sigmoids we know.
    f = torch.zeros(1, 1, 1, 1, 4)
    f[..., 1] = 100.0   # sigmoid -> 1
    f[..., 2] = 100.0
    f[..., 3] = -100.0  # sigmoid -> 0
    g = context_residual(f, axis=-1)
    assert torch.allclose(g.flatten(), torch.tensor([0.0, 0.5, 0.0, 1.0]), atol=1e-6)
    # Along another axis (the paper's sagittal/coronal variant).
    g2 = context_residual(f.transpose(2, 4), axis=2)
    assert torch.allclose(g2.flatten(), torch.tensor([0.0, 0.5, 0.0, 1.0]), atol=1e-6)
    # Ground-truth residual mask: |Y[s+1] - Y[s]|, first slice 0.
    y = torch.tensor([0.0, 1.0, 1.0, 0.0]).view(1, 1, 1, 1, 4)
    assert context_residual_target(y).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_context_residual_module_attention_formula():
    torch.manual_seed(0)
    m = ContextResidualModule(8).eval()
    i_seg, i_skip, i_res = (torch.randn(1, 8, 6, 6, 5) for _ in range(3))
    o_seg, o_res = m(i_seg, i_skip, i_res)
    f = m.fuse(i_seg + i_skip)
    assert torch.allclose(o_seg, f * (1 + torch.sigmoid(o_res)), atol=1e-5)
    expected_res = m.res_out(m.res_in(context_residual(f)) + i_res)
    assert torch.allclose(o_res, expected_res, atol=1e-5)


def test_weight_standardisation():
    conv = WSConv3d(3, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.mul_(10).add_(3)
    x = torch.randn(1, 3, 5, 5, 5)
    ref = torch.nn.functional.conv3d(x, (conv.weight - conv.weight.mean((1, 2, 3, 4), keepdim=True))
                                     / (conv.weight.flatten(1).std(1).view(-1, 1, 1, 1, 1) + 1e-5),
                                     padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-4)


def test_conresnet_shapes_deep_supervision_and_loss():
    torch.manual_seed(0)
    net = ConResNet(in_channels=4, out_channels=3, base=8)
    full = count_parameters(ConResNet())
    print(f"\nConResNet (32 -> 256 channels): {full / 1e6:.2f} M parameters")
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in net.modules()) > 9
    x = torch.randn(1, 4, 32, 32, 16)
    seg, residuals = net(x)
    assert seg.shape == (1, 3, 32, 32, 16)
    assert len(residuals) == 3 and all(r.shape == (1, 3, 32, 32, 16) for r in residuals)
    target = torch.zeros(1, 3, 32, 32, 16)
    target[:, :, 8:20, 8:20, 4:10] = 1
    loss = ConResLoss()((seg, residuals), target)
    loss.backward()
    assert torch.isfinite(loss)
    assert net.stem.weight.grad.abs().sum() > 0
    for head in net.res_heads:
        assert head.weight.grad.abs().sum() > 0
    net.eval()
    assert net(x).shape == (1, 3, 32, 32, 16)


def test_weighted_bce_weights_rare_foreground():
    logits = torch.zeros(1, 1, 10, 10, 10)
    target = torch.zeros_like(logits)
    target[..., 0, 0, 0] = 1
    # With zero logits each voxel's BCE is log 2; the weights log(V/V_k) make the mean
    # (1 * log(1000) + 999 * log(1000/999)) * log 2 / 1000.
    import math

    expected = (math.log(1000) + 999 * math.log(1000 / 999)) * math.log(2) / 1000
    assert weighted_bce(logits, target).item() == pytest.approx(expected, rel=1e-4)
