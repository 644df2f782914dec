"""The ``bisr-deploy`` command line. Each command lives in the module of its concept; this file wires them up.

Every command reports a ``BisrError`` (bad input, bad file, missing toolchain) as one line on stderr with
exit status 2, and writes its outputs atomically, so a failed command leaves no partial file.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import BisrError


class BisrGroup(click.Group):
    """A click group that turns ``BisrError`` into ``error: <message>`` and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BisrError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=BisrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bisr-deploy")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress on stderr (it is shown only on a terminal anyway); results are still printed.")
def main(quiet):
    """BiSRNet hyperspectral reconstruction: train, export to ONNX, compile with TVM, run, verify, benchmark."""
    from . import progress

    progress.set_quiet(quiet)


def _register():
    from .commands import bench, evaluate, export, info, reconstruct, run, simulate, train, verify
    from .commands import compile as compile_cmd

    for command in (simulate.simulate_command, reconstruct.reconstruct_command, info.info_command, train.train_command,
                    evaluate.evaluate_command, export.export_command, compile_cmd.compile_command,
                    run.run_command, verify.verify_command, bench.bench_command):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
