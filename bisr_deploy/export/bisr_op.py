"""The ``ai.bisr`` operator domain (docs/custom-ops.md): the BiSRConv node, its initializers and its
model-local ``FunctionProto`` whose body uses standard ONNX ops only, so stock ONNX Runtime runs it.

Function body (opset 18, attributes ``kernel_shape``, ``pads``, ``group`` passed by reference):
    a  = Where(X·k + b > 0, 1, -1)                                  # step 1, Sign(0) = -1
    w  = Where(((bits >> [0..7]) & 1) reshaped to [C, Cg, KH, KW], 1, -1)   # step 2, LSB-first
    acc = Conv(a, w, kernel_shape, pads, group)                     # step 3, zero padding, exact in fp32
    Y  = X + (PRelu(acc·scale + bias_in, slope) + bias_out)         # steps 4-6
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..bitpack import pack_sign_bits
from ..model import BiSRConv

DOMAIN = "ai.bisr"
DOMAIN_VERSION = 1
OP_TYPE = "BiSRConv"
# Input names of the operator, in order (docs/custom-ops.md, "Inputs").
INPUTS = ("X", "redist_scale", "redist_bias", "weight_bits", "weight_scale",
          "rprelu_bias_in", "rprelu_slope", "rprelu_bias_out")
ONNX_OPSET = 18


def _const(name: str, array: np.ndarray):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def _const_ref(name: str, value_attr: str, attr_type, ref_name: str):
    """A Constant whose value is the calling node's attribute ``ref_name``."""
    node = helper.make_node("Constant", [], [name])
    node.attribute.append(helper.make_attribute_ref(value_attr, attr_type, ref_attr_name=ref_name))
    return node


def _per_channel(src: str, dst: str) -> onnx.NodeProto:
    """[C] -> [C, 1, 1], to broadcast over [N, C, H, W]."""
    return helper.make_node("Unsqueeze", [src, "axes_hw"], [dst])


def bisr_conv_function() -> onnx.FunctionProto:
    """The model-local function ``ai.bisr::BiSRConv`` (version 1) in standard ONNX opset-18 ops."""
    ref = helper.make_attribute_ref
    nodes = [
        _const("axes_hw", np.array([1, 2], dtype=np.int64)),
        _const("one_f", np.array(1.0, dtype=np.float32)),
        _const("minus_one_f", np.array(-1.0, dtype=np.float32)),
        _const("zero_f", np.array(0.0, dtype=np.float32)),
        # Step 1: redistribution and sign.
        _per_channel("redist_scale", "k3"),
        _per_channel("redist_bias", "b3"),
        helper.make_node("Mul", ["X", "k3"], ["xk"]),
        helper.make_node("Add", ["xk", "b3"], ["xr"]),
        helper.make_node("Greater", ["xr", "zero_f"], ["a_pos"]),
        helper.make_node("Where", ["a_pos", "one_f", "minus_one_f"], ["a"]),
        # Step 2: unpack the weight bits to ±1 [C, Cg, KH, KW].
        _const("bit_shifts", np.arange(8, dtype=np.uint8)),
        _const("bit_one", np.array(1, dtype=np.uint8)),
        _const("axis_last", np.array([2], dtype=np.int64)),
        _const("rows_flat", np.array([0, -1], dtype=np.int64)),
        _const("zero_i", np.array([0], dtype=np.int64)),
        _const("one_axis", np.array([1], dtype=np.int64)),
        _const_ref("kernel", "value_ints", onnx.AttributeProto.INTS, "kernel_shape"),
        _const_ref("group_s", "value_int", onnx.AttributeProto.INT, "group"),
        helper.make_node("Shape", ["weight_bits"], ["c_out"], start=0, end=1),
        helper.make_node("Reshape", ["group_s", "one_axis"], ["group_1"]),
        helper.make_node("Div", ["c_out", "group_1"], ["c_group"]),
        helper.make_node("Concat", ["c_group", "kernel"], ["taps_dims"], axis=0),
        helper.make_node("ReduceProd", ["taps_dims"], ["n_taps"], keepdims=1),
        helper.make_node("Concat", ["c_out", "c_group", "kernel"], ["w_shape"], axis=0),
        helper.make_node("Unsqueeze", ["weight_bits", "axis_last"], ["bytes3"]),
        helper.make_node("BitShift", ["bytes3", "bit_shifts"], ["shifted"], direction="RIGHT"),
        helper.make_node("BitwiseAnd", ["shifted", "bit_one"], ["bit_vals"]),
        helper.make_node("Reshape", ["bit_vals", "rows_flat"], ["bit_rows"]),
        helper.make_node("Slice", ["bit_rows", "zero_i", "n_taps", "one_axis"], ["bit_taps"]),
        helper.make_node("Reshape", ["bit_taps", "w_shape"], ["w_bits"]),
        helper.make_node("Cast", ["w_bits"], ["w_pos"], to=TensorProto.BOOL),
        helper.make_node("Where", ["w_pos", "one_f", "minus_one_f"], ["w"]),
        # Step 3: ±1 convolution with zero padding (integer-valued, exact in float32).
        helper.make_node("Conv", ["a", "w"], ["acc"]),
        # Steps 4-6: scale, RPReLU, residual.
        _per_channel("weight_scale", "s3"),
        _per_channel("rprelu_bias_in", "g3"),
        _per_channel("rprelu_slope", "p3"),
        _per_channel("rprelu_bias_out", "z3"),
        helper.make_node("Mul", ["acc", "s3"], ["scaled"]),
        helper.make_node("Add", ["scaled", "g3"], ["shifted_in"]),
        helper.make_node("PRelu", ["shifted_in", "p3"], ["activated"]),
        helper.make_node("Add", ["activated", "z3"], ["r"]),
        helper.make_node("Add", ["X", "r"], ["Y"]),
    ]
    conv = next(node for node in nodes if node.op_type == "Conv")
    conv.attribute.extend([ref("kernel_shape", onnx.AttributeProto.INTS), ref("pads", onnx.AttributeProto.INTS),
                           ref("group", onnx.AttributeProto.INT)])
    return helper.make_function(
        DOMAIN, OP_TYPE, list(INPUTS), ["Y"], nodes,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        attributes=["kernel_shape", "pads", "group"],
        doc_string="ai.bisr::BiSRConv v1, see docs/custom-ops.md",
    )


def bisr_conv_initializers(module: BiSRConv, prefix: str) -> list[onnx.TensorProto]:
    """The seven initializers of one BiSRConv (inputs 1-7), named ``<prefix>.<input name>``.

    Values come straight from the module: k, b of ``move0``; sign bits of ``binary_conv.weight`` packed by
    ``bisr_deploy.bitpack``; ``binary_conv.weight_scale()``; the RPReLU biases and slope.
    """
    conv = module.binary_conv
    if conv.in_channels != conv.out_channels:
        raise ValueError(f"{prefix}: BiSRConv needs equal input and output channels")
    values = {
        "redist_scale": module.move0.k.reshape(-1),
        "redist_bias": module.move0.b.reshape(-1),
        "weight_bits": pack_sign_bits(conv.weight),
        "weight_scale": conv.weight_scale().reshape(-1),
        "rprelu_bias_in": module.relu.pr_bias0.bias.reshape(-1),
        "rprelu_slope": module.relu.pr_prelu.weight.reshape(-1),
        "rprelu_bias_out": module.relu.pr_bias1.bias.reshape(-1),
    }
    out = []
    for key, value in values.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy().astype(np.float32)
        out.append(numpy_helper.from_array(np.ascontiguousarray(value), f"{prefix}.{key}"))
    return out


def bisr_conv_node(module: BiSRConv, prefix: str, x: str, y: str) -> onnx.NodeProto:
    """The ``ai.bisr::BiSRConv`` node for ``module``, reading ``x`` and the initializers of ``prefix``."""
    conv = module.binary_conv
    kh, kw = conv.kernel_size
    ph, pw = conv.padding
    return helper.make_node(
        OP_TYPE, [x] + [f"{prefix}.{name}" for name in INPUTS[1:]], [y], name=prefix, domain=DOMAIN,
        kernel_shape=[kh, kw], pads=[ph, pw, ph, pw], group=conv.groups,
    )
