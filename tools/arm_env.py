#!/usr/bin/env python
"""Build, check and use the cached aarch64 emulation environment (layout: ``bisr_deploy/emulation.py``).

    python tools/arm_env.py build [--env DIR] [--force]   # idempotent; prints the seconds it took
    python tools/arm_env.py check [--env DIR]             # runs `import tvm` under qemu, prints versions
    python tools/arm_env.py python [--env DIR] SCRIPT [ARGS...]   # run a Python script under emulation

``build`` needs, on the host: qemu-user, the aarch64 cross toolchain, and the arm64 foreign architecture in
dpkg with an updated apt index (``.ci/setup-arm.sh`` does all three, as root). It downloads the Debian arm64
packages listed in ``DEB_PACKAGES`` with ``apt-get download`` and unpacks them into ``sysroot/`` with
``dpkg -x``, downloads the aarch64 wheels of the host's TVM/numpy versions with ``pip download`` and unzips them
into ``site/``, smoke-tests ``import tvm`` under qemu, and only then moves the finished tree into place and
writes ``env.json``. An existing complete environment with the same versions is left alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bisr_deploy import cross, emulation  # noqa: E402
from bisr_deploy.errors import BisrError  # noqa: E402

# CPython 3.11 (Debian bookworm) and the shared libraries it and the TVM runtime link against.
DEB_PACKAGES = [
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "media-types",
    "libc6", "libgcc-s1", "libstdc++6", "libcrypt1", "libexpat1", "zlib1g", "libffi8", "libssl3",
    "liblzma5", "libbz2-1.0", "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8", "libuuid1",
    "libdb5.3", "libnsl2", "libtirpc3", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0",
    "libcom-err2", "libkeyutils1",
]
ARCH_ALL_PACKAGES = {"media-types"}  # architecture-independent: no :arm64 suffix
# Python distributions unpacked into site/, pinned to the versions installed on the host: the runtime (TVM,
# numpy), and the CLI with its report plots (click, matplotlib and what matplotlib needs), so that
# `bisr-deploy bench --artifact` runs as on a board.
WHEELS = ["apache-tvm", "apache-tvm-ffi", "numpy", "typing_extensions", "click", "matplotlib", "contourpy", "cycler",
          "fonttools", "kiwisolver", "packaging", "pillow", "pyparsing", "python-dateutil", "six"]
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
GUEST_PY = "3.11"


def _run(cmd: list[str], what: str, cwd=None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise BisrError(f"{what} failed ({' '.join(cmd[:3])} ...):\n{tail}")
    return proc.stdout


def wanted_versions() -> dict:
    """The versions the environment must hold: the host's wheels, the guest Python, the Debian package list."""
    versions = {}
    for dist in WHEELS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError as exc:
            raise BisrError(f"{dist} is not installed on the host; install the project first (pip install -e .)") from exc
    versions["python"] = GUEST_PY
    versions["deb"] = sorted(DEB_PACKAGES)
    return versions


def _check_host() -> None:
    for tool in ("dpkg", "apt-get", emulation.QEMU, cross.LINUX_PREFIX + "g++"):
        cross.require_tool(tool)
    foreign = _run(["dpkg", "--print-foreign-architectures"], "dpkg").split()
    if "arm64" not in foreign:
        raise BisrError("dpkg has no arm64 foreign architecture: run `dpkg --add-architecture arm64 && apt-get update` "
                        f"as root ({cross.SETUP_HINT})")


def _fetch_debs(dest: Path) -> None:
    dest.mkdir()
    names = [p if p in ARCH_ALL_PACKAGES else f"{p}:arm64" for p in DEB_PACKAGES]
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *names],
         "apt-get download of the arm64 sysroot packages (is `apt-get update` done since adding arm64?)", cwd=dest)


def _fetch_wheels(dest: Path, versions: dict) -> None:
    specs = [f"{dist}=={versions[dist]}" for dist in WHEELS]
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--platform",
          WHEEL_PLATFORM, "--python-version", GUEST_PY, "-d", str(dest)] + specs, "pip download of the aarch64 wheels")


def build(root: Path, force: bool = False) -> tuple[emulation.ArmEnv, bool]:
    """Build the environment at ``root`` unless a complete one with the wanted versions is there.

    Returns (env, built): ``built`` is False when the existing environment was kept.
    """
    versions = wanted_versions()
    if not force:
        try:
            env = emulation.load_env(root)
            if env.versions == versions:
                return env, False
        except BisrError:
            pass
    _check_host()
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}.", dir=root.parent) as tmp:
        work = Path(tmp) / "env"
        (work / "sysroot").mkdir(parents=True)
        _fetch_debs(work / "debs")
        for deb in sorted((work / "debs").glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(work / "sysroot")], f"dpkg -x {deb.name}")
        _fetch_wheels(work / "wheels", versions)
        for wheel in sorted((work / "wheels").glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(work / "site")
        shutil.rmtree(work / "debs")
        shutil.rmtree(work / "wheels")
        staged = emulation.ArmEnv(root=work, versions=versions)
        probe = staged.run_python(code="import tvm, numpy; print(tvm.__version__, numpy.__version__)", timeout=600)
        got = probe.stdout.split()
        if got != [versions["apache-tvm"], versions["numpy"]]:
            raise BisrError(f"aarch64 smoke test printed {probe.stdout!r}, expected the host's TVM and numpy versions")
        (work / emulation.MANIFEST).write_text(json.dumps({"versions": versions}, indent=1) + "\n")
        if root.exists():
            shutil.rmtree(root)
        work.rename(root)
    return emulation.load_env(root), True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", type=Path, default=None, help="environment directory (default: $BISR_ARM_ENV "
                        "or ~/.cache/bisr-deploy/arm-env)")
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="build the environment if it is missing or stale")
    b.add_argument("--force", action="store_true", help="rebuild even if a complete environment is there")
    sub.add_parser("check", help="import tvm and numpy under qemu and print their versions")
    p = sub.add_parser("python", help="run a Python script under emulation")
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    root = (args.env or emulation.default_env_dir()).expanduser().resolve()
    try:
        if args.action == "build":
            start = time.monotonic()
            env, built = build(root, force=args.force)
            state = f"built in {time.monotonic() - start:.1f} s" if built else "already complete"
            print(f"aarch64 emulation environment at {env.root}: {state}")
        elif args.action == "check":
            env = emulation.load_env(root)
            start = time.monotonic()
            out = env.run_python(code="import platform, tvm, numpy; "
                                      "print(platform.machine(), 'tvm', tvm.__version__, 'numpy', numpy.__version__)")
            print(f"{out.stdout.strip()} ({time.monotonic() - start:.1f} s under qemu)")
        else:
            env = emulation.load_env(root)
            proc = env.run_python(args.script, args.args, pythonpath=[Path(__file__).resolve().parents[1]], check=False)
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            return proc.returncode
    except BisrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
