"""The CASSI forward model: dispersion geometry, shift/shift-back consistency, adjointness, errors."""

from __future__ import annotations

import pytest
import torch

from bisr_deploy.cassi import adjoint, shift, shift_back, simulate_snapshot
from bisr_deploy.errors import BisrError


def test_shift_places_band_c_at_step_times_c():
    cube = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4) + 1
    out = shift(cube, step=3)
    assert out.shape == (2, 3, 2, 4 + 3 * 2)
    for c in range(3):
        assert torch.equal(out[:, c, :, 3 * c : 3 * c + 4], cube[:, c])
        assert out[:, c].abs().sum() == cube[:, c].abs().sum()  # zeros elsewhere


@pytest.mark.parametrize("bands, step, h, w", [(28, 2, 8, 12), (5, 1, 3, 7), (31, 3, 4, 4)])
def test_shift_back_inverts_shift_per_band(bands, step, h, w):
    cube = torch.rand(1, bands, h, w)
    dispersed = shift(cube, step)
    # summing the dispersed bands and shifting back recovers each band where it does not overlap others:
    # here each band alone
    for c in range(bands):
        single = torch.zeros_like(dispersed)
        single[:, c] = dispersed[:, c]
        assert torch.equal(shift_back(single.sum(1), bands, step)[:, c], cube[:, c])


def test_snapshot_by_hand():
    cube = torch.tensor([[[[1.0, 2.0]], [[10.0, 20.0]]]])  # 2 bands, 1 x 2
    mask = torch.tensor([[1.0, 0.5]])
    # band 0 at columns 0..1: [1, 1]; band 1 at columns 1..2: [10, 10] -> [1, 11, 10]
    assert simulate_snapshot(cube, mask, step=1).tolist() == [[[1.0, 11.0, 10.0]]]


def test_adjoint_identity():
    g = torch.Generator().manual_seed(1)
    x, mask = torch.rand(2, 28, 6, 10, generator=g), torch.rand(6, 10, generator=g)
    y = torch.rand(2, 6, 10 + 54, generator=g)
    lhs = (simulate_snapshot(x.double(), mask.double()) * y.double()).sum()
    rhs = (x.double() * adjoint(y.double(), mask.double())).sum()
    assert torch.allclose(lhs, rhs)


def test_inconsistent_sizes_fail_clearly():
    with pytest.raises(BisrError, match=r"mask shape \(4, 4\) does not match the scene's \(4, 5\)"):
        simulate_snapshot(torch.rand(1, 28, 4, 5), torch.rand(4, 4))
    with pytest.raises(BisrError, match="too small for 28 bands"):
        shift_back(torch.rand(1, 4, 54))
    with pytest.raises(BisrError, match=r"must be \[B, C, H, W\]"):
        shift(torch.rand(28, 4, 4))
