"""`--help` is consistent across commands: every option explains itself, paths are paths, --cpu is a choice."""

from __future__ import annotations

import click

from bisr_deploy.cli import main


def test_every_option_has_help_and_consistent_types():
    assert {"simulate", "reconstruct", "compile", "run", "verify", "bench", "train", "evaluate", "export", "info"} <= set(main.commands)
    for name, command in main.commands.items():
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            assert param.help, f"{name} {param.opts[0]} has no help text"
            if {"--output", "--output-dir", "--checkpoint", "--mask", "--artifact"} & set(param.opts) and not param.multiple:
                assert isinstance(param.type, click.Path), f"{name} {param.opts[0]} is typed {param.type.name}"
            if "--cpu" in param.opts:
                assert isinstance(param.type, click.Choice) and "native" in param.type.choices, f"{name} --cpu"
