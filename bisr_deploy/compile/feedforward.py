"""One kernel per ConvBlock FeedForward of BiSRNet, computed in bands of output rows.

BiSRNet's PreNorm(FeedForward) of ``dim`` channels is five fused kernels when run layer by layer
(``fusion.py``): LayerNorm + FusionUp (``concat``, dim -> 2·dim), FusionUp + RPReLU (-> 4·dim), the grouped
3x3 + RPReLU (4 channels per group), FusionDown (``mean``, -> 2·dim), FusionDown + the block residual
(-> dim). ``feedforward_compute`` chains exactly those five ``bitserial.bisrconv_compute`` stages (stage k's
names start with ``s<k>_``; each stage's X is the previous stage's output, the last stage's R is the
block's input), so the kernel computes the same float32 operations and gives the same bits.

``feedforward_primfunc`` splits the output rows into bands (the parallel unit); every earlier stage is
computed per band, over the rows the band needs (TIR infers them: the 3x3 adds one row above and below, so
the two FusionUps run on band + 2 rows), and each stage keeps its own schedule (``bitserial.schedule_stages``).
The intermediates (2·dim, 4·dim, 4·dim, 2·dim channels) are allocated per band and stay in the core's
cache instead of going through DRAM. ``band_rows`` sizes the band from the target's L2 (docs/compiler.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .bitserial import DEFAULT_NORM_EPSILON, BiSRConvSpec, Fusion, bisrconv_compute, schedule_stages
from .schedule import Schedule

# A band's working set (band_bytes: the busiest stage's input and output rows) may take this fraction of one
# core's L2: on the development machine (2 MiB L2) 5-8 rows of the 28 x 256 x 256 FeedForward (1.4-2.1 MB)
# were fastest and 10 rows slower again (tools/bench_feedforward.py; docs/compiler.md).
L2_FRACTION = 1.0


@dataclass(frozen=True)
class FeedForwardSpec:
    """One ConvBlock FeedForward: X [batch, dim, height, width] -> X + FeedForward(LayerNorm(X)), same shape."""

    batch: int
    dim: int
    height: int
    width: int
    norm_epsilon: float = DEFAULT_NORM_EPSILON

    @property
    def stages(self) -> tuple[tuple[BiSRConvSpec, Fusion], ...]:
        """The five fused kernels it replaces, in order: (spec, fusion) of each."""
        n, c, h, w = self.batch, self.dim, self.height, self.width
        one = lambda channels: BiSRConvSpec(n, channels, h, w, (1, 1), (0,) * 4, 1)  # noqa: E731
        return ((one(c), Fusion("concat", norm_epsilon=self.norm_epsilon)),
                (one(2 * c), Fusion("concat", post=True)),
                (BiSRConvSpec(n, 4 * c, h, w, (3, 3), (1,) * 4, c), Fusion(post=True)),
                (one(2 * c), Fusion("mean")),
                (one(c), Fusion("mean", residual=True)))

    @property
    def name(self) -> str:
        """The kernel's function name (the ``bisrconv`` prefix groups it with the BiSRConv kernels in reports)."""
        fusion = self.stages[0][1]
        tag = "" if fusion.norm_name == "norm" else f"_{fusion.norm_name}"
        return f"bisrconv_feedforward_{self.dim}x{self.height}x{self.width}{tag}"

    @property
    def binary_macs(self) -> int:
        """Binary multiply-accumulates of one call (all ten BiSRConvs)."""
        return sum(spec.binary_macs * fusion.layers for spec, fusion in self.stages)


def band_bytes(spec: FeedForwardSpec, rows: int) -> int:
    """The working set of a band of ``rows`` output rows: the most float32 bytes one stage reads and writes
    (its input and output rows; the FusionUps work on ``rows`` + 2, the 3x3's window)."""
    halo = min(rows + 2, spec.height)
    c = spec.dim
    channel_rows = max((c + 2 * c) * halo,  # LayerNorm + FusionUp: X -> 2C
                       (2 * c + 4 * c) * halo,  # FusionUp: 2C -> 4C
                       4 * c * halo + 4 * c * rows,  # grouped 3x3: 4C on the window's rows -> 4C
                       (4 * c + 2 * c) * rows,  # FusionDown: 4C -> 2C
                       (2 * c + c + c) * rows)  # FusionDown + residual: 2C, X -> C
    return 4 * spec.width * channel_rows


def band_rows(spec: FeedForwardSpec, schedule: Schedule) -> int:
    """Output rows per band: the most whose ``band_bytes`` fit ``L2_FRACTION`` of the core's L2 (at least 1)."""
    budget = L2_FRACTION * schedule.l2_bytes
    rows = 1
    while rows < spec.height and band_bytes(spec, rows + 1) <= budget:
        rows += 1
    return rows


def feedforward_compute(spec: FeedForwardSpec, schedule: Schedule | None = None):
    """TE tensors of the whole FeedForward: (inputs, Y). Inputs: X, then each stage's own inputs in its
    kernel's argument order without X (layer parameters, LayerNorm gamma and beta, RPReLU) and without the
    last stage's R (it is X). ``schedule``: the target's, which chooses the stages' epilogue tables and pack
    (``bitserial.bisrconv_compute``; None: neither)."""
    from tvm import te

    x = te.placeholder((spec.batch, spec.dim, spec.height, spec.width), "float32", name="X")
    inputs, y = [x], x
    for k, (stage, fusion) in enumerate(spec.stages, 1):
        own, y = bisrconv_compute(stage, fusion, xs=[y], residual=x if fusion.residual else None, prefix=f"s{k}_",
                                  schedule=schedule)
        inputs += own
    return inputs, y


def feedforward_primfunc(spec: FeedForwardSpec, schedule: Schedule, band: int):
    """The scheduled ``PrimFunc`` (params: ``feedforward_compute``'s inputs, then Y): bands of ``band`` output
    rows (of every image of the batch) in parallel; per band, stage 4 down to 1 computed just before the
    stage that reads them (``compute_at``: consumers first), each scheduled for the target's ``schedule``
    (``bitserial.schedule_stages``)."""
    from tvm import s_tir, te

    from . import neon

    inputs, output = feedforward_compute(spec, schedule)
    func = te.create_prim_func([*inputs, output]).with_attr("global_symbol", "feedforward")
    sch = s_tir.Schedule(func)
    stages = spec.stages
    n, o, y, xx = sch.get_loops(sch.get_sblock(f"s{len(stages)}_epilogue"))
    y_band, y_row = sch.split(y, [None, band])
    sch.reorder(n, y_band, o, y_row, xx)
    bands = sch.fuse(n, y_band)
    sch.parallel(bands)  # before the LayerNorm's reductions are decomposed (the check needs whole reductions)
    for k in range(len(stages), 0, -1):
        prefix = f"s{k}_"
        if k < len(stages):
            sch.compute_at(sch.get_sblock(prefix + "epilogue"), bands, preserve_unit_loops=True)
        schedule_stages(sch, *stages[k - 1], schedule, prefix, band=bands)
    # The rows before the 3x3 are clamped at the image border, a region TVM's buffer compaction cannot shrink:
    # a band touches at most band + 2 consecutive rows of them, so row y is stored at y mod (band + 2).
    halo = min(band + 2, spec.height)
    for name in ("s1_epilogue", "s2_epilogue", "s3_pack"):
        sch.transform_layout(sch.get_sblock(name), ("write", 0), lambda n, c, y, x: (n, c, y % halo, x),
                             assume_injective_transform=True)
    return neon.vectorize(sch.mod["main"], schedule)
