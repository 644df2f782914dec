"""``bisr-deploy estimate``: per-kernel and total time of one reconstruction on a named core, without running
it there (bisr_deploy/estimate/, docs/estimate.md); ``--measure`` puts this machine's timings beside it."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BisrError
from ..fileio import check_output


def _table(report: dict) -> str:
    measured = "measured_total_ms" in report
    lines = [f"{report['core']} @ {report['clock_ghz']:.2f} GHz, {report['threads']} thread(s), DRAM "
             f"{report['dram_gbs']:.1f} GB/s, {report['build']} build of {report['artifact']} (ESTIMATE)",
             f"{'call':>4}  {'function':44} {'bin MMAC':>8} {'fp MMAC':>8} {'DRAM MB':>8} {'bin MAC/cyc':>11} "
             f"{'est ms':>7} {'bound':7}" + (f" {'meas ms':>8} {'error':>7}" if measured else "")]
    for k in report["kernels"]:
        line = (f"{k['call']:4}  {k['function'][:44]:44} {k['binary_macs'] / 1e6:8.2f} {k['float_macs'] / 1e6:8.2f} "
                f"{k['dram_bytes'] / 1e6:8.2f} {k['binary_macs_per_cycle']:11.1f} {k['est_ms']:7.3f} {k['bound']:7}")
        if measured:
            line += f" {k['measured_ms']:8.3f} {k['error'] * 100:+6.0f}%"
        lines.append(line)
    total = f"total: estimate {report['total_ms']:.1f} ms"
    if measured:
        total += f", measured {report['measured_total_ms']:.1f} ms ({report['total_error'] * 100:+.0f} %)"
    return "\n".join(lines + [total])


@click.command("estimate")
@click.argument("artifact", required=False, type=click.Path())
@click.option("--core", required=True, help="Core to estimate for; `--core list` prints the known ones.")
@click.option("--clock-ghz", type=float, default=None, help="Clock (default: the core's, see --core list).")
@click.option("--dram-gbs", type=float, default=None, help="DRAM bandwidth in GB/s (default: the core's).")
@click.option("--threads", type=int, default=1, show_default=True, help="Cores the parallel loops spread over.")
@click.option("--float-build", is_flag=True,
              help="Estimate the float32 build of the same graph (bench's tvm-fp32 backend) for the same target.")
@click.option("--measure", is_flag=True, help="Also run the artifact here and show measured per-call times.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON.")
def estimate_command(artifact, core, clock_ghz, dram_gbs, threads, float_build, measure, json_path):
    """Estimated time of one reconstruction of ARTIFACT on a core (llvm-mca + TIR trip counts + DRAM model)."""
    from ..estimate.cores import core_by_name, core_table

    if core == "list":
        click.echo(core_table())
        return
    from ..estimate.network import check_settings, estimate, measure_artifact, prepare_artifact, write_json

    if artifact is None:
        raise BisrError("give the ARTIFACT directory to estimate")
    chosen = core_by_name(core)
    if measure and float_build:
        raise BisrError("--measure runs the artifact itself: it cannot be combined with --float-build")
    if measure and threads != 1:
        raise BisrError("--measure times every call on the calling thread's CPU clock: use it with --threads 1")
    from ..artifact import read_manifest
    from ..runtime import load

    check_settings(read_manifest(artifact), chosen, clock_ghz, dram_gbs, threads)  # quick refusals first
    if json_path:
        check_output(json_path, "--json", (".json",), tuple(Path(artifact).glob("*")))
    compiled = load(artifact) if measure else None
    report = estimate(prepare_artifact(artifact, float_build), chosen, clock_ghz, dram_gbs, threads)
    if compiled is not None:
        measure_artifact(compiled, report)
    click.echo(_table(report))
    if json_path:
        write_json(report, json_path)
        click.echo(f"wrote {json_path}")
