"""bisr-deploy estimate: machine loops, trip counts, DRAM model, the command on 64 x 64 x86 and ARM artifacts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bisr_deploy.estimate import loops
from bisr_deploy.estimate.cores import CORES, core_by_name
from bisr_deploy.estimate.network import dram_traffic
from bisr_deploy.errors import BisrError

from .conftest import ARTIFACT_SIZE, SIM_PTH

ESTIMATE_KEYS = {"core", "clock_ghz", "threads", "total_ms", "kernels"}
KERNEL_KEYS = {"function", "binary_macs", "float_macs", "dram_bytes", "est_ms", "bound", "binary_macs_per_cycle"}
# The float MACs the compiled graph does not have: fution convolves the mask once instead of over its 28 band
# copies (56 -> 29 input channels, 28 outputs; lowering._fold_broadcast_channels)
MASK_FOLD_MACS = (56 - 29) * 28 * ARTIFACT_SIZE * ARTIFACT_SIZE


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bisr_deploy.cli", "estimate", *map(str, args)],
                          capture_output=True, text=True)


def _refused(proc, text):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], proc.stderr


AARCH64_ASM = """\
kern_compute_:                          // @kern_compute_
// %bb.0:                               // %entry
\tmov\tx8, xzr
.LBB0_1:                                // %for_body_o
\tmov\tx9, xzr
.LBB0_2:                                // %for_body_xx_0
\tldr\tq0, [x1, x9]
\tcnt\tv0.16b, v0.16b
\tadd\tx9, x9, #16
\tcmp\tx9, #64
\tb.ne\t.LBB0_2
// %bb.3:                               // %for_end_xx_0
\tadd\tx8, x8, #1
\tcmp\tx8, #8
\tb.ne\t.LBB0_1
// %bb.4:                               // %for_end_o
\tret
.Lfunc_end0:
"""


def test_machine_loops_split_nested_loops_into_own_instructions():
    found = loops.machine_loops(AARCH64_ASM)
    assert [(l.function, l.blocks) for l in found] == [("kern_compute_", ["for_body_o", "for_end_xx_0"]),
                                                      ("kern_compute_", ["for_body_xx_0"])]
    outer, inner = found
    assert inner.instructions == ["ldr\tq0, [x1, x9]", "cnt\tv0.16b, v0.16b", "add\tx9, x9, #16", "cmp\tx9, #64",
                                  "b.ne\t.LBB0_2"]
    assert outer.instructions == ["mov\tx9, xzr", "add\tx8, x8, #1", "cmp\tx8, #8", "b.ne\t.LBB0_1"]
    tir = {"o": loops.TirLoop("o", 8, True, None), "xx_0": loops.TirLoop("xx_0", 32, True, "o")}
    assert [loops.tir_loop_of(l, tir) for l in found] == ["o", "xx_0"]


def test_unrolled_peeled_and_remainder_loops():
    tir = {"c": loops.TirLoop("c", 28, True, None), "xx": loops.TirLoop("xx", 28 * 258, True, "c")}
    unrolled = loops.MachineLoop("f", ["for_body_xx.us", "if_then.us", "if_then.us.1", "if_then.us.2", "if_then.us.3"],
                                 [])
    assert loops.tir_loop_of(unrolled, tir) == "xx" and loops.unroll_factor(unrolled) == 4
    copy_of_outer = loops.MachineLoop("f", ["for_body_xx.us.3", "if_end.us.3"], [])  # c unrolled, xx kept
    assert loops.tir_loop_of(copy_of_outer, tir) == "xx" and loops.unroll_factor(copy_of_outer) == 1
    # xx fully unrolled into c: its peeled blocks belong to the loop around it
    assert loops.tir_loop_of(loops.MachineLoop("f", ["for_body_xx.peel.next"], []), tir) == "c"
    assert loops.tir_loop_of(loops.MachineLoop("f", ["for_body_xx.us.prol"], []), tir) is None  # remainder


def test_block_names_map_to_tir_loops_through_llvm_suffixes():
    tir = {name: loops.TirLoop(name, 1, False, None) for name in ("ax0", "ax1_0", "ax3_1.s")}
    assert loops._tir_var("ax09", tir) == "ax0"  # LLVM's uniquifying digits
    assert loops._tir_var("ax1_0.us.3", tir) == "ax1_0"
    assert loops._tir_var("ax3_1.s.preheader", tir) == "ax3_1.s"
    assert loops._tir_var("vector", tir) is None


@pytest.mark.needs_tvm
def test_tir_loops_of_one_name_are_priced_apart():
    """Two TIR loops named ``i`` (64 and 8 trips): LLVM's numbered block names (``for_body_i``,
    ``for_body_i3``) give each its own machine loop's cycles (64·2 + 8·10, not the average over 72)."""
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def kern(a: T.Buffer((64,), "float32"), b: T.Buffer((8,), "float32")):
        for i in range(64):
            a[i] = T.float32(0)
        for i in range(8):
            b[i] = T.float32(1)

    mod = tvm.IRModule({"kern": kern})
    found = [loops.MachineLoop("kern", ["for_body_i"], []), loops.MachineLoop("kern", ["for_body_i3"], []),
             loops.MachineLoop("kern", ["for_body_i3.1"], [])]  # an LLVM copy of the second loop's body
    record = loops.kernel_cycles(mod, found, [2.0, 12.0, 8.0])["kern"]
    assert record["cycles"] == 64 * 2.0 + 8 * 10.0
    assert [(l["trips"], l["cycles_per_iteration"]) for l in record["loops"]] == [(64, 2.0), (8, 10.0)]
    # a loop of that name LLVM removed: no one-to-one order, the loops share the average (as before)
    record = loops.kernel_cycles(mod, found[:1], [2.0])["kern"]
    assert record["cycles"] == 72 * 2.0


@pytest.mark.needs_tvm
def test_loops_that_share_a_name_are_renamed_apart():
    """``compute_at`` names every stage's loops ``ax0``, ``ax1``, ...: ``with_unique_loop_names`` gives each
    ``for`` its own name in its whole body (nested loops included) and keeps the program, so the code
    generator's blocks name one TIR loop each."""
    import re

    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def kern(a: T.Buffer((64, 4), "float32"), b: T.Buffer((8,), "float32")):
        T.func_attr({"global_symbol": "kern", "tir.noalias": True})
        for i in range(64):
            for j in range(4):
                a[i, j] = T.Cast("float32", i * 4 + j)
        for i in range(8):
            b[i] = T.Cast("float32", i)

    renamed = loops.with_unique_loop_names(tvm.IRModule({"kern": kern}))["kern"]
    tvm.ir.assert_structural_equal(renamed, kern, map_free_vars=True)
    script = renamed.script()
    assert re.findall(r"for ([\w, ]+) in", script) == ["i_L1x, j_L2x", "i_L3x"]
    assert "a[i_L1x, j_L2x] = T.Cast(\"float32\", i_L1x * 4 + j_L2x)" in script
    assert "b[i_L3x] = T.Cast(\"float32\", i_L3x)" in script
    lowered = loops.lower_module(tvm.IRModule({"kern": renamed}), {"kind": "llvm", "mtriple": "x86_64-linux-gnu"})
    assert [(l.name, l.trips) for l in loops.tir_loops(lowered["kern"])] == [("i_L1x", 64), ("j_L2x", 256), ("i_L3x", 8)]


def test_mca_cycles_of_a_popcount_loop():
    inner = loops.machine_loops(AARCH64_ASM)[1]
    fast, slow = (loops.mca_cycles([inner], core, "aarch64-linux-gnu", _tmp()) for core in ("neoverse-n1", "cortex-a55"))
    assert 1.0 <= fast[0] <= 5.0 and fast[0] < slow[0] <= 20.0, (fast, slow)


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="bisr-test-mca-"))


TBL2_ZIP_IR = """\
target triple = "aarch64-linux-gnu"
define void @k(ptr %out) {
entry:
  %1 = tail call <16 x i8> @llvm.aarch64.neon.tbl2.v16i8(<16 x i8> zeroinitializer, <16 x i8> zeroinitializer, <16 x i8> zeroinitializer)
  %2 = tail call <16 x i8> @llvm.aarch64.neon.tbl2.v16i8(<16 x i8> zeroinitializer, <16 x i8> <i8 1, i8 1, i8 1, i8 1, i8 1, i8 1, i8 1, i8 1, i8 1, i8 1, i8 1, i8 1, i8 1, i8 1, i8 1, i8 1>, <16 x i8> zeroinitializer)
  %3 = shufflevector <16 x i8> %1, <16 x i8> %2, <16 x i32> <i32 8, i32 24, i32 9, i32 25, i32 10, i32 26, i32 11, i32 27, i32 poison, i32 poison, i32 poison, i32 poison, i32 poison, i32 poison, i32 poison, i32 poison>
  store <16 x i8> %3, ptr %out, align 16
  ret void
}
declare <16 x i8> @llvm.aarch64.neon.tbl2.v16i8(<16 x i8>, <16 x i8>, <16 x i8>)
"""


def test_llvm19_ir_keeps_llc_off_its_tbl2_shuffle_combine(tmp_path):
    """A zip of two ``tbl2`` lookups (neon.py's table planes; here reduced by llvm-reduce from a 32 x 32 kernel)
    crashes LLVM 19's llc; after ``llvm19_ir`` (each result frozen, no instruction) it assembles to the lookups
    and the zip."""
    ir = loops.llvm19_ir(TBL2_ZIP_IR)
    assert "%tbl2.1 = tail call <16 x i8> @llvm.aarch64.neon.tbl2" in ir and "%1 = freeze <16 x i8> %tbl2.1" in ir
    (tmp_path / "k.ll").write_text(ir)
    proc = subprocess.run([loops.llvm_tool("llc"), "-O3", "-mtriple=aarch64-linux-gnu", "-mattr=+neon",
                           str(tmp_path / "k.ll"), "-o", str(tmp_path / "k.s")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    asm = (tmp_path / "k.s").read_text()
    assert asm.count("tbl\t") == 2 and "zip2" in asm


def test_llvm19_ir_moves_masked_alignment_into_an_operand():
    line = "  %v = tail call <8 x i32> @llvm.masked.load.v8i32.p0(ptr align 4 %p, <8 x i1> %m, <8 x i32> poison)"
    store = "  call void @llvm.masked.store.v8i32.p0(<8 x i32> %v, ptr align 16 %q, <8 x i1> %m)"
    ir = loops.llvm19_ir(f"{line}\n{store}\ndeclare <8 x i32> @llvm.masked.load.v8i32.p0(ptr captures(none), <8 x i1>, <8 x i32>)\n")
    assert "(ptr %p, i32 4, <8 x i1> %m" in ir and "(<8 x i32> %v, ptr %q, i32 16, <8 x i1> %m)" in ir
    assert "declare" not in ir


def test_dram_traffic_is_lru_over_whole_buffers():
    mb = [1024 * 1024 // 4]  # 1 MiB of float32
    calls = [("a", [(mb, "float32"), (mb, "float32")], ["x", "t1"]),
             ("b", [(mb, "float32"), (mb, "float32")], ["t1", "t2"]),
             ("c", [(mb, "float32"), (mb, "float32"), (mb, "float32")], ["t2", "x", "y"])]
    mib = 1024 * 1024
    assert dram_traffic(calls, 16 * mib) == [mib, 0, 0]  # everything fits: only x is read once
    # 2 MiB: call b pushes x out (clean), call c pushes t1 out (dirty: written back) and must read x again
    assert dram_traffic(calls, 2 * mib) == [mib, 0, 2 * mib + mib]
    assert dram_traffic(calls, 0) == [mib + mib, mib + mib, 2 * mib + mib]  # nothing stays: stream everything


def test_core_list_and_unknown_core():
    proc = _cli("--core", "list")
    assert proc.returncode == 0
    for name in ("cortex-a55", "cortex-a76", "cortex-a78", "cortex-x1", "neoverse-n1", "xeon-kvm"):
        assert name in proc.stdout
    assert core_by_name("cortex-a76").clock_ghz == 2.4 and core_by_name("cortex-a55").clock_ghz == 1.8
    _refused(_cli("somewhere", "--core", "cortex-a99"), "unknown core 'cortex-a99'")
    with pytest.raises(BisrError, match="known: cortex-a55"):
        core_by_name("pentium")


def test_host_core_is_the_calibration_core_of_this_cpu(monkeypatch):
    """``host_core`` (tools/estimate_table.py's default --core) matches the CPU's (vendor, family, model)."""
    from bisr_deploy import hostcpu
    from bisr_deploy.estimate.cores import host_core

    monkeypatch.setattr(hostcpu, "cpu_id", lambda: ("AuthenticAMD", 25, 1))
    assert host_core().name == "epyc-zen3-kvm" and host_core().mcpu == "znver3"
    monkeypatch.setattr(hostcpu, "cpu_id", lambda: ("GenuineIntel", 6, 167))
    assert host_core().name == "xeon-kvm"
    for unknown in (("AuthenticAMD", 25, 97), None):
        monkeypatch.setattr(hostcpu, "cpu_id", lambda: unknown)
        assert host_core() is None


def test_bad_artifacts_are_refused(tmp_path):
    _refused(_cli(tmp_path / "missing", "--core", "cortex-a76"), "not a directory")
    _refused(_cli(tmp_path, "--core", "cortex-a76"), "not a bisr-deploy artifact")


@pytest.fixture(scope="session")
def x86_estimate(x86_artifact, tmp_path_factory):
    """``estimate --measure --json`` of the 64 x 64 x86 artifact on this machine's core."""
    out = tmp_path_factory.mktemp("estimate") / "x86.json"
    proc = _cli(x86_artifact, "--core", "xeon-kvm", "--measure", "--json", out)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="session")
def complexity64():
    from bisr_deploy.checkpoint import load_checkpoint
    from bisr_deploy.complexity import count

    return count(load_checkpoint(SIM_PTH).build_model(), ARTIFACT_SIZE, ARTIFACT_SIZE)


@pytest.mark.slow
def test_x86_estimate_and_measurement(x86_estimate, complexity64):
    report, stdout = x86_estimate
    assert ESTIMATE_KEYS | {"measured_total_ms"} <= set(report)
    assert report["core"] == "xeon-kvm" and report["clock_ghz"] == CORES["xeon-kvm"].clock_ghz
    assert report["threads"] == 1 and len(report["kernels"]) == 25  # the VM's kernel calls: 44 with the
    # LayerNorms fused, 20 fewer since each of the 5 ConvBlock FeedForwards is one kernel instead of 5, one
    # fewer since the U-Net's mapping(fea) + x is one kernel, two more since the frontend's shift-back is the
    # crops kernel between the snapshot's scaling and the concatenation with the mask
    for k in report["kernels"]:
        assert KERNEL_KEYS | {"measured_ms"} <= set(k)
        assert k["bound"] in ("compute", "dram") and k["est_ms"] >= 0 and k["measured_ms"] > 0
        assert k["est_ms"] == pytest.approx(max(k["compute_ms"], k["dram_ms"]))
        if k["function"].startswith("bisrconv"):  # every binary kernel has loops with cycles
            assert k["binary_macs"] > 0 and 1 < k["binary_macs_per_cycle"] < 2000, k
        # the roofline: MACs at the core's peak, bytes at its bandwidth; no kernel beats its floor
        core = CORES["xeon-kvm"]
        floor = (k["binary_macs"] / core.binary_macs_per_cycle + k["float_macs"] / core.fmas_per_cycle) / (core.clock_ghz * 1e6)
        assert k["compute_floor_ms"] == pytest.approx(floor) and k["roofline_ms"] == pytest.approx(max(floor, k["dram_ms"]))
        assert k["roofline_fraction"] == pytest.approx(k["roofline_ms"] / k["measured_ms"])
    # the MAC counts are the model's (complexity.py: the PyTorch module tree with hooks)
    assert sum(k["binary_macs"] for k in report["kernels"]) == complexity64.macs_binary
    assert sum(k["float_macs"] for k in report["kernels"]) == complexity64.macs_full - MASK_FOLD_MACS
    assert report["total_ms"] == pytest.approx(sum(k["est_ms"] for k in report["kernels"]))
    # a sane estimate of this machine: within a factor 3 of what it measures (docs/estimate.md: +-30 % at 256)
    assert report["measured_total_ms"] / 3 < report["total_ms"] < 3 * report["measured_total_ms"]
    assert "total: estimate" in stdout and "measured" in stdout


@pytest.mark.slow
def test_arm_estimate(arm_artifact, complexity64, tmp_path):
    out = tmp_path / "a76.json"
    proc = _cli(arm_artifact, "--core", "cortex-a76", "--threads", "4", "--json", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert ESTIMATE_KEYS <= set(report) and "measured_total_ms" not in report
    assert report["core"] == "cortex-a76" and report["threads"] == 4 and report["clock_ghz"] == 2.4
    assert sum(k["binary_macs"] for k in report["kernels"]) == complexity64.macs_binary
    assert sum(k["float_macs"] for k in report["kernels"]) == complexity64.macs_full - MASK_FOLD_MACS
    binary = [k for k in report["kernels"] if k["binary_macs"]]
    # NEON: 128-bit EOR + CNT + accumulate, two pipes: an A76 core cannot exceed ~128 binary MACs per cycle
    assert all(0 < k["binary_macs_per_cycle"] < 4 * 128 for k in binary)  # 4 threads
    assert 0 < report["total_ms"] < 1000


def test_measure_refuses_an_artifact_this_machine_cannot_run(arm_artifact):
    _refused(_cli(arm_artifact, "--core", "cortex-a76", "--measure"), "needs CPU features this machine lacks: asimd")


def test_artifact_without_its_onnx_model_is_refused(x86_artifact, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(x86_artifact, copy)
    (copy / "model.onnx").unlink()
    _refused(_cli(copy, "--core", "xeon-kvm"), "has no model.onnx")
    _refused(_cli(x86_artifact, "--core", "cortex-a76"), "an x86_64 artifact; core cortex-a76 is aarch64")
