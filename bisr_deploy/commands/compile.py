"""``bisr-deploy compile``: ONNX model or checkpoint -> artifact directory (TVM, bitserial kernels)."""

from __future__ import annotations

import os

import click

from ..compile.targets import ALL_CPUS, TARGETS
from .. import progress, provenance
from ..errors import BisrError
from . import checkpoint_option


def load_model_for_compile(model_path, checkpoint_path, height, width, mode):
    """(onnx.ModelProto, source record) from an ONNX file or a checkpoint (exported at H x W)."""
    import onnx

    if model_path and checkpoint_path:
        raise BisrError("give either MODEL.onnx or --checkpoint, not both")
    if model_path:
        if not os.path.isfile(model_path):
            raise BisrError(f"{model_path}: no such file")
        try:
            model = onnx.load(model_path)
        except Exception as exc:
            raise BisrError(f"{model_path}: not a readable ONNX model ({exc.__class__.__name__})") from exc
        for name, value in (("height", height), ("width", width)):
            recorded = {p.key: p.value for p in model.metadata_props}.get(f"bisr.{name}")
            if value is not None and recorded is not None and int(recorded) != value:
                raise BisrError(f"--{name} {value} does not match the model's static {name} {recorded}")
        return model, provenance.onnx_file_origin(model_path)
    from ..checkpoint import resolve_checkpoint
    from ..export import export_onnx

    progress.stage(f"exporting the checkpoint to ONNX at {height or 256} x {width or 256}")
    model = export_onnx(checkpoint_path, height or 256, width or 256, mode)
    return model, provenance.checkpoint_origin(resolve_checkpoint(checkpoint_path))


@click.command("compile")
@click.argument("model_path", required=False, type=click.Path(dir_okay=False))
@checkpoint_option("Compile this checkpoint (exported on the fly) when no MODEL.onnx is given")
@click.option("--target", "arch", type=click.Choice(list(TARGETS)), default="x86", show_default=True,
              help="x86, arm (aarch64 Linux, NEON) or android-arm64 (needs the NDK); ARM: docs/arm.md.")
@click.option("--cpu", type=click.Choice(list(ALL_CPUS)), default="native", show_default=True,
              help="Instruction set: znver4 (AVX-512 + VPOPCNTDQ), skylake-avx512, haswell (AVX2), native; "
                   "ARM: generic (= native; ARMv8-A NEON) or dotprod (+ the dot-product extension: Cortex-A55/A76 "
                   "and later).")
@click.option("--ndk", type=click.Path(file_okay=False), default=None,
              help="Android NDK for --target android-arm64 (default: $ANDROID_NDK_HOME).")
@click.option("--height", type=int, default=None, help="Scene height for --checkpoint (default 256).")
@click.option("--width", type=int, default=None, help="Scene width for --checkpoint (default 256).")
@click.option("--mode", type=click.Choice(["sim", "real"]), default=None, help="Input mode of an authors' .pth.")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Artifact directory to create.")
def compile_command(model_path, checkpoint_path, arch, cpu, ndk, height, width, mode, output):
    """Compile BiSRNet to a native artifact (shared library + parameters + manifest)."""
    from ..artifact import check_artifact_output
    from ..compile.build import build_artifact
    from ..compile.targets import resolve_target

    check_artifact_output(output, (model_path, checkpoint_path))
    target = resolve_target(arch, cpu, ndk=ndk)
    model, source = load_model_for_compile(model_path, checkpoint_path, height, width, mode)
    manifest = build_artifact(model, output, target, source)
    n_bin = len(manifest.bisrconv_layers())
    click.echo(f"wrote {output}: {manifest.mode}-mode, input {manifest.inputs[0].shape}, "
               f"{n_bin} bitserial BiSRConvs, target {target.triple} cpu {target.tvm_target.get('mcpu', target.cpu)}, "
               f"{manifest.total_bytes / 1e6:.2f} MB")
