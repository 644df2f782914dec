"""``bisr-deploy evaluate``: PSNR/SSIM of one or more sim-mode checkpoints on the same ground-truth scenes.

Scenes: cube files (``--scene``, e.g. the held-out KAIST crop) and/or held-out synthetic scenes
(``--synthetic N``: seeds 1, 3, 5, ...; training uses even seeds). Each scene is measured through the top-left
crop of ``--mask``. Prints a Markdown table (and writes it with ``--output``).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..shipped import DEFAULT_CHECKPOINT, NAMED_CHECKPOINTS
from ..errors import BisrError
from ..fileio import atomic_output, check_output, load_array


@click.command("evaluate")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="[LABEL=]NAME|PATH",
              help=f"Checkpoint to score (repeatable): a name ({', '.join(NAMED_CHECKPOINTS)}) or a path, "
                   f"optionally labelled; no option: {DEFAULT_CHECKPOINT}.")
@click.option("--scene", "scene_paths", multiple=True, type=click.Path(dir_okay=False),
              help="Ground-truth cube file (H x W x 28/31 or 28/31 x H x W), repeatable.")
@click.option("--key", "keys", multiple=True, help="Variable name(s) to try inside --scene files.")
@click.option("--synthetic", default=0, type=click.IntRange(0, 1000), help="Number of held-out synthetic scenes.")
@click.option("--size", default=256, type=click.IntRange(16, 4096), help="Size of the synthetic scenes.")
@click.option("--mask", "mask_path", default=None, type=click.Path(dir_okay=False),
              help="2-D mask; each scene uses its top-left crop (default: the generated 256 x 256 mask).")
@click.option("--mask-key", default=None, help="Variable name inside --mask.")
@click.option("--output", default=None, type=click.Path(dir_okay=False), help="Also write the table here (Markdown).")
def evaluate_command(checkpoints, scene_paths, keys, synthetic, size, mask_path, mask_key, output):
    """Compare checkpoints by PSNR/SSIM on simulated snapshots of ground-truth scenes."""
    from ..data.config import DataConfig
    from ..data.datasets import heldout_name, heldout_synthetic, load_cube
    from ..data.synthetic import generated_mask
    from ..train.evaluate import markdown_table, scene_with_mask, score

    if not scene_paths and not synthetic:
        raise BisrError("no scenes: give --scene FILE and/or --synthetic N")
    labelled = _labelled(checkpoints)
    if output:
        check_output(output, "--output", (".md",), (*labelled.values(), *scene_paths, mask_path))
    mask = load_array(mask_path, mask_key) if mask_path else generated_mask(256, 256)
    if mask.ndim != 2:
        raise BisrError(f"--mask must be 2-D, got shape {mask.shape}")
    data = DataConfig(keys=list(keys))
    scenes = [scene_with_mask(Path(p).name, load_cube(p, data), mask) for p in scene_paths]
    synthetic_names = []
    for i, cube in enumerate(heldout_synthetic(synthetic, size)):
        synthetic_names.append(heldout_name(i))
        scenes.append(scene_with_mask(synthetic_names[-1], cube, mask))
    table = markdown_table(score(labelled, scenes), {"synthetic mean": synthetic_names})
    click.echo(table)
    if output:
        with atomic_output(output) as tmp:
            with open(tmp, "w") as fh:
                fh.write(table + "\n")


def _labelled(specs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    specs = specs or (DEFAULT_CHECKPOINT,)
    for spec in specs:
        label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        out[label or (path if path in NAMED_CHECKPOINTS else Path(path).name)] = path
    if len(out) != len(specs):
        raise BisrError("two --checkpoint options have the same label; name them LABEL=PATH")
    return out
