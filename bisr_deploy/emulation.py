"""The aarch64 cross toolchain and the qemu-user emulation environment that runs ARM builds on an x86_64 host.

The environment (built by ``tools/arm_env.py build``, or by ``.ci/setup-arm.sh``) lives in one directory,
``$BISR_ARM_ENV`` or ``~/.cache/bisr-deploy/arm-env``:

- ``sysroot/``: Debian arm64 packages unpacked (aarch64 glibc, libstdc++, CPython 3.11 and its libraries);
  qemu-aarch64 resolves the guest's dynamic loader and libraries there (``qemu-aarch64 -L sysroot``);
- ``site/``: the aarch64 wheels of apache-tvm, apache-tvm-ffi, numpy and typing_extensions, unzipped, at the
  versions installed on the host, so that an ARM build is loaded by the same TVM release that compiled it;
- ``env.json``: written last, so its presence means the environment is complete; it records the versions.

Every command that runs under emulation gets a clean environment: only the guest variables set here
(``PYTHONPATH``, ``LD_LIBRARY_PATH``, ``HOME``, ``LANG``) reach the aarch64 process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import BisrError

ENV_VAR = "BISR_ARM_ENV"
CROSS_PREFIX = "aarch64-linux-gnu-"
QEMU = "qemu-aarch64"
GUEST_PYTHON = "usr/bin/python3.11"
MANIFEST = "env.json"
SETUP_HINT = "run .ci/setup-arm.sh (as root) or `python tools/arm_env.py build`"


def default_env_dir() -> Path:
    """``$BISR_ARM_ENV`` if set, else ``~/.cache/bisr-deploy/arm-env``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path.home() / ".cache" / "bisr-deploy" / "arm-env"


def require_tool(name: str) -> str:
    """Absolute path of host program ``name``; BisrError naming the Debian package when it is missing."""
    path = shutil.which(name)
    if path is None:
        package = "qemu-user" if name.startswith("qemu") else (
            "g++-aarch64-linux-gnu" if name.endswith(("g++", "gcc")) else "binutils-aarch64-linux-gnu")
        raise BisrError(f"{name} not found on PATH: install the Debian package {package} ({SETUP_HINT})")
    return path


def cross_tool(tool: str) -> str:
    """Path of an aarch64 cross tool: ``cross_tool("g++")`` -> ``/usr/bin/aarch64-linux-gnu-g++``."""
    return require_tool(CROSS_PREFIX + tool)


def cross_fcompile():
    """The ``fcompile`` for ``tvm.runtime.Module.export_library`` that links an aarch64 Linux shared library."""
    from tvm.support import cc

    return cc.cross_compiler(cross_tool("g++"))


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
    def include_dirs(self) -> list[Path]:
        """TVM runtime, tvm-ffi and DLPack headers shipped in the wheels (for native code using the runtime)."""
        return [self.site / "tvm" / "include", self.site / "tvm_ffi" / "include",
                self.site / "tvm_ffi" / "3rdparty" / "dlpack" / "include"]

    def _command(self, program: list[str], guest_env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        qemu = require_tool(QEMU)
        cmd = [qemu, "-L", str(self.sysroot)]
        for key, value in guest_env.items():
            cmd += ["-E", f"{key}={value}"]
        # qemu hands its own environment to the guest: keep it minimal so no host PYTHONPATH etc. leaks in.
        host_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
                    "LANG": "C.UTF-8"}
        return cmd + program, host_env

    def run(self, program: list[str], *, cwd=None, env: dict[str, str] | None = None,
            timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run an aarch64 executable (``program[0]``, a path) under qemu; text stdout/stderr captured.

        ``env`` adds guest environment variables. With ``check``, a non-zero exit raises BisrError carrying
        the last lines of the guest's stderr.
        """
        guest_env = {"LD_LIBRARY_PATH": ":".join(str(d) for d in self.runtime_lib_dirs), "LANG": "C.UTF-8",
                     "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
        cmd, host_env = self._command([str(p) for p in program], guest_env)
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=host_env, capture_output=True, text=True, timeout=timeout)
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

        The guest ``sys.path`` holds ``pythonpath`` (e.g. the repository root, to import ``bisr_deploy``) and
        then the aarch64 wheels (tvm, tvm_ffi, numpy). Returns the CompletedProcess (stdout, stderr, returncode).
        """
        if (script is None) == (code is None):
            raise ValueError("give exactly one of script and code")
        program = [self.python, "-s"]
        program += ["-c", code] if code is not None else [str(script)]
        path = ":".join([str(Path(p).resolve()) for p in pythonpath] + [str(self.site)])
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
