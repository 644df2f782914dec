"""Array files in and out: .npy, .npz, .mat (v5 via scipy, v7.3 via h5py), .h5; atomic writes.

MATLAB v7.3/HDF5 stores arrays transposed (column-major); ``load_array`` transposes them back so that a
v7.3 file and a v5 file of the same MATLAB variable give the same numpy array.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import BisrError

ARRAY_SUFFIXES = (".npy", ".npz", ".mat", ".h5", ".hdf5")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on failure remove it."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise BisrError(f"cannot write {path}: directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=directory)
    except OSError as exc:
        raise BisrError(f"cannot write {path}: {exc.strerror}") from exc
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        if os.path.isfile(tmp):
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pick_key(path: str, keys: list[str], key: str | None) -> str:
    if key is not None:
        if key not in keys:
            raise BisrError(f"{path}: no variable {key!r}; it holds {', '.join(sorted(keys)) or 'nothing'}")
        return key
    if len(keys) == 1:
        return keys[0]
    raise BisrError(f"{path}: holds several variables ({', '.join(sorted(keys))}); choose one with --key")


def _load_hdf5(path: str, key: str | None, matlab: bool) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            keys = [k for k, v in fh.items() if isinstance(v, h5py.Dataset) and not k.startswith("#")]
            data = np.asarray(fh[_pick_key(path, keys, key)])
    except OSError as exc:
        raise BisrError(f"{path}: not a readable HDF5/MATLAB v7.3 file ({exc})") from exc
    return data.T if matlab else data


def load_array(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Read one numeric array from .npy/.npz/.mat/.h5. ``key`` picks the variable where there are several."""
    path = str(path)
    suffix = Path(path).suffix.lower()
    if not os.path.isfile(path):
        raise BisrError(f"{path}: no such file")
    if suffix not in ARRAY_SUFFIXES:
        raise BisrError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(ARRAY_SUFFIXES)}")
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                data = npz[_pick_key(path, list(npz.files), key)]
        elif suffix == ".mat":
            import scipy.io

            try:
                mat = scipy.io.loadmat(path)
            except NotImplementedError:  # MATLAB v7.3 is HDF5
                return _load_hdf5(path, key, matlab=True)
            keys = [k for k in mat if not k.startswith("__")]
            data = mat[_pick_key(path, keys, key)]
        else:
            data = _load_hdf5(path, key, matlab=False)
    except BisrError:
        raise
    except Exception as exc:
        raise BisrError(f"{path}: cannot read ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'})") from exc
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise BisrError(f"{path}: variable is not a real numeric array (dtype {data.dtype})")
    return data


def save_array(path: str | os.PathLike, array: np.ndarray, key: str = "cube") -> None:
    """Write ``array`` atomically as .npy, or .mat (v5, variable ``key``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".npy", ".mat"):
        raise BisrError(f"{path}: output must be .npy or .mat")
    with atomic_output(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, array)
        else:
            import scipy.io

            scipy.io.savemat(tmp, {key: array})
