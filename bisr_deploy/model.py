"""BiSRNet (Cai et al., NeurIPS 2023, §3) in PyTorch.

The module tree and parameter names follow the authors' code, so both released checkpoints load with
``strict=True`` into ``BiSRNet(in_channels=28, out_channels=28, n_feat=28, stage=1, num_blocks=[1, 1, 1])``,
and the forward pass performs the same operations in the same order.

Sign conventions (``sign_zero``):
- ``"zero"`` (default, the authors' code): ``torch.sign``, so Sign(0) = 0 for activations and weights. The
  3x3 convolutions zero-pad their ±1 input, so border taps contribute 0 in every convention.
- ``"negative"`` (the paper's Eq. 3): Sign(0) = -1. This is what a 1-bit representation can hold and what
  the bit-packed deploy path (``bisr_deploy.bitpack``, the BiSRConv custom ONNX op) computes. The two differ
  only where a redistributed activation or a weight is exactly 0.0.

The backward pass of Sign uses one of the approximations of Eq. 4/5 (``sign_approx``): ``"tanh"``
(Tanh(αx) with the learnable α, the paper's choice), ``"clip"`` or ``"quad"``. They change gradients only.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .snapshot import reflect_padding

SIGN_APPROXIMATIONS = ("tanh", "clip", "quad")
SIGN_ZERO_CONVENTIONS = ("zero", "negative")
INPUT_MODES = ("sim", "real")


def hard_sign(x: torch.Tensor, sign_zero: str) -> torch.Tensor:
    """Sign with the chosen value at 0: ``"zero"`` -> 0 (torch.sign), ``"negative"`` -> -1 (paper Eq. 3)."""
    if sign_zero == "zero":
        return torch.sign(x)
    return torch.where(x > 0, torch.ones_like(x), -torch.ones_like(x))


def quad(x: torch.Tensor) -> torch.Tensor:
    """Piecewise quadratic approximation of Sign (Eq. 4, as defined in Bi-Real Net).

    -1 for x <= -1, 2x + x^2 on (-1, 0], 2x - x^2 on (0, 1), +1 for x >= 1. (The paper's printed Eq. 4 swaps the
    two quadratic pieces, which would make the function leave [-1, 1]; the original Bi-Real definition is used.)
    """
    x = x.clamp(-1.0, 1.0)
    return torch.where(x > 0, 2 * x - x * x, 2 * x + x * x)


class ReDistribution(nn.Module):
    """Channel-wise redistribution Xr = k · Xf + b (Eq. 2). k, b: [1, C, 1, 1]."""

    def __init__(self, channels: int):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.k = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.k + self.b


class SpectralBinaryActivation(nn.Module):
    """Sign in the forward pass; gradient of Tanh(αx) (Eq. 5, learnable α = ``beta``), Clip or Quad (Eq. 4)."""

    def __init__(self, sign_approx: str = "tanh", sign_zero: str = "zero"):
        super().__init__()
        self.beta = nn.Parameter(torch.ones(1))
        self.sign_approx = sign_approx
        self.sign_zero = sign_zero

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable function whose gradient replaces Sign's."""
        if self.sign_approx == "tanh":
            return torch.tanh(x * self.beta)
        if self.sign_approx == "clip":
            return x.clamp(-1.0, 1.0)
        return quad(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sign = hard_sign(x, self.sign_zero)
        if not torch.is_grad_enabled():
            return sign
        approx = self.surrogate(x)
        return sign.detach() - approx.detach() + approx


class HardBinaryConv(nn.Conv2d):
    """Convolution with binarized weights Wb = mean|W| (per output channel) · Sign(W) (Eq. 9).

    Gradients reach W through Clip(W) (straight-through estimator), as in the authors' code.
    """

    def __init__(self, in_chn, out_chn, kernel_size=3, stride=1, padding=1, groups=1, bias=True, sign_zero="zero"):
        super().__init__(in_chn, out_chn, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias)
        self.sign_zero = sign_zero

    def weight_scale(self) -> torch.Tensor:
        """Per-output-channel mean |W|, shape [Cout, 1, 1, 1], detached."""
        return self.weight.abs().mean(dim=(1, 2, 3), keepdim=True).detach()

    def binary_weight(self) -> torch.Tensor:
        """The weights the convolution uses: scale · Sign(W), with the STE for gradients."""
        binary = self.weight_scale() * hard_sign(self.weight, self.sign_zero)
        if not torch.is_grad_enabled():
            return binary
        clipped = self.weight.clamp(-1.0, 1.0)
        return binary.detach() - clipped.detach() + clipped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.binary_weight(), self.bias, stride=self.stride, padding=self.padding, groups=self.groups)


class LearnableBias(nn.Module):
    """x + bias, bias [1, C, 1, 1]."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class RPReLU(nn.Module):
    """RPReLU (Eq. 12): PReLU(y - γ) + ζ per channel, with γ = -pr_bias0, slope β = pr_prelu, ζ = pr_bias1."""

    def __init__(self, channels: int):
        super().__init__()
        self.pr_bias0 = LearnableBias(channels)
        self.pr_prelu = nn.PReLU(channels)
        self.pr_bias1 = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pr_bias1(self.pr_prelu(self.pr_bias0(x)))


class BiSRConv(nn.Module):
    """BiSR-Conv (Fig. 2c): Xo = Xf + RPReLU(Sign(k·Xf + b) * Wb) (Eqs. 2, 3, 9, 10, 11). [B,C,H,W] -> [B,C,H,W].

    Input and output channel counts are equal (the residual needs it); ``groups`` splits them.
    Named ``BinaryConv2d`` in the authors' code; the attribute names are theirs.
    """

    def __init__(self, channels, kernel_size, padding=0, groups=1, sign_approx="tanh", sign_zero="zero"):
        super().__init__()
        self.move0 = ReDistribution(channels)
        self.binary_activation = SpectralBinaryActivation(sign_approx, sign_zero)
        self.binary_conv = HardBinaryConv(
            channels, channels, kernel_size, stride=1, padding=padding, groups=groups, bias=False, sign_zero=sign_zero
        )
        self.relu = RPReLU(channels)

    def binarized_input(self, x: torch.Tensor) -> torch.Tensor:
        """The ±1 activations (0 where Sign(0) = 0) that the binary convolution consumes."""
        return self.binary_activation(self.move0(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.binary_conv(self.binarized_input(x))) + x


class BinaryDownsample(nn.Module):
    """Binarized downsample (Fig. 4a): AvgPool 2x2, then two 3x3 BiSR-Convs on the same input, concatenated. [B,C,H,W] -> [B,2C,H/2,W/2]."""

    def __init__(self, channels, **bisr):
        super().__init__()
        self.biconv_1 = BiSRConv(channels, 3, padding=1, **bisr)
        self.biconv_2 = BiSRConv(channels, 3, padding=1, **bisr)
        self.avg_pool = nn.AvgPool2d(kernel_size=2, stride=2, padding=0)

    def forward(self, x):
        x = self.avg_pool(x)
        return torch.cat([self.biconv_1(x), self.biconv_2(x)], dim=1)


class BinaryUpsample(nn.Module):
    """Binarized upsample (Fig. 4b): bilinear x2, split channels in halves, a 3x3 BiSR-Conv on each, mean. [B,2C,H,W] -> [B,C,2H,2W]."""

    def __init__(self, out_channels, **bisr):
        super().__init__()
        self.biconv_1 = BiSRConv(out_channels, 3, padding=1, **bisr)
        self.biconv_2 = BiSRConv(out_channels, 3, padding=1, **bisr)

    def forward(self, x):
        half = x.shape[1] // 2
        x = F.interpolate(x, scale_factor=2, mode="bilinear")
        return (self.biconv_1(x[:, :half]) + self.biconv_2(x[:, half:])) / 2


class BinaryFusionDown(nn.Module):
    """Binarized fusion down (Fig. 4c): split channels in halves, a 1x1 BiSR-Conv on each, mean. [B,2C,H,W] -> [B,C,H,W]."""

    def __init__(self, out_channels, **bisr):
        super().__init__()
        self.biconv_1 = BiSRConv(out_channels, 1, **bisr)
        self.biconv_2 = BiSRConv(out_channels, 1, **bisr)

    def forward(self, x):
        half = x.shape[1] // 2
        return (self.biconv_1(x[:, :half]) + self.biconv_2(x[:, half:])) / 2


class BinaryFusionUp(nn.Module):
    """Binarized fusion up (Fig. 4d): two 1x1 BiSR-Convs on the same input, concatenated. [B,C,H,W] -> [B,2C,H,W]."""

    def __init__(self, channels, **bisr):
        super().__init__()
        self.biconv_1 = BiSRConv(channels, 1, **bisr)
        self.biconv_2 = BiSRConv(channels, 1, **bisr)

    def forward(self, x):
        return torch.cat([self.biconv_1(x), self.biconv_2(x)], dim=1)


class FeedForward(nn.Module):
    """Binarized feed-forward of the convolutional block (Fig. 2b), on NHWC input: [B,H,W,C] -> [B,H,W,C].

    C -> 2C -> 4C (fusion up twice), RPReLU, grouped 3x3 BiSR-Conv (C groups of 4 channels), RPReLU, 4C -> 2C -> C.
    """

    def __init__(self, dim, mult=2, **bisr):
        super().__init__()
        hidden = dim * mult * mult
        self.net = nn.Sequential(
            BinaryFusionUp(dim, **bisr),
            BinaryFusionUp(dim * mult, **bisr),
            RPReLU(hidden),
            BiSRConv(hidden, 3, padding=1, groups=dim, **bisr),
            RPReLU(hidden),
            BinaryFusionDown(dim * mult, **bisr),
            BinaryFusionDown(dim, **bisr),
        )

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PreNorm(nn.Module):
    """LayerNorm over the channel (last) axis, then ``fn``."""

    def __init__(self, dim, fn):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.fn(self.norm(x))


class ConvBlock(nn.Module):
    """Convolutional block: ``num_blocks`` × (x = FeedForward(LayerNorm(x)) + x). [B,C,H,W] -> [B,C,H,W]."""

    def __init__(self, dim, num_blocks, **bisr):
        super().__init__()
        self.blocks = nn.ModuleList([PreNorm(dim, FeedForward(dim, **bisr)) for _ in range(num_blocks)])

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x) + x
        return x.permute(0, 3, 1, 2)


class UBody(nn.Module):
    """The binarized U-shaped body (Fig. 2a): embedding, encoder, bottleneck, decoder, mapping, global residual.

    [B, dim, H, W] -> [B, dim, H, W]; H and W must be multiples of 4 (two 2x downsamplings).
    """

    def __init__(self, dim=28, stage=2, num_blocks=(1, 1, 1), **bisr):
        super().__init__()
        self.stage = stage
        self.embedding = BiSRConv(dim, 3, padding=1, **bisr)
        self.encoder_layers = nn.ModuleList()
        dim_stage = dim
        for i in range(stage):
            self.encoder_layers.append(
                nn.ModuleList([ConvBlock(dim_stage, num_blocks[i], **bisr), BinaryDownsample(dim_stage, **bisr)])
            )
            dim_stage *= 2
        self.bottleneck = ConvBlock(dim_stage, num_blocks[-1], **bisr)
        self.decoder_layers = nn.ModuleList()
        for i in range(stage):
            self.decoder_layers.append(
                nn.ModuleList(
                    [
                        BinaryUpsample(dim_stage // 2, **bisr),
                        BinaryFusionDown(dim_stage // 2, **bisr),
                        ConvBlock(dim_stage // 2, num_blocks[stage - 1 - i], **bisr),
                    ]
                )
            )
            dim_stage //= 2
        self.mapping = BiSRConv(dim, 3, padding=1, **bisr)

    def forward(self, x):
        fea = self.embedding(x)
        skips = []
        for block, down in self.encoder_layers:
            fea = block(fea)
            skips.append(fea)
            fea = down(fea)
        fea = self.bottleneck(fea)
        for i, (up, fusion, block) in enumerate(self.decoder_layers):
            fea = up(fea)
            fea = fusion(torch.cat([fea, skips[self.stage - 1 - i]], dim=1))
            fea = block(fea)
        return self.mapping(fea) + x


@dataclass
class BiSRNetConfig:
    """Architecture hyper-parameters and input mode; everything needed to rebuild a ``BiSRNet``."""

    in_channels: int = 28
    out_channels: int = 28
    n_feat: int = 28
    stage: int = 1
    num_blocks: list[int] = field(default_factory=lambda: [1, 1, 1])
    mode: str = "sim"
    step: int = 2
    sign_approx: str = "tanh"
    sign_zero: str = "zero"

    def validate(self) -> "BiSRNetConfig":
        from .errors import BisrError

        if self.mode not in INPUT_MODES:
            raise BisrError(f"unknown input mode {self.mode!r}; expected one of {', '.join(INPUT_MODES)}")
        if self.sign_approx not in SIGN_APPROXIMATIONS:
            raise BisrError(f"unknown sign approximation {self.sign_approx!r}; expected one of {', '.join(SIGN_APPROXIMATIONS)}")
        if self.sign_zero not in SIGN_ZERO_CONVENTIONS:
            raise BisrError(f"unknown sign convention {self.sign_zero!r}; expected one of {', '.join(SIGN_ZERO_CONVENTIONS)}")
        for name in ("in_channels", "out_channels", "n_feat", "stage", "step"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise BisrError(f"config {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.in_channels != self.n_feat or self.out_channels != self.n_feat:
            raise BisrError("BiSRNet needs in_channels == out_channels == n_feat (the residual paths add them)")
        if len(self.num_blocks) != 3 or any(not isinstance(n, int) or n < 1 for n in self.num_blocks):
            raise BisrError(f"num_blocks must be three positive integers, got {self.num_blocks!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


class BiSRNet(nn.Module):
    """The full network: full-precision ``fution`` (sim mode only), ``conv_in``, ``stage`` binarized bodies, ``conv_out``.

    ``forward(h, mask3d=None)``: h [B, 28, H, W] is the shifted-back input (see ``bisr_deploy.frontend``);
    in simulation mode mask3d [B, 28, H, W] is required and ``fution`` (1x1, 56 -> 28) fuses [h, mask3d];
    in real mode h goes straight to ``conv_in``. Returns [B, 28, H, W]. Inputs are reflect-padded at the
    bottom and right to a multiple of 8 (``snapshot.reflect_padding``) and the output cropped back, as in the authors'
    code; H and W must be at least ``snapshot.MIN_SCENE_SIZE``.
    """

    def __init__(self, in_channels=28, out_channels=28, n_feat=28, stage=1, num_blocks=(1, 1, 1),
                 mode="sim", sign_approx="tanh", sign_zero="zero"):
        super().__init__()
        bisr = dict(sign_approx=sign_approx, sign_zero=sign_zero)
        self.mode = mode
        self.n_bands = in_channels
        self.conv_in = nn.Conv2d(in_channels, n_feat, kernel_size=3, padding=1, bias=False)
        # The authors' body is always two levels deep; ``stage`` counts stacked bodies.
        self.body = nn.Sequential(*[UBody(n_feat, stage=2, num_blocks=num_blocks, **bisr) for _ in range(stage)])
        self.fution = nn.Conv2d(2 * in_channels, in_channels, 1, padding=0, bias=True)
        self.conv_out = nn.Conv2d(n_feat, out_channels, kernel_size=3, padding=1, bias=False)

    @classmethod
    def from_config(cls, config: BiSRNetConfig) -> "BiSRNet":
        config.validate()
        return cls(config.in_channels, config.out_channels, config.n_feat, config.stage, config.num_blocks,
                   config.mode, config.sign_approx, config.sign_zero)

    def forward(self, h: torch.Tensor, mask3d: torch.Tensor | None = None) -> torch.Tensor:
        if self.mode == "sim":
            if mask3d is None:
                raise ValueError("a simulation-mode BiSRNet needs the 3-D mask")
            x = self.fution(torch.cat([h, mask3d], dim=1))
        else:
            x = h
        h_in, w_in = x.shape[-2:]
        pad_h, pad_w = reflect_padding(h_in, w_in)
        if pad_h or pad_w:
            x = F.pad(x, [0, pad_w, 0, pad_h], mode="reflect")
        x = self.conv_in(x)
        out = self.conv_out(self.body(x)) + x
        return out[:, :, :h_in, :w_in]

    def bisr_convs(self) -> dict[str, BiSRConv]:
        """Every BiSR-Conv by qualified name, in forward order of construction."""
        return {name: m for name, m in self.named_modules() if isinstance(m, BiSRConv)}


def with_negative_sign(model: BiSRNet) -> BiSRNet:
    """A copy of ``model`` in eval mode that binarizes with Sign(0) = -1, the convention of every 1-bit path."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "sign_zero"):
            module.sign_zero = "negative"
    return model.eval()
