"""Build an artifact directory from an ONNX model: import, lower, compile with TVM, write atomically.

Artifact (format ``bisr-deploy-artifact`` version 1, read by ``bisr_deploy.runtime.load``):

    DIR/model.so        the Relax VM executable and every kernel, one shared library (``export_library``)
    DIR/params.npz      the weights, in the order the VM's ``main`` takes them after the graph inputs
    DIR/model.onnx      the ONNX model it was compiled from (``bisr-deploy estimate`` re-lowers its kernels)
    DIR/manifest.json   interface, target, versions, source hash, per-layer kernels, sha256 of every file

The directory is built in a temporary sibling and renamed into place (``fileio.atomic_directory``), so a
failed build leaves nothing; an existing output is replaced only when it is an artifact holding nothing but its
own files (``runtime.is_artifact``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx

from .. import __version__
from ..errors import BisrError
from ..fileio import atomic_directory, check_output, file_sha256
from ..runtime import FORMAT_NAME, FORMAT_VERSION, LIBRARY, MANIFEST, PARAMS, SOURCE_MODEL, is_artifact
from .onnx_import import ImportedModel, import_onnx
from .pipeline import cpu_pipeline
from .targets import CompileTarget, fcompile_for, resolve_target


def compile_module(model: onnx.ModelProto, target: CompileTarget, bitserial: bool = True, schedule_float: bool = True):
    """ONNX -> (ImportedModel, TVM executable). ``bitserial=False`` keeps BiSRConv in float32 ops."""
    import tvm

    imported = import_onnx(model, target.lanes, bitserial=bitserial, schedule_float=schedule_float)
    try:
        executable = tvm.compile(imported.mod, target=tvm.target.Target(target.tvm_target),
                                 relax_pipeline=cpu_pipeline(target))
    except Exception as exc:
        raise BisrError(f"TVM build failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc
    return imported, executable


def _layer_records(imported: ImportedModel) -> list[dict]:
    records = []
    for layer in imported.layers:
        spec = layer.spec
        if layer.kind == "upsample2x":
            records.append({"name": layer.name, "kind": layer.kind, "function": layer.func_name, "shape": list(spec)})
            continue
        record = {"name": layer.name, "kind": layer.kind, "function": layer.func_name,
                  "kernel": list(spec.kernel), "pads": list(spec.pads)}
        if layer.kind == "bisrconv":
            record.update(shape=[spec.batch, spec.channels, spec.height, spec.width], group=spec.group)
        elif layer.kind == "bisrconv_fused":
            record.update(shape=[spec.batch, spec.channels, spec.height, spec.width], group=spec.group,
                          members=list(layer.members), combine=layer.fusion.combine, rprelu=layer.fusion.post,
                          split_input=layer.fusion.split_input, residual=layer.fusion.residual)
        else:
            record.update(shape=[spec.batch, spec.in_channels, spec.height, spec.width], out_channels=spec.out_channels,
                          groups=spec.groups)
        records.append(record)
    return records


def _model_metadata(model: onnx.ModelProto) -> dict:
    return {p.key: p.value for p in model.metadata_props}


def build_artifact(model: onnx.ModelProto, output: str | os.PathLike, target: CompileTarget | None = None,
                   source: dict | None = None) -> dict:
    """Compile ``model`` for ``target`` (default: x86 native) into the artifact directory ``output``.

    ``source``: provenance to record (e.g. ``{"file": ..., "sha256": ...}``); the sha256 of the serialized
    ONNX model is always recorded. Refuses (before compiling) an output it may not replace: anything but an
    artifact with nothing but its own files. Returns the manifest.
    """
    import tvm

    target = target or resolve_target()
    output = check_artifact_output(output)
    imported, executable = compile_module(model, target)
    meta = _model_metadata(model)
    onnx_bytes = model.SerializeToString()
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "mode": meta.get("bisr.mode", "sim" if len(imported.input_names) == 2 else "real"),
        "inputs": [{"name": n, "shape": s, "dtype": "float32"} for n, s in zip(imported.input_names, imported.input_shapes)],
        "output": {"name": imported.output_name, "shape": imported.output_shape, "dtype": "float32"},
        "target": {"arch": target.arch, "cpu": target.cpu, "triple": target.triple, "tvm_target": target.tvm_target,
                   "required_cpu_features": list(target.required_features)},
        "versions": {"bisr_deploy": __version__, "tvm": tvm.__version__, "onnx": onnx.__version__},
        "source": {"onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(), **(source or {}),
                   **{k: v for k, v in meta.items() if k.startswith("bisr.source.")}},
        "params": [name for name, _ in imported.params],
        "layers": _layer_records(imported),
    }
    with atomic_directory(output, is_artifact) as tmp:
        executable.export_library(str(tmp / LIBRARY), fcompile=fcompile_for(target))  # cross linker for ARM
        with open(tmp / PARAMS, "wb") as fh:
            np.savez(fh, **{f"p{i:04d}": array for i, (_, array) in enumerate(imported.params)})
        (tmp / SOURCE_MODEL).write_bytes(onnx_bytes)
        manifest["files"] = {name: {"sha256": file_sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
                             for name in (LIBRARY, PARAMS, SOURCE_MODEL)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def check_artifact_output(output: str | os.PathLike, inputs: tuple = ()) -> Path:
    """``output`` as a Path if an artifact may be written there: its parent exists and it is absent or an
    artifact with nothing but its own files (``runtime.is_artifact``). Raises ``BisrError``."""
    output = check_output(output, "--output", inputs=inputs, directory=True)
    if output.exists() and not is_artifact(output):
        raise BisrError(f"--output {output} exists and is not a bisr-deploy artifact holding only its own files; "
                        "refusing to replace it: remove it yourself or choose another path")
    return output
