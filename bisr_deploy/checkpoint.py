"""Checkpoints: the project's own format, and import of the authors' two released files.

Project format: one ``.safetensors`` file. Tensors are the model's state dict; the header metadata holds
``format`` = ``bisr-deploy-checkpoint``, ``format_version`` = ``1`` and ``config`` = a JSON object with
``architecture`` (``BiSRNetConfig`` fields), ``training`` (free-form settings) and ``provenance``.

Authors' files (detected automatically): zip-format torch files holding either a plain state dict
(simulation, read with ``weights_only=True``) or a pickled whole module (real, read by
``bisr_deploy.safe_pickle`` without executing pickled code). Their mode is inferred from the file: a
simulation model uses ``fution``; the caller can override it.

Every file is checked before its tensors are used: a zip's declared member sizes against the file and the
input limit (``fileio.max_array_bytes``) and every member's CRC-32; each tensor's declared size against the
data it points to; every floating-point tensor finite (a NaN or Inf weight is refused, naming the tensor).

Named checkpoints (``shipped.NAMED_CHECKPOINTS``) are project-format files shipped as package data in ``shipped/``;
wherever a checkpoint path is taken, a name may stand instead, and ``None`` means ``DEFAULT_CHECKPOINT``
(``shipped.resolve_checkpoint``).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import BisrError
from .fileio import MAX_ARRAY_ENV, atomic_output, file_sha256, max_array_bytes
from .model import BiSRNet, BiSRNetConfig
from .safe_pickle import read_tensors
from .shipped import DEFAULT_CHECKPOINT, NAMED_CHECKPOINTS, SHIPPED_DIR, resolve_checkpoint  # noqa: F401 (re-exported)

FORMAT_NAME = "bisr-deploy-checkpoint"
FORMAT_VERSION = "1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: architecture config, state dict and free-form metadata."""

    config: BiSRNetConfig
    state_dict: dict[str, torch.Tensor]
    training: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def build_model(self) -> BiSRNet:
        """A ``BiSRNet`` in eval mode with these weights loaded strictly."""
        with torch.device("meta"):  # shapes only: a config that declares a huge network allocates nothing
            expected = BiSRNet.from_config(self.config).state_dict()
        missing = [k for k in expected if k not in self.state_dict]
        unexpected = [k for k in self.state_dict if k not in expected]
        wrong = [k for k in expected if k in self.state_dict and self.state_dict[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
            if wrong:
                k = wrong[0]
                parts.append(f"{len(wrong)} of wrong shape (e.g. {k}: {tuple(self.state_dict[k].shape)}, "
                             f"expected {tuple(expected[k].shape)})")
            raise BisrError(f"checkpoint does not fit the BiSRNet architecture in its config: tensors {'; '.join(parts)}")
        model = BiSRNet.from_config(self.config)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> None:
    """Write ``ckpt`` in the project format, atomically."""
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(
            {"architecture": ckpt.config.to_dict(), "training": ckpt.training, "provenance": ckpt.provenance},
            sort_keys=True,
        ),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in ckpt.state_dict.items()}
    with atomic_output(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def _load_project(path: str) -> Checkpoint:
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise BisrError(f"{path}: corrupt or truncated safetensors checkpoint ({exc})") from exc
    if meta.get("format") != FORMAT_NAME:
        raise BisrError(f"{path}: a safetensors file, but not a bisr-deploy checkpoint (no '{FORMAT_NAME}' metadata)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BisrError(f"{path}: checkpoint format version {meta.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    check_tensors(path, tensors)
    try:
        config = json.loads(meta["config"])
        arch = BiSRNetConfig(**config["architecture"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise BisrError(f"{path}: the checkpoint's config is malformed ({exc})") from exc
    return Checkpoint(arch.validate(), tensors, config.get("training", {}), config.get("provenance", {}))


def _load_authors(path: str, mode: str | None) -> Checkpoint:
    try:
        tensors = dict(torch.load(path, map_location="cpu", weights_only=True))
        reader = "torch.load(weights_only=True)"
    except BisrError:
        raise
    except Exception:
        tensors = dict(read_tensors(path))
        reader = "restricted reader (pickled module, no code executed)"
    check_tensors(path, tensors)
    if not {"conv_in.weight", "conv_out.weight"} <= set(tensors) or not any(k.startswith("body.") for k in tensors):
        raise BisrError(f"{path}: a torch file, but not a BiSRNet checkpoint (no conv_in/body/conv_out tensors)")
    for name in ("conv_in.weight", "conv_out.weight"):
        if tensors[name].dim() != 4:
            raise BisrError(f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}; a convolution weight is 4-D")
    n_feat, in_channels = tensors["conv_in.weight"].shape[:2]
    n_bodies = len({k.split(".")[1] for k in tensors if k.startswith("body.")})
    if mode is None:
        # The authors' real-data model is the pickled-module file; its forward never uses ``fution``.
        mode = "real" if reader.startswith("restricted") else "sim"
    config = BiSRNetConfig(in_channels=int(in_channels), out_channels=int(tensors["conv_out.weight"].shape[0]),
                           n_feat=int(n_feat), stage=n_bodies, mode=mode)
    provenance = {"source": "authors' release (caiyuanhao1998/BiSCI)", "file": os.path.basename(path),
                  "sha256": file_sha256(path), "reader": reader}
    return Checkpoint(config.validate(), tensors, {}, provenance)


def _check_zip(path: str) -> None:
    """Refuse a zip whose members declare more bytes than the input limit allows, or whose data does not match
    its CRC-32 (a damaged file). Raises ``BisrError``."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            declared = sum(info.file_size for info in infos)
            if declared > max_array_bytes():
                raise BisrError(f"{path}: the archive declares {declared:,} bytes of content, over the input limit "
                                f"of {max_array_bytes():,} (raise it with {MAX_ARRAY_ENV})")
            stored = [i for i in infos if i.compress_type == zipfile.ZIP_STORED and i.file_size > os.path.getsize(path)]
            if stored:
                raise BisrError(f"{path}: member {stored[0].filename} is larger than the file (truncated or corrupt)")
            damaged = archive.testzip()
    except BisrError:
        raise
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, NotImplementedError (compression), OSError ...
        raise BisrError(f"{path}: truncated or corrupt torch checkpoint ({exc.__class__.__name__})") from exc
    if damaged is not None:
        raise BisrError(f"{path}: damaged checkpoint: the CRC-32 of {damaged} does not match its data")


def check_tensors(path: str, tensors: dict) -> None:
    """Refuse tensors that claim more elements than their data holds, and non-finite floating-point values,
    naming the tensor. Raises ``BisrError``."""
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise BisrError(f"{path}: entry {name!r} is not a tensor")
        held = tensor.untyped_storage().nbytes()
        if tensor.numel() * tensor.element_size() > held:
            raise BisrError(f"{path}: tensor {name} declares {tuple(tensor.shape)} = {tensor.numel():,} elements, "
                            f"more than its {held:,} bytes of data hold")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BisrError(f"{path}: tensor {name} holds NaN or Inf values")

def load_checkpoint(path: str | os.PathLike | None = None, mode: str | None = None) -> Checkpoint:
    """Load a named checkpoint, a project checkpoint or an authors' ``.pth`` (``resolve_checkpoint``).

    ``mode`` overrides the input mode inferred for an authors' file. Raises ``BisrError`` with a one-line
    message for missing, truncated, corrupt, malicious or foreign files.
    """
    path = str(resolve_checkpoint(path))
    if not os.path.isfile(path):
        raise BisrError(f"{path}: no such checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise BisrError(f"{path}: truncated or corrupt torch checkpoint (broken zip archive)")
        _check_zip(path)
        return _load_authors(path, mode)
    if len(head) == 9 and head[8:9] == b"{":
        ckpt = _load_project(path)
        if mode is not None and mode != ckpt.config.mode:
            raise BisrError(f"{path}: a {ckpt.config.mode}-mode checkpoint cannot run in {mode} mode")
        return ckpt
    raise BisrError(f"{path}: not a checkpoint (neither a bisr-deploy .safetensors file nor a zip-format torch file)")
