"""Every compile target in one place: name -> TVM target dict, vector width, and the CPU features it needs.

A ``CompileTarget`` says how to build (``tvm_target``: the dict given to ``tvm.target.Target``), how to
schedule (``lanes``: 32-bit lanes of one vector register, for the bitserial and the float kernels) and where the result can run (``required_features``: instruction-set extensions, as
Linux ``/proc/cpuinfo`` spells them, that the generated code may use). ``x86`` CPUs: ``znver4`` (AVX-512 with
VPOPCNTDQ), ``skylake-avx512`` (AVX-512 without vector popcount), ``haswell`` (AVX2), ``native`` (this machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BisrError
from ..hostcpu import host_cpu_flags

X86_CPUS = ("native", "znver4", "skylake-avx512", "haswell")
X86_TRIPLE = "x86_64-linux-gnu"

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
    """A resolved target: arch (``x86``), cpu name, TVM target dict, lanes, required CPU flags."""

    arch: str
    cpu: str
    tvm_target: dict
    lanes: int
    required_features: tuple[str, ...] = field(default=())
    ndk: str | None = None  # android-arm64 only: the Android NDK that links the library

    @property
    def triple(self) -> str:
        return self.tvm_target["mtriple"]

    @property
    def has_vector_popcount(self) -> bool:
        return "avx512_vpopcntdq" in self.required_features


def _llvm_features(target_dict: dict) -> set[str]:
    from tvm.target import Target, codegen

    return set(codegen.llvm_get_cpu_features(Target(target_dict)))


def resolve_target(arch: str = "x86", cpu: str = "native", num_cores: int | None = None,
                   ndk: str | None = None) -> CompileTarget:
    """Name -> ``CompileTarget``. Raises ``BisrError`` for an unknown arch or cpu.
    ``ndk``: the Android NDK for ``android-arm64`` (default ``$ANDROID_NDK_HOME``)."""
    if arch in ARM_ARCHES:
        return _resolve_arm(arch, cpu, num_cores, ndk)
    if arch != "x86":
        raise BisrError(f"unknown target {arch!r}; supported: x86, {', '.join(ARM_ARCHES)}")
    if cpu not in X86_CPUS:
        raise BisrError(f"unknown x86 cpu {cpu!r}; expected one of {', '.join(X86_CPUS)}")
    from tvm.target import codegen

    mcpu = codegen.llvm_get_system_cpu() if cpu == "native" else cpu
    target = {"kind": "llvm", "mtriple": X86_TRIPLE, "mcpu": mcpu}
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
    wide = "avx512f" in required
    return CompileTarget("x86", cpu, target, lanes=16 if wide else 8, required_features=required)


# ---- ARM (aarch64) targets: ARM deployment, issue 5 (docs/arm.md). They cross-compile on an x86_64 host;
# ``fcompile_for`` gives the linker, bisr_deploy/emulation.py runs the result under qemu. ----

ARM_ARCHES = ("arm", "android-arm64")
# Only the generic ARMv8-A core: an -mcpu would let LLVM use extensions (dotprod, LSE, ...) that
# required_features does not record.
ARM_CPUS = ("generic",)
_ARM_TRIPLES = {"arm": "aarch64-linux-gnu", "android-arm64": "aarch64-linux-android"}


def _resolve_arm(arch: str, cpu: str, num_cores: int | None, ndk: str | None) -> CompileTarget:
    """aarch64 with NEON: 128-bit vectors, 4 uint32 / 4 float32 lanes; Linux calls NEON ``asimd``."""
    from .. import cross

    cpu = "generic" if cpu == "native" else cpu  # a cross build has no "native" CPU
    if cpu not in ARM_CPUS:
        raise BisrError(f"unknown {arch} cpu {cpu!r}; expected one of {', '.join(ARM_CPUS)}")
    target = {"kind": "llvm", "mtriple": _ARM_TRIPLES[arch], "mattr": ["+neon"]}
    if num_cores:
        target["num-cores"] = int(num_cores)
    # The NDK is checked here, before the long compile, not at link time.
    ndk = str(cross.ndk_root(ndk)) if arch == "android-arm64" else None
    return CompileTarget(arch, cpu, target, lanes=4, required_features=("asimd",), ndk=ndk)


def fcompile_for(target: CompileTarget):
    """The ``fcompile`` for ``export_library``: None (the host compiler) for x86, a cross linker for ARM."""
    from .. import cross

    if target.arch == "arm":
        return cross.linux_fcompile()
    if target.arch == "android-arm64":
        return cross.android_fcompile(target.ndk)
    return None
