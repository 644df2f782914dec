"""Files in and out: array files (.npy, .npz, .mat v5 via scipy, v7.3 via h5py, .h5), output paths, atomic
writes, sha256.

Outputs. Every command checks each output path with ``check_output`` before it computes anything (existing
parent directory, the format's extension, not a directory, not one of the command's inputs) and writes it with
``atomic_output`` (files) or ``atomic_directory`` (artifact directories): the result appears whole or not at
all. Temporary siblings are named ``.<name>.bisr-tmp-<pid>-<random>``; one left behind by a killed process
(its pid no longer running) is removed by the next write to the same path. An existing output directory is
replaced only when the caller's ``replaceable`` test says the command made it (an artifact with nothing but
its own files); anything else is refused.

Inputs. ``load_array`` reads the shape and dtype that a file declares before it reads any data and refuses
arrays over ``max_array_bytes()`` (``BISR_MAX_ARRAY_MB``, default 4096 MB) or larger than the file can hold.
MATLAB v7.3/HDF5 stores arrays transposed (column-major); ``load_array`` transposes them back so that a
v7.3 file and a v5 file of the same MATLAB variable give the same numpy array.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import BisrError

ARRAY_SUFFIXES = (".npy", ".npz", ".mat", ".h5", ".hdf5")
MAX_ARRAY_ENV = "BISR_MAX_ARRAY_MB"
DEFAULT_MAX_ARRAY_MB = 4096
_TEMP_MARK = ".bisr-tmp-"


# ---- outputs ---------------------------------------------------------------------------------------------

def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(path: str | os.PathLike, what: str = "--output", suffixes: tuple[str, ...] | None = None,
                 inputs: tuple = (), directory: bool = False) -> Path:
    """Refuse (``BisrError``) an output path that cannot or must not be written, before anything is computed.

    ``suffixes``: the extensions of the formats the command writes there (``None``: any); ``inputs``: paths
    the command reads (``None`` entries ignored), which the output must not name; ``directory``: the output is
    a directory (an existing one is checked by the writer's ``replaceable`` test, see ``atomic_directory``,
    which also creates missing parent directories once the result is ready).
    """
    path = Path(path)
    full = Path(os.path.abspath(path))
    if not path.name or path.name in (".", ".."):
        raise BisrError(f"{what} {path}: not a file name")
    parent = full.parent
    if directory:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    if not parent.is_dir():
        raise BisrError(f"{what} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BisrError(f"{what} {path}: directory {parent} is not writable")
    if not directory and path.is_dir():
        raise BisrError(f"{what} {path} is a directory")
    if directory and path.exists() and not path.is_dir():
        raise BisrError(f"{what} {path} exists and is not a directory; refusing to replace it")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise BisrError(f"{what} {path}: output must be {' or '.join(suffixes)} (the format written)")
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise BisrError(f"{what} {path} names an input of this command; choose another output")
    return path


def check_output_dir(directory: str | os.PathLike, names: tuple[str, ...], inputs: tuple = (),
                     what: str = "--output-dir") -> Path:
    """``directory`` as a Path if the files ``names`` may be written into it (``check_output`` on each), or, when
    it does not exist yet, if it can be created there (``make_output_dir`` does, once the results are ready)."""
    directory = Path(directory)
    if not directory.is_dir():
        return check_output(directory, what, directory=True)
    for name in names:
        check_output(directory / name, what, inputs=inputs)
    return directory


def make_output_dir(directory: Path, what: str = "--output-dir") -> None:
    """Create ``directory`` and its parents (checked by ``check_output_dir``) unless they exist."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BisrError(f"cannot create {what} {directory}: {exc.strerror or exc}") from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Remove temporary siblings of ``path`` left by a writer that no longer runs (a crash or ``kill -9``)."""
    pattern = re.compile(re.escape(f".{path.name}{_TEMP_MARK}") + r"(\d+)-")
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            match = pattern.match(entry.name)
            if match and not _pid_alive(int(match.group(1))):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}{_TEMP_MARK}{os.getpid()}-"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on failure remove it."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise BisrError(f"cannot write {path}: directory {directory} does not exist")
    if path.is_dir():
        raise BisrError(f"cannot write {path}: it is a directory")
    _remove_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=path.suffix, dir=directory)
    except OSError as exc:
        raise BisrError(f"cannot write {path}: {exc.strerror}") from exc
    os.close(fd)
    try:
        yield tmp
        if os.path.isfile(tmp):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replaceable, what: str = "--output"):
    """Yield a fresh temporary directory beside ``path``; on success it takes ``path``'s place, on failure it
    is removed. An existing ``path`` is replaced only if ``replaceable(path)`` holds just before the swap, else
    ``BisrError``: a directory the command did not make is never deleted. Callers check it up front too, before
    the work (``artifact.check_artifact_output``)."""
    path = Path(path)
    check_output(path, what, directory=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    except OSError as exc:
        raise BisrError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            if not replaceable(path):
                raise BisrError(f"{what} {path} exists and is not a bisr-deploy artifact holding only its own files; "
                                "refusing to replace it: remove it yourself or choose another path")
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
            os.replace(path, old / "replaced")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checked_copy(source: str | os.PathLike, destination: str | os.PathLike, nbytes: int, sha256: str) -> None:
    """Copy ``source`` to ``destination``, hashing the bytes as they are copied; ``BisrError`` unless they are
    ``nbytes`` long with hex digest ``sha256``. What the copy holds is exactly what was checked."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(source, "rb") as src, open(destination, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                size += len(chunk)
                if size > nbytes:
                    break
                digest.update(chunk)
                dst.write(chunk)
    except OSError as exc:
        raise BisrError(f"{source}: cannot copy ({exc.strerror})") from exc
    if size != nbytes:
        raise BisrError(f"{source}: {'more than ' if size > nbytes else ''}{size} bytes, the manifest says {nbytes} "
                        "(truncated or replaced)")
    if digest.hexdigest() != sha256:
        raise BisrError(f"{source}: sha256 does not match the manifest (the file was modified)")


# ---- inputs ----------------------------------------------------------------------------------------------

def max_array_bytes() -> int:
    """The largest array (bytes, as stored) that ``load_array`` reads: ``BISR_MAX_ARRAY_MB`` MiB, default 4096."""
    text = os.environ.get(MAX_ARRAY_ENV, "")
    try:
        megabytes = float(text) if text else DEFAULT_MAX_ARRAY_MB
    except ValueError:
        raise BisrError(f"{MAX_ARRAY_ENV}={text!r}: not a number of megabytes") from None
    if not megabytes > 0:
        raise BisrError(f"{MAX_ARRAY_ENV}={text!r}: must be positive")
    return int(megabytes * (1 << 20))


def check_declared(path: str, shape, itemsize: int, available: int | None = None) -> None:
    """Refuse an array whose declared shape exceeds the input limit or (``available``: bytes of data the
    file holds for it, uncompressed storage only) the file itself. Raises ``BisrError``."""
    try:
        dims = [int(d) for d in shape]
    except (TypeError, ValueError):
        raise BisrError(f"{path}: declares an invalid array shape {shape!r}") from None
    if any(d < 0 for d in dims):
        raise BisrError(f"{path}: declares an invalid array shape {tuple(dims)}")
    nbytes = math.prod(dims) * int(itemsize)
    limit = max_array_bytes()
    if nbytes > limit:
        raise BisrError(f"{path}: declares a {' x '.join(map(str, dims))} array ({nbytes / 2**20:,.0f} MiB), over the "
                        f"{limit / 2**20:,.0f} MiB input limit (raise it with {MAX_ARRAY_ENV})")
    if available is not None and nbytes > available:
        raise BisrError(f"{path}: declares a {' x '.join(map(str, dims))} array of {nbytes:,} bytes but holds "
                        f"{max(available, 0):,} (truncated or corrupt)")


def _npy_header(fh, where: str) -> tuple[tuple, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise BisrError(f"{where}: unsupported .npy format version {version}")
    return shape, dtype


def _check_npy(path: str) -> None:
    with open(path, "rb") as fh:
        shape, dtype = _npy_header(fh, path)
        available = os.fstat(fh.fileno()).st_size - fh.tell()
    check_declared(path, shape, dtype.itemsize, available)


def _check_npz_member(path: str, archive: zipfile.ZipFile, member: str) -> None:
    info = archive.getinfo(member)
    with archive.open(info) as fh:
        shape, dtype = _npy_header(fh, f"{path}:{member}")
    check_declared(f"{path}:{member}", shape, dtype.itemsize, info.file_size)
    if info.compress_type == zipfile.ZIP_STORED and info.file_size > os.path.getsize(path):
        raise BisrError(f"{path}:{member}: larger than the archive (truncated or corrupt)")


def _check_mat_v5(path: str) -> None:
    import scipy.io

    for name, shape, _ in scipy.io.whosmat(path):
        check_declared(f"{path}:{name}", shape, 8)  # double at most, the widest MATLAB numeric class


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
            dataset = fh[_pick_key(path, keys, key)]
            if dataset.dtype.kind not in "biuf":
                raise BisrError(f"{path}: variable is not a real numeric array (dtype {dataset.dtype})")
            check_declared(path, dataset.shape, dataset.dtype.itemsize)
            data = np.asarray(dataset)
    except OSError as exc:
        raise BisrError(f"{path}: not a readable HDF5/MATLAB v7.3 file ({exc})") from exc
    return data.T if matlab else data


def load_array(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Read one numeric array from .npy/.npz/.mat/.h5. ``key`` picks the variable where there are several.

    The declared shape is checked (``check_declared``) before the data is read. Raises ``BisrError``."""
    path = str(path)
    suffix = Path(path).suffix.lower()
    if not os.path.isfile(path):
        raise BisrError(f"{path}: no such file")
    if suffix not in ARRAY_SUFFIXES:
        raise BisrError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(ARRAY_SUFFIXES)}")
    try:
        if suffix == ".npy":
            _check_npy(path)
            data = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                member = _pick_key(path, list(npz.files), key)
                _check_npz_member(path, npz.zip, member + ".npy")
                data = npz[member]
        elif suffix == ".mat":
            import scipy.io

            try:
                _check_mat_v5(path)
                mat = scipy.io.loadmat(path)
            except NotImplementedError:  # MATLAB v7.3 is HDF5
                return _load_hdf5(path, key, matlab=True)
            keys = [k for k in mat if not k.startswith("__")]
            data = mat[_pick_key(path, keys, key)]
        else:
            data = _load_hdf5(path, key, matlab=False)
    except BisrError:
        raise
    except MemoryError as exc:
        raise BisrError(f"{path}: cannot read (out of memory)") from exc
    except Exception as exc:
        text = str(exc).strip()
        raise BisrError(f"{path}: cannot read ({exc.__class__.__name__}: {text.splitlines()[0] if text else 'corrupt'})") from exc
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise BisrError(f"{path}: variable is not a real numeric array (dtype {data.dtype})")
    return data


ARRAY_OUTPUT_SUFFIXES = (".npy", ".mat")


def save_array(path: str | os.PathLike, array: np.ndarray, key: str = "cube") -> None:
    """Write ``array`` atomically as .npy, or .mat (v5, variable ``key``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in ARRAY_OUTPUT_SUFFIXES:
        raise BisrError(f"{path}: output must be .npy or .mat")
    with atomic_output(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, array)
        else:
            import scipy.io

            scipy.io.savemat(tmp, {key: array})
