"""The compiled-artifact format: its name and version, the manifest schema as typed records, write, read, verify.

An artifact is a directory (format ``bisr-deploy-artifact``, version 1):

    DIR/model.so        the Relax VM executable and every kernel, one shared library
    DIR/params.npz      the weights p0000, p0001, ... in the order of ``Manifest.params`` (the order the VM's
                        ``main`` takes them after the graph inputs)
    DIR/model.onnx      the ONNX model it was compiled from (``bisr-deploy estimate`` lowers its kernels again)
    DIR/manifest.json   a ``Manifest``: interface, target, versions, provenance, per-layer kernels, and the
                        size and sha256 of every other file

This module is the one home of that contract: the builder (``compile.build``) writes through ``write``, the
runtime, verify, profile and the commands read through ``read_manifest`` / ``verified_copy`` / ``read_params``.
An existing directory is replaced only when ``is_artifact`` (a valid manifest and nothing but its files).
The C++ loader (``targets/native/bisr_native.cc``) mirrors ``read_manifest`` and the file checks; a change
here is a change there. Needs numpy only (no TVM, no ONNX), so a deployed runtime ships without the compiler.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BisrError
from .fileio import atomic_directory, check_output, checked_copy, file_sha256

FORMAT_NAME = "bisr-deploy-artifact"
FORMAT_VERSION = 1
LIBRARY = "model.so"
PARAMS = "params.npz"
MANIFEST = "manifest.json"
SOURCE_MODEL = "model.onnx"  # the ONNX model compiled, for `bisr-deploy estimate`; older artifacts lack it
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
    source: dict[str, str]  # where the weights came from: provenance.artifact_source
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
        _check_types(where, data)

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


def _is_shape(value, rank: int) -> bool:
    return (isinstance(value, list) and len(value) == rank
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value))


def _check_types(where: str, manifest: dict) -> None:
    """The manifest's fields have the types and shapes that the loaders rely on. Raises ``BisrError``."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise BisrError(f"{where}: malformed manifest: {what}")

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


def is_artifact(directory: str | os.PathLike) -> bool:
    """True if ``directory`` holds a valid artifact manifest and nothing but the manifest and the files it
    lists: the only kind of existing directory that ``bisr-deploy compile --output`` replaces."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
        return {entry.name for entry in directory.iterdir()} == {MANIFEST, *manifest.files}
    except (BisrError, OSError):
        return False


def verified_copy(directory: str | os.PathLike, manifest: Manifest, private: Path) -> None:
    """Copy every file the manifest lists into ``private``, checking size and sha256 of the bytes copied
    (``fileio.checked_copy``).

    The copies, not the originals, are what a loader may then read: no file swapped in the artifact directory
    after the check can be loaded. Raises ``BisrError``."""
    directory = Path(directory)
    for name in (LIBRARY, PARAMS):
        if name not in manifest.files:
            raise BisrError(f"{directory}: manifest does not list {name}")
    for name, record in manifest.files.items():
        path = directory / name
        if os.path.basename(name) != name or name in (".", "..", MANIFEST) or not path.is_file():
            raise BisrError(f"{directory}: missing artifact file {name}")
        checked_copy(path, private / name, record.bytes, record.sha256)


def read_params(directory: str | os.PathLike, manifest: Manifest, where: str | os.PathLike) -> list[np.ndarray]:
    """The weights of ``directory``'s ``params.npz`` in ``manifest.params`` order (no pickles); ``where`` names
    the file in messages (the artifact's, when ``directory`` holds a verified copy). Raises ``BisrError``."""
    try:
        with np.load(Path(directory) / PARAMS, allow_pickle=False) as npz:
            names = [f"p{i:04d}" for i in range(len(manifest.params))]
            if sorted(npz.files) != names:
                raise BisrError(f"{where}: holds {len(npz.files)} arrays, the manifest lists {len(names)} parameters")
            return [npz[name] for name in names]
    except BisrError:
        raise
    except Exception as exc:
        raise BisrError(f"{where}: cannot read the parameters ({exc})") from exc


def read_source_model(directory: str | os.PathLike, manifest: Manifest) -> bytes:
    """The serialized ONNX model the artifact was compiled from (``SOURCE_MODEL``), checked against the manifest's
    ``source.onnx_sha256``. Raises ``BisrError`` (older artifacts have none)."""
    path = Path(directory) / SOURCE_MODEL
    if not path.is_file() or SOURCE_MODEL not in manifest.files:
        raise BisrError(f"{directory} has no {SOURCE_MODEL} (compiled by an older bisr-deploy): compile it again")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.source.get("onnx_sha256"):
        raise BisrError(f"{path} is not the model this artifact was compiled from (sha256 differs)")
    return data


def check_artifact_output(output: str | os.PathLike, inputs: tuple = ()) -> Path:
    """``output`` as a Path if an artifact may be written there: its parent exists and it is absent or an
    artifact with nothing but its own files (``is_artifact``). Raises ``BisrError``."""
    output = check_output(output, "--output", inputs=inputs, directory=True)
    if output.exists() and not is_artifact(output):
        raise BisrError(f"--output {output} exists and is not a bisr-deploy artifact holding only its own files; "
                        "refusing to replace it: remove it yourself or choose another path")
    return output


def write(output: str | os.PathLike, manifest: Manifest, write_library: Callable[[Path], None],
          params: list[np.ndarray], source_model: bytes) -> Manifest:
    """Write the artifact directory ``output`` all-or-nothing (``fileio.atomic_directory``; an existing one is
    replaced only if ``is_artifact``): ``write_library(path)`` writes ``model.so``, then the params, the
    serialized ONNX model ``source_model`` and the manifest (with ``files`` filled in). Returns the manifest."""
    with atomic_directory(output, is_artifact) as tmp:
        tmp = Path(tmp)
        write_library(tmp / LIBRARY)
        with open(tmp / PARAMS, "wb") as fh:
            np.savez(fh, **{f"p{i:04d}": array for i, array in enumerate(params)})
        (tmp / SOURCE_MODEL).write_bytes(source_model)
        files = {name: FileRecord(sha256=file_sha256(tmp / name), bytes=(tmp / name).stat().st_size)
                 for name in (LIBRARY, PARAMS, SOURCE_MODEL)}
        manifest = replace(manifest, files=files)
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
    return manifest
