"""The TVM compile path: bitserial BiSRConv kernels, the float conv kernel, ONNX import, the built library."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from bisr_deploy import bisrconv_op
from bisr_deploy.artifact import BISRCONV_PARAMS
from bisr_deploy.compile.bitserial import BiSRConvSpec, Fusion, bisrconv_primfunc, prepare_weights
from bisr_deploy.compile.floatconv import Conv2dSpec, conv2d_primfunc, tile_for
from bisr_deploy.compile.lowering import kernel_params
from bisr_deploy.compile.schedule import schedule_for
from bisr_deploy.compile.split import split_custom_ops
from bisr_deploy.compile.targets import resolve_target
from bisr_deploy.errors import BisrError
from bisr_deploy.export.graph import bisr_conv_initializers
from bisr_deploy.model import BiSRConv

from .conftest import SIM_PTH

pytestmark = pytest.mark.needs_tvm
tvm = pytest.importorskip("tvm")
TARGET = resolve_target("x86", "native")


def run_kernel(spec, inputs: dict, x: np.ndarray, target=TARGET, library: Path | None = None,
               pack: str = "or") -> np.ndarray:
    node_like = type("Node", (), {"spec": spec, "inputs": inputs})
    params = kernel_params(node_like)
    schedule = dataclasses.replace(target.schedule, pack=pack)
    lib = tvm.compile(tvm.IRModule({"bisrconv": bisrconv_primfunc(spec, schedule)}), target=target.tvm_target)
    if library is not None:
        lib.export_library(str(library))
    out = tvm.runtime.empty(x.shape, "float32")
    lib["bisrconv"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(p) for p in params.values()], out)
    return out.numpy()


def random_case(rng, c, h, w, ks, group):
    cg = c // group
    signs = np.where(rng.standard_normal((c, cg, ks, ks)) > 0, 1.0, -1.0).astype(np.float32)
    inputs = {
        "redist_scale": rng.standard_normal(c).astype(np.float32),
        "redist_bias": (0.3 * rng.standard_normal(c)).astype(np.float32),
        "weight_bits": np.packbits((signs > 0).reshape(c, -1), axis=1, bitorder="little"),
        "weight_scale": rng.random(c).astype(np.float32),
        "rprelu_bias_in": rng.standard_normal(c).astype(np.float32),
        "rprelu_slope": rng.random(c).astype(np.float32),
        "rprelu_bias_out": rng.standard_normal(c).astype(np.float32),
    }
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    return signs, inputs, x


@pytest.mark.parametrize("c,h,w,ks,group", [
    (28, 16, 32, 3, 1),    # BiSRNet 3x3, one word, 4 x 16 lanes
    (56, 8, 16, 1, 1),     # 1x1 over two words
    (112, 8, 16, 3, 28),   # the grouped 3x3: 4 channels per group, 28 groups
    (48, 5, 16, 3, 6),     # tap-packed, 8 channels per group: 4 x 4 bytes transposed, 3 window words
    (48, 5, 32, 3, 24),    # tap-packed, 2 channels per group: 16 x 16 pairs of bits, one window word
    (16, 4, 16, 3, 16),    # tap-packed, 1 channel per group: 32 x 32 bits (half the slots unused)
    (40, 6, 12, 3, 4),     # groups of 10 straddle the 32-bit word boundary; width 12 -> 4 lanes
    (28, 1, 8, 3, 1),      # one row: first and last row at once
])
@pytest.mark.parametrize("pack", ["or", "shift"])
def test_bisrconv_kernel_bit_exact(c, h, w, ks, group, pack):
    """Each layout against the reference, packed either way (``Schedule.pack``; NEON's ``sli`` is the shift
    pack, checked against x86 in test_arm)."""
    rng = np.random.default_rng(c * 1000 + h)
    signs, inputs, x = random_case(rng, c, h, w, ks, group)
    x[0, 0, 0, :4] = -inputs["redist_bias"][0] / inputs["redist_scale"][0]  # k·x + b at or next to 0
    p = (ks - 1) // 2
    spec = BiSRConvSpec(1, c, h, w, (ks, ks), (p, p, p, p), group)
    got = run_kernel(spec, inputs, x, pack=pack)
    want = bisrconv_op.reference(x, inputs, (ks, ks), (p,) * 4, group)
    np.testing.assert_array_equal(got, want)


FUSIONS = [Fusion("concat"), Fusion("concat", post=True), Fusion(post=True), Fusion(residual=True), Fusion("mean"),
           Fusion("mean", split_input=True, residual=True), Fusion("mean", residual=True)]


@pytest.mark.parametrize("c,h,w,ks,group", [(28, 4, 32, 1, 1), (112, 6, 16, 3, 28), (40, 5, 12, 3, 4)])
def test_fused_kernels_bit_exact(c, h, w, ks, group):
    """Every Fusion of two BiSRConvs (+ mean / concat, residual, RPReLU) equals the graph's ops, float32 step by
    step, on the reference of each layer: the plane-wise, the tap-packed (4 ch/group) and a straddling layout."""
    check_fused_kernels(c, h, w, ks, group, FUSIONS)
    with pytest.raises(BisrError, match="unsupported fusion"):
        Fusion("concat", residual=True)


@pytest.mark.parametrize("c,h,w,ks,group,pixel_block", [
    (28, 3, 64, 1, 1, 4),     # a row of 4 vectors of 16 lanes (8 of 8 on AVX2): blocks of 4
    (40, 5, 12, 3, 4, 4),     # a row of 3 vectors of 4 lanes: blocks of 3; groups straddle words
    (112, 4, 32, 3, 28, 2),   # tap-packed windows, blocks of 2
    (7, 3, 20, 3, 1, 4),      # a row of 5 vectors of 4 lanes: no block divides it, 1 vector per iteration
])
def test_register_blocked_kernels_bit_exact(c, h, w, ks, group, pixel_block):
    """Register blocking (``Schedule.pixel_block`` vectors per iteration, lowered to a divisor of the row's
    vectors) computes the same bits as the reference, fused or not."""
    fusions = [Fusion(post=True), Fusion("concat", post=True), Fusion("mean", split_input=True, residual=True)]
    check_fused_kernels(c, h, w, ks, group, fusions, pixel_block)


def check_fused_kernels(c, h, w, ks, group, fusions, pixel_block=1):
    """Each of ``fusions``, compiled for this machine with ``pixel_block``, against the reference."""
    rng = np.random.default_rng(c + h)
    p = (ks - 1) // 2
    spec = BiSRConvSpec(1, c, h, w, (ks, ks), (p,) * 4, group)
    (s1, i1, x1), (s2, i2, x2) = random_case(rng, c, h, w, ks, group), random_case(rng, c, h, w, ks, group)
    r = rng.standard_normal((1, c, h, w)).astype(np.float32)
    post = [rng.standard_normal(2 * c).astype(np.float32), rng.random(2 * c).astype(np.float32),
            rng.standard_normal(2 * c).astype(np.float32)]
    node = lambda inputs: type("Node", (), {"spec": spec, "inputs": inputs})  # noqa: E731
    params = [*kernel_params(node(i1)).values(), *kernel_params(node(i2)).values()]
    layer = lambda x, i, _signs: bisrconv_op.reference(x, i, (ks, ks), (p,) * 4, group).astype(np.float32)  # noqa: E731
    for fusion in fusions:
        args = params[:len(BISRCONV_PARAMS) * fusion.layers]
        if fusion.combine == "single":
            xs, want = [x1], layer(x1, i1, s1)
        elif fusion.combine == "concat":
            xs, want = [x1], np.concatenate([layer(x1, i1, s1), layer(x1, i2, s2)], axis=1)
        else:
            xs = [x1, x2] if fusion.split_input else [np.concatenate([x1, x2], axis=1)]
            want = (layer(x1, i1, s1) + layer(x2, i2, s2)) / np.float32(2)
        if fusion.residual:
            want, args = want + r, args + [r]
        if fusion.post:
            b0, slope, b1 = (a[:want.shape[1], None, None] for a in post)
            t = want + b0
            want = np.where(t > 0, t, slope * t) + b1
            args = args + [a[:want.shape[1]] for a in post]
        func = bisrconv_primfunc(spec, dataclasses.replace(TARGET.schedule, pixel_block=pixel_block), fusion)
        lib = tvm.compile(tvm.IRModule({"bisrconv": func}), target=TARGET.tvm_target)
        out = tvm.runtime.empty(want.shape, "float32")
        lib["bisrconv"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in [*xs, *args]), out)
        np.testing.assert_array_equal(out.numpy(), want.astype(np.float32), err_msg=str(fusion))


def standalone_layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """LayerNorm over axis 1 as the build compiles it alone (legalised, fused, scheduled: ``cpu_pipeline``)."""
    from tvm import relax

    from bisr_deploy.compile.pipeline import cpu_pipeline

    bb = relax.BlockBuilder()
    args = [relax.Var(name, relax.TensorType(a.shape, "float32")) for name, a in (("x", x), ("g", gamma), ("b", beta))]
    with bb.function("main", args):
        bb.emit_func_output(bb.emit(relax.op.nn.layer_norm(*args, axes=[1], epsilon=epsilon)))
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target(TARGET.tvm_target),
                                          relax_pipeline=cpu_pipeline(TARGET)),
                              tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(a) for a in (x, gamma, beta))).numpy()


@pytest.mark.parametrize("c,h,w", [(28, 4, 32), (28, 3, 12), (56, 5, 20)])
def test_layer_norm_fused_into_pack_bit_exact(c, h, w):
    """LayerNorm -> FusionUp (concat, optionally with its RPReLU) as one kernel gives the bits of the standalone
    LayerNorm kernel followed by the concat kernel; also at odd heights and widths of 4-lane vectors."""
    rng = np.random.default_rng(c * h + w)
    spec = BiSRConvSpec(1, c, h, w, (1, 1), (0,) * 4, 1)
    (_, i1, x), (_, i2, _) = random_case(rng, c, h, w, 1, 1), random_case(rng, c, h, w, 1, 1)
    x = 3 * x + rng.standard_normal((1, 1, h, w)).astype(np.float32)  # per-pixel offsets for the mean to remove
    gamma, beta = (rng.standard_normal(c).astype(np.float32) for _ in range(2))
    post = [rng.standard_normal(2 * c).astype(np.float32) for _ in range(3)]
    node = lambda inputs: type("Node", (), {"spec": spec, "inputs": inputs})  # noqa: E731
    params = [*kernel_params(node(i1)).values(), *kernel_params(node(i2)).values()]

    def run(fusion, x_in, extra):
        lib = tvm.compile(tvm.IRModule({"bisrconv": bisrconv_primfunc(spec, TARGET.schedule, fusion)}),
                          target=TARGET.tvm_target)
        out = tvm.runtime.empty((1, 2 * c, h, w), "float32")
        lib["bisrconv"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in [x_in, *params, *extra]), out)
        return out.numpy()

    normed = standalone_layer_norm(x, gamma, beta, 1e-5)
    mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    np.testing.assert_allclose(normed, (x - mean) / np.sqrt(var + 1e-5) * gamma[:, None, None] + beta[:, None, None],
                               rtol=1e-4, atol=1e-4)  # a LayerNorm indeed
    for post_args in ([], post):
        unfused = run(Fusion("concat", post=bool(post_args)), normed, post_args)
        fused = run(Fusion("concat", post=bool(post_args), norm_epsilon=1e-5), x, [gamma, beta, *post_args])
        np.testing.assert_array_equal(fused, unfused)
    with pytest.raises(BisrError, match="unsupported fusion"):
        Fusion("mean", norm_epsilon=1e-5)
    with pytest.raises(BisrError, match="1x1 kernels only"):
        bisrconv_primfunc(BiSRConvSpec(1, c, h, w, (3, 3), (1,) * 4, 1), TARGET.schedule, Fusion(norm_epsilon=1e-5))


def test_import_fuses_bisrnets_patterns(artifact64):
    """The 64x64 network: its 59 BiSRConvs run as 13 kernel calls (each ConvBlock FeedForward one band-fused
    kernel, the other pairs fused with their concat / mean); every per-layer kernel stays callable."""
    import json

    out, _ = artifact64
    manifest = json.loads((out / "manifest.json").read_text())
    layers = manifest["layers"]
    fused = [layer for layer in layers if layer["kind"] == "bisrconv_fused"]
    blocks = [layer for layer in layers if layer["kind"] == "bisrconv_feedforward"]
    single = {layer["name"] for layer in layers if layer["kind"] == "bisrconv"}
    members = [m for layer in fused + blocks for m in layer["members"]]
    assert len(single) == 59 and len(members) == len(set(members)) and set(members) <= single
    assert len(blocks) == 5 and all(len(layer["members"]) == 9 for layer in blocks)  # FusionUp x2, 3x3, FusionDown x2
    assert len(fused) == 7 and len(members) == 58  # embedding: alone
    kinds = {(layer["combine"], layer["split_input"], layer["residual"], layer["rprelu"], layer["layer_norm"])
             for layer in fused}
    assert kinds == {("concat", False, False, False, False),  # Downsample
                     ("mean", False, False, False, False),  # Upsample
                     ("mean", True, False, False, False),  # FusionDown of the decoder's Concat(up, skip)
                     ("single", False, True, False, False)}  # mapping(fea) + x
    target = manifest["target"]
    assert target["l2_bytes"] > 0 and target["l1d_bytes"] > 0  # the caches that sized the bands
    from bisr_deploy.compile.feedforward import FeedForwardSpec, band_rows
    from bisr_deploy.compile.schedule import Schedule

    schedule = Schedule(lanes=16, l1d_bytes=target["l1d_bytes"], l2_bytes=target["l2_bytes"])
    assert [layer["band_rows"] for layer in blocks] == [band_rows(FeedForwardSpec(*layer["shape"]), schedule)
                                                         for layer in blocks]


@pytest.mark.parametrize("c,ks,group", [(28, 3, 1), (112, 3, 28), (56, 1, 1)])
def test_bisrconv_kernel_matches_pytorch_module(c, ks, group):
    torch.manual_seed(c + ks)
    module = BiSRConv(c, ks, padding=(ks - 1) // 2, groups=group, sign_zero="negative").eval()
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * 0.5)
    inputs = {name: numpy_helper.to_array(t) for name, t in zip(bisrconv_op.WEIGHT_INPUTS, bisr_conv_initializers(module, "m"))}
    x = torch.randn(1, c, 16, 16)
    with torch.no_grad():
        want = module(x).numpy()
        bits_torch = (module.binarized_input(x) > 0).numpy()
    spec = BiSRConvSpec(1, c, 16, 16, (ks, ks), ((ks - 1) // 2,) * 4, group)
    got = run_kernel(spec, inputs, x.numpy())
    # PyTorch folds the scale into the weights and sums in another order: equal up to float rounding.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    xr = inputs["redist_scale"][None, :, None, None] * x.numpy() + inputs["redist_bias"][None, :, None, None]
    assert np.array_equal(xr > 0, bits_torch)


def _disassemble(path: Path) -> str:
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], check=True, capture_output=True,
                          text=True).stdout


@pytest.mark.needs_tool("objdump")
@pytest.mark.parametrize("cpu,popcount", [("znver4", r"vpopcntd\s+%zmm"), ("skylake-avx512", None), ("haswell", None)])
def test_cpu_choice_picks_instruction_set(cpu, popcount, tmp_path):
    from bisr_deploy.hostcpu import host_cpu_flags

    target = resolve_target("x86", cpu)
    missing = set(target.required_features) - host_cpu_flags()
    rng = np.random.default_rng(7)
    signs, inputs, x = random_case(rng, 28, 4, 32, 3, 1)
    spec = BiSRConvSpec(1, 28, 4, 32, (3, 3), (1, 1, 1, 1), 1)
    library = tmp_path / "k.so"
    if missing:  # compile only: this machine cannot run the code
        node_like = type("Node", (), {"spec": spec, "inputs": inputs})
        kernel_params(node_like)
        tvm.compile(tvm.IRModule({"bisrconv": bisrconv_primfunc(spec, target.schedule)}),
                    target=target.tvm_target).export_library(str(library))
    else:
        got = run_kernel(spec, inputs, x, target, library)
        want = bisrconv_op.reference(x, inputs, (3, 3), (1,) * 4, 1)
        np.testing.assert_array_equal(got, want)
    asm = _disassemble(library)
    if popcount:
        assert re.search(popcount, asm)
    else:  # no vector popcount instruction in the set: LLVM expands it (byte lookups with vpshufb)
        assert not re.search(r"vpopcnt[dq]", asm) and "vpshufb" in asm
    if target.lanes == 8:
        assert "%zmm" not in asm


def test_prepare_weights_border_table():
    # One output channel, 3x3, Cg = 1, all weights +1: interior acc range 9, a corner sees 4 valid taps.
    spec = BiSRConvSpec(1, 1, 4, 4, (3, 3), (1, 1, 1, 1), 1)
    prepared = prepare_weights(spec, np.packbits(np.ones((1, 9), np.uint8), axis=1, bitorder="little"))
    table = prepared["table"][0]
    assert table[0, 0] == 9                      # interior: n_valid = 9, no invalid taps
    assert table[1, 1] == 4 + 2 * 5              # top-left corner: 4 valid, 5 padded taps of popcount 1
    assert table[2, 0] == 6 + 2 * 3              # last row
    assert prepared["wwords"].dtype == np.uint32 and prepared["wwords"][0, 0].tolist() == [[1, 1, 1]] * 3


def test_spec_and_weight_errors():
    with pytest.raises(BisrError, match="pads"):
        BiSRConvSpec(1, 28, 8, 8, (3, 3), (0, 0, 0, 0), 1)
    with pytest.raises(BisrError, match="divisible"):
        BiSRConvSpec(1, 30, 8, 8, (1, 1), (0, 0, 0, 0), 4)
    spec = BiSRConvSpec(1, 28, 8, 8, (3, 3), (1, 1, 1, 1), 1)
    with pytest.raises(BisrError, match="weight_bits"):
        prepare_weights(spec, np.zeros((28, 3), np.uint8))


# (in, out, height, width, kernel, pads (top, left, bottom, right), groups): BiSRNet's two float convs, then
# odd sizes (a prime height: bands of 1 row; widths off the vector), grouped, asymmetric and one-sided pads.
FLOAT_CONVS = [(28, 28, 16, 64, (3, 3), (1, 1, 1, 1), 1), (56, 28, 9, 20, (1, 1), (0, 0, 0, 0), 1),
               (28, 28, 13, 40, (3, 3), (1, 1, 1, 1), 1), (112, 112, 10, 24, (3, 3), (1, 1, 1, 1), 28),
               (12, 6, 7, 11, (3, 3), (2, 0, 1, 2), 3), (8, 4, 5, 9, (3, 2), (0, 1, 0, 0), 2)]


def _float_conv_error(case, schedule) -> float:
    ci, co, h, w, kernel, pads, groups = case
    spec = Conv2dSpec(1, ci, co, h, w, kernel, pads, groups)
    lib = tvm.compile(tvm.IRModule({"conv2d": conv2d_primfunc(spec, schedule)}), target=TARGET.tvm_target)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, ci, h, w)).astype(np.float32)
    wt = rng.standard_normal((co, ci // groups, *kernel)).astype(np.float32)
    out = tvm.runtime.empty((1, co, spec.out_height, spec.out_width), "float32")
    lib["conv2d"](tvm.runtime.tensor(x), tvm.runtime.tensor(wt), out)
    padded = torch.nn.functional.pad(torch.from_numpy(x), (pads[1], pads[3], pads[0], pads[2]))
    want = torch.nn.functional.conv2d(padded, torch.from_numpy(wt), groups=groups).numpy()
    assert out.shape == want.shape
    return float(np.abs(out.numpy() - want).max() / np.abs(want).max())


@pytest.mark.parametrize("case", FLOAT_CONVS, ids=lambda c: "x".join(map(str, c[:4])) + f"k{c[4][0]}{c[4][1]}g{c[6]}")
def test_float_conv_kernel_matches_torch(case):
    assert _float_conv_error(case, TARGET.schedule) < 1e-6


@pytest.mark.parametrize("features", [("asimd",), ("avx2",)], ids=["neon-tile", "avx2-tile"])
def test_float_conv_other_targets_tiles(features):
    """The NEON and AVX2 register tiles (their TIR, built here for this CPU) on a tiled and an odd case."""
    schedule = schedule_for(features)
    assert tile_for(Conv2dSpec(1, 28, 28, 256, 256, (3, 3), (1, 1, 1, 1)), schedule)[:2] == schedule.conv_tile
    for case in (FLOAT_CONVS[0], FLOAT_CONVS[4]):
        assert _float_conv_error(case, schedule) < 1e-6


def test_float_conv_tiles_fit_the_layer():
    avx512 = schedule_for(("avx512f",))
    assert tile_for(Conv2dSpec(1, 28, 28, 256, 256, (3, 3), (1, 1, 1, 1)), avx512) == (7, 2, 16)
    assert tile_for(Conv2dSpec(1, 112, 112, 8, 48, (3, 3), (1, 1, 1, 1), 28), avx512) == (4, 1, 16)  # 48 = 3 vectors
    assert tile_for(Conv2dSpec(1, 12, 6, 7, 11, (3, 3), (1, 1, 1, 1), 3), avx512) == (2, 1, 1)


def _one_node_model(c=28, h=8, w=16, op_type=bisrconv_op.OP_TYPE) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    _, inputs, _ = random_case(rng, c, h, w, 3, 1)
    inits = [numpy_helper.from_array(v, f"n.{k}") for k, v in inputs.items()]
    node = helper.make_node(op_type, ["X"] + [f"n.{k}" for k in bisrconv_op.WEIGHT_INPUTS], ["Y"], name="n",
                            domain=bisrconv_op.DOMAIN, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1, c, h, w])], inits)
    return helper.make_model(graph, opset_imports=bisrconv_op.opset_imports())


def test_split_custom_ops_hand_built_model():
    stripped, nodes = split_custom_ops(_one_node_model())
    assert [n.op_type for n in stripped.graph.node] == ["Atan"]
    assert len(stripped.graph.initializer) == 0 and not stripped.functions
    assert nodes[0].spec == BiSRConvSpec(1, 28, 8, 16, (3, 3), (1, 1, 1, 1), 1)
    with pytest.raises(BisrError, match="unsupported custom operators: ai.bisr::Other"):
        split_custom_ops(_one_node_model(op_type="Other"))


def test_hand_built_model_compiles_and_matches_reference():
    from bisr_deploy.compile.build import compile_module

    model = _one_node_model()
    _, executable = compile_module(model, TARGET)
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    _, nodes = split_custom_ops(model)
    x = np.random.default_rng(5).standard_normal((1, 28, 8, 16)).astype(np.float32)
    params = [tvm.runtime.tensor(p) for p in kernel_params(nodes[0]).values()]
    got = vm["main"](tvm.runtime.tensor(x), *params).numpy()
    inp = nodes[0].inputs
    want = bisrconv_op.reference(x, inp, (3, 3), (1,) * 4, 1)
    np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def artifact64(tmp_path_factory):
    """The simulation checkpoint compiled for this machine at 64 x 64 (tests using it are marked needs_data)."""
    from bisr_deploy.compile.build import build_artifact
    from bisr_deploy.export import export_onnx

    out = tmp_path_factory.mktemp("compile") / "sim64"
    model = export_onnx(str(SIM_PTH), 64, 64)
    build_artifact(model, out, TARGET)
    return out, model


def test_compiled_network_matches_onnxruntime(artifact64):
    import onnxruntime as ort

    from bisr_deploy.runtime import load

    out, model = artifact64
    rng = np.random.default_rng(11)
    measurement = (rng.random((64, 118)) * 2).astype(np.float32)
    mask = rng.random((64, 64)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    want = session.run(None, {"measurement": measurement[None], "mask": mask[None]})[0][0]
    got = load(out)(measurement, mask)
    assert got.shape == (28, 64, 64)
    # Same graph, same sign convention; only the float convolutions sum in another order. That can flip a
    # sign somewhere (shared/data/README.md), which changes a few nearby outputs slightly; a wrong kernel
    # would change almost all of them.
    diff = np.abs(got - want)
    assert np.median(diff) < 1e-6 and np.mean(diff > 1e-4) < 0.01 and diff.max() < 0.05


@pytest.mark.needs_tool("objdump")
@pytest.mark.needs_cpu("avx512_vpopcntdq")
def test_library_uses_vector_popcount_in_binary_kernels(artifact64):
    out, _ = artifact64
    asm = _disassemble(out / "model.so")
    functions = re.split(r"\n(?=[0-9a-f]+ <)", asm)
    kernels = {f.split("<", 1)[1].split(">", 1)[0]: f for f in functions if re.match(r"[0-9a-f]+ <bisrconv_", f)}
    assert len(kernels) >= 10  # every distinct BiSRConv shape of the 64x64 network
    for name, body in kernels.items():
        if name.endswith("_compute_"):  # the parallel loop body holds the popcount loop
            assert re.search(r"vpopcnt[dq]\s+%[zy]mm", body), name
    assert any(name.endswith("_compute_") for name in kernels)


@pytest.mark.parametrize("shape", [(1, 3, 5, 6), (1, 8, 16, 32)])
def test_upsample2x_matches_torch_bilinear(shape):
    from bisr_deploy.compile.upsample import upsample2x_primfunc

    lib = tvm.compile(tvm.IRModule({"upsample2x": upsample2x_primfunc(shape, TARGET.lanes)}), target=TARGET.tvm_target)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    out = tvm.runtime.empty((shape[0], shape[1], 2 * shape[2], shape[3], 2), "float32")
    lib["upsample2x"](tvm.runtime.tensor(x), out)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear").numpy()
    np.testing.assert_allclose(out.numpy().reshape(want.shape), want, rtol=1e-6, atol=1e-6)


def test_float_conv_tiles_on_the_a76_model():
    """tools/bench_floatconv.py finds BiSRNet's three float convs in the exported graph, and by the estimator's
    static Cortex-A76 model the NEON tile (4 x 4) runs the 3x3 near the core's 8 fp32 MACs per cycle, where the
    one-vector tile it replaced (4 x 1: a load per FMA) ran under 4."""
    import dataclasses
    import importlib.util

    from bisr_deploy.estimate.cores import core_by_name

    spec = importlib.util.spec_from_file_location("bench_floatconv", Path(__file__).resolve().parents[1] / "tools"
                                                  / "bench_floatconv.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    convs = dict(tool.float_convs("authors-sim", 16, 64))
    assert convs == {"fution": Conv2dSpec(1, 56, 28, 16, 64, (1, 1), (0, 0, 0, 0)),
                     "conv_in": Conv2dSpec(1, 28, 28, 16, 64, (3, 3), (1, 1, 1, 1)),
                     "conv_out": Conv2dSpec(1, 28, 28, 16, 64, (3, 3), (1, 1, 1, 1))}
    arm, a76 = resolve_target("arm"), core_by_name("cortex-a76")
    assert arm.schedule.conv_tile == (4, 4)
    per_cycle = {}
    for tile in ((4, 4), (4, 1)):
        ms = tool.estimated_ms(convs["conv_in"], arm, dataclasses.replace(arm.schedule, conv_tile=tile), a76)
        per_cycle[tile] = convs["conv_in"].macs / (ms * a76.clock_ghz * 1e6)
    assert 7.0 < per_cycle[(4, 4)] <= 8.0 and per_cycle[(4, 1)] < 4.5, per_cycle


@pytest.mark.parametrize("shape,axis,count,start,step,width", [((1, 1, 5, 40), 1, 7, 1, 2, 20), ((2, 3, 1, 13), 2, 4, 9, -3, 3)])
def test_crops_kernel_copies_the_slices(shape, axis, count, start, step, width):
    """The crops kernel equals numpy's Concat of the shifted slices (steps up and down, odd widths)."""
    from bisr_deploy.compile.crops import CropsSpec, crops_primfunc

    spec = CropsSpec(shape, axis, count, start, step, width)
    lib = tvm.compile(tvm.IRModule({"crops": crops_primfunc(spec, TARGET.lanes)}), target=TARGET.tvm_target)
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    out = tvm.runtime.empty(spec.out_shape, "float32")
    lib["crops"](tvm.runtime.tensor(x), out)
    want = np.concatenate([x[..., start + step * k:start + step * k + width] for k in range(count)], axis=axis)
    np.testing.assert_array_equal(out.numpy(), want)


def _concat_of_slices_model(starts, width, axis=1):
    """Y = Concat([Slice(X [1, 1, 3, 16], last axis, s : s + width) for s in starts], axis)."""
    nodes, names = [], []
    inits = [numpy_helper.from_array(np.array([3], np.int64), "axes")]
    for k, s in enumerate(starts):
        inits += [numpy_helper.from_array(np.array([s], np.int64), f"b{k}"),
                  numpy_helper.from_array(np.array([s + width], np.int64), f"e{k}")]
        nodes.append(helper.make_node("Slice", ["x", f"b{k}", f"e{k}", "axes"], [f"s{k}"]))
        names.append(f"s{k}")
    nodes.append(helper.make_node("Concat", names, ["y"], axis=axis))
    out_shape = [1, 1, 3, width]
    out_shape[axis] *= len(starts)
    graph = helper.make_graph(nodes, "crops", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 3, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("starts,axis,lowered", [((0, 2, 4, 6), 1, True), ((6, 3, 0), 1, True),
                                                 ((0, 2, 5), 1, False), ((0, 2, 4), 2, False)])
def test_import_lowers_shifted_slices_to_crops(starts, axis, lowered):
    """A Concat of equal-width slices at a constant step along an axis of extent 1 becomes the crops kernel (the
    frontend's shift-back); an uneven step or another stacking axis stays TVM's Concat; both compute the graph."""
    import onnxruntime as ort

    from bisr_deploy.compile.build import compile_module

    model = _concat_of_slices_model(starts, 8, axis)
    imported, executable = compile_module(model, TARGET)
    names = [gv.name_hint for gv in imported.mod.get_global_vars()]
    assert any(n.startswith("crops_") for n in names) == lowered, names
    x = np.random.default_rng(5).standard_normal((1, 1, 3, 16)).astype(np.float32)
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


WINOGRAD_CONVS = [(28, 28, 16, 64), (28, 28, 13, 40), (5, 7, 6, 11), (3, 2, 5, 3)]  # BiSRNet's; odd sizes


@pytest.mark.parametrize("case", WINOGRAD_CONVS, ids=lambda c: "x".join(map(str, c)))
def test_winograd_conv_matches_float64(case):
    """The F(4, 3) kernel (``winograd.py``) against the float64 convolution, within 4e-6 of the output's
    magnitude (float32 direct summation: ~3e-7; the transforms' constants up to 8 add rounding), and bit for
    bit the same with the AVX-512, AVX2 and NEON schedules (the order of operations does not depend on the
    vector width): heights that are not whole tiles, widths off the vector."""
    from bisr_deploy.compile import winograd

    ci, co, h, w = case
    spec = Conv2dSpec(1, ci, co, h, w, (3, 3), (1, 1, 1, 1))
    assert winograd.applies(spec)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, ci, h, w)).astype(np.float32)
    wt = rng.standard_normal((co, ci, 3, 3)).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(wt).double(), padding=1).numpy()
    outs = []
    for features in (("avx512f",), ("avx2",), ("asimd",)):
        lib = tvm.compile(tvm.IRModule({"conv2d": winograd.winograd_primfunc(spec, schedule_for(features))}),
                          target=TARGET.tvm_target)
        out = tvm.runtime.empty((1, co, h, w), "float32")
        lib["conv2d"](tvm.runtime.tensor(x), tvm.runtime.tensor(wt), out)
        outs.append(out.numpy())
    assert np.abs(outs[0] - want).max() / np.abs(want).max() < 4e-6
    for other in outs[1:]:
        np.testing.assert_array_equal(other.view(np.uint32), outs[0].view(np.uint32))


def test_winograd_takes_only_its_convolutions():
    """Grouped, 1x1, unpadded and too-short convolutions stay with the direct kernel (``floatconv``)."""
    from bisr_deploy.compile import winograd

    assert winograd.applies(Conv2dSpec(1, 28, 28, 256, 256, (3, 3), (1, 1, 1, 1)))  # conv_in, conv_out
    for spec in (Conv2dSpec(1, 112, 112, 16, 16, (3, 3), (1, 1, 1, 1), 28), Conv2dSpec(1, 56, 28, 16, 16, (1, 1), (0,) * 4),
                 Conv2dSpec(1, 28, 28, 16, 16, (3, 3), (0,) * 4), Conv2dSpec(1, 28, 28, 3, 16, (3, 3), (1,) * 4)):
        assert not winograd.applies(spec), spec


@pytest.mark.parametrize("kernel", [1, 3])
def test_import_folds_a_broadcast_channel_into_the_conv(kernel):
    """Conv(Concat(A [1,3,H,W], Expand(m [1,1,H,W] -> [1,5,H,W]))) convolves m once with its five channels'
    weights summed (the frontend's mask over the bands): 4 input channels instead of 8, the graph's values."""
    import onnxruntime as ort

    from bisr_deploy.compile.build import compile_module

    rng = np.random.default_rng(6)
    weight = rng.standard_normal((6, 8, kernel, kernel)).astype(np.float32)
    nodes = [helper.make_node("Expand", ["m", "shape"], ["mm"]), helper.make_node("Concat", ["a", "mm"], ["x"], axis=1),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[kernel // 2] * 4)]
    graph = helper.make_graph(
        nodes, "fold", [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1, 3, 8, 16]),
                        helper.make_tensor_value_info("m", onnx.TensorProto.FLOAT, [1, 1, 8, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6, 8, 16])],
        [numpy_helper.from_array(np.array([1, 5, 8, 16], np.int64), "shape"), numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    imported, executable = compile_module(model, TARGET)
    assert [layer.spec.in_channels for layer in imported.layers if layer.kind == "conv2d"] == [4]
    a = rng.standard_normal((1, 3, 8, 16)).astype(np.float32)
    m = rng.standard_normal((1, 1, 8, 16)).astype(np.float32)
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    params = [tvm.runtime.tensor(array) for _, array in imported.params]
    got = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(m), *params).numpy()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"a": a, "m": m})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
