"""This machine: its architecture and CPU features, and the one check that compiled code can run here.

Feature names are Linux's (``/proc/cpuinfo`` flags on x86_64, the ``Features`` names of ``AT_HWCAP`` on
aarch64). Used by the runtime (before it loads any compiled code), the targets (``native`` builds), emulation
(is an artifact foreign here?) and the benchmark reports. Needs neither TVM nor the compiler.
"""

from __future__ import annotations

import platform
import sys

from .errors import BisrError

# Bits of the kernel's AT_HWCAP on aarch64, named as /proc/cpuinfo's "Features" line names them.
_AARCH64_HWCAP = ("fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp",
                  "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512",
                  "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg")


def host_arch() -> str:
    """This machine's architecture as the first field of a target triple spells it (``x86_64``, ``aarch64``)."""
    machine = platform.machine()
    return "aarch64" if machine in ("aarch64", "arm64") else machine


def host_triple() -> str | None:
    """This machine's target triple when it is a GNU/Linux one (``aarch64-linux-gnu``), else None."""
    return f"{host_arch()}-linux-gnu" if sys.platform == "linux" else None


def triple_arch(triple: str) -> str:
    """The architecture field of a target triple (``aarch64-linux-gnu`` -> ``aarch64``)."""
    return triple.split("-")[0]


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` line of ``/proc/cpuinfo``; None where there is none."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def aarch64_cpu_flags() -> set[str]:
    """Features of this aarch64 CPU from ``getauxval(AT_HWCAP)`` (glibc and Android's bionic). Unlike
    /proc/cpuinfo, also right under qemu-user, where /proc/cpuinfo is the x86 host's."""
    import ctypes

    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    hwcap = getauxval(16)  # AT_HWCAP
    return {name for bit, name in enumerate(_AARCH64_HWCAP) if hwcap >> bit & 1}


def host_cpu_flags() -> set[str]:
    """The instruction-set flags of this machine (``/proc/cpuinfo``); empty where that file does not exist."""
    if host_arch() == "aarch64":
        return aarch64_cpu_flags()
    return set((_cpuinfo_field("flags") or "").split())


def host_cache_bytes() -> dict[str, int]:
    """This machine's per-core data caches from sysfs: {"l1d": bytes, "l2": bytes}, the levels it lists
    (cpu0's); empty where sysfs does not say."""
    from pathlib import Path

    sizes = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        key = {("1", "Data"): "l1d", ("2", "Unified"): "l2", ("2", "Data"): "l2"}.get((level, kind))
        units = {"K": 1 << 10, "M": 1 << 20}
        if key and size[:-1].isdigit() and size[-1] in units:
            sizes[key] = int(size[:-1]) * units[size[-1]]
    return sizes


def cpu_model_name() -> str:
    """This machine's CPU model, as /proc/cpuinfo names it (else what ``platform`` knows), for reports."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_id() -> tuple[str, int, int] | None:
    """(vendor, family, model) of this machine's CPU as /proc/cpuinfo gives them (x86), else None."""
    fields = [_cpuinfo_field(name) for name in ("vendor_id", "cpu family", "model")]
    if None in fields or not fields[1].isdigit() or not fields[2].isdigit():
        return None
    return fields[0], int(fields[1]), int(fields[2])


def check_runnable(triple: str, required_features, where: str = "this artifact") -> None:
    """Raise ``BisrError`` unless code built for ``triple`` needing ``required_features`` (Linux flag names)
    runs on this machine: every feature present (checked first), and the same architecture."""
    host = host_cpu_flags()
    if not host:
        raise BisrError(f"cannot read this machine's CPU features (/proc/cpuinfo) to check {where}")
    missing = sorted(set(required_features) - host)
    if missing:
        raise BisrError(f"{where} needs CPU features this machine lacks: {', '.join(missing)}")
    if triple_arch(triple) != host_arch():
        raise BisrError(f"{where} was compiled for {triple}, this machine is {host_arch()}")
