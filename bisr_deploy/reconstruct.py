"""One reconstruction from a raw snapshot: validation, the authors' preprocessing, the network.

Contract: ``measurement`` float [H, W + step*(C-1)] (raw sensor snapshot), ``mask`` float [H, W] for
simulation-mode models; result float32 [C, H, W]. Real-mode results are clamped to [0, 1] as the authors'
test code does; simulation-mode results are returned as the network computes them.
"""

from __future__ import annotations

import numpy as np
import torch

from .frontend import SnapshotFrontend
from .model import BiSRNet
from .snapshot import validate_inputs


@torch.no_grad()
def bisr_conv_io(model: BiSRNet, measurement: np.ndarray, mask: np.ndarray | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{BiSR-Conv name: (its input X, its output Y)}, each [1, C, H, W] float32, from one forward pass of
    ``model`` on a raw snapshot [H, W'] (+ mask [H, W])."""
    measurement, mask = validate_inputs(measurement, mask, model.mode, model.n_bands)
    captured = {}
    hooks = [conv.register_forward_hook(lambda m, args, out, name=name: captured.__setitem__(name, (args[0], out)))
             for name, conv in model.bisr_convs().items()]
    try:
        frontend = SnapshotFrontend(model.mode, model.n_bands)
        model(*frontend(torch.from_numpy(measurement)[None], None if mask is None else torch.from_numpy(mask)[None]))
    finally:
        for hook in hooks:
            hook.remove()
    return captured


@torch.no_grad()
def reconstruct(model: BiSRNet, measurement: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Raw snapshot [H, W'] (+ mask [H, W]) -> cube float32 [C, H, W]."""
    measurement, mask = validate_inputs(measurement, mask, model.mode, model.n_bands)
    frontend = SnapshotFrontend(model.mode, model.n_bands)
    y = torch.from_numpy(measurement)[None]
    m = torch.from_numpy(mask)[None] if mask is not None else None
    h, mask3d = frontend(y, m)
    out = model(h, mask3d)
    if model.mode == "real":
        out = out.clamp(0.0, 1.0)
    return out[0].numpy().astype(np.float32)
