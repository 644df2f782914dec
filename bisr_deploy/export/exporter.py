"""``export_onnx`` and ``save_onnx``: a checkpoint -> one static ONNX model with the BiSRConv custom ops."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import helper

from .. import __version__, bisrconv_op
from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import BisrError
from ..fileio import atomic_output
from ..model import BiSRNet
from ..provenance import onnx_metadata
from ..snapshot import check_scene_size
from .clean import annotate_shapes, inference_problems
from .graph import build_graph

IR_VERSION = 10


def _as_model(checkpoint, mode: str | None) -> tuple[BiSRNet, dict]:
    if isinstance(checkpoint, BiSRNet):
        if mode is not None and mode != checkpoint.mode:
            raise BisrError(f"a {checkpoint.mode}-mode model cannot be exported in {mode} mode")
        return checkpoint, {}
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, mode)
    if mode is not None and mode != ckpt.config.mode:
        raise BisrError(f"a {ckpt.config.mode}-mode checkpoint cannot be exported in {mode} mode")
    return ckpt.build_model(), ckpt.provenance


def export_onnx(checkpoint: str | os.PathLike | Checkpoint | BiSRNet | None = None, height: int = 256,
                width: int = 256, mode: str | None = None) -> onnx.ModelProto:
    """Export ``checkpoint`` (a path or name, ``None`` = the default checkpoint, a loaded ``Checkpoint`` or a ``BiSRNet``)
    for H x W scenes. ``mode`` overrides an authors' file's inferred input mode. Raises ``BisrError``."""
    check_scene_size(height, width)
    model, provenance = _as_model(checkpoint, mode)
    graph = build_graph(model, height, width)
    onnx_model = helper.make_model(
        graph,
        opset_imports=bisrconv_op.opset_imports(),
        functions=[bisrconv_op.function()],
        ir_version=IR_VERSION,
        producer_name="bisr-deploy",
        producer_version=__version__,
        doc_string=f"BiSRNet {model.mode}-mode reconstruction, {height} x {width}, "
                   f"{bisrconv_op.DOMAIN} {bisrconv_op.OP_TYPE} v{bisrconv_op.DOMAIN_VERSION}",
    )
    meta = {"bisr.mode": model.mode, "bisr.height": str(height), "bisr.width": str(width),
            "bisr.bands": str(model.n_bands), "bisr.step": "2"}
    meta.update(onnx_metadata(provenance))
    helper.set_model_props(onnx_model, meta)
    onnx_model = annotate_shapes(onnx_model)
    problems = inference_problems(onnx_model)
    if problems:  # a bug in the graph builder, not a user error
        raise AssertionError("exported graph is not inference-clean: " + "; ".join(problems[:5]))
    return onnx_model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write ``model`` to ``path`` atomically (no partial file on failure); return the file size in bytes."""
    path = Path(path)
    if path.is_dir():
        raise BisrError(f"cannot write {path}: it is a directory")
    try:
        with atomic_output(path) as tmp:
            onnx.save(model, tmp)
    except OSError as exc:
        raise BisrError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path.stat().st_size
