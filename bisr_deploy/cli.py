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
def main():
    """BiSRNet hyperspectral reconstruction: train, export to ONNX, compile with TVM, run, verify, benchmark."""


def _register():
    from .commands import bench, estimate, evaluate, export, info, reconstruct, run, train, verify
    from .commands import compile as compile_cmd

    for command in (reconstruct.reconstruct_command, info.info_command, train.train_command,
                    evaluate.evaluate_command, export.export_command, compile_cmd.compile_command,
                    run.run_command, verify.verify_command, bench.bench_command, estimate.estimate_command):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
