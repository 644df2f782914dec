"""BiSRNet's float convolutions (``fution``, ``conv_in``, ``conv_out``), each kernel alone, against the FMA peak.

Every ``Conv`` node of the exported graph at --height x --width is compiled alone with the floatconv kernel for
the x86 --cpu (its target's ``Schedule``; ``--tile OUT,VECTORS`` overrides ``conv_tile``) and timed at 1
thread: the fastest of --rounds calls after one warm-up (the machine is shared: the fastest call is the one
least disturbed). The peak: an FMA-throughput probe (C, built with the host ``cc -O2 -march=native``: 24
independent vector FMA chains, the fastest of 5 runs) measures vector FMAs per second; times the lanes
(16 AVX-512, 8 AVX2) that is the core's fp32 MACs per second, i.e. FMA pipes x lanes x clock. Its dependent
chain (one FMA waiting for the last) gives the FMA latency in ns, which with the known latency of 4 cycles
(Intel since Skylake, AMD since Zen 2) names the clock.

``--core NAME`` (a core of ``bisr-deploy estimate --core list``) estimates instead of measuring: each kernel
alone, compiled for that core's target (``--target arm`` for the ARM cores), through the estimator's static
model (``estimate.loops``: llvm-mca on the compiled loops x TIR trip counts) at the core's clock.

    python tools/bench_floatconv.py [--checkpoint authors-sim] [--height 256 --width 256] [--cpu native]
                                    [--rounds 40] [--tile 7,2] [--core cortex-a76] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FMA_LATENCY_CYCLES = 4
PROBE_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#ifdef __AVX512F__
typedef __m512 V; enum { LANES = 16 };
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define FIRST(v) _mm512_cvtss_f32(v)
#else
typedef __m256 V; enum { LANES = 8 };
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define FIRST(v) _mm256_cvtss_f32(v)
#endif
#define DECL(i) V a##i = SET1((float)i);
#define STEP(i) a##i = FMA(a##i, x, y);
#define SUM(i) s += FIRST(a##i);
#define ALL(M) M(0)M(1)M(2)M(3)M(4)M(5)M(6)M(7)M(8)M(9)M(10)M(11)M(12)M(13)M(14)M(15)M(16)M(17)M(18)M(19)M(20)M(21)M(22)M(23)
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    ALL(DECL)
    V x = SET1(0.999f + argc * 1e-9f), y = SET1(1e-3f * argc), c = a0;
    long n = 40000000, i;
    double best = 1e9, chain = 1e9, t;
    float s = 0;
    for (int round = 0; round < 5; round++) {
        t = now();
        for (i = 0; i < n; i++) { ALL(STEP) }
        t = now() - t; if (t < best) best = t;
        t = now();
        for (i = 0; i < n; i++) { c = FMA(c, x, y); c = FMA(c, x, y); c = FMA(c, x, y); c = FMA(c, x, y); }
        t = now() - t; if (t < chain) chain = t;
    }
    ALL(SUM)
    s += FIRST(c);
    printf("%d %.6e %.6e %g\n", LANES, n * 24.0 / best, chain / (n * 4.0), s * 0);
    return 0;
}
"""


def fma_probe() -> dict:
    """Vector FMAs per second (24 independent chains), the latency of one dependent FMA, lanes per vector."""
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "probe.c", Path(tmp) / "probe"
        source.write_text(PROBE_C)
        subprocess.run(["cc", "-O2", "-march=native", str(source), "-o", str(binary)], check=True)
        lanes, fmas_per_s, latency_s, _ = subprocess.run([str(binary)], check=True, capture_output=True,
                                                          text=True).stdout.split()
    lanes, fmas_per_s, latency_s = int(lanes), float(fmas_per_s), float(latency_s)
    clock_ghz = FMA_LATENCY_CYCLES / latency_s / 1e9
    return {"lanes": lanes, "vector_fmas_per_s": fmas_per_s, "clock_ghz": clock_ghz,
            "fma_pipes": fmas_per_s / (clock_ghz * 1e9), "peak_gmacs": fmas_per_s * lanes / 1e9}


def float_convs(checkpoint: str, height: int, width: int):
    """[(node name, Conv2dSpec)] of the exported graph's ``Conv`` nodes (BiSRNet's full-precision layers)."""
    import onnx
    from onnx import helper

    from bisr_deploy.compile.floatconv import Conv2dSpec
    from bisr_deploy.compile.split import split_custom_ops
    from bisr_deploy.export import export_onnx

    stripped, _ = split_custom_ops(export_onnx(checkpoint, height, width))
    model = onnx.shape_inference.infer_shapes(stripped)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input]}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    convs = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n, ci, h, w = shapes[node.input[0]]
        co, _, kh, kw = weights[node.input[1]]
        convs.append((node.name, Conv2dSpec(n, ci, co, h, w, (kh, kw), tuple(attrs.get("pads", [0] * 4)),
                                            attrs.get("group", 1))))
    return convs


def kernel_ms(spec, target, schedule, rounds: int, rng) -> float:
    import tvm

    from bisr_deploy.compile.floatconv import conv2d_primfunc

    lib = tvm.compile(tvm.IRModule({"conv2d": conv2d_primfunc(spec, schedule)}), target=target.tvm_target)
    x = tvm.runtime.tensor(rng.standard_normal((spec.batch, spec.in_channels, spec.height, spec.width), np.float32))
    weight = rng.standard_normal((spec.out_channels, spec.in_channels // spec.groups, *spec.kernel), np.float32)
    y = tvm.runtime.empty((spec.batch, spec.out_channels, spec.out_height, spec.out_width), "float32")
    args = (x, tvm.runtime.tensor(weight), y)
    lib["conv2d"](*args)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        lib["conv2d"](*args)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def estimated_ms(spec, target, schedule, core) -> float:
    import tvm

    from bisr_deploy.compile.floatconv import conv2d_primfunc
    from bisr_deploy.estimate.loops import compile_kernels

    kernels = compile_kernels(tvm.IRModule({"conv2d": conv2d_primfunc(spec, schedule)}), target.tvm_target)
    cycles = kernels.cycles(core.mcpu)["conv2d"]
    return (cycles["cycles"] + cycles["parallel_cycles"]) / (core.clock_ghz * 1e6)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="authors-sim", help="checkpoint name or path (default authors-sim)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--cpu", default="native")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--tile", default=None, help="OUT,VECTORS: the register tile instead of the target's")
    parser.add_argument("--core", default=None, help="estimate for this core instead of measuring")
    parser.add_argument("--json", default=None, help="Also write the rows as JSON here.")
    args = parser.parse_args(argv)

    from bisr_deploy.compile.targets import resolve_target
    from bisr_deploy.estimate.cores import core_by_name
    from bisr_deploy.runtime import set_num_threads

    set_num_threads(1)
    core = core_by_name(args.core) if args.core else None
    target = resolve_target("arm" if core and core.arch == "aarch64" else "x86", "native" if core else args.cpu)
    schedule = target.schedule
    if args.tile:
        schedule = dataclasses.replace(schedule, conv_tile=tuple(int(v) for v in args.tile.split(",")))
    convs = float_convs(args.checkpoint, args.height, args.width)
    report = estimate_report(convs, target, schedule, core) if core else measure_report(convs, target, schedule,
                                                                                          args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def estimate_report(convs, target, schedule, core) -> dict:
    """Each conv's estimate on ``core`` (printed); the JSON report."""
    print(f"ESTIMATE for {core.name} @ {core.clock_ghz} GHz (llvm-mca {core.mcpu}), target {target.tvm_target}, "
          f"conv_tile {schedule.conv_tile}")
    rows = []
    for name, spec in convs:
        ms = estimated_ms(spec, target, schedule, core)
        rows.append({"layer": name, "est_ms": ms, "macs_per_cycle": spec.macs / (ms * core.clock_ghz * 1e6)})
        print(f"{name:<10}{ms:>8.2f} ms{rows[-1]['macs_per_cycle']:>8.2f} MACs/cycle")
    return {"core": core.name, "target": target.tvm_target, "conv_tile": schedule.conv_tile, "rows": rows}


def measure_report(convs, target, schedule, rounds: int) -> dict:
    """The FMA peak and each conv's fastest time here (printed); the JSON report."""
    peak = fma_probe()
    print(f"target {target.tvm_target}, conv_tile {schedule.conv_tile}, 1 thread, fastest of {rounds}")
    print(f"FMA probe: {peak['vector_fmas_per_s'] / 1e9:.2f} G vector FMAs/s x {peak['lanes']} lanes = "
          f"{peak['peak_gmacs']:.1f} G MACs/s; clock {peak['clock_ghz']:.2f} GHz (dependent FMA = "
          f"{FMA_LATENCY_CYCLES} cycles), so {peak['fma_pipes']:.2f} FMA pipes")
    if peak["lanes"] != schedule.lanes:
        print(f"note: the probe's vectors have {peak['lanes']} lanes, the target's {schedule.lanes}")
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'layer':<10}{'shape':<28}{'ms':>8}{'G MACs':>8}{'G MACs/s':>10}{'of peak':>9}")
    for name, spec in convs:
        ms = kernel_ms(spec, target, schedule, rounds, rng)
        macs = spec.macs
        rate = macs / ms / 1e6
        shape = f"{spec.kernel[0]}x{spec.kernel[1]} {spec.in_channels}->{spec.out_channels} @{spec.height}x{spec.width}"
        rows.append({"layer": name, "shape": shape, "ms": ms, "macs": macs, "gmacs_per_s": rate,
                     "fraction_of_peak": rate / peak["peak_gmacs"]})
        print(f"{name:<10}{shape:<28}{ms:>8.2f}{macs / 1e9:>8.3f}{rate:>10.1f}{rate / peak['peak_gmacs']:>8.0%}")
    return {"target": target.tvm_target, "conv_tile": schedule.conv_tile, "peak": peak, "rows": rows}


if __name__ == "__main__":
    sys.exit(main())
