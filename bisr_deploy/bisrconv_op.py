"""The one definition of the ``ai.bisr::BiSRConv`` operator (docs/custom-ops.md): domain, version, input
names, attributes, node and opset builders, the model-local ``FunctionProto`` (standard ONNX ops only, so
stock ONNX Runtime runs it), the replacement of its nodes by a stand-in, and a numpy reference.

The exporter (``export/``), the importer (``compile/split.py``) and the tests use it; no other module spells the
domain or the input names.

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

from .bitpack import unpack_sign_bits

DOMAIN = "ai.bisr"
DOMAIN_VERSION = 1
OP_TYPE = "BiSRConv"
# Input names of the operator, in order (docs/custom-ops.md, "Inputs"): X, then the layer's seven weights.
INPUTS = ("X", "redist_scale", "redist_bias", "weight_bits", "weight_scale",
          "rprelu_bias_in", "rprelu_slope", "rprelu_bias_out")
WEIGHT_INPUTS = INPUTS[1:]
# Attributes: kernel_shape [KH, KW], pads [top, left, bottom, right] (zero padding), group.
ATTRIBUTES = ("kernel_shape", "pads", "group")
ONNX_OPSET = 18  # of the function body and of the exported graphs


def opset_imports() -> list[onnx.OperatorSetIdProto]:
    """The opset imports of a model using the operator: standard ONNX ``ONNX_OPSET`` and this domain."""
    return [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]


def is_node(node: onnx.NodeProto) -> bool:
    """Whether ``node`` belongs to this operator's domain (any op type of it)."""
    return node.domain == DOMAIN


def make_node(name: str, x: str, y: str, kernel_shape, pads, group: int) -> onnx.NodeProto:
    """A BiSRConv node ``name`` reading ``x`` and the weight initializers ``<name>.<weight input>``."""
    return helper.make_node(OP_TYPE, [x] + [f"{name}.{w}" for w in WEIGHT_INPUTS], [y], name=name, domain=DOMAIN,
                            kernel_shape=list(kernel_shape), pads=list(pads), group=int(group))


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


def function() -> onnx.FunctionProto:
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
        attributes=list(ATTRIBUTES),
        doc_string=f"{DOMAIN}::{OP_TYPE} v{DOMAIN_VERSION}, see docs/custom-ops.md",
    )


def replace_nodes(model: onnx.ModelProto, replacement: str) -> tuple[onnx.ModelProto, list[onnx.NodeProto]]:
    """(a copy of ``model`` with every node of this domain replaced by ``replacement(X)`` (a shape-preserving
    unary standard op) and the functions and the domain import removed, the replaced nodes in graph order).
    Initializers are left as they are (the caller decides which stay)."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    graph = stripped.graph
    nodes, replaced = [], []
    for node in graph.node:
        if is_node(node):
            replaced.append(node)
            nodes.append(helper.make_node(replacement, [node.input[0]], list(node.output), name=node.name))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    del stripped.functions[:]
    imports = [o for o in stripped.opset_import if o.domain != DOMAIN]
    del stripped.opset_import[:]
    stripped.opset_import.extend(imports)
    return stripped, replaced


def reference(x: np.ndarray, weights: dict[str, np.ndarray], kernel_shape, pads, group: int) -> np.ndarray:
    """The operator in numpy, float32 steps in the contract's order (exact integer accumulator): x [N, C, H, W]
    float32, ``weights`` by input name (``WEIGHT_INPUTS``) -> Y [N, C, H, W]."""
    n, c, h, w = x.shape
    cg = c // group
    kh, kw = kernel_shape
    signs = unpack_sign_bits(weights["weight_bits"], (c, cg, kh, kw))
    per = lambda name: weights[name][None, :, None, None]  # noqa: E731
    a = np.where(per("redist_scale") * x + per("redist_bias") > 0, 1, -1).astype(np.int64)
    top, left, bottom, right = pads
    ap = np.pad(a, ((0, 0), (0, 0), (top, bottom), (left, right)))
    acc = np.zeros((n, c, h, w), np.int64)
    for o in range(c):
        g = o // cg
        for i in range(cg):
            for u in range(kh):
                for v in range(kw):
                    acc[:, o] += ap[:, g * cg + i, u:u + h, v:v + w] * int(signs[o, i, u, v])
    t = per("weight_scale") * acc.astype(np.float32) + per("rprelu_bias_in")
    r = np.where(t > 0, t, per("rprelu_slope") * t) + per("rprelu_bias_out")
    return x + r



