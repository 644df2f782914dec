"""Progress goes to stderr only on a terminal and without --quiet; results never depend on it."""

from __future__ import annotations

import io
import sys

from click.testing import CliRunner

from bisr_deploy import progress
from bisr_deploy.cli import main


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_and_not_quiet(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress, "_quiet", False)
    progress.stage("compiling kernels")
    assert terminal.getvalue() == "compiling kernels ...\n"
    assert list(progress.items([1, 2, 3], "scenes")) == [1, 2, 3]
    assert "\rscenes:   0%|" in terminal.getvalue() and "0/3" in terminal.getvalue()
    progress.set_quiet(True)
    before = terminal.getvalue()
    progress.stage("linking")
    assert list(progress.items(range(2), "rounds")) == [0, 1] and terminal.getvalue() == before
    progress.set_quiet(False)
    pipe = io.StringIO()  # not a terminal: nothing, as in CI logs and `2> file`
    monkeypatch.setattr(sys, "stderr", pipe)
    progress.stage("compiling kernels")
    assert list(progress.items([1], "scenes")) == [1] and pipe.getvalue() == ""


def test_quiet_is_an_option_of_every_command(monkeypatch):
    monkeypatch.setattr(progress, "_quiet", False)
    result = CliRunner().invoke(main, ["--quiet", "info", "--help"])
    assert result.exit_code == 0 and progress._quiet
    assert "--quiet" in CliRunner().invoke(main, ["--help"]).output
