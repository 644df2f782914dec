"""The band-fused ConvBlock FeedForward kernel (bisr_deploy/compile/feedforward.py) at several band heights,
against its five per-layer kernels run one after the other on their own buffers (as in the network).

Random inputs and parameters (the timing does not depend on the values); 1 thread unless TVM_NUM_THREADS
says otherwise; interleaved rounds (each variant once per round), fastest and median of --rounds. The band
that ``band_rows`` picks for --cpu is marked.

    python tools/bench_feedforward.py [--dim 28 --height 256 --width 256] [--bands 2,4,6,8,10] [--cpu native]
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
    import tvm

    from bisr_deploy.compile.bitserial import bisrconv_compute, bisrconv_primfunc
    from bisr_deploy.compile.feedforward import FeedForwardSpec, band_rows, feedforward_compute, feedforward_primfunc
    from bisr_deploy.compile.targets import resolve_target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=28)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--bands", default="2,4,6,8,10")
    parser.add_argument("--cpu", default="native")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    target = resolve_target("x86", args.cpu)
    spec = FeedForwardSpec(1, args.dim, args.height, args.width)
    rng = np.random.default_rng(0)
    chosen = band_rows(spec, target.schedule)
    variants = {}
    stages = []
    for stage, fusion in spec.stages:
        lib = tvm.compile(tvm.IRModule({"bisrconv": bisrconv_primfunc(stage, target.lanes, fusion)}),
                          target=target.tvm_target)
        inputs, output = bisrconv_compute(stage, fusion)
        stages.append((lib["bisrconv"], _tensors([*inputs, output], rng)))
    variants["five kernels"] = lambda: [func(*tensors) for func, tensors in stages]
    inputs, output = feedforward_compute(spec)
    tensors = _tensors([*inputs, output], rng)
    for band in sorted({*(int(b) for b in args.bands.split(",")), chosen}):
        func = tvm.compile(tvm.IRModule({"feedforward": feedforward_primfunc(spec, target.lanes, band)}),
                           target=target.tvm_target)["feedforward"]
        variants[f"band {band}{' (band_rows)' if band == chosen else ''}"] = \
            lambda func=func: func(*tensors)
    times = {name: [] for name in variants}
    for name, run in variants.items():
        run()  # warm-up
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    print(f"FeedForward {args.dim} x {args.height} x {args.width}, cpu {args.cpu} (L2 {target.schedule.l2_bytes >> 10} "
          f"KiB), {os.environ['TVM_NUM_THREADS']} thread(s), {args.rounds} rounds; load average "
          f"{os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        print(f"  {name:<22} fastest {min(values):7.2f} ms   median {float(np.median(values)):7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
