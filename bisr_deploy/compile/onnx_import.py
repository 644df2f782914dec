"""ONNX (with BiSRConv custom nodes) -> Relax IRModule whose BiSRConvs call our TIR kernels.

The import is a pipeline of named passes, in this order (``import_onnx``):

1. ``split.split_custom_ops`` (ONNX): BiSRConv nodes -> placeholders, their weights kept aside;
   unsupported operators refused up front;
2. TVM's ``from_onnx(keep_params_in_input=True)`` imports the rest;
3. ``RELAX_PASSES``: ``lowering.lower`` (dispatch table: placeholders, float convs, resizes, PreNorm -> our
   kernels), ``fusion.fuse`` (BiSRNet's patterns -> fused kernels; bitserial builds), ``remove_dead_code``.

Result: ``ImportedModel(mod, params, input_names, output_name, input_shapes, output_shape, layers)``;
``mod["main"]`` takes the ONNX graph inputs followed by ``len(params)`` weight tensors, in ``params`` order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import BisrError
from .fusion import fuse
from .lowering import LayerInfo, LoweringState, lower
from .schedule import Schedule
from .split import split_custom_ops, static_shape


@dataclass
class ImportedModel:
    mod: object
    params: list[tuple[str, np.ndarray]]
    input_names: list[str]
    input_shapes: list[list[int]]
    output_name: str
    output_shape: list[int]
    layers: list[LayerInfo] = field(default_factory=list)


def _without_dead_kernels(mod, keep: set[str]):
    """``mod`` without the kernels that ``main`` no longer calls (superseded by a fused kernel), except those
    named in ``keep``: the per-layer BiSRConv kernels stay in the library for the runtime's run_bisrconv."""
    import tvm
    from tvm import relax

    called = set()
    relax.analysis.post_order_visit(
        mod["main"], lambda e: called.add(e.name_hint) if isinstance(e, tvm.ir.GlobalVar) else None)
    out = tvm.IRModule({gv: f for gv, f in mod.functions_items()
                        if gv.name_hint in called or gv.name_hint in keep or gv.name_hint == "main"}, attrs=mod.attrs)
    return out


def remove_dead_code(mod, state: LoweringState):
    """Drop the bindings the earlier passes bypassed (transposes, unfused kernel calls) and the kernels
    ``main`` no longer calls, except every kernel that computes a layer of ``state.layers``."""
    from tvm import relax

    mod = relax.transform.DeadCodeElimination(["main"])(mod)
    return _without_dead_kernels(mod, {layer.func_name for layer in state.layers})


# The Relax passes of the import, in order: each ``(mod, state) -> mod``.
RELAX_PASSES = (lower, fuse, remove_dead_code)


def import_onnx(model: onnx.ModelProto, schedule: Schedule = Schedule(lanes=16), bitserial: bool = True,
                schedule_float: bool = True) -> ImportedModel:
    """Import ``model`` (see module docstring). ``schedule``: the target's (``CompileTarget.schedule``);
    ``bitserial=False`` keeps BiSRConv in float32 ops; ``schedule_float=False`` leaves float convs to TVM."""
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.onnx import from_onnx

    stripped, nodes = split_custom_ops(model)
    graph_inputs = [i for i in stripped.graph.input if i.name not in {t.name for t in stripped.graph.initializer}]
    input_shapes = [static_shape(i) for i in graph_inputs]
    if any(s is None for s in input_shapes) or len(stripped.graph.output) != 1:
        raise BisrError("the model must have static input shapes and exactly one output")
    output_shape = static_shape(stripped.graph.output[0])
    try:
        mod = from_onnx(stripped, keep_params_in_input=True)
    except Exception as exc:
        raise BisrError(f"TVM cannot import the ONNX graph: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc
    mod, detached = detach_params(mod)
    main = mod["main"]
    n_inputs = len(graph_inputs)
    onnx_params = [(p.name, np.asarray(t.numpy())) for p, t in zip(main.params[n_inputs:], detached.get("main", []))]
    state = LoweringState(nodes, {p.name: a for p, (_, a) in zip(main.params[n_inputs:], onnx_params)}, schedule,
                          bitserial, schedule_float)
    for relax_pass in RELAX_PASSES:
        mod = relax_pass(mod, state)
    params = onnx_params + [(v.name, a) for v, a in state.new_params]
    return ImportedModel(mod, params, [i.name for i in graph_inputs], input_shapes,
                         stripped.graph.output[0].name, output_shape, state.layers)
