"""Where a model's weights came from: the record carried from checkpoint to ONNX to artifact, and verify's check.

The chain (every key is written here and read here):

* a ``Checkpoint``'s ``provenance`` dict (an authors' file: ``source``, ``file``, ``sha256``, ``reader``; a
  trained or converted checkpoint: what ``train`` or ``convert`` recorded, the source file's ``sha256`` kept);
* the exported ONNX model's ``metadata_props`` ``bisr.source.<key>`` (``onnx_metadata``);
* the artifact manifest's ``source`` record (``artifact_source``): ``onnx_sha256`` of the compiled ONNX bytes,
  the origin the compiler was given (``checkpoint`` + ``checkpoint_sha256``, or ``file`` + ``sha256`` of an
  ONNX file) and the ONNX model's ``bisr.source.*`` entries.

``check_same_weights`` is how ``verify`` refuses a checkpoint other than the artifact's. Torch-free.
"""

from __future__ import annotations

import os

from .errors import BisrError
from .fileio import file_sha256

ONNX_PREFIX = "bisr.source."


def onnx_metadata(provenance: dict) -> dict[str, str]:
    """A checkpoint's provenance as ONNX ``metadata_props`` entries."""
    return {f"{ONNX_PREFIX}{key}": str(value) for key, value in provenance.items()}


def checkpoint_origin(path: str | os.PathLike) -> dict[str, str]:
    """The origin of an artifact compiled from the checkpoint file ``path``."""
    return {"checkpoint": os.path.basename(str(path)), "checkpoint_sha256": file_sha256(path)}


def onnx_file_origin(path: str | os.PathLike) -> dict[str, str]:
    """The origin of an artifact compiled from the exported ONNX file ``path``."""
    return {"file": os.path.basename(str(path)), "sha256": file_sha256(path)}


def artifact_source(onnx_sha256: str, onnx_metadata_props: dict[str, str], origin: dict | None) -> dict[str, str]:
    """The manifest's ``source`` record: the compiled ONNX bytes' sha256, ``origin`` (``checkpoint_origin`` or
    ``onnx_file_origin``; None for a model built in memory) and the model's ``bisr.source.*`` metadata."""
    return {"onnx_sha256": onnx_sha256, **(origin or {}),
            **{k: v for k, v in onnx_metadata_props.items() if k.startswith(ONNX_PREFIX)}}


def check_same_weights(source: dict, checkpoint_file: str | os.PathLike, checkpoint_provenance: dict) -> None:
    """Raise ``BisrError`` unless the checkpoint (its file, and its provenance) is the one ``source`` (a manifest's
    source record) names, when it names one: the sha256 recorded is that of the checkpoint file the artifact was
    compiled from, else that of the checkpoint an exported ONNX file came from; either may be the checkpoint's own
    file or the file it was converted from (an authors' .pth behind a named checkpoint)."""
    recorded = source.get("checkpoint_sha256") or source.get(f"{ONNX_PREFIX}sha256")
    accepted = {file_sha256(checkpoint_file), checkpoint_provenance.get("sha256")}
    if recorded and recorded not in accepted:
        raise BisrError(f"the artifact was compiled from another checkpoint (sha256 {recorded[:12]}...); "
                        "give that one with --checkpoint")
