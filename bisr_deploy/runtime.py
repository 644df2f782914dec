"""Load and run a compiled artifact (written by ``bisr_deploy.compile.build``).

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
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from .errors import BisrError
from .fileio import checked_copy

FORMAT_NAME = "bisr-deploy-artifact"
FORMAT_VERSION = 1
LIBRARY = "model.so"
PARAMS = "params.npz"
MANIFEST = "manifest.json"
SOURCE_MODEL = "model.onnx"  # the compiled ONNX model, for estimate; older artifacts lack it


def read_manifest(directory: str | os.PathLike) -> dict:
    """The parsed, format-checked manifest of the artifact in ``directory``."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise BisrError(f"{directory}: not a directory (an artifact is a directory made by `bisr-deploy compile`)")
    if not path.is_file():
        raise BisrError(f"{directory}: no {MANIFEST}; not a bisr-deploy artifact")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BisrError(f"{path}: unreadable or corrupt manifest ({exc.__class__.__name__})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BisrError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BisrError(f"{path}: artifact format version {manifest.get('format_version')!r} is not supported "
                        f"(expected {FORMAT_VERSION})")
    for key in ("inputs", "output", "target", "files", "params", "mode"):
        if key not in manifest:
            raise BisrError(f"{path}: manifest lacks {key!r}")
    _check_manifest_types(path, manifest)
    return manifest


def _is_shape(value, rank: int) -> bool:
    return (isinstance(value, list) and len(value) == rank
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value))


def _check_manifest_types(path: Path, manifest: dict) -> None:
    """The manifest's fields have the types and shapes that the loaders rely on. Raises ``BisrError``."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise BisrError(f"{path}: malformed manifest: {what}")

    need(manifest["mode"] in ("sim", "real"), "'mode' must be \"sim\" or \"real\"")
    inputs = manifest["inputs"]
    need(isinstance(inputs, list) and len(inputs) == (2 if manifest["mode"] == "sim" else 1),
         "'inputs' must list the measurement (and the mask for sim mode)")
    need(all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in inputs), "'inputs' entries need a name")
    need(_is_shape(inputs[0].get("shape"), 3), "the measurement's shape must be 3 positive integers")
    need(len(inputs) == 1 or _is_shape(inputs[1].get("shape"), 3), "the mask's shape must be 3 positive integers")
    output = manifest["output"]
    need(isinstance(output, dict) and _is_shape(output.get("shape"), 4), "'output' needs a shape of 4 positive integers")
    target = manifest["target"]
    need(isinstance(target, dict) and isinstance(target.get("triple"), str), "'target' must be a record with a triple")
    features = target.get("required_cpu_features", [])
    need(isinstance(features, list) and all(isinstance(f, str) for f in features),
         "'target.required_cpu_features' must be a list of names")
    files = manifest["files"]
    need(isinstance(files, dict), "'files' must map file names to records")
    for name, record in files.items():
        need(isinstance(record, dict) and isinstance(record.get("sha256"), str)
             and isinstance(record.get("bytes"), int) and not isinstance(record.get("bytes"), bool),
             f"'files' entry {name!r} needs sha256 and bytes")
    need(isinstance(manifest["params"], list) and all(isinstance(p, str) for p in manifest["params"]),
         "'params' must be a list of names")
    layers = manifest.get("layers", [])
    need(isinstance(layers, list) and all(isinstance(layer, dict) and all(isinstance(layer.get(k), str)
                                                                          for k in ("name", "kind", "function"))
                                          for layer in layers), "'layers' must be records with name, kind, function")
    need(isinstance(manifest.get("source", {}), dict), "'source' must be a record")


def is_artifact(directory: str | os.PathLike) -> bool:
    """True if ``directory`` holds a valid artifact manifest and nothing but the manifest and the files it
    lists: the only kind of existing directory that ``bisr-deploy compile --output`` replaces."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
        return {entry.name for entry in directory.iterdir()} == {MANIFEST, *manifest["files"]}
    except (BisrError, OSError):
        return False


def verified_copy(directory: str | os.PathLike, manifest: dict, private: Path) -> None:
    """Copy every file the manifest lists into ``private``, checking size and sha256 of the bytes copied
    (``fileio.checked_copy``).

    The copies, not the originals, are what a loader may then read: no file swapped in the artifact directory
    after the check can be loaded. Raises ``BisrError``."""
    directory = Path(directory)
    for name in (LIBRARY, PARAMS):
        if name not in manifest["files"]:
            raise BisrError(f"{directory}: manifest does not list {name}")
    for name, record in manifest["files"].items():
        path = directory / name
        if os.path.basename(name) != name or name in (".", "..", MANIFEST) or not path.is_file():
            raise BisrError(f"{directory}: missing artifact file {name}")
        checked_copy(path, private / name, record["bytes"], record["sha256"])


def artifact_inputs(manifest: dict, measurement, mask) -> list[np.ndarray]:
    """Validate a measurement (and mask) against the artifact's interface; return its [1, ...] float32 inputs."""
    from .reconstruct import validate_inputs

    inputs = manifest["inputs"]
    measurement_shape = tuple(inputs[0]["shape"][1:])
    has_mask = len(inputs) > 1
    if mask is not None and not has_mask:
        raise BisrError("this is a real-mode artifact: it takes no mask")
    measurement, mask = validate_inputs(measurement, mask, manifest["mode"], n_bands=manifest["output"]["shape"][1])
    if measurement.shape != measurement_shape:
        raise BisrError(f"this artifact was compiled for snapshots {measurement_shape[0]} x "
                        f"{measurement_shape[1]}, got {measurement.shape[0]} x {measurement.shape[1]}")
    return [measurement[None], mask[None]] if has_mask else [measurement[None]]


class CompiledModel:
    """A loaded artifact. ``model(measurement, mask=None)`` -> cube float32 [C, H, W]."""

    def __init__(self, directory: Path, manifest: dict, library, params: list):
        import tvm
        from tvm import relax

        self.directory = directory
        self.manifest = manifest
        self.mode = manifest["mode"]
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
        if list(out.shape) != self.manifest["output"]["shape"]:
            raise BisrError(f"{self.directory}: the compiled model returned {list(out.shape)}, its manifest says "
                            f"{self.manifest['output']['shape']}")
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
        return [layer["name"] for layer in self.manifest["layers"] if layer["kind"] == "bisrconv"]

    def run_bisrconv(self, name: str, x: np.ndarray) -> np.ndarray:
        """Run the compiled kernel of BiSRConv ``name`` alone, with the artifact's own weights, on x float32
        [1, C, H, W] (that layer's input shape) -> Y float32 [1, C, H, W] (docs/custom-ops.md semantics)."""
        from .compile.bitserial import PARAM_NAMES

        layer = next((entry for entry in self.manifest["layers"] if entry["kind"] == "bisrconv" and entry["name"] == name), None)
        if layer is None:
            raise BisrError(f"{self.directory}: no BiSRConv named {name!r}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if list(x.shape) != layer["shape"]:
            raise BisrError(f"BiSRConv {name} takes input {layer['shape']}, got {list(x.shape)}")
        index = {param: i for i, param in enumerate(self.manifest["params"])}
        params = [self._params[index[f"{name}.{param}"]] for param in PARAM_NAMES]
        out = self._tvm.runtime.empty(x.shape, "float32")
        with self._lock:
            self._library.get_function(layer["function"], query_imports=True)(self._tvm.runtime.tensor(x), *params, out)
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
    from .compile.targets import check_runnable

    directory = Path(directory)
    manifest = read_manifest(directory)
    default_threads()
    target = manifest["target"]
    check_runnable(target.get("required_cpu_features", []), f"{directory} (compiled for cpu {target.get('cpu')})")
    if target["triple"].split("-")[0] != os.uname().machine:
        raise BisrError(f"{directory} was compiled for {target['triple']}, this machine is {os.uname().machine}")
    import tvm

    private = Path(tempfile.mkdtemp(prefix="bisr-artifact-"))  # mode 0700: only this user can swap files in it
    try:
        verified_copy(directory, manifest, private)
        try:
            with np.load(private / PARAMS, allow_pickle=False) as npz:
                names = [f"p{i:04d}" for i in range(len(manifest["params"]))]
                if sorted(npz.files) != names:
                    raise BisrError(f"{directory / PARAMS}: holds {len(npz.files)} arrays, the manifest lists "
                                    f"{len(names)} parameters")
                params = [npz[name] for name in names]
        except BisrError:
            raise
        except Exception as exc:
            raise BisrError(f"{directory / PARAMS}: cannot read the parameters ({exc})") from exc
        try:
            library = tvm.runtime.load_module(str(private / LIBRARY))
        except Exception as exc:
            raise BisrError(f"{directory / LIBRARY}: cannot load the compiled library ({str(exc).splitlines()[0]})") from exc
    finally:
        shutil.rmtree(private, ignore_errors=True)  # the loaded library stays mapped; nothing reads the copies again
    return CompiledModel(directory, manifest, library, [tvm.runtime.tensor(p) for p in params])
