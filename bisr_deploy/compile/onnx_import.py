"""ONNX (with ``ai.bisr::BiSRConv`` nodes) -> Relax IRModule whose BiSRConvs call our TIR kernels.

``relax.frontend.onnx.from_onnx`` has a fixed operator table (no custom domains) and does not expand
model-local functions. So:

1. ``split_custom_ops`` replaces every BiSRConv node by a placeholder standard op (``Atan``, which BiSRNet
   never uses; a model that does is refused) and keeps each node's static shape and initializers aside;
2. ``from_onnx(keep_params_in_input=True)`` imports the rest;
3. the ``Lowering`` mutator walks the imported function in binding order — the importer emits nodes in graph order,
   so the k-th placeholder call is the k-th BiSRConv node (its input shape is checked) — and replaces it by
   ``call_tir`` of the bitserial kernel (``bitserial=True``) or by the same operator in float32 Relax ops
   (``bitserial=False``: the "TVM fp32" baseline). ``nn.conv2d`` calls (the full-precision layers) become
   ``call_tir`` of the scheduled ``floatconv`` kernel. Kernel parameters become extra function parameters.
   Bilinear 2x resizes become the ``upsample`` kernel. The PreNorm pattern transpose(NCHW->NHWC) -> LayerNorm(last axis) -> transpose(NHWC->NCHW) becomes one
   LayerNorm over axis 1 of the NCHW tensor (same arithmetic, two full-tensor transposes fewer).
   With ``bitserial=True``, BiSRNet's patterns around the BiSRConvs (pairs with their Concat or mean, the
   RPReLU after a kernel, the block residual after a mean) become one fused kernel call each
   (``bitserial.Fusion``, manifest kind ``bisrconv_fused``); the per-layer kernels stay in the library.

Result: ``ImportedModel(mod, params, input_names, output_name, input_shapes, output_shape, layers)``;
``mod["main"]`` takes the ONNX graph inputs followed by ``len(params)`` weight tensors, in ``params`` order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import BisrError
from ..artifact import BISRCONV_PARAMS
from .bitserial import BiSRConvSpec, Fusion, bisrconv_primfunc, prepare_weights
from .floatconv import Conv2dSpec, conv2d_primfunc
from .upsample import upsample2x_primfunc

DOMAIN = "ai.bisr"
OP_TYPE = "BiSRConv"
PLACEHOLDER = "Atan"
# Attribute marking our hand-scheduled kernels: the Relax pipeline must neither fuse nor reschedule them.
KERNEL_ATTR = "bisr.kernel"


@dataclass
class BiSRConvNode:
    """One BiSRConv node: its ONNX name, static spec and the raw ONNX initializer values by input name."""

    name: str
    spec: BiSRConvSpec
    inputs: dict[str, np.ndarray]


@dataclass
class LayerInfo:
    """A kernel in the compiled module (for per-layer benchmarks): name, kind, spec, TIR function name."""

    name: str
    kind: str  # "bisrconv" | "bisrconv_fused" | "conv2d" | "upsample2x"
    spec: object
    func_name: str
    members: tuple[str, ...] = ()  # bisrconv_fused: the BiSRConv nodes it computes, in order
    fusion: Fusion = Fusion()  # bisrconv_fused: what else it computes (bitserial.bisrconv_compute)


@dataclass
class ImportedModel:
    mod: object
    params: list[tuple[str, np.ndarray]]
    input_names: list[str]
    input_shapes: list[list[int]]
    output_name: str
    output_shape: list[int]
    layers: list[LayerInfo] = field(default_factory=list)


def _static_shape(value_info) -> list[int] | None:
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
        shape = _static_shape(vi)
        if shape is not None:
            out[vi.name] = shape
    return out


def split_custom_ops(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[BiSRConvNode]]:
    """A copy of ``model`` with each BiSRConv replaced by ``Atan(X)`` and its initializers dropped, plus the
    nodes in graph order. Raises ``BisrError`` for unsupported nodes, dynamic shapes or missing weights."""
    graph = model.graph
    if any(n.op_type == PLACEHOLDER and n.domain in ("", "ai.onnx") for n in graph.node):
        raise BisrError(f"the model uses {PLACEHOLDER}, which the compiler reserves as its BiSRConv placeholder")
    unknown = {f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx", DOMAIN)}
    unknown |= {f"{n.domain}::{n.op_type}" for n in graph.node if n.domain == DOMAIN and n.op_type != OP_TYPE}
    if unknown:
        raise BisrError(f"unsupported custom operators: {', '.join(sorted(unknown))}")
    initializers = {t.name: t for t in graph.initializer}
    shapes = _shapes(model)
    nodes, new_nodes = [], []
    for node in graph.node:
        if node.domain != DOMAIN:
            new_nodes.append(node)
            continue
        if len(node.input) != 8 or len(node.output) != 1:
            raise BisrError(f"BiSRConv node {node.name!r}: expected 8 inputs and 1 output")
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
        for input_name, tensor_name in zip(("redist_scale", "redist_bias", "weight_bits", "weight_scale",
                                            "rprelu_bias_in", "rprelu_slope", "rprelu_bias_out"), node.input[1:]):
            if tensor_name not in initializers:
                raise BisrError(f"BiSRConv node {node.name!r}: input {input_name} ({tensor_name!r}) is not an initializer")
            array = numpy_helper.to_array(initializers[tensor_name])
            if input_name != "weight_bits" and (array.dtype != np.float32 or array.shape != (spec.channels,)):
                raise BisrError(f"BiSRConv node {node.name!r}: {input_name} must be float32 [{spec.channels}], "
                                f"got {array.dtype} {list(array.shape)}")
            values[input_name] = array
        nodes.append(BiSRConvNode(node.name or node.output[0], spec, values))
        new_nodes.append(helper.make_node(PLACEHOLDER, [node.input[0]], list(node.output), name=node.name))
    used = {name for n in new_nodes for name in n.input}
    # Integer initializers (shapes, axes, slice bounds) become Constant nodes: the importer must see their
    # values to infer static shapes, while float weights stay separate parameters.
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer
                 if t.name in used and t.data_type != onnx.TensorProto.FLOAT]
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.node[:]
    stripped.graph.node.extend(constants + new_nodes)
    kept = [t for t in stripped.graph.initializer if t.name in used and t.data_type == onnx.TensorProto.FLOAT]
    del stripped.graph.initializer[:]
    stripped.graph.initializer.extend(kept)
    del stripped.functions[:]
    imports = [o for o in stripped.opset_import if o.domain != DOMAIN]
    del stripped.opset_import[:]
    stripped.opset_import.extend(imports)
    return stripped, nodes


def kernel_params(node: BiSRConvNode) -> dict[str, np.ndarray]:
    """The bitserial kernel's parameters (``BISRCONV_PARAMS``) for one node."""
    prepared = prepare_weights(node.spec, node.inputs["weight_bits"])
    return {name: np.ascontiguousarray(node.inputs[name] if name in node.inputs else prepared[name])
            for name in BISRCONV_PARAMS}


def _mark(func, name: str):
    return func.with_attr("global_symbol", name).with_attr("op_pattern", 8).with_attr(KERNEL_ATTR, 1)


def import_onnx(model: onnx.ModelProto, lanes: int = 16, bitserial: bool = True, schedule_float: bool = True) -> ImportedModel:
    """Import ``model`` (see module docstring). ``lanes``: vector lanes of the target (16 AVX-512, 8 AVX2)."""
    from tvm import relax
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.onnx import from_onnx

    stripped, nodes = split_custom_ops(model)
    graph_inputs = [i for i in stripped.graph.input if i.name not in {t.name for t in stripped.graph.initializer}]
    input_shapes = [_static_shape(i) for i in graph_inputs]
    if any(s is None for s in input_shapes) or len(stripped.graph.output) != 1:
        raise BisrError("the model must have static input shapes and exactly one output")
    output_shape = _static_shape(stripped.graph.output[0])
    try:
        mod = from_onnx(stripped, keep_params_in_input=True)
    except Exception as exc:
        raise BisrError(f"TVM cannot import the ONNX graph: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc
    mod, detached = detach_params(mod)
    main = mod["main"]
    n_inputs = len(graph_inputs)
    onnx_params = [(p.name, np.asarray(t.numpy())) for p, t in zip(main.params[n_inputs:], detached.get("main", []))]
    param_values = {p.name: a for p, (_, a) in zip(main.params[n_inputs:], onnx_params)}
    lowering = _lowering_class()(mod, nodes, lanes, bitserial, schedule_float, param_values)
    body = lowering.visit_expr(main.body)
    if lowering.next_node != len(nodes):
        raise BisrError(f"internal: lowered {lowering.next_node} of {len(nodes)} BiSRConv nodes")
    new_main = relax.Function(list(main.params) + [v for v, _ in lowering.new_params], body, main.ret_ty,
                              main.is_pure, main.attrs)
    out_mod = lowering.builder_.get()
    out_mod["main"] = new_main
    out_mod = relax.transform.DeadCodeElimination(["main"])(out_mod)  # the bypassed transposes, unfused calls
    out_mod = _without_dead_kernels(out_mod, {layer.func_name for layer in lowering.layers})
    params = onnx_params + [(v.name, a) for v, a in lowering.new_params]
    return ImportedModel(out_mod, params, [i.name for i in graph_inputs], input_shapes,
                         stripped.graph.output[0].name, output_shape, lowering.layers)


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


@functools.cache
def _lowering_class():
    """The Relax mutator class (defined lazily: importing this module must not need TVM)."""
    from tvm import relax

    @relax.expr_functor.mutator
    class Lowering(relax.PyExprMutator):
        """Replaces placeholder calls by BiSRConv lowerings and ``nn.conv2d`` by the scheduled kernel."""

        def __init__(self, mod, nodes, lanes, bitserial, schedule_float, param_values):
            super().__init__(mod)
            self.nodes, self.lanes, self.bitserial, self.schedule_float = nodes, lanes, bitserial, schedule_float
            self.param_values = param_values  # ONNX float initializers by Relax parameter name
            self.bisr_kernels: dict[str, tuple] = {}  # kernel name -> (spec, Fusion)
            self.next_node = 0
            self.new_params: list = []
            self.layers: list[LayerInfo] = []
            self.kernels: dict = {}
            self.placeholder = relax.op.atan(relax.Var("x", relax.TensorType((1,), "float32"))).op
            self.conv_op = tvm_op("relax.nn.conv2d")
            self.permute_op = tvm_op("relax.permute_dims")
            self.layer_norm_op = tvm_op("relax.nn.layer_norm")
            self.resize_op = tvm_op("relax.image.resize2d")
            self.ops = {name: tvm_op(f"relax.{name}") for name in ("concat", "divide", "add", "split", "nn.prelu")}

        def _param(self, name, array):
            var = relax.Var(name, relax.TensorType(array.shape, str(array.dtype)))
            self.new_params.append((var, array))
            return var

        def _kernel(self, key, make, func_name):
            if key not in self.kernels:
                self.kernels[key] = self.builder_.add_func(_mark(make(), func_name), func_name)
            return self.kernels[key]

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if call.op.same_as(self.placeholder):
                return self._bisrconv(call)
            if self.bitserial:
                fused = self._fuse(call)
                if fused is not None:
                    return fused
            if call.op.same_as(self.permute_op):
                fused = self._channel_layer_norm(call)
                if fused is not None:
                    return fused
            if call.op.same_as(self.resize_op):
                lowered = self._upsample2x(call)
                if lowered is not None:
                    return lowered
            if self.schedule_float and call.op.same_as(self.conv_op):
                lowered = self._conv2d(call)
                return call if lowered is None else lowered
            return call

        def _producer(self, expr, op):
            bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
            return bound if isinstance(bound, relax.Call) and bound.op.same_as(op) else None

        def _channel_layer_norm(self, call):
            """NCHW -> NHWC, LayerNorm over C, -> NCHW (BiSRNet's PreNorm) becomes one LayerNorm over axis 1."""
            axes = lambda c: [int(a) for a in c.attrs.axes] if c.attrs.axes is not None else None  # noqa: E731
            if axes(call) != [0, 3, 1, 2]:
                return None
            norm = self._producer(call.args[0], self.layer_norm_op)
            if norm is None or axes(norm) not in ([-1], [3]):
                return None
            to_nhwc = self._producer(norm.args[0], self.permute_op)
            if to_nhwc is None or axes(to_nhwc) != [0, 2, 3, 1]:
                return None
            a = norm.attrs
            return relax.op.nn.layer_norm(to_nhwc.args[0], norm.args[1], norm.args[2], axes=[1],
                                          epsilon=float(a.epsilon), center=bool(a.center), scale=bool(a.scale))

        def _upsample2x(self, call):
            """Bilinear half-pixel resize by exactly 2 -> the ``upsample`` kernel (others stay TVM's)."""
            a = call.attrs
            x = call.args[0]
            if (str(a.method) != "linear" or str(a.coordinate_transformation_mode) not in ("half_pixel", "pytorch_half_pixel")
                    or str(a.layout) != "NCHW" or str(x.ty.dtype) != "float32" or not isinstance(call.args[1], relax.ShapeExpr)):
                return None
            n, c, h, w = [int(d) for d in x.ty.shape]
            if [int(v) for v in call.args[1].values] != [2 * h, 2 * w]:
                return None
            name = f"upsample2x_{c}x{h}x{w}"
            gv = self._kernel(("upsample2x", (n, c, h, w)), lambda: upsample2x_primfunc((n, c, h, w), self.lanes), name)
            self.layers.append(LayerInfo(name, "upsample2x", (n, c, h, w), name))
            pairs = relax.call_tir(gv, [x], relax.TensorType([n, c, 2 * h, w, 2], "float32"))
            return relax.op.reshape(pairs, (n, c, 2 * h, 2 * w))

        def _bisrconv(self, call):
            if self.next_node >= len(self.nodes):
                raise BisrError("internal: more placeholder calls than BiSRConv nodes")
            node = self.nodes[self.next_node]
            self.next_node += 1
            spec = node.spec
            shape = [int(d) for d in call.args[0].ty.shape]
            if shape != [spec.batch, spec.channels, spec.height, spec.width]:
                raise BisrError(f"internal: BiSRConv {node.name!r} expected input {spec}, the graph has {shape}")
            x = call.args[0]
            if not self.bitserial:
                return _float_bisrconv(node, x, self._param, self._float_conv if self.schedule_float else None)
            params = kernel_params(node)
            args = [self._param(f"{node.name}.{k}", v) for k, v in params.items()]
            name = "bisrconv_" + "x".join(str(v) for v in (spec.channels, spec.height, spec.width, *spec.kernel, spec.group))
            gv = self._kernel(("bisrconv", spec), lambda: bisrconv_primfunc(spec, self.lanes), name)
            self.bisr_kernels[name] = (spec, Fusion())
            self.layers.append(LayerInfo(node.name, "bisrconv", spec, name))
            return relax.call_tir(gv, [x, *args], relax.TensorType(shape, "float32"))

        # ---- Fusion of BiSRNet's operator patterns around the BiSRConvs into one kernel call each (the
        # unfused calls become dead and are removed; see bitserial.bisrconv_compute for the arithmetic). ----

        def _bisr_call(self, expr, fusion=Fusion()):
            """(spec, inputs, params, extras) if ``expr`` is bound to a call of our kernel with this fusion, else
            None. inputs: the X tensor(s); params: the layers' BISRCONV_PARAMS vars; extras: R, post parameters."""
            bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
            if not (isinstance(bound, relax.Call) and isinstance(bound.args[0], relax.GlobalVar)):
                return None
            meta = self.bisr_kernels.get(bound.args[0].name_hint)
            if meta is None or meta[1] != fusion:
                return None
            args = list(bound.args[1].fields)
            n_x, n_p = 1 + fusion.split_input, len(BISRCONV_PARAMS) * fusion.layers
            return meta[0], args[:n_x], args[n_x:n_x + n_p], args[n_x + n_p:]

        def _fused_call(self, spec, fusion, args):
            dims = "x".join(str(v) for v in (spec.channels, spec.height, spec.width, *spec.kernel, spec.group))
            name = f"bisrconv_{dims}{fusion.suffix}"
            gv = self._kernel(("bisrconv", spec, fusion), lambda: bisrconv_primfunc(spec, self.lanes, fusion), name)
            self.bisr_kernels[name] = (spec, fusion)
            members = tuple(a.name.rsplit(".", 1)[0] for a in args if a.name.endswith(".wwords"))
            self.layers = [layer for layer in self.layers if layer.kind != "bisrconv_fused" or layer.members != members]
            self.layers.append(LayerInfo(name, "bisrconv_fused", spec, name, members, fusion))
            out = [spec.batch, fusion.output_channels(spec), spec.height, spec.width]
            return relax.call_tir(gv, args, relax.TensorType(out, "float32"))

        def _fuse(self, call):
            """Each pattern of BiSRNet around the BiSRConvs -> one kernel (``bitserial.Fusion``); None if
            ``call`` completes none. The kernel calls it supersedes become dead code."""
            op = call.op
            if op.same_as(self.ops["concat"]):
                return self._fuse_concat(call)
            if op.same_as(self.ops["divide"]):
                return self._fuse_mean(call)
            if op.same_as(self.ops["add"]):
                fused = self._fuse_residual(call)
                return self._fuse_rprelu(call) if fused is None else fused
            return None

        def _fuse_concat(self, call):
            """Concat((B1(X), B2(X)), axis=1), B1, B2 of the same shape -> ``concat`` kernel."""
            parts = call.args[0]
            if int(call.attrs.axis) != 1 or not isinstance(parts, relax.Tuple) or len(parts.fields) != 2:
                return None
            a, b = (self._bisr_call(f) for f in parts.fields)
            if a and b and a[0] == b[0] and a[1][0].same_as(b[1][0]):
                return self._fused_call(a[0], Fusion("concat"), [a[1][0], *a[2], *b[2]])
            return None

        def _fuse_mean(self, call):
            """(B1(X[:, :C]) + B2(X[:, C:])) / 2 (a Split in two along axis 1, an Add, a Div by the constant 2)
            -> ``mean`` kernel; if X is Concat((X1, X2), axis=1) of two C-channel tensors, it reads X1, X2."""
            if not isinstance(call.args[1], relax.Var):
                return None
            divisor = self.param_values.get(call.args[1].name)
            total = self._producer(call.args[0], self.ops["add"])
            if divisor is None or divisor.size != 1 or float(divisor.reshape(())) != 2.0 or total is None:
                return None
            a, b = (self._bisr_call(arg) for arg in total.args)
            if not (a and b and a[0] == b[0]):
                return None
            spec = a[0]
            halves = [self.lookup_binding(h[1][0]) if isinstance(h[1][0], relax.Var) else None for h in (a, b)]
            if not all(isinstance(h, relax.TupleGetItem) for h in halves) or [h.index for h in halves] != [0, 1]:
                return None
            if not halves[0].tuple_value.same_as(halves[1].tuple_value):
                return None
            split = self._producer(halves[0].tuple_value, self.ops["split"])
            # Both halves have C channels (their kernels' spec), the whole 2C: the split is [0:C], [C:2C].
            if split is None or int(split.attrs.axis) != 1 or int(split.args[0].ty.shape[1]) != 2 * spec.channels:
                return None
            x = split.args[0]
            concat = self._producer(x, self.ops["concat"])
            if (concat is not None and int(concat.attrs.axis) == 1 and isinstance(concat.args[0], relax.Tuple)
                    and [int(f.ty.shape[1]) for f in concat.args[0].fields] == [spec.channels] * 2):
                return self._fused_call(spec, Fusion("mean", split_input=True), [*concat.args[0].fields, *a[2], *b[2]])
            return self._fused_call(spec, Fusion("mean"), [x, *a[2], *b[2]])

        def _fuse_residual(self, call):
            """Add(M, R), M a ``mean`` kernel's result, R of its shape (BiSRNet's block(x) + x) -> the kernel
            with ``+ R`` (in that operand order)."""
            for split_input in (False, True):
                kernel = self._bisr_call(call.args[0], Fusion("mean", split_input=split_input))
                if kernel is None:
                    continue
                spec, xs, params, _ = kernel
                r = call.args[1]
                if not isinstance(r.ty, relax.TensorType) or r.ty.dtype != "float32" or \
                        [int(d) for d in r.ty.shape] != [spec.batch, spec.channels, spec.height, spec.width]:
                    return None
                return self._fused_call(spec, Fusion("mean", split_input=split_input, residual=True), [*xs, *params, r])
            return None

        def _fuse_rprelu(self, call):
            """Add(PRelu(Add(K, bias_in), slope), bias_out) over channels, K a ``single`` or ``concat`` kernel's
            result -> the same kernel with the RPReLU in its epilogue."""
            prelu = self._producer(call.args[0], self.ops["nn.prelu"])
            if prelu is None or int(prelu.attrs.axis) != 1:
                return None
            inner = self._producer(prelu.args[0], self.ops["add"])
            if inner is None:
                return None
            for fusion in (Fusion(), Fusion("concat")):
                kernel = self._bisr_call(inner.args[0], fusion)
                if kernel is not None:
                    break
            else:
                return None
            spec, xs, params, _ = kernel
            c_out = fusion.output_channels(spec)
            posts = [inner.args[1], prelu.args[1], call.args[1]]
            if any(not isinstance(p.ty, relax.TensorType) or p.ty.dtype != "float32"
                   or [int(d) for d in p.ty.shape] not in ([c_out], [1, c_out, 1, 1], [c_out, 1, 1]) for p in posts):
                return None
            posts = [self.builder_.emit(relax.op.reshape(p, (c_out,))) for p in posts]
            return self._fused_call(spec, Fusion(fusion.combine, post=True), [*xs, *params, *posts])

        def _conv2d(self, call):
            attrs = call.attrs
            x, w = call.args
            xs = [int(d) for d in x.ty.shape]
            ws = [int(d) for d in w.ty.shape]
            if (any(int(s) != 1 for s in attrs.strides) or any(int(d) != 1 for d in attrs.dilation)
                    or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or str(x.ty.dtype) != "float32"):
                return None
            return self._float_conv(x, w, tuple(int(p) for p in attrs.padding), int(attrs.groups))

        def _float_conv(self, x, w, pads, groups):
            x = self.builder_.normalize(x)
            xs = [int(d) for d in x.ty.shape]
            ws = [int(d) for d in w.ty.shape]
            spec = Conv2dSpec(xs[0], xs[1], ws[0], xs[2], xs[3], (ws[2], ws[3]), pads, groups)
            name = "conv2d_" + "x".join(str(v) for v in (spec.in_channels, spec.out_channels, spec.height, spec.width,
                                                         *spec.kernel, groups))
            gv = self._kernel(("conv2d", spec), lambda: conv2d_primfunc(spec, self.lanes), name)
            self.layers.append(LayerInfo(name, "conv2d", spec, name))
            out = relax.TensorType([spec.batch, spec.out_channels, spec.out_height, spec.out_width], "float32")
            return relax.call_tir(gv, [x, w], out)

    return Lowering


def tvm_op(name: str):
    from tvm import ir

    return ir.Op.get(name)


def _float_bisrconv(node: BiSRConvNode, x, param, conv=None):
    """The BiSRConv contract in float32 Relax ops (the unpacked ±1 weights as a float conv); ``conv(x, w,
    pads, groups)`` emits the convolution (default: Relax ``nn.conv2d``)."""
    from tvm import relax

    from ..bitpack import unpack_sign_bits

    spec = node.spec
    c = spec.channels
    per_channel = {k: param(f"{node.name}.{k}", node.inputs[k].reshape(1, c, 1, 1))
                   for k in ("redist_scale", "redist_bias", "weight_scale", "rprelu_bias_in", "rprelu_slope", "rprelu_bias_out")}
    weights = unpack_sign_bits(node.inputs["weight_bits"], (c, spec.group_channels, *spec.kernel))
    w = param(f"{node.name}.weight", weights)
    op = relax.op
    xr = op.add(op.multiply(x, per_channel["redist_scale"]), per_channel["redist_bias"])
    a = op.where(op.greater(xr, relax.const(0.0, "float32")), relax.const(1.0, "float32"), relax.const(-1.0, "float32"))
    if conv is None:
        acc = op.nn.conv2d(a, w, padding=list(spec.pads), groups=spec.group)
    else:
        acc = conv(a, w, spec.pads, spec.group)
    t = op.add(op.multiply(acc, per_channel["weight_scale"]), per_channel["rprelu_bias_in"])
    r = op.where(op.greater(t, relax.const(0.0, "float32")), t, op.multiply(t, per_channel["rprelu_slope"]))
    return op.add(x, op.add(r, per_channel["rprelu_bias_out"]))
