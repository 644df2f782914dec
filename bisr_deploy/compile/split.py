"""Pass 1 of the import (ONNX level): split the BiSRConv custom nodes off the graph.

``relax.frontend.onnx.from_onnx`` has a fixed operator table (no custom domains) and does not expand
model-local functions. ``split_custom_ops`` therefore replaces every BiSRConv node by a placeholder standard
op (``Atan``, which BiSRNet never uses; a model that does is refused) and keeps each node's static shape and
initializer values aside, in graph order, for the lowering pass. Unsupported operators are refused up front.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import bisrconv_op
from ..errors import BisrError
from .bitserial import BiSRConvSpec

PLACEHOLDER = "Atan"


@dataclass
class BiSRConvNode:
    """One BiSRConv node: its ONNX name, static spec and the raw ONNX initializer values by input name."""

    name: str
    spec: BiSRConvSpec
    inputs: dict[str, np.ndarray]


def static_shape(value_info) -> list[int] | None:
    """The shape of ``value_info`` if every dimension is static, else None."""
    dims = value_info.type.tensor_type.shape.dim
    if not value_info.type.tensor_type.HasField("shape") or any(not d.HasField("dim_value") for d in dims):
        return None
    return [d.dim_value for d in dims]


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # custom-domain nodes may stop inference; the exporter annotates shapes itself
        inferred = model
    graph = inferred.graph
    out = {}
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output) + list(model.graph.value_info):
        shape = static_shape(vi)
        if shape is not None:
            out[vi.name] = shape
    return out


def _check_operators(graph: onnx.GraphProto) -> None:
    if any(n.op_type == PLACEHOLDER and n.domain in ("", "ai.onnx") for n in graph.node):
        raise BisrError(f"the model uses {PLACEHOLDER}, which the compiler reserves as its BiSRConv placeholder")
    unknown = {f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")
               and not (bisrconv_op.is_node(n) and n.op_type == bisrconv_op.OP_TYPE)}
    if unknown:
        raise BisrError(f"unsupported custom operators: {', '.join(sorted(unknown))}")


def _node(node: onnx.NodeProto, shapes: dict, initializers: dict) -> BiSRConvNode:
    if len(node.input) != len(bisrconv_op.INPUTS) or len(node.output) != 1:
        raise BisrError(f"BiSRConv node {node.name!r}: expected {len(bisrconv_op.INPUTS)} inputs and 1 output")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    shape = shapes.get(node.input[0])
    if shape is None or len(shape) != 4:
        raise BisrError(f"BiSRConv node {node.name!r}: input {node.input[0]!r} has no static 4-D shape")
    try:
        kernel = tuple(int(v) for v in attrs["kernel_shape"])
        spec = BiSRConvSpec(shape[0], shape[1], shape[2], shape[3], kernel,
                            tuple(int(v) for v in attrs.get("pads", [0, 0, 0, 0])), int(attrs.get("group", 1)))
    except KeyError as exc:
        raise BisrError(f"BiSRConv node {node.name!r}: missing attribute {exc}") from exc
    values = {}
    for input_name, tensor_name in zip(bisrconv_op.WEIGHT_INPUTS, node.input[1:]):
        if tensor_name not in initializers:
            raise BisrError(f"BiSRConv node {node.name!r}: input {input_name} ({tensor_name!r}) is not an initializer")
        array = numpy_helper.to_array(initializers[tensor_name])
        if input_name != "weight_bits" and (array.dtype != np.float32 or array.shape != (spec.channels,)):
            raise BisrError(f"BiSRConv node {node.name!r}: {input_name} must be float32 [{spec.channels}], "
                            f"got {array.dtype} {list(array.shape)}")
        values[input_name] = array
    return BiSRConvNode(node.name or node.output[0], spec, values)


def split_custom_ops(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[BiSRConvNode]]:
    """A copy of ``model`` with each BiSRConv replaced by ``Atan(X)`` and its initializers dropped, plus the
    nodes in graph order. Raises ``BisrError`` for unsupported nodes, dynamic shapes or missing weights."""
    graph = model.graph
    _check_operators(graph)
    initializers = {t.name: t for t in graph.initializer}
    shapes = _shapes(model)
    nodes = [_node(node, shapes, initializers) for node in graph.node if bisrconv_op.is_node(node)]
    stripped, _ = bisrconv_op.replace_nodes(model, PLACEHOLDER)
    used = {name for n in stripped.graph.node for name in n.input}
    # Integer initializers (shapes, axes, slice bounds) become Constant nodes: the importer must see their
    # values to infer static shapes, while float weights stay separate parameters.
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer
                 if t.name in used and t.data_type != onnx.TensorProto.FLOAT]
    new_nodes = list(stripped.graph.node)
    del stripped.graph.node[:]
    stripped.graph.node.extend(constants + new_nodes)
    kept = [t for t in stripped.graph.initializer if t.name in used and t.data_type == onnx.TensorProto.FLOAT]
    del stripped.graph.initializer[:]
    stripped.graph.initializer.extend(kept)
    return stripped, nodes
