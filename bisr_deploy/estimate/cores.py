"""The cores ``bisr-deploy estimate`` knows: LLVM 19 scheduling model, clock, DRAM bandwidth and caches assumed.

Every figure names its source in docs/estimate.md (table "Cores"); ``--clock-ghz`` and ``--dram-gbs`` override
the clock and the bandwidth. ``cache_bytes(threads)``: the cache the DRAM model (``network.dram_traffic``) lets
intermediate tensors stay in: the private L2 of every core used plus the shared L3.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BisrError

KIB, MIB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Core:
    name: str
    arch: str  # "aarch64" or "x86_64"
    mcpu: str  # llvm-mca -mcpu: the LLVM 19 scheduling model closest to the core (docs/estimate.md)
    clock_ghz: float
    dram_gbs: float
    l1d: int
    l2: int  # private, per core
    l3: int  # shared by the cluster
    example: str  # the chip the clock, bandwidth and caches are taken from
    binary_macs_per_cycle: float  # peak: XOR + popcount + accumulate on every vector pipe that can do them
    fmas_per_cycle: float  # peak float32 multiply-adds per cycle (FMA pipes x lanes)
    cpu_id: tuple[str, int, int] | None = None  # a calibration machine's (vendor, family, model): ``host_core``

    def cache_bytes(self, threads: int) -> int:
        return self.l2 * threads + self.l3


CORES = {core.name: core for core in (
    Core("cortex-a55", "aarch64", "cortex-a55", 1.8, 34.1, 32 * KIB, 128 * KIB, 2 * MIB,
         "Snapdragon 855 little core (Kryo 485 Silver)", 128 / 3, 4),
    Core("cortex-a76", "aarch64", "neoverse-n1", 2.4, 17.1, 64 * KIB, 512 * KIB, 2 * MIB, "Raspberry Pi 5 (BCM2712)",
         256 / 3, 8),
    Core("cortex-a78", "aarch64", "neoverse-n1", 2.42, 51.2, 64 * KIB, 512 * KIB, 4 * MIB, "Snapdragon 888 mid core",
         256 / 3, 8),
    Core("cortex-x1", "aarch64", "neoverse-v1", 2.84, 51.2, 64 * KIB, 1 * MIB, 4 * MIB, "Snapdragon 888 prime core",
         512 / 3, 16),
    Core("neoverse-n1", "aarch64", "neoverse-n1", 2.5, 204.8, 64 * KIB, 1 * MIB, 32 * MIB, "AWS Graviton2", 256 / 3, 8),
    Core("xeon-kvm", "x86_64", "skylake-avx512", 3.76, 15.0, 48 * KIB, 2 * MIB, 0,
         "this project's 2-core KVM Xeon (CPUID model 167), a calibration machine", 1024 / 3, 32,
         ("GenuineIntel", 6, 167)),
    Core("epyc-kvm", "x86_64", "znver4", 3.64, 26.3, 32 * KIB, 1 * MIB, 32 * MIB,
         "this project's 2-core KVM AMD EPYC (Zen 4, family 25 model 17), a calibration machine", 1024 / 3, 16,
         ("AuthenticAMD", 25, 17)),
    Core("epyc-zen3-kvm", "x86_64", "znver3", 3.20, 34.1, 32 * KIB, 512 * KIB, 32 * MIB,
         "this project's 2-core KVM AMD EPYC (Zen 3, family 25 model 1, AVX2), a calibration machine", 128, 16,
         ("AuthenticAMD", 25, 1)),
)}


def core_by_name(name: str) -> Core:
    """The ``Core`` called ``name``; ``BisrError`` listing the known ones otherwise."""
    if name not in CORES:
        raise BisrError(f"unknown core {name!r}; known: {', '.join(CORES)} (--core list)")
    return CORES[name]


def host_core() -> Core | None:
    """The calibration core of this machine (its ``cpu_id``), None on any other machine."""
    from ..hostcpu import cpu_id

    here = cpu_id()
    return next((core for core in CORES.values() if core.cpu_id is not None and core.cpu_id == here), None)


def core_table() -> str:
    """``--core list``: one line per core."""
    lines = [f"{'core':12} {'arch':8} {'LLVM model':15} {'clock GHz':>9} {'DRAM GB/s':>9} {'L1d':>7} {'L2/core':>8} "
             f"{'L3':>7}  figures from"]
    for c in CORES.values():
        lines.append(f"{c.name:12} {c.arch:8} {c.mcpu:15} {c.clock_ghz:9.2f} {c.dram_gbs:9.1f} {c.l1d // KIB:5} K "
                     f"{c.l2 // KIB:6} K {c.l3 // KIB:5} K  {c.example}")
    return "\n".join(lines) + "\n(sources of every figure: docs/estimate.md)"
