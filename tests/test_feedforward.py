"""The band-fused ConvBlock FeedForward kernel (bisr_deploy/compile/feedforward.py): the same bits as the five
per-layer kernels it replaces, per-band intermediates, and the band height rule."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from bisr_deploy.compile.bitserial import BiSRConvSpec, Fusion, bisrconv_primfunc
from bisr_deploy.compile.feedforward import (FeedForwardSpec, band_bytes, band_rows, feedforward_compute,
                                             feedforward_primfunc)
from bisr_deploy.compile.lowering import kernel_params
from bisr_deploy.compile.schedule import Schedule
from bisr_deploy.compile.targets import resolve_target

from .test_compile import random_case

pytestmark = pytest.mark.needs_tvm
tvm = pytest.importorskip("tvm")
TARGET = resolve_target("x86", "native")


def _stage_params(rng, spec: FeedForwardSpec) -> list[list[np.ndarray]]:
    """Random parameters of every stage, in its kernel's argument order after X (without the last R)."""
    out = []
    for stage, fusion in spec.stages:
        c, c_out = stage.channels, fusion.output_channels(stage)
        params = []
        for _ in range(fusion.layers):
            _, inputs, _ = random_case(rng, c, spec.height, spec.width, stage.kernel[0], stage.group)
            params += kernel_params(type("Node", (), {"spec": stage, "inputs": inputs})).values()
        if fusion.norm:
            params += [rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)]
        if fusion.post:
            params += [rng.standard_normal(c_out).astype(np.float32), rng.random(c_out).astype(np.float32),
                       rng.standard_normal(c_out).astype(np.float32)]
        out.append(params)
    return out


def _run(func, name: str, args, out_shape) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({name: func}), target=TARGET.tvm_target)
    out = tvm.runtime.empty(out_shape, "float32")
    lib[name](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args), out)
    return out.numpy()


@pytest.mark.parametrize("dim,h,w,band,lanes,pixel_block", [
    (28, 13, 11, 4, TARGET.lanes, 1),  # BiSRNet's first level at an odd size: 1-lane vectors, 4 does not divide 13
    (8, 6, 16, 8, 4, 4),  # one band taller than the image; 8 ch -> 16 -> 32; NEON's 4 lanes x 4-vector blocks
    (12, 7, 8, 2, TARGET.lanes, 1),  # 12 -> 24 -> 48 channels: the 3x3's 12 groups of 4 in one word, 48 span two
    (28, 5, 32, 2, TARGET.lanes, 4),  # rows of 16-lane vectors: on AVX-512 every stage's epilogue table
])
def test_feedforward_kernel_bit_identical_to_per_layer_kernels(dim, h, w, band, lanes, pixel_block):
    """The fused kernel gives exactly the bits of the five per-layer kernels run one after the other
    (LayerNorm + FusionUp, FusionUp + RPReLU, grouped 3x3 + RPReLU, FusionDown, FusionDown + residual)."""
    rng = np.random.default_rng(dim * h + w)
    spec = FeedForwardSpec(1, dim, h, w)
    x = (3 * rng.standard_normal((1, dim, h, w)) + rng.standard_normal((1, 1, h, w))).astype(np.float32)
    params = _stage_params(rng, spec)
    schedule = dataclasses.replace(TARGET.schedule, lanes=lanes, pixel_block=pixel_block)
    fused = _run(feedforward_primfunc(spec, schedule, band), "feedforward",
                 [x, *(p for stage in params for p in stage)], x.shape)
    y = x
    for (stage, fusion), stage_params in zip(spec.stages, params):
        residual = [x] if fusion.residual else []
        y = _run(bisrconv_primfunc(stage, TARGET.schedule, fusion), "bisrconv", [y, *stage_params, *residual],
                 (1, fusion.output_channels(stage), h, w))
    assert np.abs(y).max() > 0 and np.isfinite(y).all()
    assert np.abs(fused - y).max() == 0


def test_feedforward_intermediates_live_per_band():
    """Lowered TIR: the band loop is the outermost loop and parallel, and every intermediate of 2C/4C channels
    is allocated inside it with the band's rows only (band + 2 before the 3x3, band after it)."""
    spec, band = FeedForwardSpec(1, 28, 64, 32), 4
    mod = tvm.IRModule({"main": feedforward_primfunc(spec, TARGET.schedule, band)})
    lowered = tvm.transform.Sequential([tvm.s_tir.transform.LowerInitBlock(),
                                        tvm.s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
                                        tvm.s_tir.transform.ConvertBlocksToOpaque(),
                                        tvm.s_tir.transform.CompactBufferAllocation()])(mod)
    text = lowered.script()
    loops = re.findall(r"for (\w+) in (T\.parallel|range|T\.serial)\((\d+)\)", text)
    assert loops[0][1] == "T.parallel" and int(loops[0][2]) == 64 // band
    band_body = text[text.index(loops[0][0]):]
    shapes = {name: [int(d) for d in dims.split(", ")]
              for name, dims in re.findall(r"(s\d_\w+) = T\.sblock_alloc_buffer\(\(([\d, ]+)\)", band_body)}
    expected_rows = {"s1_epilogue": band + 2, "s2_epilogue": band + 2, "s3_pack": band + 2, "s3_pad": band + 2,
                     "s3_epilogue": band, "s4_epilogue": band}
    assert {name: shapes[name][2] for name in expected_rows} == expected_rows
    assert [shapes[name][1] for name in ("s1_epilogue", "s2_epilogue", "s3_epilogue", "s4_epilogue")] == \
        [2 * 28, 4 * 28, 4 * 28, 2 * 28]


def test_band_rows_from_the_l2():
    """The band is the tallest whose busiest stage (input + output rows, float32) fits the L2 fraction."""
    spec = FeedForwardSpec(1, 28, 256, 256)
    assert band_bytes(spec, 8) == 4 * 256 * (4 * 28 * 10 + 4 * 28 * 8)  # the grouped 3x3 reads band + 2 rows
    for l2, rows in ((2 << 20, 8), (1 << 20, 3), (512 << 10, 1), (64 << 10, 1)):
        assert band_rows(spec, Schedule(lanes=16, l2_bytes=l2)) == rows
    assert band_rows(FeedForwardSpec(1, 28, 5, 8), Schedule(lanes=16, l2_bytes=1 << 30)) == 5  # the whole image
    assert resolve_target("arm").schedule.l2_bytes == 512 << 10  # Cortex-A76's, the documented ARM choice
    assert resolve_target("x86", "znver4").schedule.l2_bytes == 1 << 20


def test_feedforward_spec_stages_and_inputs():
    spec = FeedForwardSpec(1, 28, 8, 16)
    assert [(s.channels, s.kernel, s.group, f) for s, f in spec.stages] == [
        (28, (1, 1), 1, Fusion("concat", norm_epsilon=1e-5)), (56, (1, 1), 1, Fusion("concat", post=True)),
        (112, (3, 3), 28, Fusion(post=True)), (56, (1, 1), 1, Fusion("mean")),
        (28, (1, 1), 1, Fusion("mean", residual=True))]
    assert spec.name == "bisrconv_feedforward_28x8x16"
    # per output pixel: FusionUp 2 x 28·28, FusionUp 2 x 56·56, 3x3 112 x 4·9, FusionDown 2 x 56·56, 2 x 28·28
    assert spec.binary_macs == 8 * 16 * (2 * 28 * 28 + 2 * 56 * 56 + 112 * 4 * 9 + 2 * 56 * 56 + 2 * 28 * 28)
    inputs, y = feedforward_compute(spec)
    assert inputs[0].name == "X" and "s5_R" not in [t.name for t in inputs]  # the residual is the block input
    assert [int(d) for d in y.shape] == [1, 28, 8, 16] and len(inputs) == 1 + 9 * 9 + 2 + 3 * 2
    assert BiSRConvSpec(1, 112, 8, 16, (3, 3), (1,) * 4, 28).binary_macs == 112 * 8 * 16 * 4 * 9
