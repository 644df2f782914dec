"""``bisr-deploy export``: a checkpoint -> one static ONNX model with bit-packed BiSRConv custom ops."""

from __future__ import annotations

import click

from ..snapshot import snapshot_width
from . import checkpoint_option


@click.command("export")
@checkpoint_option("The model to export")
@click.option("--output", required=True, type=click.Path(), help="The ONNX file to write (atomically).")
@click.option("--height", default=256, show_default=True, type=int, help="Scene height in pixels (at least 8).")
@click.option("--width", default=256, show_default=True, type=int, help="Scene width in pixels (at least 8).")
@click.option("--mode", type=click.Choice(["sim", "real"]), default=None,
              help="Input mode of an authors' .pth (inferred from the file by default).")
def export_command(checkpoint_path, output, height, width, mode):
    """Export BiSRNet to ONNX: raw snapshot (+ mask) in, 28-band cube out; runs in stock ONNX Runtime."""
    from .. import bisrconv_op
    from ..export import export_onnx, save_onnx
    from ..fileio import check_output

    check_output(output, "--output", (".onnx",), (checkpoint_path,))
    model = export_onnx(checkpoint_path, height, width, mode)
    size = save_onnx(model, output)
    props = {p.key: p.value for p in model.metadata_props}
    inputs = ", ".join(f"{i.name} [{', '.join(str(d.dim_value) for d in i.type.tensor_type.shape.dim)}]"
                       for i in model.graph.input)
    n_custom = sum(1 for node in model.graph.node if bisrconv_op.is_node(node))
    click.echo(f"wrote {output}: {size:,} bytes, {props['bisr.mode']} mode, {height} x {width} "
               f"(snapshot width {snapshot_width(width)})")
    click.echo(f"inputs {inputs}; output cube [1, 28, {height}, {width}]; {n_custom} {bisrconv_op.DOMAIN}::{bisrconv_op.OP_TYPE} nodes")
