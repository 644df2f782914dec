"""Per-layer benchmark of the bitserial BiSRConv kernels against ONNX Runtime fp32 Conv of the same layer.

Every distinct BiSRConv shape of BiSRNet at --height x --width (taken from the exported graph, with its call
count) is compiled alone for --cpu and timed at 1 thread (median of --repeat calls, after one warm-up), next
to ONNX Runtime 1-thread fp32 ``Conv`` with the same channels, kernel, padding and groups (the convolution
only: no redistribution, sign, RPReLU or residual, which the bitserial kernel includes). "MB moved" is the
kernel's compulsory traffic: X read, Y written, packed activations written and read, parameters.

    python tools/bench_layers.py [--checkpoint CKPT] [--height 256 --width 256] [--cpu native] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Per-layer goals of issue 4 (1 thread, ms), keyed by (channels, H, W, kernel, group).
GOALS_MS = {(56, 256, 256, 1, 1): 6.2, (28, 256, 256, 1, 1): 1.7, (28, 256, 256, 3, 1): 11.1,
            (224, 64, 64, 1, 1): 3.4, (112, 256, 256, 3, 28): 80.0}


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def bitserial_ms(spec, target, repeat: int, rng) -> float:
    import tvm

    from bisr_deploy.compile.bitserial import bisrconv_primfunc, prepare_weights

    lib = tvm.compile(tvm.IRModule({"bisrconv": bisrconv_primfunc(spec, target.schedule)}), target=target.tvm_target)
    c, kh, kw = spec.channels, *spec.kernel
    bits = np.packbits(rng.random((c, spec.group_channels * kh * kw)) > 0.5, axis=1, bitorder="little")
    prepared = prepare_weights(spec, bits)
    vec = lambda: tvm.runtime.tensor(rng.standard_normal(c).astype(np.float32))  # noqa: E731
    args = [tvm.runtime.tensor(rng.standard_normal((1, c, spec.height, spec.width)).astype(np.float32)),
            vec(), vec(), *(tvm.runtime.tensor(prepared[k]) for k in ("wwords", "wmask", "table")), vec(), vec(), vec(), vec(),
            tvm.runtime.empty((1, c, spec.height, spec.width), "float32")]
    return median_ms(lambda: lib["bisrconv"](*args), repeat)


def ort_conv_ms(spec, repeat: int, rng) -> float:
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    c, kh, kw = spec.channels, *spec.kernel
    weight = np.where(rng.random((c, spec.group_channels, kh, kw)) > 0.5, 1.0, -1.0).astype(np.float32)
    shape = [1, c, spec.height, spec.width]
    node = helper.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[kh, kw], pads=list(spec.pads), group=spec.group)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = rng.standard_normal(shape).astype(np.float32)
    return median_ms(lambda: session.run(None, {"X": x}), repeat)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="authors-sim", help="checkpoint name or path (default authors-sim)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--cpu", default="native")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", default=None, help="Also write the rows as JSON here.")
    args = parser.parse_args(argv)

    from bisr_deploy.compile.split import split_custom_ops
    from bisr_deploy.compile.targets import resolve_target
    from bisr_deploy.export import export_onnx
    from bisr_deploy.runtime import set_num_threads

    set_num_threads(1)
    target = resolve_target("x86", args.cpu)
    _, nodes = split_custom_ops(export_onnx(args.checkpoint, args.height, args.width))
    counts = Counter(node.spec for node in nodes)
    rng = np.random.default_rng(0)
    rows = []
    print(f"target {target.tvm_target}, 1 thread, median of {args.repeat}")
    print(f"{'layer':<34}{'calls':>6}{'bitserial ms':>14}{'ORT conv ms':>13}{'speed-up':>10}{'MB moved':>10}{'goal ms':>9}")
    for spec, calls in sorted(counts.items(), key=lambda kv: (-kv[0].height, kv[0].channels, kv[0].kernel)):
        bits_ms = bitserial_ms(spec, target, args.repeat, rng)
        ort_ms = ort_conv_ms(spec, args.repeat, rng)
        pixels = spec.height * spec.width
        moved = (8 * spec.channels * pixels + 8 * spec.words * pixels + 4 * spec.channels * (9 + spec.group_words * 9)) / 1e6
        kh = spec.kernel[0]
        name = f"{kh}x{kh} {spec.channels}ch g{spec.group} @{spec.height}x{spec.width}"
        goal = GOALS_MS.get((spec.channels, spec.height, spec.width, kh, spec.group))
        rows.append({"layer": name, "calls": calls, "bitserial_ms": bits_ms, "ort_conv_ms": ort_ms,
                     "mb_moved": moved, "goal_ms": goal})
        print(f"{name:<34}{calls:>6}{bits_ms:>14.3f}{ort_ms:>13.3f}{ort_ms / bits_ms:>9.1f}x{moved:>10.1f}"
              f"{'' if goal is None else f'{goal:>9.1f}'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"target": target.tvm_target, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
