"""One module per CLI command; ``bisr_deploy.cli`` registers them. Options shared by several commands live here."""

from __future__ import annotations

import click

from ..shipped import DEFAULT_CHECKPOINT, NAMED_CHECKPOINTS


def checkpoint_option(purpose: str):
    """``--checkpoint NAME|PATH`` (into ``checkpoint_path``), its help listing the named checkpoints."""
    return click.option(
        "--checkpoint", "checkpoint_path", type=click.Path(dir_okay=False), default=None, metavar="NAME|PATH",
        help=f"{purpose}: a name ({', '.join(NAMED_CHECKPOINTS)}; `bisr-deploy info` describes them), a project "
             f".safetensors or an authors' .pth. Default: {DEFAULT_CHECKPOINT}.")
