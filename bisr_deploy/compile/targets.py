"""Every compile target as one entry of ``TARGETS``: name -> how to build, schedule, link and run its code.

A ``TargetEntry`` (``x86``, ``arm``, ``android-arm64``) holds the LLVM triple, the CPU names it accepts,
``resolve`` (cpu -> TVM target dict, the CPU features the code may use, as Linux spells them, and the
``Schedule``: vector lanes, band height), ``linker`` (the ``fcompile`` of ``export_library``: None = the host
compiler) and ``emulator`` (the user-mode emulator that runs its code on another host; ``emulation.py``).
Whether code runs on this machine is ``bisr_deploy.hostcpu.check_runnable`` (the one host check).
Adding a target means adding one entry (docs/compiler.md shows how).

``x86`` CPUs: ``znver4`` (AVX-512 with VPOPCNTDQ), ``skylake-avx512`` (AVX-512 without vector popcount),
``haswell`` (AVX2), ``native`` (this machine). ARM: ``generic``, the ARMv8-A core with NEON, and ``dotprod``,
the same with the dot-product extension (Linux ``asimddp``: Cortex-A55, A76, A78, X1, Neoverse N1 and later;
not Cortex-A53/A72, e.g. the Raspberry Pi 4), with which LLVM sums the bitserial kernels' byte popcounts by
``udot`` instead of two widening adds per word.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from ..errors import BisrError
from ..hostcpu import host_arch, host_cache_bytes, host_cpu_flags, host_triple, triple_arch
from .schedule import Schedule, schedule_for

KIB = 1024
# Per-core data caches (L1d, L2) of the named CPUs, which size the FeedForward kernel's bands; ``native``
# reads this machine's (sysfs), else the generic core's of ``Schedule``.
_X86_CACHES = {"znver4": (32 * KIB, 1024 * KIB), "skylake-avx512": (32 * KIB, 1024 * KIB),
               "haswell": (32 * KIB, 256 * KIB)}
# ARM: no CPU is named (generic ARMv8-A), so a documented common choice: Cortex-A76's 64 KiB L1d and 512 KiB L2.
_ARM_CACHES = (64 * KIB, 512 * KIB)

# LLVM feature name -> /proc/cpuinfo flag, for the instruction-set extensions LLVM selects instructions from.
_LLVM_TO_CPUINFO = {
    "sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "popcnt": "popcnt",
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2",
    "lzcnt": "abm", "movbe": "movbe", "adx": "adx", "sse4a": "sse4a",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512cd": "avx512cd", "avx512dq": "avx512dq",
    "avx512vl": "avx512vl", "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2", "avx512vnni": "avx512_vnni", "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
    "gfni": "gfni", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq", "avxvnni": "avx_vnni",
}


@dataclass(frozen=True)
class CompileTarget:
    """A resolved target: arch (the ``TARGETS`` name), cpu name, TVM target dict, schedule, required CPU flags."""

    arch: str
    cpu: str
    tvm_target: dict
    schedule: Schedule
    required_features: tuple[str, ...] = field(default=())
    ndk: str | None = None  # android-arm64 only: the Android NDK that links the library

    @property
    def triple(self) -> str:
        return self.tvm_target["mtriple"]

    @property
    def lanes(self) -> int:
        return self.schedule.lanes

    @property
    def has_vector_popcount(self) -> bool:
        return "avx512_vpopcntdq" in self.required_features


def _llvm_features(target_dict: dict) -> set[str]:
    from tvm.target import Target, codegen

    return set(codegen.llvm_get_cpu_features(Target(target_dict)))


def _resolve_x86(cpu: str, num_cores: int | None, _ndk: str | None) -> CompileTarget:
    from tvm.target import codegen

    mcpu = codegen.llvm_get_system_cpu() if cpu == "native" else cpu
    target = {"kind": "llvm", "mtriple": TARGETS["x86"].triple, "mcpu": mcpu}
    if cpu == "znver4":
        target["mattr"] = ["-sse4a"]  # AMD-only; keeps a znver4 build runnable on Intel AVX-512 parts
    if num_cores:
        target["num-cores"] = int(num_cores)
    features = _llvm_features(target)
    if cpu == "znver4":
        features.discard("sse4a")
    required = tuple(sorted(_LLVM_TO_CPUINFO[f] for f in features if f in _LLVM_TO_CPUINFO))
    if cpu == "native":
        host = host_cpu_flags()
        missing = [f for f in required if host and f not in host]
        if missing:  # LLVM's name for this CPU claims more than the (virtual) machine exposes
            target["mattr"] = [f"-{llvm}" for llvm, flag in _LLVM_TO_CPUINFO.items() if flag in missing]
            required = tuple(f for f in required if f not in missing)
    host = host_cache_bytes() if cpu == "native" else {}
    l1d, l2 = _X86_CACHES.get(cpu, (host.get("l1d", Schedule.l1d_bytes), host.get("l2", Schedule.l2_bytes)))
    return CompileTarget("x86", cpu, target, replace(schedule_for(required), l1d_bytes=l1d, l2_bytes=l2),
                         required_features=required)


# ARM CPUs as LLVM features on the generic ARMv8-A core, never an -mcpu: a named core would let LLVM use
# extensions (LSE, fp16, ...) that required_features does not record. Linux's HWCAP name of each feature.
_ARM_CPUS = {"generic": {"+neon": "asimd"}, "dotprod": {"+neon": "asimd", "+dotprod": "asimddp"}}


def _resolve_aarch64(arch: str):
    def resolve(cpu: str, num_cores: int | None, ndk: str | None) -> CompileTarget:
        """aarch64 with NEON: 128-bit vectors, 4 uint32 / 4 float32 lanes; Linux calls NEON ``asimd``."""
        from .. import cross

        target = {"kind": "llvm", "mtriple": TARGETS[arch].triple, "mattr": list(_ARM_CPUS[cpu])}
        if num_cores:
            target["num-cores"] = int(num_cores)
        # The NDK is checked here, before the long compile, not at link time.
        ndk = str(cross.ndk_root(ndk)) if arch == "android-arm64" else None
        features = tuple(_ARM_CPUS[cpu].values())
        l1d, l2 = _ARM_CACHES
        return CompileTarget(arch, cpu, target, replace(schedule_for(features), l1d_bytes=l1d, l2_bytes=l2),
                             required_features=features, ndk=ndk)

    return resolve


def _linux_aarch64_linker(_target: CompileTarget):
    from .. import cross

    return cross.linux_fcompile()


def _android_linker(target: CompileTarget):
    from .. import cross

    return cross.android_fcompile(target.ndk)


@dataclass(frozen=True)
class TargetEntry:
    """One target (module docstring). ``cpus[0]`` is what ``native`` means for a cross target."""

    name: str
    triple: str
    cpus: tuple[str, ...]
    resolve: Callable[[str, int | None, str | None], CompileTarget]  # (cpu, num_cores, ndk)
    linker: Callable[[CompileTarget], object] = lambda _target: None
    emulator: str | None = None
    cross: bool = False  # built on another host: "native" means cpus[0]


TARGETS: dict[str, TargetEntry] = {entry.name: entry for entry in (
    TargetEntry("x86", "x86_64-linux-gnu", ("native", "znver4", "skylake-avx512", "haswell"), _resolve_x86),
    TargetEntry("arm", "aarch64-linux-gnu", tuple(_ARM_CPUS), _resolve_aarch64("arm"), _linux_aarch64_linker,
                emulator="qemu-aarch64", cross=True),
    TargetEntry("android-arm64", "aarch64-linux-android", tuple(_ARM_CPUS), _resolve_aarch64("android-arm64"),
                _android_linker, cross=True),
)}
ALL_CPUS = tuple(dict.fromkeys(cpu for entry in TARGETS.values() for cpu in entry.cpus))


def resolve_target(arch: str = "x86", cpu: str = "native", num_cores: int | None = None,
                   ndk: str | None = None) -> CompileTarget:
    """Name -> ``CompileTarget``. Raises ``BisrError`` for an unknown arch or cpu.
    ``ndk``: the Android NDK for ``android-arm64`` (default ``$ANDROID_NDK_HOME``)."""
    entry = TARGETS.get(arch)
    if entry is None:
        raise BisrError(f"unknown target {arch!r}; supported: {', '.join(TARGETS)}")
    if entry.cross and cpu == "native":
        cpu = entry.cpus[0]  # a cross build has no "native" CPU
    if cpu not in entry.cpus:
        raise BisrError(f"unknown {arch} cpu {cpu!r}; expected one of {', '.join(entry.cpus)}")
    return entry.resolve(cpu, num_cores, ndk)


def host_target(cpu: str = "native") -> CompileTarget:
    """The target of this machine (the first ``TARGETS`` entry for its architecture: x86 or arm) with ``cpu``;
    ``BisrError`` on a machine no entry covers."""
    for entry in TARGETS.values():
        if triple_arch(entry.triple) == host_arch():
            return resolve_target(entry.name, cpu)
    raise BisrError(f"no compile target for this machine's architecture ({host_arch()}); "
                    f"supported: {', '.join(TARGETS)}")


def fcompile_for(target: CompileTarget):
    """The ``fcompile`` for ``export_library``: the target's linker (a cross linker for ARM), or None (the host
    compiler) when the target is this machine's own (an ARM build on an aarch64 board)."""
    if target.triple == host_triple():
        return None
    return TARGETS[target.arch].linker(target)
