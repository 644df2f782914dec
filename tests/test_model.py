"""BiSRNet's equations on hand-computed values, the module shapes, and the authors' checkpoints end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bisr_deploy.model import (
    BinaryDownsample,
    BinaryFusionDown,
    BinaryFusionUp,
    BinaryUpsample,
    BiSRConv,
    BiSRNet,
    HardBinaryConv,
    ReDistribution,
    RPReLU,
    SpectralBinaryActivation,
    hard_sign,
)


def test_redistribution_eq2():
    layer = ReDistribution(2)
    with torch.no_grad():
        layer.k.copy_(torch.tensor([2.0, -1.0]).view(1, 2, 1, 1))
        layer.b.copy_(torch.tensor([0.5, 1.0]).view(1, 2, 1, 1))
    x = torch.tensor([[[[1.0, -3.0]], [[4.0, 0.0]]]])
    assert layer(x).flatten().tolist() == [2.5, -5.5, -3.0, 1.0]


def test_sign_conventions_eq3():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0])
    assert hard_sign(x, "zero").tolist() == [-1.0, 0.0, 0.0, 1.0, 1.0]
    assert hard_sign(x, "negative").tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "approx, x, grad",
    [
        # d/dx tanh(αx) = α(1 - tanh²(αx)), α = 3 (Eq. 5)
        ("tanh", 0.2, 3 * (1 - math.tanh(0.6) ** 2)),
        ("tanh", -1.5, 3 * (1 - math.tanh(-4.5) ** 2)),
        # Clip (Eq. 4): slope 1 inside (-1, 1), 0 outside
        ("clip", 0.5, 1.0),
        ("clip", 1.5, 0.0),
        # Quad (Eq. 4, Bi-Real): 2 - 2|x| inside, 0 outside
        ("quad", 0.25, 1.5),
        ("quad", -0.5, 1.0),
        ("quad", -1.2, 0.0),
    ],
)
def test_sign_forward_and_surrogate_gradients(approx, x, grad):
    act = SpectralBinaryActivation(approx)
    with torch.no_grad():
        act.beta.fill_(3.0)
    t = torch.tensor([x], requires_grad=True)
    out = act(t)
    assert out.item() == math.copysign(1.0, x)  # forward is Sign exactly
    out.sum().backward()
    assert t.grad.item() == pytest.approx(grad, rel=2e-4, abs=1e-7)  # float32


def test_tanh_alpha_is_learnable():
    act = SpectralBinaryActivation("tanh")
    t = torch.tensor([0.3, -0.2], requires_grad=True)
    act(t).sum().backward()
    # d/dα Σ tanh(αx) = Σ x (1 - tanh²(αx)) at α = 1
    expected = sum(v * (1 - math.tanh(v) ** 2) for v in (0.3, -0.2))
    assert act.beta.grad.item() == pytest.approx(expected, rel=1e-6)


def test_weight_binarization_eq9():
    conv = HardBinaryConv(1, 2, kernel_size=(1, 2), padding=0, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[0.5, -1.5]]], [[[-0.2, -0.4]]]]))
    binary = conv.binary_weight()
    # per output channel: mean|W| · Sign(W)
    assert torch.allclose(binary.flatten(), torch.tensor([1.0, -1.0, -0.3, -0.3]))
    x = torch.tensor([[[[1.0, 1.0, -1.0]]]])
    # channel 0: [1*1 + 1*(-1), 1*1 + (-1)*(-1)] = [0, 2]; channel 1: -0.3*[2, 0]
    assert torch.allclose(conv(x).flatten(), torch.tensor([0.0, 2.0, -0.6, 0.0]))


def test_rprelu_eq12():
    layer = RPReLU(1)
    with torch.no_grad():
        layer.pr_bias0.bias.fill_(-1.0)  # γ = 1
        layer.pr_prelu.weight.fill_(0.25)  # β
        layer.pr_bias1.bias.fill_(0.5)  # ζ
    y = torch.tensor([3.0, 1.0, -1.0]).view(1, 1, 1, 3)
    # y > γ: y - γ + ζ; else β (y - γ) + ζ
    assert layer(y).flatten().tolist() == [2.5, 0.5, 0.0]


def test_bisr_conv_eq11_by_hand():
    layer = BiSRConv(2, 1)
    with torch.no_grad():
        layer.move0.k.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        layer.move0.b.copy_(torch.tensor([0.0, 0.5]).view(1, 2, 1, 1))
        layer.binary_conv.weight.copy_(torch.tensor([[2.0, -2.0], [1.0, 3.0]]).view(2, 2, 1, 1))
        layer.relu.pr_prelu.weight.fill_(0.5)
    x = torch.tensor([0.7, 0.1]).view(1, 2, 1, 1)
    # Xr = [0.7, 0.4] -> Xb = [1, 1]; Wb rows: 2·[1,-1], 2·[1,1]; Yb = [0, 4]; RPReLU(0) = 0 (slope·0), 4; Xo = Xf + ...
    assert torch.allclose(layer(x).flatten(), torch.tensor([0.7, 4.1]))


def test_bisr_conv_zero_padding_of_binary_activations():
    layer = BiSRConv(1, 3, padding=1)
    with torch.no_grad():
        layer.binary_conv.weight.fill_(1.0)
        layer.relu.pr_prelu.weight.fill_(1.0)
    x = torch.ones(1, 1, 3, 3)
    out = layer(x) - x
    # +1 activations, all-ones kernel: the count of in-image taps (corner 4, edge 6, centre 9)
    assert out[0, 0].tolist() == [[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]


def test_binarized_modules_shapes():
    x = torch.randn(2, 8, 16, 12)
    assert BinaryDownsample(8)(x).shape == (2, 16, 8, 6)
    assert BinaryUpsample(4)(x).shape == (2, 4, 32, 24)
    assert BinaryFusionDown(4)(x).shape == (2, 4, 16, 12)
    assert BinaryFusionUp(8)(x).shape == (2, 16, 16, 12)


def test_upsample_and_fusion_down_average_two_halves():
    up = BinaryUpsample(2)
    x = torch.randn(1, 4, 3, 3)
    big = F.interpolate(x, scale_factor=2, mode="bilinear")
    expected = (up.biconv_1(big[:, :2]) + up.biconv_2(big[:, 2:])) / 2
    assert torch.equal(up(x), expected)


def test_full_precision_identity_paths():
    """With the binary branch silenced (all-zero RPReLU output), every module passes Xf through (§3.3)."""
    model = BiSRNet(n_feat=28, in_channels=28, out_channels=28)
    with torch.no_grad():
        for conv in model.bisr_convs().values():
            conv.relu.pr_prelu.weight.zero_()
            conv.relu.pr_bias0.bias.fill_(-1e6)  # PReLU input always negative -> slope 0 -> output ζ = 0
    down = model.body[0].encoder_layers[0][1]
    x = torch.randn(1, 28, 8, 8)
    pooled = F.avg_pool2d(x, 2)
    assert torch.allclose(down(x), torch.cat([pooled, pooled], 1))


def test_authors_checkpoints_load_strict(sim_checkpoint, real_checkpoint):
    for ckpt in (sim_checkpoint, real_checkpoint):
        model = ckpt.build_model()
        assert sum(p.numel() for p in model.parameters()) == 659_319
        binary = sum(m.weight.numel() for m in model.modules() if isinstance(m, HardBinaryConv))
        assert binary == 611_072
    assert sim_checkpoint.config.mode == "sim" and real_checkpoint.config.mode == "real"
    assert sim_checkpoint.provenance["reader"].startswith("torch.load")
    assert real_checkpoint.provenance["reader"].startswith("restricted reader")


def test_kaist_crop_psnr_matches_authors(sim_checkpoint, kaist, kaist_snapshot):
    """The authors' code gives 29.10 dB on this crop; thread-count noise alone moves it by ~0.01 dB."""
    from bisr_deploy.metrics import psnr, ssim
    from bisr_deploy.reconstruct import reconstruct

    cube, mask = kaist
    out = reconstruct(sim_checkpoint.build_model(), kaist_snapshot, mask)
    assert out.shape == (28, 128, 128) and out.dtype == np.float32
    assert psnr(out, cube) == pytest.approx(29.10, abs=0.05)
    assert 0.80 < ssim(out, cube) < 0.86


def test_sign_zero_convention_changes_only_exact_ties(sim_checkpoint, kaist, kaist_snapshot):
    """Sign(0) = -1 vs torch.sign: the KAIST crop hits exact zeros in k·x + b; quality stays the same."""
    from dataclasses import replace

    from bisr_deploy.checkpoint import Checkpoint
    from bisr_deploy.metrics import psnr
    from bisr_deploy.reconstruct import reconstruct

    cube, mask = kaist
    paper = Checkpoint(replace(sim_checkpoint.config, sign_zero="negative"), sim_checkpoint.state_dict)
    a = reconstruct(sim_checkpoint.build_model(), kaist_snapshot, mask)
    b = reconstruct(paper.build_model(), kaist_snapshot, mask)
    assert abs(psnr(a, cube) - psnr(b, cube)) < 0.1
    # away from ties the two conventions are the same function: a scene whose activations never hit 0
    model_a, model_b = sim_checkpoint.build_model(), paper.build_model()
    conv_a, conv_b = model_a.body[0].embedding, model_b.body[0].embedding
    x = torch.randn(1, 28, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(conv_a(x), conv_b(x))
        tie = -conv_a.move0.b / conv_a.move0.k  # inputs that redistribute to exactly 0 in channel 0
        x[:, 0] = tie[0, 0]
        assert (conv_a.move0(x)[:, 0] == 0).all()
        assert not torch.equal(conv_a(x), conv_b(x))


def test_real_model_runs_on_a_real_snapshot(real_checkpoint):
    from bisr_deploy.fileio import load_array
    from bisr_deploy.reconstruct import reconstruct

    from .conftest import REAL_SCENES

    y = load_array(REAL_SCENES / "scene3.mat")[:128, : 128 + 54]
    out = reconstruct(real_checkpoint.build_model(), y)
    assert out.shape == (28, 128, 128)
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.std() > 0.01
