"""Pass 3 of the import (Relax level, bitserial builds only): BiSRNet's operator patterns around the
BiSRConvs become one fused kernel call each (``bitserial.Fusion``, manifest kind ``bisrconv_fused``).

| pattern (after lowering) | fused kernel |
| --- | --- |
| ``Concat((B1(X), B2(X)), axis=1)`` | ``concat`` |
| the same, 1x1, X = ``LayerNorm(X0)`` over channels (PreNorm -> FusionUp) | ``concat`` with ``norm_epsilon`` on X0 |
| ``(B1(X[:, :C]) + B2(X[:, C:])) / 2``, X possibly ``Concat((X1, X2))`` | ``mean`` (``split_input``) |
| ``mean(...) + R``, ``B(X) + R`` | ``mean`` or ``single`` with ``residual`` |
| ``Add(PRelu(Add(K, bias_in), slope), bias_out)``, K a single or ``concat`` kernel | K with ``post`` (RPReLU) |
| ``mean`` + R of ``mean`` of the grouped 3x3 of FusionUp of FusionUp(LayerNorm(R)) (a ConvBlock FeedForward) | ``feedforward.py``: one band-fused kernel |

The superseded kernel calls become dead code (removed by the next pass); the per-layer kernels stay in the
library for the runtime's ``run_bisrconv``. See ``bitserial.bisrconv_compute`` for the arithmetic.
"""

from __future__ import annotations

import dataclasses
import functools

from ..artifact import BISRCONV_PARAMS
from .bitserial import Fusion, bisrconv_primfunc
from .feedforward import FeedForwardSpec, band_rows, feedforward_primfunc
from .lowering import LayerInfo, LoweringState, pass_mutator, run_pass


@functools.cache
def fusion_class():
    from tvm import relax

    @relax.expr_functor.mutator
    class FuseBiSRNetPatterns(pass_mutator()):
        RULES = {"relax.concat": ("_fuse_concat",), "relax.divide": ("_fuse_mean",),
                 "relax.add": ("_fuse_residual", "_fuse_rprelu")}

        def _kernel_of(self, expr):
            """(call, (spec, Fusion)) if ``expr`` is bound to a call of one of our BiSRConv kernels, else None."""
            bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
            if not (isinstance(bound, relax.Call) and isinstance(bound.args[0], relax.GlobalVar)):
                return None
            meta = self.state.bisr_kernels.get(bound.args[0].name_hint)
            return (bound, meta) if meta else None

        def _bisr_call(self, expr, fusion=Fusion()):
            """(spec, inputs, params, extras) if ``expr`` is bound to a call of our kernel with this fusion, else
            None. inputs: the X tensor(s); params: the layers' BISRCONV_PARAMS vars; extras: norm, R, post
            parameters."""
            kernel = self._kernel_of(expr)
            if kernel is None or kernel[1][1] != fusion:
                return None
            bound, meta = kernel
            args = list(bound.args[1].fields)
            n_x, n_p = 1 + fusion.split_input, len(BISRCONV_PARAMS) * fusion.layers
            return meta[0], args[:n_x], args[n_x:n_x + n_p], args[n_x + n_p:]

        def _fused_call(self, spec, fusion, args):
            dims = "x".join(str(v) for v in (spec.channels, spec.height, spec.width, *spec.kernel, spec.group))
            name = f"bisrconv_{dims}{fusion.suffix}"
            schedule = self.state.schedule
            gv = self._kernel(("bisrconv", spec, fusion),
                              lambda: bisrconv_primfunc(spec, schedule, fusion), name)
            self.state.bisr_kernels[name] = (spec, fusion)
            self._record(LayerInfo(name, "bisrconv_fused", spec, name, self._members(args), fusion))
            out = [spec.batch, fusion.output_channels(spec), spec.height, spec.width]
            return relax.call_tir(gv, args, relax.TensorType(out, "float32"))

        @staticmethod
        def _members(args) -> tuple[str, ...]:
            """The BiSRConv nodes whose parameters ``args`` holds, in order."""
            return tuple(a.name.rsplit(".", 1)[0] for a in args if a.name.endswith(".wwords"))

        def _record(self, info: LayerInfo):
            """Add the manifest record of a fused kernel right after its members' (graph order), replacing the
            records of earlier fusions of some of them (their kernels are no longer called)."""
            members = set(info.members)
            layers = [layer for layer in self.state.layers if not layer.members or not set(layer.members) <= members]
            at = 1 + max(i for i, layer in enumerate(layers) if layer.kind == "bisrconv" and layer.name in members)
            layers.insert(at, info)
            self.state.layers = layers

        def _fuse_concat(self, call):
            """Concat((B1(X), B2(X)), axis=1), B1, B2 of the same shape -> ``concat`` kernel."""
            parts = call.args[0]
            if int(call.attrs.axis) != 1 or not isinstance(parts, relax.Tuple) or len(parts.fields) != 2:
                return None
            a, b = (self._bisr_call(f) for f in parts.fields)
            if not (a and b and a[0] == b[0] and a[1][0].same_as(b[1][0])):
                return None
            spec, x = a[0], a[1][0]
            norm = self._producer(x, self.ops["nn.layer_norm"])
            if norm is not None and not spec.padded and self._channel_norm(norm, spec.channels):
                return self._fused_call(spec, Fusion("concat", norm_epsilon=float(norm.attrs.epsilon)),
                                        [norm.args[0], *a[2], *b[2], norm.args[1], norm.args[2]])
            return self._fused_call(spec, Fusion("concat"), [x, *a[2], *b[2]])

        @staticmethod
        def _channel_norm(norm, channels: int) -> bool:
            """A LayerNorm over axis 1 with gamma and beta [channels] (what ``Fusion.norm`` computes)."""
            a = norm.attrs
            return ([int(v) for v in a.axes] == [1] and bool(a.center) and bool(a.scale)
                    and all(isinstance(p.ty, relax.TensorType) and p.ty.dtype == "float32"
                            and [int(d) for d in p.ty.shape] == [channels] for p in norm.args[1:]))

        def _fuse_mean(self, call):
            """(B1(X[:, :C]) + B2(X[:, C:])) / 2 (a Split in two along axis 1, an Add, a Div by the constant 2)
            -> ``mean`` kernel; if X is Concat((X1, X2), axis=1) of two C-channel tensors, it reads X1, X2."""
            if not isinstance(call.args[1], relax.Var):
                return None
            divisor = self.state.param_values.get(call.args[1].name)
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
            """Add(M, R), M a ``mean`` kernel's result (BiSRNet's block(x) + x) or a plain ``single`` one (the
            U-Net's mapping(fea) + x), R of its shape -> the kernel with ``+ R`` (in that operand order). Not
            the Add of two ``single`` results of one spec: that is the sum of a pair, ``_fuse_mean``'s."""
            for fusion in (Fusion("mean"), Fusion("mean", split_input=True), Fusion()):
                kernel = self._bisr_call(call.args[0], fusion)
                if kernel is None:
                    continue
                partner = self._bisr_call(call.args[1]) if fusion == Fusion() else None
                if partner is not None and partner[0] == kernel[0]:
                    return None
                spec, xs, params, _ = kernel
                r = call.args[1]
                if not isinstance(r.ty, relax.TensorType) or r.ty.dtype != "float32" or \
                        [int(d) for d in r.ty.shape] != [spec.batch, spec.channels, spec.height, spec.width]:
                    return None
                fusion = dataclasses.replace(fusion, residual=True)
                block = self._fuse_feedforward(spec, fusion, [*xs, *params, r]) if fusion.combine == "mean" else None
                return self._fused_call(spec, fusion, [*xs, *params, r]) if block is None else block
            return None

        def _fuse_feedforward(self, spec, fusion, args):
            """The kernel call ``mean(X4) + R`` (``args``) closes a ConvBlock FeedForward if X4 comes from a
            ``mean`` kernel of the grouped 3x3 + RPReLU of FusionUp + RPReLU of LayerNorm + FusionUp of R,
            with exactly the stages of ``FeedForwardSpec``, and the target's schedule fuses FeedForwards -> the
            one band-fused kernel call; else None."""
            if not self.state.schedule.feedforward:
                return None
            chain = [(spec, fusion, args[1:-1], [])]  # the last stage, without X and R (R is the block input)
            x = args[0]
            for _ in range(4):  # the four stages before it, last first
                kernel = self._kernel_of(x)
                if kernel is None:
                    return None
                stage_spec, stage_fusion = kernel[1]
                _, xs, params, extras = self._bisr_call(x, stage_fusion)
                chain.insert(0, (stage_spec, stage_fusion, params, extras))
                x = xs[0]
            first_spec, first_fusion = chain[0][:2]
            ff = FeedForwardSpec(first_spec.batch, first_spec.channels, first_spec.height, first_spec.width,
                                 first_fusion.norm_epsilon)
            if not first_fusion.norm or [(s, f) for s, f, _, _ in chain] != list(ff.stages) or not x.same_as(args[-1]):
                return None
            schedule = self.state.schedule
            band = band_rows(ff, schedule)
            gv = self._kernel(("feedforward", ff, band),
                              lambda: feedforward_primfunc(ff, schedule, band), ff.name)
            call_args = [x, *(a for _, _, params, extras in chain for a in (*params, *extras))]
            self._record(LayerInfo(ff.name, "bisrconv_feedforward", ff, ff.name, self._members(call_args),
                                   band_rows=band))
            return relax.call_tir(gv, call_args, relax.TensorType([ff.batch, ff.dim, ff.height, ff.width], "float32"))

        def _fuse_rprelu(self, call):
            """Add(PRelu(Add(K, bias_in), slope), bias_out) over channels, K a ``single`` or ``concat`` kernel's
            result -> the same kernel with the RPReLU in its epilogue."""
            prelu = self._producer(call.args[0], self.ops["nn.prelu"])
            if prelu is None or int(prelu.attrs.axis) != 1:
                return None
            inner = self._producer(prelu.args[0], self.ops["add"])
            if inner is None:
                return None
            kernel = self._kernel_of(inner.args[0])
            fusion = kernel[1][1] if kernel else None
            if fusion is None or fusion.combine == "mean" or fusion.post:
                return None
            spec, xs, params, norms = self._bisr_call(inner.args[0], fusion)
            c_out = fusion.output_channels(spec)
            posts = [inner.args[1], prelu.args[1], call.args[1]]
            if any(not isinstance(p.ty, relax.TensorType) or p.ty.dtype != "float32"
                   or [int(d) for d in p.ty.shape] not in ([c_out], [1, c_out, 1, 1], [c_out, 1, 1]) for p in posts):
                return None
            posts = [self.builder_.emit(relax.op.reshape(p, (c_out,))) for p in posts]
            return self._fused_call(spec, dataclasses.replace(fusion, post=True), [*xs, *params, *norms, *posts])


    return FuseBiSRNetPatterns


def fuse(mod, state: LoweringState):
    """The fusion pass (module docstring); a no-op for float (``bitserial=False``) imports."""
    return run_pass(fusion_class(), mod, state) if state.bitserial else mod
