"""ONNX export of BiSRNet with bit-packed BiSR-Convs (the custom operator of ``bisr_deploy.bisrconv_op``).

API:
    export_onnx(checkpoint=None, height=256, width=256, mode=None) -> onnx.ModelProto
        checkpoint: path of a project .safetensors or an authors' .pth, a checkpoint name, None (the default checkpoint),
        a loaded ``Checkpoint`` or a ``BiSRNet``; H, W: any scene size from 8 x 8 up; mode: "sim" | "real" to
        override an authors' file's inferred input mode. Raises ``BisrError`` for bad input.
    save_onnx(model, path) -> int        atomic write, returns the size in bytes.
    strip_custom_ops(model, "Identity")  the graph with each BiSRConv node replaced (for importers without it).

Modules: ``exporter`` (export_onnx, save_onnx), ``graph`` (module tree -> nodes, a BiSRConv module -> operator
node and initializers), ``clean`` (shape annotation, inference checks, strip_custom_ops),
``parity`` (ONNX Runtime vs PyTorch: per-layer sign bits, end-to-end PSNR).

Graph conventions (every deployed form has this interface):
- inputs: ``measurement`` float32 [1, H, W + 54], the raw CASSI snapshot; simulation-mode models also take
  ``mask`` float32 [1, H, W], the 2-D coded aperture. Output: ``cube`` float32 [1, 28, H, W].
- the authors' test-time preprocessing is inside (sim: Y / 28 * 2 and shift back, mask repeated over the
  bands; real: clip to [0, 1], Y / max(Y) * 0.8 in float64, shift back), and real-mode output is clamped to
  [0, 1], so apps feed raw sensor data.
- default opset 18 plus the custom domain v1 (``bisrconv_op.opset_imports``); every BiSRConv module is one
  BiSRConv custom node whose model-local FunctionProto (standard ops only) lets stock ONNX Runtime run the file.
- any H x W: sizes that are not multiples of 8 are reflect-padded below and to the right inside the graph
  (``Pad`` before ``conv_in``) and the output is cropped back (``Slice``), as the PyTorch model does, so the
  compiled kernels run at the padded size and the interface is the scene size.
- all shapes static (value_info for every tensor), no Tanh/Reshape/Shape in the main graph, N = 1.
- names: nodes and their output tensors are PyTorch module paths (``body.0.encoder_layers.0.1.biconv_1``);
  initializers are state-dict names (``conv_in.weight``) or ``<BiSRConv path>.<op input name>``
  (``...biconv_1.weight_bits``). The ``bisr.*`` metadata_props record mode, size and checkpoint provenance.
- BiSRConv uses Sign(0) = -1 (PyTorch's ``sign_zero="negative"``); the rest follows the PyTorch model op for
  op, so outputs differ from PyTorch's only by float rounding and the sign flips it can cause.
"""

from .clean import strip_custom_ops
from .exporter import export_onnx, save_onnx

__all__ = ["export_onnx", "save_onnx", "strip_custom_ops"]
