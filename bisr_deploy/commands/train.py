"""``bisr-deploy train``: train a BiSRNet from a TOML config (see docs/training.md); crash-safe ``--resume``.

Under ``torchrun --nproc_per_node N`` every process runs this command and they train data-parallel.
"""

from __future__ import annotations

import click

from ..errors import BisrError


@click.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML config with [model], [data], [train] tables (default: all defaults).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one config value (TOML syntax), e.g. --set train.epochs=3. Repeatable.")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Run folder (created; refused if it already holds a run, unless --resume); "
                   "shorthand for --set train.output_dir=DIR.")
@click.option("--resume", is_flag=True, help="Continue the run in the output directory from its last training state.")
@click.option("--init", "init_path", type=click.Path(dir_okay=False), default=None,
              help="Start from these weights (project .safetensors or authors' .pth of the same architecture).")
def train_command(config_path, overrides, output_dir, resume, init_path):
    """Train BiSRNet on simulated CASSI measurements of cube folders and/or synthetic scenes."""
    from ..train import distributed
    from ..train.config import load_config
    from ..train.trainer import Trainer

    if resume and init_path:
        raise BisrError("--resume continues a run with its own weights; it cannot be combined with --init")
    overrides = list(overrides) + ([f"train.output_dir={_toml_string(output_dir)}"] if output_dir else [])
    config = load_config(config_path, overrides)
    try:
        trainer = Trainer(config, resume=resume, init=init_path, log=click.echo)
        trainer.fit()
        if trainer.ctx.is_main:
            last = trainer.history[-1] if trainer.history else None
            summary = f"; validation PSNR {last['psnr']:.2f} dB SSIM {last['ssim']:.4f}" if last else ""
            click.echo(f"trained {trainer.global_step} steps in {trainer.elapsed:.0f} s -> "
                       f"{trainer.out / 'checkpoint.safetensors'}{summary}")
    finally:
        distributed.teardown()


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
