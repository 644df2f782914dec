"""BiSRNet module tree -> static ONNX graph, built node by node with ``onnx.helper``.

Every module of ``bisr_deploy.model`` maps to a fixed, shape-static node pattern; nodes and the tensors they
produce are named by the PyTorch module path (``body.0.encoder_layers.0.1.biconv_1``), parameters keep their
state-dict names (``conv_in.weight``; per-channel vectors reshaped to broadcast over NCHW). The snapshot
preprocessing of ``bisr_deploy.frontend.SnapshotFrontend`` is in the graph, as the same operations in the
same order (sim: ``Y / C * 2``; real: float64 clip, max-normalisation, ``* 0.8``), then the C shifted crops.

Layouts: activations are NCHW float32, N = 1. LayerNorm runs on an NHWC transpose (as in the PyTorch model);
residual additions stay in NCHW, which is elementwise-identical.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from .. import bisrconv_op
from ..bitpack import pack_sign_bits
from ..frontend import REAL_PEAK
from ..model import (BinaryDownsample, BinaryFusionDown, BinaryFusionUp, BinaryUpsample, BiSRConv, BiSRNet,
                     ConvBlock, FeedForward, RPReLU, UBody)
from ..snapshot import reflect_padding


def _array(tensor, shape=None) -> np.ndarray:
    value = tensor.detach().cpu().numpy().astype(np.float32)
    return np.ascontiguousarray(value.reshape(shape) if shape is not None else value)


def bisr_conv_initializers(module: BiSRConv, prefix: str) -> list[onnx.TensorProto]:
    """The weight initializers of one BiSRConv module, named ``<prefix>.<weight input>`` in the operator's
    input order (``bisrconv_op.WEIGHT_INPUTS``).

    Values come straight from the module: k, b of ``move0``; sign bits of ``binary_conv.weight`` packed by
    ``bisr_deploy.bitpack``; ``binary_conv.weight_scale()``; the RPReLU biases and slope.
    """
    conv = module.binary_conv
    if conv.in_channels != conv.out_channels:
        raise ValueError(f"{prefix}: BiSRConv needs equal input and output channels")
    values = (module.move0.k.reshape(-1), module.move0.b.reshape(-1), pack_sign_bits(conv.weight),
              conv.weight_scale().reshape(-1), module.relu.pr_bias0.bias.reshape(-1),
              module.relu.pr_prelu.weight.reshape(-1), module.relu.pr_bias1.bias.reshape(-1))
    out = []
    for key, value in zip(bisrconv_op.WEIGHT_INPUTS, values, strict=True):
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy().astype(np.float32)
        out.append(numpy_helper.from_array(np.ascontiguousarray(value), f"{prefix}.{key}"))
    return out


def bisr_conv_node(module: BiSRConv, prefix: str, x: str, y: str) -> onnx.NodeProto:
    """The BiSRConv operator node for ``module``, reading ``x`` and the initializers of ``prefix``."""
    conv = module.binary_conv
    ph, pw = conv.padding
    return bisrconv_op.make_node(prefix, x, y, conv.kernel_size, [ph, pw, ph, pw], conv.groups)


class GraphBuilder:
    """Accumulates nodes and initializers; ``op`` returns the name of the tensor it produced."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r}")
        self._names.add(name)
        return name

    def init(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), self._claim(name)))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, output: str | None = None, **attrs) -> str:
        out = self._claim(output or name)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    # ---- leaf modules -------------------------------------------------------------------------------------
    def conv(self, m: nn.Conv2d, path: str, x: str, output: str | None = None) -> str:
        """Full-precision Conv2d (stride 1, symmetric zero padding)."""
        inputs = [x, self.init(f"{path}.weight", _array(m.weight))]
        if m.bias is not None:
            inputs.append(self.init(f"{path}.bias", _array(m.bias)))
        ph, pw = m.padding
        return self.op("Conv", inputs, path, output, kernel_shape=list(m.kernel_size), pads=[ph, pw, ph, pw],
                       group=m.groups)

    def bisr_conv(self, m: BiSRConv, path: str, x: str) -> str:
        for tensor in bisr_conv_initializers(m, path):
            self._claim(tensor.name)
            self.initializers.append(tensor)
        self.nodes.append(bisr_conv_node(m, path, x, self._claim(path)))
        return path

    def rprelu(self, m: RPReLU, path: str, x: str) -> str:
        c = m.pr_prelu.weight.numel()
        x = self.op("Add", [x, self.init(f"{path}.pr_bias0.bias", _array(m.pr_bias0.bias))], f"{path}.pr_bias0")
        x = self.op("PRelu", [x, self.init(f"{path}.pr_prelu.weight", _array(m.pr_prelu.weight, (c, 1, 1)))],
                    f"{path}.pr_prelu")
        return self.op("Add", [x, self.init(f"{path}.pr_bias1.bias", _array(m.pr_bias1.bias))], path)

    def halves(self, path: str, x: str) -> tuple[str, str]:
        """Split the channels of x into two equal halves."""
        first, second = self._claim(f"{path}.half_1"), self._claim(f"{path}.half_2")
        self.nodes.append(helper.make_node("Split", [x], [first, second], name=f"{path}.split", axis=1,
                                           num_outputs=2))
        return first, second

    def mean2(self, path: str, a: str, b: str) -> str:
        """(a + b) / 2, in that order, as the PyTorch model computes it."""
        total = self.op("Add", [a, b], f"{path}.sum")
        return self.op("Div", [total, self.scalar(f"{path}.two", 2.0)], path)

    def scalar(self, name: str, value: float, dtype=np.float32) -> str:
        return self.init(name, np.array(value, dtype=dtype))

    # ---- composite modules --------------------------------------------------------------------------------
    def downsample(self, m: BinaryDownsample, path: str, x: str) -> str:
        x = self.op("AveragePool", [x], f"{path}.avg_pool", kernel_shape=[2, 2], strides=[2, 2])
        a = self.bisr_conv(m.biconv_1, f"{path}.biconv_1", x)
        b = self.bisr_conv(m.biconv_2, f"{path}.biconv_2", x)
        return self.op("Concat", [a, b], path, axis=1)

    def upsample(self, m: BinaryUpsample, path: str, x: str) -> str:
        # F.interpolate(scale_factor=2, mode="bilinear", align_corners=False) == Resize linear, half_pixel.
        scales = self.init(f"{path}.scales", np.array([1, 1, 2, 2], dtype=np.float32))
        x = self.op("Resize", [x, "", scales], f"{path}.interpolate", mode="linear",
                    coordinate_transformation_mode="half_pixel")
        first, second = self.halves(path, x)
        a = self.bisr_conv(m.biconv_1, f"{path}.biconv_1", first)
        b = self.bisr_conv(m.biconv_2, f"{path}.biconv_2", second)
        return self.mean2(path, a, b)

    def fusion_down(self, m: BinaryFusionDown, path: str, x: str) -> str:
        first, second = self.halves(path, x)
        a = self.bisr_conv(m.biconv_1, f"{path}.biconv_1", first)
        b = self.bisr_conv(m.biconv_2, f"{path}.biconv_2", second)
        return self.mean2(path, a, b)

    def fusion_up(self, m: BinaryFusionUp, path: str, x: str) -> str:
        a = self.bisr_conv(m.biconv_1, f"{path}.biconv_1", x)
        b = self.bisr_conv(m.biconv_2, f"{path}.biconv_2", x)
        return self.op("Concat", [a, b], path, axis=1)

    def feed_forward(self, m: FeedForward, path: str, x: str) -> str:
        handlers = {BinaryFusionUp: self.fusion_up, BinaryFusionDown: self.fusion_down, RPReLU: self.rprelu,
                    BiSRConv: self.bisr_conv}
        for index, layer in enumerate(m.net):
            x = handlers[type(layer)](layer, f"{path}.net.{index}", x)
        return x

    def conv_block(self, m: ConvBlock, path: str, x: str) -> str:
        for index, block in enumerate(m.blocks):
            p = f"{path}.blocks.{index}"
            t = self.op("Transpose", [x], f"{p}.to_nhwc", perm=[0, 2, 3, 1])
            t = self.op("LayerNormalization", [t, self.init(f"{p}.norm.weight", _array(block.norm.weight)),
                                               self.init(f"{p}.norm.bias", _array(block.norm.bias))],
                        f"{p}.norm", axis=-1, epsilon=float(block.norm.eps))
            t = self.op("Transpose", [t], f"{p}.to_nchw", perm=[0, 3, 1, 2])
            t = self.feed_forward(block.fn, f"{p}.fn", t)
            x = self.op("Add", [t, x], p)
        return x

    def ubody(self, m: UBody, path: str, x: str) -> str:
        fea = self.bisr_conv(m.embedding, f"{path}.embedding", x)
        skips = []
        for i, (block, down) in enumerate(m.encoder_layers):
            fea = self.conv_block(block, f"{path}.encoder_layers.{i}.0", fea)
            skips.append(fea)
            fea = self.downsample(down, f"{path}.encoder_layers.{i}.1", fea)
        fea = self.conv_block(m.bottleneck, f"{path}.bottleneck", fea)
        for i, (up, fusion, block) in enumerate(m.decoder_layers):
            p = f"{path}.decoder_layers.{i}"
            fea = self.upsample(up, f"{p}.0", fea)
            fea = self.op("Concat", [fea, skips[m.stage - 1 - i]], f"{p}.skip_concat", axis=1)
            fea = self.fusion_down(fusion, f"{p}.1", fea)
            fea = self.conv_block(block, f"{p}.2", fea)
        mapped = self.bisr_conv(m.mapping, f"{path}.mapping", fea)
        return self.op("Add", [mapped, x], path)

    # ---- the snapshot front end ---------------------------------------------------------------------------
    def shifted_crops(self, y: str, band_axis: str, n_bands: int, step: int, width: int) -> str:
        """[1, H, W + step*(C-1)] -> [1, C, H, W], band c = columns [step*c, step*c + W)."""
        y4 = self.op("Unsqueeze", [y, band_axis], "frontend.add_band_axis")
        axes = self.init("frontend.axis_width", np.array([3], dtype=np.int64))
        bands = []
        for c in range(n_bands):
            start = self.init(f"frontend.crop_{c}.start", np.array([step * c], dtype=np.int64))
            end = self.init(f"frontend.crop_{c}.end", np.array([step * c + width], dtype=np.int64))
            bands.append(self.op("Slice", [y4, start, end, axes], f"frontend.crop_{c}"))
        return self.op("Concat", bands, "frontend.shift_back", axis=1)

    # ---- sizes that are not multiples of 8 ----------------------------------------------------------------
    def reflect_pad(self, x: str, pad_h: int, pad_w: int) -> str:
        """[1, C, H, W] -> [1, C, H + pad_h, W + pad_w], reflected below and to the right (``F.pad`` reflect)."""
        pads = self.init("reflect_pad.pads", np.array([0, 0, 0, 0, 0, 0, pad_h, pad_w], dtype=np.int64))
        return self.op("Pad", [x, pads], "reflect_pad", mode="reflect")

    def crop(self, x: str, height: int, width: int, output: str) -> str:
        """The top-left H x W of [1, C, H', W'] (undoes ``reflect_pad``)."""
        starts = self.init("crop.starts", np.array([0, 0], dtype=np.int64))
        ends = self.init("crop.ends", np.array([height, width], dtype=np.int64))
        axes = self.init("crop.axes", np.array([2, 3], dtype=np.int64))
        return self.op("Slice", [x, starts, ends, axes], "crop", output)


def build_graph(model: BiSRNet, height: int, width: int, step: int = 2) -> onnx.GraphProto:
    """The inference graph of ``model`` for one H x W scene (at least 8 x 8; checked by the caller)."""
    b = GraphBuilder()
    c = model.n_bands
    snap_width = width + step * (c - 1)
    inputs = [helper.make_tensor_value_info("measurement", TensorProto.FLOAT, [1, height, snap_width])]
    band_axis = b.init("frontend.axis_band", np.array([1], dtype=np.int64))
    if model.mode == "sim":
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, height, width]))
        y = b.op("Div", ["measurement", b.scalar("frontend.n_bands", float(c))], "frontend.divide_bands")
        y = b.op("Mul", [y, b.scalar("frontend.two", 2.0)], "frontend.scale")
        h = b.shifted_crops(y, band_axis, c, step, width)
        mask = b.op("Unsqueeze", ["mask", band_axis], "frontend.mask_band_axis")
        mask = b.op("Expand", [mask, b.init("frontend.mask3d_shape", np.array([1, c, height, width], dtype=np.int64))],
                    "frontend.mask3d")
        x = b.op("Concat", [h, mask], "fution_input", axis=1)
        x = b.conv(model.fution, "fution", x)
    else:
        y = b.op("Cast", ["measurement"], "frontend.to_float64", to=TensorProto.DOUBLE)
        low, high = b.scalar("frontend.clip_min", 0.0, np.float64), b.scalar("frontend.clip_max", 1.0, np.float64)
        y = b.op("Clip", [y, low, high], "frontend.clip")
        peak = b.op("ReduceMax", [y], "frontend.max", keepdims=1)
        y = b.op("Div", [y, peak], "frontend.normalise")
        y = b.op("Mul", [y, b.scalar("frontend.peak", REAL_PEAK, np.float64)], "frontend.scale")
        y = b.op("Cast", [y], "frontend.to_float32", to=TensorProto.FLOAT)
        x = b.shifted_crops(y, band_axis, c, step, width)
    pad_h, pad_w = reflect_padding(height, width)
    if pad_h or pad_w:
        x = b.reflect_pad(x, pad_h, pad_w)
    x = b.conv(model.conv_in, "conv_in", x)
    fea = x
    for index, body in enumerate(model.body):
        fea = b.ubody(body, f"body.{index}", fea)
    fea = b.conv(model.conv_out, "conv_out", fea)
    padded = pad_h or pad_w
    out = b.op("Add", [fea, x], "residual", output=None if padded or model.mode == "real" else "cube")
    if padded:
        out = b.crop(out, height, width, output=None if model.mode == "real" else "cube")
    if model.mode == "real":
        b.op("Clip", [out, b.scalar("output.min", 0.0), b.scalar("output.max", 1.0)], "output_clamp", output="cube")
    outputs = [helper.make_tensor_value_info("cube", TensorProto.FLOAT, [1, c, height, width])]
    return helper.make_graph(b.nodes, "bisrnet", inputs, outputs, b.initializers)
