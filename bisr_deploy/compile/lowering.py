"""Pass 2 of the import (Relax level): lower the imported graph to our kernels, by a dispatch table.

``Lowering`` walks ``main`` in binding order (the importer emits nodes in graph order, so the k-th BiSRConv
placeholder call is the k-th BiSRConv node; its input shape is checked) and rewrites each call whose Relax
operator has an entry in ``Lowering.RULES``:

- ``relax.atan`` (the BiSRConv placeholder, ``split.PLACEHOLDER``) -> ``call_tir`` of the bitserial kernel,
  or the operator in float32 Relax ops (``bitserial=False``: the "TVM fp32" baseline);
- ``relax.nn.conv2d`` (full-precision layers) -> the scheduled ``floatconv`` kernel, or ``winograd`` for the
  3x3 convolutions it computes (``schedule_float``); a channel broadcast into its input Concat (the mask over
  the 28 bands) is convolved once, with the summed weights;
- ``relax.image.resize2d`` (bilinear 2x, half-pixel) -> the ``upsample`` kernel;
- ``relax.concat`` of equal-width slices of one tensor at a constant step (the frontend's shift-back) -> the
  ``crops`` kernel;
- ``relax.permute_dims`` closing NCHW -> NHWC -> LayerNorm(last axis) -> NCHW (BiSRNet's PreNorm) -> one
  LayerNorm over axis 1 (same arithmetic, two transposes fewer).

Kernel parameters become extra parameters of ``main``. The passes share a ``LoweringState`` (options, the
kernels added, the layers for the manifest); ``PassMutator`` is the base of every Relax pass here and
``run_pass`` applies one. BiSRNet's fusion patterns are the next pass (``fusion.py``); the order is
``onnx_import.RELAX_PASSES``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ..artifact import BISRCONV_PARAMS
from ..errors import BisrError
from . import winograd
from .bitserial import Fusion, bisrconv_primfunc, prepare_weights
from .crops import CropsSpec, crops_primfunc
from .floatconv import Conv2dSpec, conv2d_primfunc
from .schedule import Schedule
from .split import BiSRConvNode
from .upsample import upsample2x_primfunc

# Attribute marking our hand-scheduled kernels: the Relax pipeline must neither fuse nor reschedule them.
KERNEL_ATTR = "bisr.kernel"


@dataclass
class LayerInfo:
    """A kernel in the compiled module (for per-layer benchmarks): name, kind, spec, TIR function name."""

    name: str
    kind: str  # "bisrconv" | "bisrconv_fused" | "bisrconv_feedforward" | "conv2d" | "upsample2x"
    spec: object  # bisrconv_feedforward: a feedforward.FeedForwardSpec
    func_name: str
    members: tuple[str, ...] = ()  # bisrconv_fused, _feedforward: the BiSRConv nodes it computes, in order
    fusion: Fusion = Fusion()  # bisrconv_fused: what else it computes (bitserial.bisrconv_compute)
    band_rows: int | None = None  # bisrconv_feedforward: output rows per band (feedforward.band_rows)


@dataclass
class LoweringState:
    """What the Relax passes share: the options, the split-off BiSRConv nodes, the ONNX float initializers by
    Relax parameter name, and what the passes add (kernel parameters, kernels, layers for the manifest)."""

    nodes: list[BiSRConvNode]
    param_values: dict[str, np.ndarray]
    schedule: Schedule = Schedule(lanes=16)
    bitserial: bool = True
    schedule_float: bool = True
    next_node: int = 0
    new_params: list = field(default_factory=list)  # (relax.Var, array) in order
    layers: list[LayerInfo] = field(default_factory=list)
    kernels: dict = field(default_factory=dict)  # kernel key -> GlobalVar
    bisr_kernels: dict[str, tuple] = field(default_factory=dict)  # bitserial kernel name -> (spec, Fusion)


def kernel_params(node: BiSRConvNode) -> dict[str, np.ndarray]:
    """The bitserial kernel's parameters (``BISRCONV_PARAMS``) for one node."""
    prepared = prepare_weights(node.spec, node.inputs["weight_bits"])
    return {name: np.ascontiguousarray(node.inputs[name] if name in node.inputs else prepared[name])
            for name in BISRCONV_PARAMS}


def mark(func, name: str):
    """A hand-scheduled kernel named ``name``, opaque to TVM's fusion and scheduling (``KERNEL_ATTR``)."""
    return func.with_attr("global_symbol", name).with_attr("op_pattern", 8).with_attr(KERNEL_ATTR, 1)


def tvm_op(name: str):
    from tvm import ir

    return ir.Op.get(name)


@functools.cache
def pass_mutator():
    """The base class of the Relax passes (defined lazily: importing this module must not need TVM). A
    subclass lists ``RULES``: Relax operator name -> method names, tried in order on every call of that
    operator after its arguments are rewritten; the first that returns an expression replaces the call.
    Subclasses are decorated with ``relax.expr_functor.mutator``."""
    from tvm import ir, relax

    class PassMutator(relax.PyExprMutator):
        RULES: dict[str, tuple[str, ...]] = {}

        def __init__(self, mod, state: LoweringState):
            super().__init__(mod)
            self.state = state
            self.ops = {name: tvm_op(f"relax.{name}") for name in
                        ("concat", "divide", "add", "split", "nn.prelu", "nn.layer_norm", "permute_dims",
                         "strided_slice", "broadcast_to")}

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if isinstance(call.op, ir.Op):
                for rule in self.RULES.get(call.op.name, ()):
                    rewritten = getattr(self, rule)(call)
                    if rewritten is not None:
                        return rewritten
            return call

        def _param(self, name, array):
            var = relax.Var(name, relax.TensorType(array.shape, str(array.dtype)))
            self.state.new_params.append((var, array))
            return var

        def _kernel(self, key, make, func_name):
            if key not in self.state.kernels:
                self.state.kernels[key] = self.builder_.add_func(mark(make(), func_name), func_name)
            return self.state.kernels[key]

        def _producer(self, expr, op):
            bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
            return bound if isinstance(bound, relax.Call) and bound.op.same_as(op) else None

    return PassMutator


def run_pass(mutator_class, mod, state: LoweringState):
    """``mod`` with ``main`` rewritten by ``mutator_class`` (a ``PassMutator``); the kernel parameters it adds
    are appended to ``main``'s parameters."""
    from tvm import relax

    main = mod["main"]
    before = len(state.new_params)
    mutator = mutator_class(mod, state)
    body = mutator.visit_expr(main.body)
    added = [var for var, _ in state.new_params[before:]]
    out = mutator.builder_.get()
    out["main"] = relax.Function(list(main.params) + added, body, main.ret_ty, main.is_pure, main.attrs)
    return out


@functools.cache
def lowering_class():
    from tvm import relax

    @relax.expr_functor.mutator
    class Lowering(pass_mutator()):
        """Placeholder calls -> BiSRConv lowerings, float convs / resizes / PreNorm -> our kernels."""

        RULES = {"relax.atan": ("_bisrconv",), "relax.permute_dims": ("_channel_layer_norm",),
                 "relax.image.resize2d": ("_upsample2x",), "relax.nn.conv2d": ("_conv2d",),
                 "relax.concat": ("_shifted_crops",)}

        def _shifted_crops(self, call):
            """A Concat of K >= 2 slices of one float32 tensor along its last axis, of one width, starting at
            start + step·k, stacked along an axis where the source has extent 1 -> the ``crops`` kernel."""
            fields = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else []
            slices = [self._producer(f, self.ops["strided_slice"]) for f in fields]
            if len(slices) < 2 or any(s is None for s in slices):
                return None
            source = slices[0].args[0]
            shape = [int(d) for d in source.ty.shape]
            ndim, axis = len(shape), int(call.attrs.axis) % len(shape)
            ints = lambda t: [int(f.value) for f in t.fields]  # noqa: E731
            ranges = []
            for s in slices:
                axes, begin, end, strides = (ints(a) for a in s.args[1:5])
                if not s.args[0].same_as(source) or [a % ndim for a in axes] != [ndim - 1] or strides != [1]:
                    return None
                ranges.append((begin[0], end[0]))
            start, width = ranges[0][0], ranges[0][1] - ranges[0][0]
            step = ranges[1][0] - start
            if (axis == ndim - 1 or shape[axis] != 1 or str(source.ty.dtype) != "float32" or start < 0 or width < 1
                    or any(r != (start + step * k, start + step * k + width) for k, r in enumerate(ranges))
                    or min(start, start + step * (len(ranges) - 1)) < 0
                    or max(start, start + step * (len(ranges) - 1)) + width > shape[-1]):
                return None
            spec = CropsSpec(tuple(shape), axis, len(ranges), start, step, width)
            gv = self._kernel(("crops", spec), lambda: crops_primfunc(spec, self.state.schedule.lanes), spec.name)
            return relax.call_tir(gv, [source], relax.TensorType(list(spec.out_shape), "float32"))

        def _channel_layer_norm(self, call):
            """NCHW -> NHWC, LayerNorm over C, -> NCHW (BiSRNet's PreNorm) becomes one LayerNorm over axis 1."""
            axes = lambda c: [int(a) for a in c.attrs.axes] if c.attrs.axes is not None else None  # noqa: E731
            if axes(call) != [0, 3, 1, 2]:
                return None
            norm = self._producer(call.args[0], self.ops["nn.layer_norm"])
            if norm is None or axes(norm) not in ([-1], [3]):
                return None
            to_nhwc = self._producer(norm.args[0], self.ops["permute_dims"])
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
            gv = self._kernel(("upsample2x", (n, c, h, w)),
                              lambda: upsample2x_primfunc((n, c, h, w), self.state.schedule.lanes), name)
            self.state.layers.append(LayerInfo(name, "upsample2x", (n, c, h, w), name))
            pairs = relax.call_tir(gv, [x], relax.TensorType([n, c, 2 * h, w, 2], "float32"))
            return relax.op.reshape(pairs, (n, c, 2 * h, 2 * w))

        def _bisrconv(self, call):
            if self.state.next_node >= len(self.state.nodes):
                raise BisrError("internal: more placeholder calls than BiSRConv nodes")
            node = self.state.nodes[self.state.next_node]
            self.state.next_node += 1
            spec = node.spec
            shape = [int(d) for d in call.args[0].ty.shape]
            if shape != [spec.batch, spec.channels, spec.height, spec.width]:
                raise BisrError(f"internal: BiSRConv {node.name!r} expected input {spec}, the graph has {shape}")
            x = call.args[0]
            if not self.state.bitserial:
                return _float_bisrconv(node, x, self._param, self._float_conv if self.state.schedule_float else None)
            params = kernel_params(node)
            args = [self._param(f"{node.name}.{k}", v) for k, v in params.items()]
            name = "bisrconv_" + "x".join(str(v) for v in (spec.channels, spec.height, spec.width, *spec.kernel, spec.group))
            schedule = self.state.schedule
            gv = self._kernel(("bisrconv", spec),
                              lambda: bisrconv_primfunc(spec, schedule), name)
            self.state.bisr_kernels[name] = (spec, Fusion())
            self.state.layers.append(LayerInfo(node.name, "bisrconv", spec, name))
            return relax.call_tir(gv, [x, *args], relax.TensorType(shape, "float32"))

        def _conv2d(self, call):
            if not self.state.schedule_float:
                return None
            attrs = call.attrs
            x, w = call.args
            if (any(int(s) != 1 for s in attrs.strides) or any(int(d) != 1 for d in attrs.dilation)
                    or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or str(x.ty.dtype) != "float32"):
                return None
            x, w = self._fold_broadcast_channels(x, w, int(attrs.groups))
            return self._float_conv(x, w, tuple(int(p) for p in attrs.padding), int(attrs.groups))

        def _fold_broadcast_channels(self, x, w, groups):
            """A convolution of a channel Concat whose parts include one channel broadcast to C (the snapshot's
            2-D mask repeated over the bands) convolves that channel once with the C channels' weights summed
            (float64, then float32): the same convolution up to float rounding, C - 1 input channels fewer.
            Returns (x, w), rewritten or as they were."""
            concat = self._producer(x, self.ops["concat"])
            weight = self.state.param_values.get(w.name) if isinstance(w, relax.Var) else None
            if (groups != 1 or concat is None or weight is None or int(concat.attrs.axis) % 4 != 1
                    or not isinstance(concat.args[0], relax.Tuple)):
                return x, w
            fields, columns, start = [], [], 0
            for part in concat.args[0].fields:
                shape = [int(d) for d in part.ty.shape]
                repeated = self._producer(part, self.ops["broadcast_to"])
                one = repeated.args[0] if repeated is not None else None
                if one is not None and [int(d) for d in one.ty.shape] == [shape[0], 1, *shape[2:]]:
                    fields.append(one)
                    columns.append(weight[:, start:start + shape[1]].astype(np.float64).sum(axis=1, keepdims=True))
                else:
                    fields.append(part)
                    columns.append(weight[:, start:start + shape[1]])
                start += shape[1]
            if all(f.same_as(p) for f, p in zip(fields, concat.args[0].fields)):
                return x, w
            folded = np.concatenate(columns, axis=1).astype(np.float32)
            return relax.op.concat(fields, axis=1), self._param(f"{w.name}_folded", folded)

        def _float_conv(self, x, w, pads, groups):
            x = self.builder_.normalize(x)
            xs = [int(d) for d in x.ty.shape]
            ws = [int(d) for d in w.ty.shape]
            spec = Conv2dSpec(xs[0], xs[1], ws[0], xs[2], xs[3], (ws[2], ws[3]), pads, groups)
            name = "conv2d_" + "x".join(str(v) for v in (spec.in_channels, spec.out_channels, spec.height, spec.width,
                                                         *spec.kernel, groups))
            make = winograd.winograd_primfunc if winograd.applies(spec) else conv2d_primfunc
            gv = self._kernel(("conv2d", spec), lambda: make(spec, self.state.schedule), name)
            self.state.layers.append(LayerInfo(name, "conv2d", spec, name))
            out = relax.TensorType([spec.batch, spec.out_channels, spec.out_height, spec.out_width], "float32")
            return relax.call_tir(gv, [x, w], out)

    return Lowering


def lower(mod, state: LoweringState):
    """The lowering pass (module docstring). Raises ``BisrError`` if the placeholders and nodes disagree."""
    mod = run_pass(lowering_class(), mod, state)
    if state.next_node != len(state.nodes):
        raise BisrError(f"internal: lowered {state.next_node} of {len(state.nodes)} BiSRConv nodes")
    return mod


def _float_bisrconv(node: BiSRConvNode, x, param, conv=None):
    """The BiSRConv contract in float32 Relax ops (the unpacked ±1 weights as a float conv); ``conv(x, w,
    pads, groups)`` emits the convolution (default: Relax ``nn.conv2d``)."""
    from tvm import relax

    from .. import bisrconv_op
    from ..bitpack import unpack_sign_bits

    spec = node.spec
    c = spec.channels
    per_channel = {k: param(f"{node.name}.{k}", node.inputs[k].reshape(1, c, 1, 1))
                   for k in bisrconv_op.WEIGHT_INPUTS if k != "weight_bits"}
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
