"""The qemu-user emulation environment that runs aarch64 builds (TVM modules, Python, native programs) on x86_64.

The environment (built by ``tools/arm_env.py build``, or by ``.ci/setup-arm.sh``) lives in one directory,
``$BISR_ARM_ENV`` or ``~/.cache/bisr-deploy/arm-env``:

- ``sysroot/``: Debian arm64 packages unpacked (aarch64 glibc, libstdc++, CPython 3.11 and its libraries);
  qemu-aarch64 resolves the guest's dynamic loader and libraries there (``qemu-aarch64 -L sysroot``);
- ``site/``: the aarch64 wheels of ``tools/arm_env.py``'s ``WHEELS`` (apache-tvm, apache-tvm-ffi, numpy, and
  click and matplotlib for the CLI's ``bench``), unzipped, at the versions installed on the host, so that an
  ARM build is loaded by the same TVM release that compiled it;
- ``env.json``: written last, so its presence means the environment is complete; it records the versions.

Every command that runs under emulation gets a clean environment: only the guest variables set here
(``PYTHONPATH``, ``LD_LIBRARY_PATH``, ``HOME``, ``LANG``) reach the aarch64 process.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import Manifest, read_manifest
from .compile.targets import TARGETS
from .cross import SETUP_HINT, require_tool
from .errors import BisrError
from .hostcpu import host_arch, triple_arch

QEMU = TARGETS["arm"].emulator  # the environment below is the aarch64 Linux one

ENV_VAR = "BISR_ARM_ENV"
GUEST_PYTHON = "usr/bin/python3.11"
MANIFEST = "env.json"


def default_env_dir() -> Path:
    """``$BISR_ARM_ENV`` if set, else ``~/.cache/bisr-deploy/arm-env``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path.home() / ".cache" / "bisr-deploy" / "arm-env"


@dataclass(frozen=True)
class ArmEnv:
    """A complete emulation environment (see the module docstring for its layout)."""

    root: Path
    versions: dict

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def python(self) -> Path:
        return self.sysroot / GUEST_PYTHON

    @property
    def runtime_lib_dirs(self) -> list[Path]:
        """Directories holding the aarch64 ``libtvm_runtime.so`` and ``libtvm_ffi.so``."""
        return [self.site / "tvm" / "lib", self.site / "tvm_ffi" / "lib"]

    @property
    def include_dir(self) -> Path:
        """tvm-ffi and DLPack headers shipped in the tvm-ffi wheel: all that native code calling the runtime needs."""
        return self.site / "tvm_ffi" / "include"

    def run(self, program: list[str | os.PathLike], *, cwd=None, env: dict[str, str] | None = None,
            timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run an aarch64 executable (``program[0]``, a path) under qemu; text stdout/stderr captured.

        The guest finds the aarch64 TVM runtime libraries on ``LD_LIBRARY_PATH``; ``env`` adds guest variables.
        With ``check``, a non-zero exit raises BisrError carrying the last lines of the guest's stderr.
        """
        guest_env = {"LD_LIBRARY_PATH": ":".join(str(d) for d in self.runtime_lib_dirs), "LANG": "C.UTF-8",
                     "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
        cmd = [require_tool(QEMU), "-L", str(self.sysroot)]
        for key, value in guest_env.items():
            cmd += ["-E", f"{key}={value}"]
        # qemu hands its own environment to the guest: keep it minimal so no host PYTHONPATH etc. leaks in.
        host_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": guest_env["HOME"], "LANG": "C.UTF-8"}
        try:
            proc = subprocess.run(cmd + [str(p) for p in program], cwd=cwd, env=host_env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BisrError(f"aarch64 program {program[0]} did not finish within {timeout:.0f} s under qemu") from exc
        if check and proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise BisrError(f"aarch64 program {Path(program[0]).name} exited with status {proc.returncode} "
                            f"under qemu:\n{tail}")
        return proc

    def run_python(self, script: str | os.PathLike | None = None, args: list[str] = (), *, code: str | None = None,
                   pythonpath: list[str | os.PathLike] = (), cwd=None, timeout: float | None = None,
                   check: bool = True) -> subprocess.CompletedProcess:
        """Run a Python script file or a ``code`` string with the aarch64 CPython 3.11 under qemu.

        The guest ``sys.path`` holds the aarch64 wheels (tvm, tvm_ffi, numpy) and then ``pythonpath`` (e.g. the
        repository root, to import ``bisr_deploy``). Returns the CompletedProcess (stdout, stderr, returncode).
        """
        if (script is None) == (code is None):
            raise ValueError("give exactly one of script and code")
        program = [self.python, "-s"]
        program += ["-c", code] if code is not None else [str(script)]
        path = ":".join([str(self.site)] + [str(Path(p).resolve()) for p in pythonpath])
        return self.run(program + list(args), cwd=cwd, env={"PYTHONPATH": path, "PYTHONNOUSERSITE": "1"},
                        timeout=timeout, check=check)


def load_env(root: str | os.PathLike | None = None) -> ArmEnv:
    """The complete environment at ``root`` (default ``default_env_dir()``); BisrError when it is not built."""
    root = Path(root) if root is not None else default_env_dir()
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise BisrError(f"no aarch64 emulation environment at {root}: {SETUP_HINT}")
    try:
        versions = json.loads(manifest.read_text())["versions"]
    except (ValueError, KeyError) as exc:
        raise BisrError(f"{manifest}: corrupt environment manifest; delete {root} and rebuild ({SETUP_HINT})") from exc
    return ArmEnv(root=root, versions=versions)


# Runs in the guest: bisr_deploy.runtime.load (every check: files' sha256, format, CPU features, triple), then
# CompiledModel.run_raw for every input set WORKDIR/in<k>_<i>.npy -> WORKDIR/out<k>.npy, and
# CompiledModel.run_bisrconv for every layer job WORKDIR/layer<j>.npy (names in WORKDIR/layers.json)
# -> WORKDIR/layer_out<j>.npy.
_GUEST_REFUSED = 3  # exit status of the guest for a BisrError; its stderr is then the message
_GUEST_RUN = f"""
import json, sys
import numpy as np
import bisr_deploy.runtime as runtime
from bisr_deploy.errors import BisrError
directory, work, count, n_inputs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
try:
    model = runtime.load(directory)
except BisrError as exc:
    sys.stderr.write(str(exc))
    sys.exit({_GUEST_REFUSED})
for k in range(count):
    arrays = [np.load(f"{{work}}/in{{k}}_{{i}}.npy") for i in range(n_inputs)]
    np.save(f"{{work}}/out{{k}}.npy", model.run_raw(arrays))
for j, name in enumerate(json.load(open(f"{{work}}/layers.json"))):
    np.save(f"{{work}}/layer_out{{j}}.npy", model.run_bisrconv(name, np.load(f"{{work}}/layer{{j}}.npy")))
"""


def is_foreign(manifest: Manifest) -> bool:
    """True when the artifact's code is for another architecture and its target has an emulator (aarch64 on
    x86_64: it must run under qemu)."""
    entry = TARGETS.get(manifest.target.arch)
    return triple_arch(manifest.target.triple) != host_arch() and entry is not None and entry.emulator is not None


def run_emulated(directory: str | os.PathLike, inputs: list[tuple[np.ndarray, np.ndarray | None]],
                 layer_inputs: dict[str, np.ndarray] | None = None, *, env: ArmEnv | None = None,
                 timeout: float | None = 3600) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Run an aarch64 artifact in one emulated process (TVM's import under qemu is paid once).

    ``inputs``: (measurement [H, W+54], mask [H, W] | None) pairs -> cubes float32 [28, H, W], as
    ``CompiledModel.__call__``; ``layer_inputs``: {BiSRConv name: X [1, C, H, W]} -> {name: Y [1, C, H, W]}, as
    ``CompiledModel.run_bisrconv``. Inputs are validated on the host; the Python loader (all of its checks) and
    the compiled code run in the emulation environment (``env``, default ``load_env()``). Raises ``BisrError``.
    """
    import json

    from . import runtime

    directory = Path(directory).resolve()
    manifest = read_manifest(directory)
    layer_inputs = layer_inputs or {}
    env = env or load_env()
    with tempfile.TemporaryDirectory(prefix="bisr-emulated-") as tmp:
        tmp = Path(tmp)
        # Only bisr_deploy joins the guest's path: the host's site-packages holds x86_64 builds.
        (tmp / "path").mkdir()
        (tmp / "path" / "bisr_deploy").symlink_to(Path(__file__).resolve().parent)
        n_inputs = len(manifest.inputs)
        for k, (measurement, mask) in enumerate(inputs):
            for i, array in enumerate(runtime.artifact_inputs(manifest, measurement, mask)):
                np.save(tmp / f"in{k}_{i}.npy", array)
        names = list(layer_inputs)
        (tmp / "layers.json").write_text(json.dumps(names))
        for j, name in enumerate(names):
            np.save(tmp / f"layer{j}.npy", np.ascontiguousarray(layer_inputs[name], dtype=np.float32))
        proc = env.run_python(code=_GUEST_RUN, args=[directory, tmp, len(inputs), n_inputs],
                              pythonpath=[tmp / "path"], timeout=timeout, check=False)
        if proc.returncode == _GUEST_REFUSED:
            raise BisrError(proc.stderr.strip())
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise BisrError(f"the emulated run of {directory} failed (status {proc.returncode}):\n{tail}")
        outputs = [np.load(tmp / f"out{k}.npy")[0].astype(np.float32, copy=False) for k in range(len(inputs))]
        return outputs, {name: np.load(tmp / f"layer_out{j}.npy") for j, name in enumerate(names)}


def run_artifact_many(directory: str | os.PathLike, inputs: list[tuple[np.ndarray, np.ndarray | None]], *,
                      env: ArmEnv | None = None, timeout: float | None = 3600) -> list[np.ndarray]:
    """``[runtime.load(directory)(measurement, mask) for measurement, mask in inputs]`` for an aarch64 artifact,
    under qemu in one process (``run_emulated``)."""
    return run_emulated(directory, inputs, env=env, timeout=timeout)[0]


def run_artifact(directory: str | os.PathLike, measurement: np.ndarray, mask: np.ndarray | None = None, *,
                 env: ArmEnv | None = None, timeout: float | None = 1800) -> np.ndarray:
    """``runtime.load(directory)(measurement, mask)`` for an aarch64 artifact, under qemu (``run_artifact_many``)."""
    return run_artifact_many(directory, [(measurement, mask)], env=env, timeout=timeout)[0]
