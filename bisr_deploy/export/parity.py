"""Parity of an exported model with PyTorch, by criteria that survive BiSRNet's sign-flip sensitivity.

- Per layer (``layer_parity``): every BiSRConv gets the SAME full-precision input on both sides (the input
  that layer sees in a PyTorch forward with Sign(0) = -1); PyTorch's module and the BiSRConv operator's
  function (inlined, run by ONNX Runtime) must agree on every activation sign bit and on the output up to
  float rounding.
- End to end (``scene_parity``): PSNR against ground truth of ONNX Runtime's cube vs PyTorch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from .. import bisrconv_op
from ..cassi import simulate_snapshot
from ..metrics import psnr
from ..model import BiSRNet, with_negative_sign
from ..reconstruct import bisr_conv_io, reconstruct
from .graph import bisr_conv_initializers, bisr_conv_node
from .exporter import IR_VERSION


def ort_session(model: onnx.ModelProto | str, threads: int = 1) -> ort.InferenceSession:
    """A stock ONNX Runtime CPU session (no custom-op library)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, measurement: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Raw snapshot [H, W+54] (+ mask [H, W]) -> cube float32 [28, H, W], through the exported graph."""
    feeds = {"measurement": np.asarray(measurement, dtype=np.float32)[None]}
    if mask is not None:
        feeds["mask"] = np.asarray(mask, dtype=np.float32)[None]
    return session.run(["cube"], feeds)[0][0]


@dataclass
class LayerParity:
    """One BiSRConv fed the same input on both sides."""

    name: str
    signs: int             # activation sign bits compared
    sign_mismatches: int   # bits where ONNX Runtime and PyTorch disagree
    zero_preacts: int      # k·X + b exactly 0 (where torch.sign would give 0, a tie)
    max_abs_diff: float    # max |Y_onnx - Y_torch|
    max_abs_ref: float     # max |Y_torch|


def single_op_model(module, name: str, shape: tuple[int, ...]) -> onnx.ModelProto:
    """One BiSRConv node, its function inlined, with the activation sign bits as a second output."""
    node = bisr_conv_node(module, name, "X", "Y")
    graph = helper.make_graph([node], name, [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape)],
                              bisr_conv_initializers(module, name))
    model = helper.make_model(graph, opset_imports=bisrconv_op.opset_imports(), functions=[bisrconv_op.function()],
                              ir_version=IR_VERSION)
    model = onnx.inliner.inline_local_functions(model)
    # The inliner renames the function's internal "a_pos" (activation > 0) to "a_pos__<n>".
    a_pos = next(out for n in model.graph.node for out in n.output if out.startswith("a_pos"))
    model.graph.output.append(helper.make_tensor_value_info(a_pos, TensorProto.BOOL, shape))
    return model


@torch.no_grad()
def layer_parity(model: BiSRNet, measurement: np.ndarray, mask: np.ndarray | None = None) -> list[LayerParity]:
    """Per-BiSRConv parity on the activations of one real input (raw snapshot [H, W+54], mask [H, W])."""
    reference = with_negative_sign(model)
    convs = reference.bisr_convs()
    inputs = {name: x for name, (x, _) in bisr_conv_io(reference, measurement, mask).items()}
    rows = []
    for name, module in convs.items():
        x = inputs[name]
        preact = module.move0(x)
        y_ref = module(x).numpy()
        session = ort_session(single_op_model(module, name, tuple(x.shape)))
        y, a_pos = session.run(None, {"X": x.numpy()})
        rows.append(LayerParity(name, a_pos.size, int(((preact > 0).numpy() != a_pos).sum()),
                                int((preact == 0).sum()), float(np.abs(y - y_ref).max()),
                                float(np.abs(y_ref).max())))
    return rows


@dataclass
class SceneParity:
    """End-to-end reconstruction of one scene with ground truth."""

    name: str
    psnr_torch: float        # PyTorch model as given (authors' Sign(0) = 0 by default) vs truth
    psnr_torch_neg: float    # PyTorch with Sign(0) = -1 vs truth
    psnr_onnx: float         # ONNX Runtime on the exported file vs truth
    psnr_onnx_vs_torch: float
    max_abs_diff: float      # max |cube_onnx - cube_torch|


def scene_parity(name: str, model: BiSRNet, session: ort.InferenceSession, cube: np.ndarray,
                 mask: np.ndarray) -> SceneParity:
    """Simulate the snapshot of ``cube`` [28, H, W] through ``mask`` [H, W]; reconstruct both ways; compare."""
    snapshot = simulate_snapshot(torch.from_numpy(cube)[None], torch.from_numpy(mask))[0].numpy()
    out_torch = reconstruct(model, snapshot, mask)
    out_neg = reconstruct(with_negative_sign(model), snapshot, mask)
    out_onnx = run_onnx(session, snapshot, mask)
    return SceneParity(name, psnr(out_torch, cube), psnr(out_neg, cube), psnr(out_onnx, cube),
                       psnr(out_onnx, out_torch), float(np.abs(out_onnx - out_torch).max()))
