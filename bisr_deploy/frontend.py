"""Raw snapshot -> network input, exactly as the authors' test code prepares it. Traceable for ONNX export.

- ``sim``: measurement Y [B, H, W+step*(C-1)] is scaled by 2/C (``Y / C * 2``) and shifted back into C bands
  (band c = columns [step*c, step*c+W)); the 2-D mask [B, H, W] is repeated over the C bands.
- ``real``: Y is clipped to [0, 1], scaled to ``Y / max(Y) * 0.8`` (in float64, as the authors' numpy code
  does), then split into the same C shifted crops. No mask is used.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import BisrError

REAL_PEAK = 0.8


class SnapshotFrontend(nn.Module):
    """``forward(measurement [B,H,W'], mask [B,H,W] | None) -> (h [B,C,H,W], mask3d [B,C,H,W] | None)``."""

    def __init__(self, mode: str, n_bands: int = 28, step: int = 2):
        super().__init__()
        self.mode = mode
        self.n_bands = n_bands
        self.step = step

    def crops(self, y: torch.Tensor) -> torch.Tensor:
        width = y.shape[-1] - self.step * (self.n_bands - 1)
        return torch.stack([y[:, :, self.step * c : self.step * c + width] for c in range(self.n_bands)], dim=1)

    def forward(self, measurement: torch.Tensor, mask: torch.Tensor | None = None):
        if self.mode == "sim":
            if mask is None:
                raise BisrError("a simulation-mode model needs the 2-D mask (--mask)")
            h = self.crops(measurement / self.n_bands * 2)
            return h, mask.unsqueeze(1).expand(-1, self.n_bands, -1, -1)
        y = measurement.double().clamp(0.0, 1.0)
        y = y / y.amax(dim=(-2, -1), keepdim=True) * REAL_PEAK
        return self.crops(y.float()), None
