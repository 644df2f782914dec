"""End-to-end latency and memory of one reconstruction on every backend, from one process.

Backends (all on the same checkpoint and the same exported ONNX graph):
- ``compiled``: the bitserial artifact (``bisr_deploy.runtime``);
- ``onnxruntime-fp32``: ONNX Runtime on the exported ONNX (BiSRConv through its model-local function);
- ``tvm-fp32``: the same graph compiled by TVM without the bitserial lowering (BiSRConv as float ops,
  every convolution through the scheduled float kernel, the same fused-op schedules);
- ``pytorch-eager``: the PyTorch model (``bisr_deploy.reconstruct``).

Latency: median, min, max and inter-quartile range of ``repeat`` timed calls per backend, taken in
interleaved rounds (every backend once per round) after one warm-up call each.
Peak memory: the rise of the process's resident-set high-water mark during the warm-up call (Linux: the
mark is reset through ``/proc/self/clear_refs`` first), so it counts what the backend allocates while
running (activations, workspaces), not the weights it loaded before. Memory a backend keeps from an
earlier measurement (e.g. at another thread count) is not counted again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from .. import progress


@dataclass
class Measurement:
    backend: str
    threads: int
    samples_ms: list[float]
    peak_mib: float | None
    extra: dict = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    def as_dict(self) -> dict:
        s = np.asarray(self.samples_ms)
        return {"backend": self.backend, "threads": self.threads, "median_ms": float(np.median(s)),
                "min_ms": float(s.min()), "max_ms": float(s.max()),
                "iqr_ms": float(np.percentile(s, 75) - np.percentile(s, 25)), "repeat": len(s),
                "peak_mib": self.peak_mib, **self.extra}


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rise_mib(fn) -> float | None:
    """Run ``fn()`` once (the warm-up call) and return the rise of the peak RSS over the RSS before it."""
    resettable = _reset_peak()
    base = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    return (peak - base) / 1024 if resettable and peak is not None and base is not None else None


def measure_interleaved(fns: dict, threads: int, repeat: int) -> list[Measurement]:
    """Warm up each backend once (recording its peak-RSS rise), then time ``repeat`` rounds in which every
    backend runs once in turn, so that load from other processes hits all backends alike."""
    progress.stage(f"warming up {', '.join(fns)} at {threads} thread(s)")
    peaks = {name: peak_rise_mib(fn) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in progress.items(range(repeat), f"timed rounds at {threads} thread(s)"):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return [Measurement(name, threads, samples[name], peaks[name]) for name in fns]


def ort_runner(model_bytes: bytes, threads: int, feeds: dict):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads must not spin into the next backend's round (measure_interleaved).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)[0]


def torch_runner(model, measurement, mask, threads: int):
    import torch

    from ..reconstruct import reconstruct

    def run():
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return reconstruct(model, measurement, mask)
        finally:
            torch.set_num_threads(previous)

    return run


def tvm_vm_runner(executable, inputs: list[np.ndarray], params: list[np.ndarray]):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in inputs] + [tvm.runtime.tensor(p) for p in params]
    return lambda: vm["main"](*args).numpy()


def all_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def bench_inputs(input_shapes: list[list[int]], seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Deterministic random inputs for the model inputs of ``input_shapes`` ([1, H, W + 54] measurement, then
    [1, H, W] mask in simulation mode): (measurement [H, W + 54] float32 on [0, 14), mask [H, W] of 0/1 or None).
    A random snapshot rather than a simulated one: its content does not change the amount of work."""
    rng = np.random.default_rng(seed)
    y = (rng.random(input_shapes[0][1:]) * 14).astype(np.float32)
    mask = (rng.random(input_shapes[1][1:]) > 0.5).astype(np.float32) if len(input_shapes) > 1 else None
    return y, mask
