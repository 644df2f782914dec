"""Cross toolchains that link TVM-compiled code for ARM: Debian's aarch64 GNU toolchain and the Android NDK.

``linux_fcompile()`` / ``android_fcompile(ndk)`` return the ``fcompile`` that
``tvm.runtime.Module.export_library`` needs to link an aarch64 shared library on an x86_64 host. Missing tools
raise ``BisrError`` naming what to install (``.ci/setup-arm.sh`` installs the Debian ones).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import BisrError

LINUX_PREFIX = "aarch64-linux-gnu-"
NDK_ENV_VAR = "ANDROID_NDK_HOME"
ANDROID_API = 24  # Android 7.0: the oldest API level whose NDK sysroot has everything the TVM runtime uses
SETUP_HINT = "run .ci/setup-arm.sh (as root) or `python tools/arm_env.py build`"
_DEBIAN_PACKAGE = {"qemu-aarch64": "qemu-user", LINUX_PREFIX + "g++": "g++-aarch64-linux-gnu",
                   LINUX_PREFIX + "gcc": "gcc-aarch64-linux-gnu", LINUX_PREFIX + "objdump": "binutils-aarch64-linux-gnu",
                   LINUX_PREFIX + "readelf": "binutils-aarch64-linux-gnu"}


def require_tool(name: str) -> str:
    """Absolute path of host program ``name``; BisrError naming the Debian package when it is missing."""
    path = shutil.which(name)
    if path is None:
        package = _DEBIAN_PACKAGE.get(name, name)
        raise BisrError(f"{name} not found on PATH: install the Debian package {package} ({SETUP_HINT})")
    return path


def linux_tool(tool: str) -> str:
    """Path of a Debian aarch64 cross tool: ``linux_tool("objdump")`` -> ``/usr/bin/aarch64-linux-gnu-objdump``."""
    return require_tool(LINUX_PREFIX + tool)


def _fcompile(compiler: str, options: list[str] | None = None):
    from tvm.support import cc

    return cc.cross_compiler(compiler, options=options,
                             get_target_triple=cc.get_target_by_dump_machine(compiler))


def linux_fcompile():
    """``fcompile`` linking an aarch64 GNU/Linux shared library with ``aarch64-linux-gnu-g++``."""
    return _fcompile(linux_tool("g++"))


def _ndk_clang_path(ndk: Path, api: int) -> Path:
    return ndk / "toolchains" / "llvm" / "prebuilt" / "linux-x86_64" / "bin" / f"aarch64-linux-android{api}-clang++"


def ndk_root(ndk: str | os.PathLike | None = None, api: int = ANDROID_API) -> Path:
    """The Android NDK directory (``ndk``, else ``$ANDROID_NDK_HOME``), checked to hold the aarch64 clang."""
    ndk = ndk or os.environ.get(NDK_ENV_VAR)
    if not ndk:
        raise BisrError(f"--target android-arm64 needs the Android NDK: pass --ndk DIR or set {NDK_ENV_VAR}")
    clang = _ndk_clang_path(Path(ndk), api)
    if not clang.is_file():
        raise BisrError(f"{ndk} is not an Android NDK for linux-x86_64 hosts: {clang} does not exist")
    return Path(ndk)


def android_fcompile(ndk: str | os.PathLike | None = None, api: int = ANDROID_API):
    """``fcompile`` linking an Android aarch64 shared library with the NDK's clang (``-static-libstdc++``)."""
    return _fcompile(str(_ndk_clang_path(ndk_root(ndk, api), api)), options=["-static-libstdc++"])
