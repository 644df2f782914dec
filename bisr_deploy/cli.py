"""The ``bisr-deploy`` command line. Each command lives in the module of its concept; this file wires them up.

Every command reports a ``BisrError`` (bad input, bad file, missing toolchain) and every usage error of the
command line as one line ``error: ...`` on stderr with exit status 2, and writes its outputs atomically, so a
failed command leaves no partial file. Warnings that libraries raise while a command runs are shown after it
succeeds (or exits with a verdict, like ``verify``'s status 1), never in front of an error line.
"""

from __future__ import annotations

import sys
import warnings

import click

from . import __version__
from .shipped import DEFAULT_CHECKPOINT, NAMED_CHECKPOINTS
from .errors import BisrError


class BisrGroup(click.Group):
    """A click group that turns ``BisrError`` and click's usage errors into ``error: <message>``, exit status 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        with warnings.catch_warnings(record=True) as caught:
            try:
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except click.exceptions.NoArgsIsHelpError as exc:  # bare ``bisr-deploy``: the help text
                click.echo(exc.format_message(), err=True)
                sys.exit(2)
            except (BisrError, click.ClickException) as exc:
                message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
                click.echo(f"error: {message}", err=True)
                sys.exit(2)
            except click.Abort:
                click.echo("error: aborted", err=True)
                sys.exit(1)
            except SystemExit as exc:
                if exc.code not in (0, 1, None):
                    raise
                code = exc.code
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
        if standalone_mode:
            sys.exit(code or 0)
        return code


@click.group(cls=BisrGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=f"Named checkpoints for --checkpoint: {', '.join(NAMED_CHECKPOINTS)} (default {DEFAULT_CHECKPOINT}); "
                    "`bisr-deploy info` describes them.")
@click.version_option(__version__, prog_name="bisr-deploy")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress on stderr (it is shown only on a terminal anyway); results are still printed.")
def main(quiet):
    """BiSRNet hyperspectral reconstruction: train, export to ONNX, compile with TVM, run, verify, benchmark."""
    from . import progress

    progress.set_quiet(quiet)


def _register():
    from .commands import bench, convert, estimate, evaluate, export, info, reconstruct, run, simulate, train, verify
    from .commands import compile as compile_cmd

    for command in (simulate.simulate_command, reconstruct.reconstruct_command, info.info_command, train.train_command,
                    evaluate.evaluate_command, export.export_command, compile_cmd.compile_command,
                    run.run_command, verify.verify_command, bench.bench_command, convert.convert_command,
                    estimate.estimate_command):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
