"""Load and run a compiled artifact (format: ``bisr_deploy.artifact``; written by ``bisr_deploy.compile.build``).

``load(DIR)`` checks the artifact before it runs any of its code: manifest format and version, the size and
sha256 of every file it lists (a tampered or truncated file is refused), and the CPU features the code was
compiled for against this machine. It returns a ``CompiledModel``:

    model(measurement [H, W+54], mask [H, W] | None) -> cube float32 [28, H, W]

with the same interface as the exported ONNX graph (inputs ``measurement`` [1, H, W+54], ``mask`` [1, H, W]
for simulation-mode models; output ``cube`` [1, 28, H, W]), and ``model.run_bisrconv(name, x)``, which runs
one compiled BiSRConv kernel alone (per-layer parity checks). Every refusal is a ``BisrError``.

Integrity, not authenticity: ``load`` copies ``model.so`` and ``params.npz`` into a private directory (mode
0700) and hashes and loads that copy, so the bytes that run are the bytes that were checked, whatever happens
to the artifact directory meanwhile. The sha256 values in the manifest catch damage, partial copies and
files swapped after compilation; they do not prove who made the artifact: anyone who can write the directory
can write a matching manifest. Load artifacts only from places you trust as much as your own code.

Threads: one ``CompiledModel`` may be called from any number of Python threads; calls run one at a time (a
lock per model: the Relax VM keeps per-call state in the model) and give the serial results. Each call
already uses every core through TVM's thread pool, so concurrent callers queue rather than speed up.

Needs numpy and TVM's runtime only: it imports nothing of the compiler, the exporter or the trainer, nor torch,
onnx or onnxruntime (tests/test_layout.py checks), so an app or a board installs it without the toolchain.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from . import artifact
from .artifact import Manifest, verified_copy
from .errors import BisrError
from .hostcpu import check_runnable
from .snapshot import validate_inputs


def artifact_inputs(manifest: Manifest, measurement, mask) -> list[np.ndarray]:
    """Validate a measurement (and mask) against the artifact's interface; return its [1, ...] float32 inputs."""
    measurement_shape = tuple(manifest.inputs[0].shape[1:])
    has_mask = len(manifest.inputs) > 1
    if mask is not None and not has_mask:
        raise BisrError("this is a real-mode artifact: it takes no mask")
    measurement, mask = validate_inputs(measurement, mask, manifest.mode, n_bands=manifest.output.shape[1])
    if measurement.shape != measurement_shape:
        raise BisrError(f"this artifact was compiled for snapshots {measurement_shape[0]} x "
                        f"{measurement_shape[1]}, got {measurement.shape[0]} x {measurement.shape[1]}")
    return [measurement[None], mask[None]] if has_mask else [measurement[None]]


class CompiledModel:
    """A loaded artifact. ``model(measurement, mask=None)`` -> cube float32 [C, H, W]."""

    def __init__(self, directory: Path, manifest: Manifest, library, params: list):
        import tvm
        from tvm import relax

        self.directory = directory
        self.manifest = manifest
        self.mode = manifest.mode
        self._library = library
        self._vm = relax.VirtualMachine(library, tvm.cpu())
        self._params = params
        self._tvm = tvm
        self._lock = threading.Lock()  # the VM is not reentrant: one call at a time (module docstring)

    def run_raw(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Run the VM on already validated [1, ...] float32 input arrays; returns [1, C, H, W]."""
        tensors = [self._tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
        with self._lock:
            try:
                out = self._vm["main"](*tensors, *self._params).numpy()
            except Exception as exc:  # a consistent but wrong artifact (e.g. params that do not fit its code)
                text = str(exc).strip()
                raise BisrError(f"{self.directory}: the compiled model failed "
                                f"({text.splitlines()[-1] if text else exc.__class__.__name__})") from exc
        if list(out.shape) != self.manifest.output.shape:
            raise BisrError(f"{self.directory}: the compiled model returned {list(out.shape)}, its manifest says "
                            f"{self.manifest.output.shape}")
        return out

    def __call__(self, measurement: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return self.run_raw(artifact_inputs(self.manifest, measurement, mask))[0].astype(np.float32, copy=False)

    def set_instrument(self, hook) -> None:
        """Install (None: remove) a Relax VM instrument hook, called around every VM call as
        ``hook(func, name, before_run, ret_value, *args)`` (it returns 0); for per-call profiling."""
        with self._lock:
            self._vm.set_instrument(hook)

    def bisrconv_layers(self) -> list[str]:
        """Names (ONNX node = PyTorch module path) of the compiled BiSRConvs, in graph order."""
        return [layer.name for layer in self.manifest.bisrconv_layers()]

    def run_bisrconv(self, name: str, x: np.ndarray) -> np.ndarray:
        """Run the compiled kernel of BiSRConv ``name`` alone, with the artifact's own weights, on x float32
        [1, C, H, W] (that layer's input shape) -> Y float32 [1, C, H, W] (docs/custom-ops.md semantics)."""
        layer = self.manifest.layer(name)
        if layer is None:
            raise BisrError(f"{self.directory}: no BiSRConv named {name!r}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if list(x.shape) != layer.shape:
            raise BisrError(f"BiSRConv {name} takes input {layer.shape}, got {list(x.shape)}")
        index = {param: i for i, param in enumerate(self.manifest.params)}
        params = [self._params[index[param]] for param in layer.param_names]
        out = self._tvm.runtime.empty(x.shape, "float32")
        with self._lock:
            self._library.get_function(layer.function, query_imports=True)(self._tvm.runtime.tensor(x), *params, out)
        return out.numpy()


def default_threads() -> None:
    """Let TVM's thread pool use every core of this process (TVM's own default here is fewer). Takes effect
    only before the pool starts, i.e. before the first compiled call of the process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("TVM_NUM_THREADS", str(cores))


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in TVM's CPU pool for this process (every loaded artifact). Raises ``BisrError`` if
    the pool cannot grow to ``n`` (it is sized by TVM_NUM_THREADS when it starts)."""
    import tvm

    if n < 1:
        raise BisrError(f"thread count must be positive, got {n}")
    default_threads()
    tvm.get_global_func("runtime.config_threadpool")(1, int(n))
    got = int(tvm.get_global_func("runtime.NumThreads")())
    if got != n:
        raise BisrError(f"cannot run on {n} threads: TVM's thread pool has {got} (set TVM_NUM_THREADS)")


def load(directory: str | os.PathLike) -> CompiledModel:
    """Verify and load the artifact in ``directory`` (see module docstring). Raises ``BisrError``."""
    directory = Path(directory)
    manifest = artifact.read_manifest(directory)
    default_threads()
    target = manifest.target
    check_runnable(target.triple, target.required_cpu_features, f"{directory} (compiled for cpu {target.cpu})")
    import tvm

    private = Path(tempfile.mkdtemp(prefix="bisr-artifact-"))  # mode 0700: only this user can swap files in it
    try:
        verified_copy(directory, manifest, private)
        params = artifact.read_params(private, manifest, directory / artifact.PARAMS)
        try:
            library = tvm.runtime.load_module(str(private / artifact.LIBRARY))
        except Exception as exc:
            raise BisrError(f"{directory / artifact.LIBRARY}: cannot load the compiled library "
                            f"({str(exc).splitlines()[0]})") from exc
    finally:
        shutil.rmtree(private, ignore_errors=True)  # the loaded library stays mapped; nothing reads the copies again
    return CompiledModel(directory, manifest, library, [tvm.runtime.tensor(p) for p in params])
