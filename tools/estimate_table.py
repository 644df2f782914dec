"""The tables of docs/estimate.md: calibration on this machine and the ARM estimates, as Markdown.

    python tools/estimate_table.py --x86 ART_X86 --arm ART_ARM [--core epyc-zen3-kvm] [--json DIR]

``--x86``: an x86 artifact (256 x 256 for the docs) that this machine runs: ``estimate --measure`` at 1 thread
on ``--core``, printed as the total and the 10 largest kernels, estimate vs measured with the error of each;
then, from the same run, the roofline of every kernel call (BENCHMARKS.md): its MACs, the bytes that reach
DRAM (the model), its compute and memory floors on the core, and the fraction of its floor it achieves.
``--arm``: an ARM artifact of the same model: Cortex-A76 @ 2.4 GHz and Cortex-A55 @ 1.8 GHz at 1 and 4
threads, for the bitserial build and the float32 build of the same graph (the bench's tvm-fp32), and the
speed-up. Each artifact is lowered and assembled once per build; every core and thread count reuses it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bisr_deploy.estimate.cores import core_by_name, host_core  # noqa: E402
from bisr_deploy.estimate.network import estimate, measure_artifact, prepare_artifact, write_json  # noqa: E402

ARM_RUNS = (("cortex-a76", 1), ("cortex-a76", 4), ("cortex-a55", 1), ("cortex-a55", 4))


def calibration(artifact: str, core: str, json_dir: Path | None) -> str:
    from bisr_deploy.runtime import load

    compiled = load(artifact)
    report = estimate(prepare_artifact(artifact), core_by_name(core), threads=1)
    measure_artifact(compiled, report)
    if json_dir:
        write_json(report, json_dir / "calibration.json")
    load_avg = os.getloadavg()[0]
    lines = [f"x86 calibration: `bisr-deploy estimate {artifact} --core {core} --measure` (1 thread; "
             f"load average {load_avg:.1f} on {os.cpu_count()} cores while measuring)", "",
             "| kernel call | estimate ms | measured ms | error | bound | binary MACs/cycle |", "| --- | ---: | ---: | ---: | --- | ---: |",
             f"| **total ({len(report['kernels'])} calls)** | **{report['total_ms']:.1f}** | "
             f"**{report['measured_total_ms']:.1f}** | **{report['total_error'] * 100:+.0f} %** | | |"]
    for k in sorted(report["kernels"], key=lambda k: -k["measured_ms"])[:10]:
        lines.append(f"| {k['call']}: `{k['function'][:48]}` | {k['est_ms']:.2f} | {k['measured_ms']:.2f} | "
                     f"{k['error'] * 100:+.0f} % | {k['bound']} | {k['binary_macs_per_cycle']:.1f} |")
    return "\n".join(lines) + "\n\n" + roofline(report)


def roofline(report: dict) -> str:
    """Every measured kernel call against its floor on the report's core (``estimate.network`` docstring)."""
    core = core_by_name(report["core"])
    lines = [f"Roofline per kernel call ({report['core']}: {core.binary_macs_per_cycle:.0f} binary MACs and "
             f"{core.fmas_per_cycle:.0f} FMAs per cycle at {report['clock_ghz']} GHz, DRAM {report['dram_gbs']} GB/s; "
             "1 thread; measured in the network)", "",
             "| call | function | binary GMACs | float GMACs | DRAM MB | compute floor ms | memory floor ms | "
             "measured ms | of its floor |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k in report["kernels"]:
        lines.append(f"| {k['call']} | `{k['function'][:48]}` | {k['binary_macs'] / 1e9:.3f} | {k['float_macs'] / 1e9:.3f} | "
                     f"{k['dram_bytes'] / 1e6:.1f} | {k['compute_floor_ms']:.2f} | {k['dram_ms']:.2f} | "
                     f"{k['measured_ms']:.2f} | {k['roofline_fraction'] * 100:.0f} % |")
    floor = sum(k["roofline_ms"] for k in report["kernels"])
    lines.append(f"| | **all calls** | {report['binary_macs'] / 1e9:.2f} | {report['float_macs'] / 1e9:.2f} | "
                 f"{sum(k['dram_bytes'] for k in report['kernels']) / 1e6:.0f} | | | **{report['measured_total_ms']:.1f}** | "
                 f"{floor / report['measured_total_ms'] * 100:.0f} % |")
    return "\n".join(lines)


def arm_figures(artifact: str, json_dir: Path | None) -> str:
    builds = {name: prepare_artifact(artifact, float_build=name == "float32") for name in ("bitserial", "float32")}
    lines = [f"ARM estimates (ESTIMATES, not measurements): `bisr-deploy estimate {artifact} --core CORE --threads N "
             "[--float-build]`", "",
             "| core | threads | bitserial build ms | of which BiSR-Conv kernels | other kernels | DRAM-bound calls | float32 build ms | speed-up |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for core, threads in ARM_RUNS:
        reports = {name: estimate(prepared, core_by_name(core), threads=threads) for name, prepared in builds.items()}
        if json_dir:
            for name, report in reports.items():
                write_json(report, json_dir / f"{core}-{threads}t-{name}.json")
        bit, flt = reports["bitserial"], reports["float32"]
        binary = sum(k["est_ms"] for k in bit["kernels"] if k["binary_macs"])
        dram = sum(1 for k in bit["kernels"] if k["bound"] == "dram")
        lines.append(f"| {core} @ {bit['clock_ghz']} GHz | {threads} | {bit['total_ms']:.0f} | {binary:.0f} | "
                     f"{bit['total_ms'] - binary:.0f} | {dram} of {len(bit['kernels'])} | {flt['total_ms']:.0f} | "
                     f"{flt['total_ms'] / bit['total_ms']:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--x86", help="x86 artifact to calibrate on (this machine must run it)")
    parser.add_argument("--arm", help="ARM artifact to estimate")
    parser.add_argument("--core", default=None, help="core of this machine (estimate --core list; default: "
                        "the calibration core whose CPU this machine has, estimate.cores.host_core)")
    parser.add_argument("--json", type=Path, default=None, help="directory for the JSON reports (created)")
    args = parser.parse_args()
    if args.json:
        args.json.mkdir(parents=True, exist_ok=True)
    if args.x86:
        core = args.core or getattr(host_core(), "name", None)
        if core is None:
            parser.error("this machine is none of the calibration cores (estimate --core list): name one with --core")
        print(calibration(args.x86, core, args.json), end="\n\n", flush=True)
    if args.arm:
        print(arm_figures(args.arm, args.json))


if __name__ == "__main__":
    main()
