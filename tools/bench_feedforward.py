"""The band-fused ConvBlock FeedForward kernel (bisr_deploy/compile/feedforward.py) at several band heights,
against its five per-layer kernels run one after the other on their own buffers (as in the network).

Random inputs and parameters (the timing does not depend on the values); 1 thread unless TVM_NUM_THREADS
says otherwise; interleaved rounds (each variant once per round), fastest and median of --rounds. The band
that ``band_rows`` picks for --cpu is marked.

``--core NAME`` (a core of ``bisr-deploy estimate --core list``) estimates instead of measuring: every variant
compiled for that core's target (``--target arm`` for the ARM cores, with its schedule) and priced by the
estimator's static model (``estimate.loops``: llvm-mca on the compiled loops x TIR trip counts) at the core's
clock, 1 thread; no DRAM term (the five kernels' traffic between them is not charged).

    python tools/bench_feedforward.py [--dim 28 --height 256 --width 256] [--bands 2,4,6,8,10] [--cpu native]
                                      [--core cortex-a76]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _tensors(te_tensors, rng):
    import tvm

    out = []
    for t in te_tensors:
        shape, dtype = [int(d) for d in t.shape], str(t.dtype)
        values = rng.standard_normal(shape) if dtype.startswith("float") else rng.integers(0, 2**31, size=shape)
        out.append(tvm.runtime.tensor(values.astype(dtype)))
    return out


def main(argv=None) -> int:
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    from bisr_deploy.compile.bitserial import bisrconv_primfunc
    from bisr_deploy.compile.feedforward import FeedForwardSpec, band_rows, feedforward_primfunc
    from bisr_deploy.compile.targets import resolve_target
    from bisr_deploy.estimate.cores import core_by_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=28)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--bands", default="2,4,6,8,10")
    parser.add_argument("--cpu", default="native")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--core", default=None, help="estimate for this core instead of measuring")
    args = parser.parse_args(argv)
    core = core_by_name(args.core) if args.core else None
    target = resolve_target("arm" if core and core.arch == "aarch64" else "x86", "native" if core else args.cpu)
    schedule = target.schedule
    spec = FeedForwardSpec(1, args.dim, args.height, args.width)
    chosen = band_rows(spec, schedule)
    stages = [bisrconv_primfunc(stage, schedule, fusion) for stage, fusion in spec.stages]
    bands = {f"band {band}{' (band_rows)' if band == chosen else ''}":
             feedforward_primfunc(spec, schedule, band)
             for band in sorted({*(int(b) for b in args.bands.split(",")), chosen})}
    where = f"FeedForward {args.dim} x {args.height} x {args.width}, {target.arch} {target.cpu} (L2 {schedule.l2_bytes >> 10} KiB)"
    if core:
        estimate(where, core, target, stages, bands)
    else:
        measure(where, spec, target, stages, bands, args.rounds)
    return 0


def estimate(where: str, core, target, stages, bands) -> None:
    """Print each variant's estimated ms on ``core`` (1 thread)."""
    import tvm

    from bisr_deploy.estimate.loops import compile_kernels

    funcs = {f"stage{k}": f for k, f in enumerate(stages)} | {f"variant{k}": f for k, f in enumerate(bands.values())}
    kernels = compile_kernels(tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()}),
                              target.tvm_target)
    cycles = kernels.cycles(core.mcpu)
    ms = {name: (c["cycles"] + c["parallel_cycles"]) / (core.clock_ghz * 1e6) for name, c in cycles.items()}
    print(f"ESTIMATE {where} on {core.name} @ {core.clock_ghz} GHz (llvm-mca {core.mcpu}), 1 thread")
    per_stage = [ms[f"stage{k}"] for k in range(len(stages))]
    print(f"  {'five kernels':<22} {sum(per_stage):7.2f} ms   ({' + '.join(f'{v:.2f}' for v in per_stage)})")
    for k, name in enumerate(bands):
        print(f"  {name:<22} {ms[f'variant{k}']:7.2f} ms")


def measure(where: str, spec, target, stages, bands, rounds: int) -> None:
    """Time each variant here: fastest and median of ``rounds`` interleaved rounds (printed)."""
    import tvm

    from bisr_deploy.compile.bitserial import bisrconv_compute
    from bisr_deploy.compile.feedforward import feedforward_compute

    rng = np.random.default_rng(0)
    compiled = []
    for (stage, fusion), func in zip(spec.stages, stages):
        inputs, output = bisrconv_compute(stage, fusion)
        lib = tvm.compile(tvm.IRModule({"bisrconv": func}), target=target.tvm_target)
        compiled.append((lib["bisrconv"], _tensors([*inputs, output], rng)))
    variants = {"five kernels": lambda: [func(*tensors) for func, tensors in compiled]}
    inputs, output = feedforward_compute(spec)
    tensors = _tensors([*inputs, output], rng)
    for name, func in bands.items():
        run = tvm.compile(tvm.IRModule({"feedforward": func}), target=target.tvm_target)["feedforward"]
        variants[name] = lambda run=run: run(*tensors)
    times = {name: [] for name in variants}
    for run in variants.values():
        run()  # warm-up
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    print(f"{where}, {os.environ['TVM_NUM_THREADS']} thread(s), {rounds} rounds; load average {os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        print(f"  {name:<22} fastest {min(values):7.2f} ms   median {float(np.median(values)):7.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
