"""The compiled-artifact format: its name and version, the manifest schema as typed records, write, read, verify.

An artifact is a directory (format ``bisr-deploy-artifact``, version 1):

    DIR/model.so        the Relax VM executable and every kernel, one shared library
    DIR/params.npz      the weights p0000, p0001, ... in the order of ``Manifest.params`` (the order the VM's
                        ``main`` takes them after the graph inputs)
    DIR/manifest.json   a ``Manifest``: interface, target, versions, provenance, per-layer kernels, and the
                        size and sha256 of every other file

This module is the one home of that contract: the builder (``compile.build``) writes through ``write``, the
runtime, verify, profile and the commands read through ``read_manifest`` / ``verify_files`` / ``read_params``.
The C++ loader (``targets/native/bisr_native.cc``) mirrors ``read_manifest`` and ``verify_files``; a change
here is a change there. Needs numpy only (no TVM, no ONNX), so a deployed runtime ships without the compiler.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BisrError
from .fileio import file_sha256

FORMAT_NAME = "bisr-deploy-artifact"
FORMAT_VERSION = 1
LIBRARY = "model.so"
PARAMS = "params.npz"
MANIFEST = "manifest.json"
# The parameters of one compiled BiSRConv kernel, in the order the kernel takes them after X; in the
# artifact they are named ``<layer name>.<parameter>`` (``LayerRecord.param_names``).
BISRCONV_PARAMS = ("redist_scale", "redist_bias", "wwords", "wmask", "table",
                   "weight_scale", "rprelu_bias_in", "rprelu_slope", "rprelu_bias_out")


@dataclass(frozen=True)
class TensorRecord:
    """One graph input or the output: name, static shape (batch first), dtype (always float32)."""

    name: str
    shape: list[int]
    dtype: str = "float32"


@dataclass(frozen=True)
class TargetRecord:
    """What the code was built for: arch (target name), cpu, LLVM triple, the TVM target dict, and the CPU
    features (Linux flag names) the code may use."""

    arch: str
    cpu: str
    triple: str
    tvm_target: dict
    required_cpu_features: list[str]


@dataclass(frozen=True)
class LayerRecord:
    """One kernel of the library. ``kind``: ``bisrconv`` (one BiSRConv node, ``name`` = ONNX node = PyTorch
    module path; ``function`` runs it alone), ``bisrconv_fused`` (several, ``members``), ``conv2d`` (float),
    ``upsample2x``. ``shape``: the input [N, C, H, W]. The other fields belong to some kinds only (None: absent)."""

    name: str
    kind: str
    function: str
    shape: list[int]
    kernel: list[int] | None = None
    pads: list[int] | None = None
    group: int | None = None  # bisrconv, bisrconv_fused
    members: list[str] | None = None  # bisrconv_fused: the BiSRConv nodes it computes, in order
    combine: str | None = None  # bisrconv_fused: bitserial.Fusion fields
    rprelu: bool | None = None
    split_input: bool | None = None
    residual: bool | None = None
    layer_norm: bool | None = None  # bisrconv_fused: computes the LayerNorm of its input first
    out_channels: int | None = None  # conv2d
    groups: int | None = None  # conv2d

    @property
    def param_names(self) -> list[str]:
        """A ``bisrconv`` layer's parameters, in its kernel's argument order after X (names in ``Manifest.params``)."""
        if self.kind != "bisrconv":
            raise BisrError(f"layer {self.name} is a {self.kind}, not a single BiSRConv kernel")
        return [f"{self.name}.{param}" for param in BISRCONV_PARAMS]

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class FileRecord:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest.json (see module docstring). ``files`` is empty until ``write`` fills it."""

    mode: str  # "sim" (inputs measurement and mask) or "real" (measurement only)
    inputs: list[TensorRecord]
    output: TensorRecord
    target: TargetRecord
    versions: dict[str, str]
    source: dict[str, str]  # provenance: onnx_sha256, source file or checkpoint and its sha256
    params: list[str]
    layers: list[LayerRecord]
    files: dict[str, FileRecord] = field(default_factory=dict)

    def bisrconv_layers(self) -> list[LayerRecord]:
        """The single-BiSRConv kernels, in graph order."""
        return [layer for layer in self.layers if layer.kind == "bisrconv"]

    def layer(self, name: str) -> LayerRecord | None:
        """The ``bisrconv`` layer called ``name``; None if there is none."""
        return next((layer for layer in self.bisrconv_layers() if layer.name == name), None)

    @property
    def total_bytes(self) -> int:
        return sum(record.bytes for record in self.files.values())

    def to_json(self) -> dict:
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "mode": self.mode,
                "inputs": [asdict(t) for t in self.inputs], "output": asdict(self.output),
                "target": asdict(self.target), "versions": dict(self.versions), "source": dict(self.source),
                "params": list(self.params), "layers": [layer.to_json() for layer in self.layers],
                "files": {name: asdict(record) for name, record in self.files.items()}}

    @classmethod
    def from_json(cls, data, where: str) -> Manifest:
        """Check format, version and schema of a parsed manifest; raises ``BisrError`` naming ``where``."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise BisrError(f"{where}: not a {FORMAT_NAME} manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise BisrError(f"{where}: artifact format version {data.get('format_version')!r} is not supported "
                            f"(expected {FORMAT_VERSION})")
        for key in ("inputs", "output", "target", "files", "params", "mode"):
            if key not in data:
                raise BisrError(f"{where}: manifest lacks {key!r}")

        def record(kind, value):
            names = {f.name for f in fields(kind)}
            try:
                return kind(**{k: v for k, v in value.items() if k in names})
            except (AttributeError, TypeError) as exc:
                raise BisrError(f"{where}: malformed {kind.__name__} entry ({exc})") from exc

        return cls(mode=data["mode"], inputs=[record(TensorRecord, t) for t in data["inputs"]],
                   output=record(TensorRecord, data["output"]), target=record(TargetRecord, data["target"]),
                   versions=data.get("versions", {}), source=data.get("source", {}), params=list(data["params"]),
                   layers=[record(LayerRecord, layer) for layer in data.get("layers", [])],
                   files={name: record(FileRecord, r) for name, r in data["files"].items()})


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """The parsed, format-checked manifest of the artifact in ``directory``. Raises ``BisrError``."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise BisrError(f"{directory}: not a directory (an artifact is a directory made by `bisr-deploy compile`)")
    if not path.is_file():
        raise BisrError(f"{directory}: no {MANIFEST}; not a bisr-deploy artifact")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BisrError(f"{path}: unreadable or corrupt manifest ({exc.__class__.__name__})") from exc
    return Manifest.from_json(data, str(path))


def verify_files(directory: str | os.PathLike, manifest: Manifest) -> None:
    """Every listed file exists with the recorded size and sha256. Raises ``BisrError``."""
    directory = Path(directory)
    for name in (LIBRARY, PARAMS):
        if name not in manifest.files:
            raise BisrError(f"{directory}: manifest does not list {name}")
    for name, record in manifest.files.items():
        path = directory / name
        if os.path.basename(name) != name or not path.is_file():
            raise BisrError(f"{directory}: missing artifact file {name}")
        size = path.stat().st_size
        if size != record.bytes:
            raise BisrError(f"{path}: {size} bytes, the manifest says {record.bytes} (truncated or replaced)")
        if file_sha256(path) != record.sha256:
            raise BisrError(f"{path}: sha256 does not match the manifest (the file was modified)")


def read_params(directory: str | os.PathLike, manifest: Manifest) -> list[np.ndarray]:
    """The weights of ``params.npz`` in ``manifest.params`` order (no pickles). Raises ``BisrError``."""
    path = Path(directory) / PARAMS
    try:
        with np.load(path, allow_pickle=False) as npz:
            return [npz[f"p{i:04d}"] for i in range(len(manifest.params))]
    except (OSError, KeyError, ValueError) as exc:
        raise BisrError(f"{path}: cannot read the parameters ({exc})") from exc


def check_writable(output: str | os.PathLike) -> None:
    """Refuse (``BisrError``) an ``output`` that exists and is not an artifact, or whose parent cannot be
    made; checked before a long build."""
    output = Path(output)
    if output.exists() and not (output / MANIFEST).is_file():
        raise BisrError(f"{output} exists and is not a bisr-deploy artifact; refusing to overwrite it")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BisrError(f"cannot write {output}: {exc.strerror} ({output.parent})") from exc


def write(output: str | os.PathLike, manifest: Manifest, write_library: Callable[[Path], None],
          params: list[np.ndarray]) -> Manifest:
    """Write the artifact directory ``output`` atomically: ``write_library(path)`` writes ``model.so``, then
    the params and the manifest (with ``files`` filled in) go beside it in a temporary sibling, which is
    renamed into place (an older artifact there is replaced; a failure leaves nothing). Returns the manifest."""
    output = Path(output)
    check_writable(output)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        write_library(tmp / LIBRARY)
        with open(tmp / PARAMS, "wb") as fh:
            np.savez(fh, **{f"p{i:04d}": array for i, array in enumerate(params)})
        files = {name: FileRecord(sha256=file_sha256(tmp / name), bytes=(tmp / name).stat().st_size)
                 for name in (LIBRARY, PARAMS)}
        manifest = replace(manifest, files=files)
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
        if output.exists():  # replacing an older artifact: move it aside first, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
            os.replace(output, old / "artifact")
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
