"""Read the tensors out of a zip-format torch file without executing any pickled code.

The authors' real-data checkpoint is a pickled whole ``nn.Module`` whose classes exist nowhere, so
``torch.load(weights_only=True)`` refuses it and a plain ``torch.load`` cannot import it. This reader walks
the pickle with an allow-list: torch's tensor-rebuild records become tensors built here from the raw
storage bytes, ``torch.nn.modules.*`` / unknown ``architecture.*`` classes and ``OrderedDict`` become inert
records of their state, and any other global (``os.system``, ``builtins.eval``, ...) is refused before
anything is called. No object's ``__reduce__``, ``__setstate__`` or constructor from the file ever runs.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import torch

from .errors import BisrError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# Module prefixes whose classes are replaced by inert state records.
_INERT_MODULE_PREFIXES = ("torch.nn.modules.", "architecture.", "__main__")


class InertObject:
    """Stand-in for an instance of a pickled class: keeps the state that BUILD hands it, runs nothing else."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate)
            state = state[0] or {}
        self.state = state if isinstance(state, dict) else {}


def _inert_class(qualname: str) -> type:
    """A fresh subclass of ``InertObject`` standing in for the pickled class ``qualname``."""
    return type("Inert", (InertObject,), {"qualname": qualname})


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """The tensor view that the record describes, copied; refused if it reaches outside its storage or has more
    elements than the storage (a broadcast view that would allocate far more than the file holds)."""
    if not isinstance(storage, torch.Tensor):
        raise BisrError("refusing to load: a tensor record has no storage")
    try:
        size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    except (TypeError, ValueError) as exc:
        raise BisrError("checkpoint is corrupt: a tensor record has a malformed size or stride") from exc
    numel = 1
    for dim in size:
        numel *= dim
    last = offset + sum((d - 1) * s for d, s in zip(size, stride)) if numel else offset
    if (len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0 or numel > storage.numel()
            or (numel and last >= storage.numel())):
        raise BisrError(f"checkpoint is corrupt: a tensor of size {size} (stride {stride}, offset {offset}) does not "
                        f"fit its storage of {storage.numel():,} elements")
    return torch.as_strided(storage, size, stride, offset).clone()


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module in ("__builtin__", "builtins") and name == "set":
            return set
        if module.startswith(_INERT_MODULE_PREFIXES) or module == "architecture":
            return _inert_class(f"{module}.{name}")
        raise BisrError(f"refusing to load: the checkpoint's pickle references {module}.{name}, which could run code")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise BisrError(f"refusing to load: unexpected persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise BisrError("refusing to load: a storage record names no known tensor type")
        itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
        try:
            info = self.archive.getinfo(f"{self.prefix}data/{key}")
        except KeyError as exc:
            raise BisrError(f"checkpoint is truncated or corrupt: storage {key} is missing") from exc
        if numel < 0 or info.file_size < numel * itemsize:
            raise BisrError(f"checkpoint is truncated or corrupt: storage {key} holds {info.file_size} bytes, "
                            f"needs {numel * itemsize}")
        raw = self.archive.read(info)
        if len(raw) < numel * itemsize:
            raise BisrError(f"checkpoint is truncated or corrupt: storage {key} holds {len(raw)} bytes, needs {numel * itemsize}")
        buf = np.frombuffer(raw[: numel * itemsize], dtype=np.uint8).copy()
        return torch.from_numpy(buf).view(storage_type.dtype)


def _load_pickle(archive: zipfile.ZipFile):
    names = archive.namelist()
    pkl = [n for n in names if n.endswith("data.pkl")]
    if len(pkl) != 1:
        raise BisrError("not a torch checkpoint: no single data.pkl inside the zip archive")
    prefix = pkl[0][: -len("data.pkl")]
    with archive.open(pkl[0]) as fh:
        try:
            return _RestrictedUnpickler(fh, archive, prefix).load()
        except BisrError:
            raise
        except Exception as exc:  # malformed pickle stream
            raise BisrError(f"checkpoint is truncated or corrupt: {exc.__class__.__name__}: {exc}") from exc


def _collect(obj, prefix: str, out: dict) -> None:
    """Gather parameters and buffers of an inert module tree into ``out`` under dotted names."""
    state = getattr(obj, "state", {})
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if isinstance(tensor, torch.Tensor):
                out[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", out)


def read_tensors(path: str) -> "OrderedDict[str, torch.Tensor]":
    """All named tensors of a zip-format torch file: a state dict, or a pickled module's parameters and buffers."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BisrError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    with archive:
        try:
            obj = _load_pickle(archive)
        except BisrError as exc:
            raise BisrError(f"{path}: {exc}") from exc
    if isinstance(obj, dict):
        tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
        if len(tensors) != len(obj):
            raise BisrError(f"{path}: the state dict holds entries that are not tensors")
        return tensors
    if isinstance(obj, InertObject):
        tensors = OrderedDict()
        _collect(obj, "", tensors)
        return tensors
    raise BisrError(f"{path}: the checkpoint holds neither a state dict nor a module")
