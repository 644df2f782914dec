"""Post-build passes on an exported model: static shape annotation, inference-cleanliness checks, and the
replacement of the BiSRConv custom ops by a stand-in (for importers that do not know the domain, e.g. TVM's Relax
ONNX frontend, which must accept everything else).
"""

from __future__ import annotations

import onnx
from onnx import shape_inference

from .. import bisrconv_op

# Op types that must not survive into an inference graph: training-time estimators and dynamic shape plumbing.
FORBIDDEN_OPS = ("Tanh", "Shape", "NonZero", "Range", "ConstantOfShape", "Loop", "If", "Scan", "Dropout")


def annotate_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Strict ONNX shape inference (through the model-local functions): every tensor gets a value_info."""
    return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def _static(value_info: onnx.ValueInfoProto) -> bool:
    shape = value_info.type.tensor_type.shape
    return value_info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in shape.dim)


def inference_problems(model: onnx.ModelProto) -> list[str]:
    """What keeps ``model`` (after ``annotate_shapes``) from being a clean static inference graph; [] if none.

    Checks the main graph only (function bodies are the reference lowering of the custom ops): forbidden op
    types, Reshape (none is needed), Constant nodes and nodes computed from initializers alone (unfolded
    constants), tensors without a fully static shape, ops of unknown domains.
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    problems = []
    for node in graph.node:
        if node.domain and not bisrconv_op.is_node(node):
            problems.append(f"{node.name}: op of foreign domain {node.domain}::{node.op_type}")
        elif node.op_type in FORBIDDEN_OPS or node.op_type in ("Reshape", "Constant"):
            problems.append(f"{node.name}: {node.op_type} in an inference graph")
        elif all(not name or name in initializers for name in node.input):
            problems.append(f"{node.name}: computes a constant (not folded)")
    known = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    for node in graph.node:
        for name in list(node.output) + [i for i in node.input if i and i not in initializers]:
            if name not in known:
                problems.append(f"{node.name}: tensor {name} has no inferred shape")
            elif not _static(known[name]):
                problems.append(f"{node.name}: tensor {name} has a dynamic shape")
    return problems


def strip_custom_ops(model: onnx.ModelProto, replacement: str = "Identity") -> onnx.ModelProto:
    """A copy of ``model`` with every BiSRConv custom node replaced by ``replacement(X)`` (a shape-preserving
    unary standard op), its now-unused initializers, the functions and the domain import removed.
    """
    stripped, _ = bisrconv_op.replace_nodes(model, replacement)
    graph = stripped.graph
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return stripped
