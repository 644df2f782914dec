"""Parameter and operation counts in the paper's conventions (§4, "Params = Params_b + Params_f").

- Binarized parameters: the real-valued weights of the BiSR-Conv convolutions (stored as 1 bit each when
  deployed). Full-precision: every other parameter. Paper convention: binarized / 32 + full-precision.
- MACs: multiply-accumulates of every convolution at a given input size, counted by running the model once
  with forward hooks. Binarized MACs are those of the BiSR-Conv convolutions. Paper convention for OPs:
  binarized MACs / 64 + full-precision MACs (only convolutions are counted, as the paper's Table 1 does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .model import BiSRNet, HardBinaryConv


@dataclass
class Complexity:
    params_binary: int
    params_full: int
    macs_binary: int
    macs_full: int

    @property
    def params_paper(self) -> float:
        return self.params_binary / 32 + self.params_full

    @property
    def ops_paper(self) -> float:
        return self.macs_binary / 64 + self.macs_full


def count(model: BiSRNet, height: int = 256, width: int = 256) -> Complexity:
    """Counts for one forward pass of ``model`` on a height x width scene."""
    binary_params = {id(m.weight) for m in model.modules() if isinstance(m, HardBinaryConv)}
    params_binary = sum(p.numel() for p in model.parameters() if id(p) in binary_params)
    params_full = sum(p.numel() for p in model.parameters() if id(p) not in binary_params)
    macs = {"binary": 0, "full": 0}

    def hook(module: nn.Conv2d, inputs, output):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        macs["binary" if isinstance(module, HardBinaryConv) else "full"] += output.numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            h = torch.zeros(1, model.n_bands, height, width)
            model(h, h if model.mode == "sim" else None)
    finally:
        for handle in handles:
            handle.remove()
    return Complexity(params_binary, params_full, macs["binary"], macs["full"])
