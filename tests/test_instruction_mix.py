"""Instruction mix of the bitserial BiSR-Conv kernels (bisr_deploy/instruction_mix.py, tools/arm_instruction_mix.py).

The disassembly tests need aarch64-linux-gnu-objdump (and objdump for x86); CI installs them with
.ci/setup-arm.sh. Every kernel here is 8 x 8, so each compile takes well under a second.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bisr_deploy.analysis import instruction_mix as im
from bisr_deploy.compile.bitserial import BiSRConvSpec
from bisr_deploy.compile.targets import resolve_target
from bisr_deploy.errors import BisrError

from .conftest import REPO

DENSE_1X1_28 = BiSRConvSpec(1, 28, 8, 8, (1, 1), (0, 0, 0, 0), 1)
DENSE_3X3_56 = BiSRConvSpec(1, 56, 8, 8, (3, 3), (1, 1, 1, 1), 1)
GROUPED_3X3_112 = BiSRConvSpec(1, 112, 8, 8, (3, 3), (1, 1, 1, 1), 28)  # 4 channels per group

needs_arm_objdump = pytest.mark.needs_tool("aarch64-linux-gnu-objdump")
needs_objdump = pytest.mark.needs_tool("objdump")


def test_tir_popcounts_per_output_equal_the_hand_count():
    arm = resolve_target("arm")
    # 1x1, 28 channels: the 28 sign bits of a pixel fill one uint32 word: one popcount per output (= ideal),
    # a NEON vector of 4 words serves 4 outputs.
    assert im.popcounts_per_output(DENSE_1X1_28, arm.tvm_target, arm.lanes) == {
        "word_bits": 32, "words_per_output": 1.0, "vector_lanes": 4, "vector_ops_per_output": 0.25, "ideal_words": 1}
    # grouped 3x3, 4 channels per group: tap-packed (BiSRConvSpec.tap_words), the group's 4 bits of the 9 taps
    # gathered into 36 bits = 2 words (taps 0-7 in the first, tap 8 in the second) -> 2 popcounts per output
    # (= ideal; the plane-wise loop took one word per tap, 9).
    assert im.popcounts_per_output(GROUPED_3X3_112, arm.tvm_target, arm.lanes) == {
        "word_bits": 32, "words_per_output": 2.0, "vector_lanes": 4, "vector_ops_per_output": 0.5, "ideal_words": 2}
    # dense 3x3, 56 channels: 2 word planes x 9 taps = 18 against ceil(504/32) = 16.
    assert im.popcounts_per_output(DENSE_3X3_56, arm.tvm_target, arm.lanes)["words_per_output"] == 18.0
    assert im.ideal_words(DENSE_3X3_56) == 16


def test_tir_walk_counts_lanes_and_refuses_a_conditional_popcount():
    import tvm
    from tvm import te, tirx

    a = te.placeholder((6, 16), "uint32", name="A")
    plain = te.compute((6, 16), lambda i, j: tirx.popcount(a[i, j]), name="C")
    func = te.create_prim_func([a, plain])
    sch = tvm.s_tir.Schedule(func)
    _, j = sch.get_loops(sch.get_sblock("C"))
    _, inner = sch.split(j, [None, 8])
    sch.vectorize(inner)
    counts = im.tir_popcounts(im.lower(sch.mod["main"], resolve_target("arm").tvm_target))
    assert counts == {"uint32x8": 12}  # 6 x 16 words, 8 per vector popcount

    guarded = te.compute((6,), lambda i: tirx.if_then_else(i < 3, tirx.popcount(a[i, 0]), tirx.const(0, "uint32")))
    with pytest.raises(BisrError, match="not exact"):
        im.tir_popcounts(im.lower(te.create_prim_func([a, guarded]), resolve_target("arm").tvm_target))


def test_model_kernel_shapes_are_bisrnets_distinct_kernels():
    from bisr_deploy.model import BiSRNet

    shapes = im.model_kernel_shapes(height=64, width=64)
    assert [(s.name, s.layers, s.sizes) for s in shapes] == [
        ("1x1 28ch", 10, ((64, 64),)),
        ("1x1 56ch", 18, ((64, 64), (32, 32))),
        ("1x1 112ch", 12, ((32, 32), (16, 16))),
        ("1x1 224ch", 4, ((16, 16),)),
        ("3x3 28ch", 6, ((64, 64), (32, 32))),
        ("3x3 56ch", 4, ((32, 32), (16, 16))),
        ("3x3 112ch g28 (4 ch/group)", 2, ((64, 64),)),
        ("3x3 224ch g56 (4 ch/group)", 2, ((32, 32),)),
        ("3x3 448ch g112 (4 ch/group)", 1, ((16, 16),)),
    ]
    assert sum(s.layers for s in shapes) == len(BiSRNet().bisr_convs()) == 59
    assert shapes[0].spec == BiSRConvSpec(1, 28, 64, 64, (1, 1), (0, 0, 0, 0), 1)
    with pytest.raises(BisrError, match="must be positive"):
        im.model_kernel_shapes(height=0, width=64)


def test_x86_instruction_classes_on_hand_written_lines():
    lines = [("vmovups", "%zmm0,0x40(%rax,%rcx,4)"),           # store
             ("vbroadcastss", "0x4(%rdi),%zmm1"),              # load
             ("lea", "0x8(%rax),%rcx"),                         # address arithmetic: no memory access
             ("vxorps", "%xmm0,%xmm0,%xmm0"),                  # zeroing idiom: not an XOR
             ("vxorps", "-0x10c(%r8,%r9,4),%ymm2,%ymm2"),      # XOR with a load operand
             ("cmpl", "$0x0,0x8(%rsp)"),                        # compare with memory: a load
             ("vpopcntd", "%zmm14,%zmm14"),
             ("vmulps", "%zmm1,%zmm2,%zmm3")]
    mix = im.instruction_mix(lines, im.X86_CLASSES)
    assert mix["load"] == 3 and mix["store"] == 1 and mix["total"] == 8
    assert mix["xor (vpxor*, vxorps, xor)"] == 1 and mix["popcount (vpopcntd/q, popcnt)"] == 1
    assert mix["float (v*ps/pd/ss/sd arithmetic, compares, converts)"] == 1


@needs_arm_objdump
def test_arm_kernel_counts_bits_with_neon_cnt(tmp_path):
    result = im.analyse_kernel(GROUPED_3X3_112, resolve_target("arm"), tmp_path)
    mix = result["mix"]
    # each of the 2 unrolled window-word popcounts (uint32x4) is at least one cnt.16b, widened to 32-bit lanes
    # by two pairwise adds (uaddlp .8h, then uaddlp/uadalp .4s)
    assert mix["popcount (cnt)"] >= 2
    assert mix["pairwise add (uaddlp/uadalp/addv/addp)"] == 2 * mix["popcount (cnt)"]
    assert mix["xor (eor)"] >= 2
    assert 0 < mix["load"] < mix["total"] and mix["float (f*, scvtf, ucvtf)"] > 0
    assert result["tir"]["words_per_output"] == 2.0


@needs_objdump
def test_x86_kernels_use_vpopcntd_or_the_nibble_table(tmp_path):
    znver4 = im.analyse_kernel(GROUPED_3X3_112, resolve_target("x86", "znver4"), tmp_path)["mix"]
    haswell = im.analyse_kernel(GROUPED_3X3_112, resolve_target("x86", "haswell"), tmp_path)["mix"]
    assert znver4["popcount (vpopcntd/q, popcnt)"] >= 2 and znver4["nibble-LUT popcount (vpshufb, vpsadbw)"] == 0
    assert haswell["popcount (vpopcntd/q, popcnt)"] == 0 and haswell["nibble-LUT popcount (vpshufb, vpsadbw)"] > 0


def test_tool_rejects_a_bad_size_with_one_line():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "arm_instruction_mix.py"), "--height", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "error: scene size must be positive, got 0 x 64\n"


def _tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("arm_instruction_mix", REPO / "tools" / "arm_instruction_mix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_arm_objdump
def test_tool_matches_artifact_layers_to_kernels(tmp_path):
    """--artifact: the manifest layer of each kernel shape is found and its code compared with the standalone
    build; here the 'artifact' holds the standalone object itself under its manifest function name."""
    import json

    from bisr_deploy.artifact import LayerRecord, Manifest, TargetRecord, TensorRecord

    arm = resolve_target("arm")
    shape = im.KernelShape(GROUPED_3X3_112, 1, ((8, 8),))
    artifact, standalone = tmp_path / "artifact", tmp_path / "standalone"
    artifact.mkdir()
    standalone.mkdir()
    im.compile_object(GROUPED_3X3_112, arm.tvm_target, arm.lanes, artifact / "kernel.o").rename(artifact / "model.so")
    layer = LayerRecord("n", "bisrconv", im.KERNEL_SYMBOL, [1, 112, 8, 8], kernel=[3, 3], pads=[1, 1, 1, 1], group=28)
    target = TargetRecord("arm", "generic", "aarch64-linux-gnu", arm.tvm_target, ["asimd"])
    manifest = Manifest("real", [TensorRecord("measurement", [1, 8, 62])], TensorRecord("cube", [1, 28, 8, 8]), target,
                        {}, {}, [], [layer])
    (artifact / "manifest.json").write_text(json.dumps(manifest.to_json()))
    row = {"kernel": shape.name, "builds": {"arm": im.analyse_kernel(GROUPED_3X3_112, arm, standalone)}}
    found = _tool().artifact_mix(artifact, [shape], [row])
    function, mix, same = found["kernels"][shape.name]
    assert (found["triple"], function, same) == ("aarch64-linux-gnu", "bisrconv", True)
    assert mix["popcount (cnt)"] >= 2

    other = im.KernelShape(DENSE_1X1_28, 1, ((8, 8),))
    with pytest.raises(BisrError, match="no BiSR-Conv layer of shape 1x1 28ch at 8x8"):
        _tool().artifact_mix(artifact, [other], [row])
    with pytest.raises(BisrError, match="missing: not a directory"):
        _tool().artifact_mix(tmp_path / "missing", [shape], [row])
