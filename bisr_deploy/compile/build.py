"""Build an artifact directory from an ONNX model: import, lower, compile with TVM, write atomically.

The artifact's format (files, manifest schema, all-or-nothing write, which existing outputs may be replaced)
is ``bisr_deploy.artifact``; this module fills its records from the compiled model.
"""

from __future__ import annotations

import hashlib
import os

import onnx

from .. import __version__, artifact, progress, provenance
from ..artifact import LayerRecord, Manifest, TargetRecord, TensorRecord
from ..errors import BisrError
from .onnx_import import ImportedModel, import_onnx
from .pipeline import cpu_pipeline
from .targets import CompileTarget, fcompile_for, resolve_target


def compile_module(model: onnx.ModelProto, target: CompileTarget, bitserial: bool = True, schedule_float: bool = True):
    """ONNX -> (ImportedModel, TVM executable). ``bitserial=False`` keeps BiSRConv in float32 ops."""
    import tvm

    progress.stage("importing the ONNX graph into TVM")
    imported = import_onnx(model, target.schedule, bitserial=bitserial, schedule_float=schedule_float)
    progress.stage(f"compiling {len(imported.layers)} kernels and the graph for {target.triple} (TVM, the longest step)")
    try:
        executable = tvm.compile(imported.mod, target=tvm.target.Target(target.tvm_target),
                                 relax_pipeline=cpu_pipeline(target))
    except Exception as exc:
        raise BisrError(f"TVM build failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc
    return imported, executable


def _layer_records(imported: ImportedModel) -> list[LayerRecord]:
    records = []
    for layer in imported.layers:
        spec = layer.spec
        common = {"name": layer.name, "kind": layer.kind, "function": layer.func_name}
        if layer.kind == "upsample2x":
            records.append(LayerRecord(**common, shape=list(spec)))
            continue
        common.update(kernel=list(spec.kernel), pads=list(spec.pads))
        if layer.kind == "bisrconv":
            records.append(LayerRecord(**common, shape=[spec.batch, spec.channels, spec.height, spec.width],
                                       group=spec.group))
        elif layer.kind == "bisrconv_fused":
            records.append(LayerRecord(**common, shape=[spec.batch, spec.channels, spec.height, spec.width],
                                       group=spec.group, members=list(layer.members), combine=layer.fusion.combine,
                                       rprelu=layer.fusion.post, split_input=layer.fusion.split_input,
                                       residual=layer.fusion.residual, layer_norm=layer.fusion.norm))
        else:
            records.append(LayerRecord(**common, shape=[spec.batch, spec.in_channels, spec.height, spec.width],
                                       out_channels=spec.out_channels, groups=spec.groups))
    return records


def _model_metadata(model: onnx.ModelProto) -> dict:
    return {p.key: p.value for p in model.metadata_props}


def build_artifact(model: onnx.ModelProto, output: str | os.PathLike, target: CompileTarget | None = None,
                   source: dict | None = None) -> Manifest:
    """Compile ``model`` for ``target`` (default: x86 native) into the artifact directory ``output``.

    ``source``: where the model came from (``provenance.checkpoint_origin`` or ``onnx_file_origin``), recorded
    with the serialized ONNX model's sha256 and its ``bisr.source.*`` metadata (``provenance.artifact_source``). Refuses (before compiling) an output it may not replace: anything but an
    artifact with nothing but its own files. Returns the manifest.
    """
    import tvm

    target = target or resolve_target()
    output = artifact.check_artifact_output(output)
    imported, executable = compile_module(model, target)
    meta = _model_metadata(model)
    onnx_bytes = model.SerializeToString()
    manifest = Manifest(
        mode=meta.get("bisr.mode", "sim" if len(imported.input_names) == 2 else "real"),
        inputs=[TensorRecord(n, s) for n, s in zip(imported.input_names, imported.input_shapes)],
        output=TensorRecord(imported.output_name, imported.output_shape),
        target=TargetRecord(arch=target.arch, cpu=target.cpu, triple=target.triple, tvm_target=target.tvm_target,
                            required_cpu_features=list(target.required_features)),
        versions={"bisr_deploy": __version__, "tvm": tvm.__version__, "onnx": onnx.__version__},
        source=provenance.artifact_source(hashlib.sha256(onnx_bytes).hexdigest(), meta, source),
        params=[name for name, _ in imported.params],
        layers=_layer_records(imported),
    )

    def write_library(path):
        progress.stage(f"linking {path.name} and writing {output}")
        executable.export_library(str(path), fcompile=fcompile_for(target))  # cross linker for ARM

    return artifact.write(output, manifest, write_library, [array for _, array in imported.params], onnx_bytes)
