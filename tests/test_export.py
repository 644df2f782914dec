"""ONNX export: bit packing, the ai.bisr function against PyTorch, graph contract, parity, TVM import, CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from bisr_deploy.cassi import simulate_snapshot
from bisr_deploy.bitpack import pack_sign_bits, packed_row_bytes, unpack_sign_bits
from bisr_deploy.cli import main
from bisr_deploy.errors import BisrError
from bisr_deploy.export import export_onnx, save_onnx, strip_custom_ops
from bisr_deploy.bisrconv_op import DOMAIN, OP_TYPE
from bisr_deploy.export.clean import inference_problems
from bisr_deploy.export.parity import layer_parity, ort_session, run_onnx, scene_parity, single_op_model
from bisr_deploy.model import with_negative_sign
from bisr_deploy.fileio import load_array
from bisr_deploy.frontend import SnapshotFrontend
from bisr_deploy.metrics import psnr
from bisr_deploy.model import BiSRConv
from bisr_deploy.reconstruct import bisr_conv_io, reconstruct

from .conftest import CAVE_SCENES, REAL_SCENES, SIM_PTH, STANDARD_MASK

pytestmark = pytest.mark.needs_data

CAVE_CLOTH = CAVE_SCENES / "cloth_ms_256.mat"

N_BINARY_WEIGHTS = 611_072


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the intermediate tensors ``names`` (shapes from value_info)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    infos = {v.name: v for v in out.graph.value_info}
    out.graph.output.extend([infos[name] for name in names])
    return out


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """PyTorch's own result moves with the thread count (sign flips); parity runs both sides on 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sim_onnx_64(sim_checkpoint):
    return export_onnx(sim_checkpoint, 64, 64)


@pytest.fixture(scope="module")
def real_onnx_64(real_checkpoint):
    return export_onnx(real_checkpoint, 64, 64)


def _real_crop(size: int) -> np.ndarray:
    meas = load_array(REAL_SCENES / "scene1.mat", "meas_real").astype(np.float32)
    r0, c0 = (meas.shape[0] - size) // 2, (meas.shape[1] - size - 54) // 2
    return np.ascontiguousarray(meas[r0:r0 + size, c0:c0 + size + 54])


# ---- bit packing ------------------------------------------------------------------------------------------
def test_pack_layout_by_hand():
    w = -np.ones((2, 1, 3, 3), dtype=np.float32)
    w[0] = 0.5                       # all 9 taps +1 -> bits 0..8 set
    w[1, 0, 2, 2] = 3.0              # j = 8 -> bit 0 of byte 1
    w[1, 0, 0, 1] = 0.1              # j = 1 -> bit 1 of byte 0
    w[1, 0, 0, 0] = 0.0              # Sign(0) = -1 -> bit 0
    bits = pack_sign_bits(w)
    assert bits.dtype == np.uint8 and bits.shape == (2, packed_row_bytes(1, 3, 3)) == (2, 2)
    assert bits.tolist() == [[0xFF, 0x01], [0x02, 0x01]]
    expected = np.where(w > 0, 1.0, -1.0)
    np.testing.assert_array_equal(unpack_sign_bits(bits, w.shape), expected)


def test_pack_roundtrip_grouped_shape():
    w = torch.randn(112, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    bits = pack_sign_bits(w)
    assert bits.shape == (112, 5)  # 36 taps -> 5 bytes, the last 4 padding bits 0
    assert not np.any(bits[:, -1] & 0xF0)
    np.testing.assert_array_equal(unpack_sign_bits(bits, (112, 4, 3, 3)), np.where(w.numpy() > 0, 1.0, -1.0))
    with pytest.raises(ValueError):
        unpack_sign_bits(bits, (112, 4, 1, 1))


# ---- the ai.bisr::BiSRConv function vs the PyTorch module -------------------------------------------------
@pytest.mark.parametrize("channels,kernel,padding,groups", [(28, 3, 1, 1), (112, 3, 1, 28), (56, 1, 0, 1)])
def test_function_matches_module(channels, kernel, padding, groups):
    gen = torch.Generator().manual_seed(channels + kernel)
    module = BiSRConv(channels, kernel, padding=padding, groups=groups, sign_zero="negative").eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        module.binary_conv.weight[0, 0, 0, 0] = 0.0                          # a zero weight -> -1
    x = torch.randn(1, channels, 12, 10, generator=gen)
    with torch.no_grad():
        x[0, 0, :2] = -module.move0.b[0, 0, 0, 0] / module.move0.k[0, 0, 0, 0]   # near-ties: k·x + b ~ 0
    session = ort_session(single_op_model(module, "layer", tuple(x.shape)))
    y, a_pos = session.run(None, {"X": x.numpy()})
    with torch.no_grad():
        y_ref = module(x).numpy()
        signs_ref = (module.move0(x) > 0).numpy()
    np.testing.assert_array_equal(a_pos, signs_ref)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=2e-6 * np.abs(y_ref).max())
    # The function reads the packed bits: flip one output channel's weights, re-export, both sides follow.
    with torch.no_grad():
        module.binary_conv.weight[1] *= -1
        y_flipped_ref = module(x).numpy()
    y_flipped = ort_session(single_op_model(module, "layer", tuple(x.shape))).run(None, {"X": x.numpy()})[0]
    np.testing.assert_allclose(y_flipped, y_flipped_ref, rtol=0, atol=2e-6 * np.abs(y_ref).max())
    assert np.abs(y_flipped - y).max() > 0.1


# ---- graph contract ---------------------------------------------------------------------------------------
def test_sim_graph_contract(sim_checkpoint, sim_onnx_64):
    model = sim_onnx_64
    onnx.checker.check_model(model, full_check=True)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 18), (DOMAIN, 1)}
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, dims(i)) for i in model.graph.input] == [("measurement", [1, 64, 118]), ("mask", [1, 64, 64])]
    assert [(o.name, dims(o)) for o in model.graph.output] == [("cube", [1, 28, 64, 64])]
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, OP_TYPE)]
    custom = [n for n in model.graph.node if n.domain == DOMAIN]
    torch_model = sim_checkpoint.build_model()
    assert [n.name for n in custom] == list(torch_model.bisr_convs())
    assert inference_problems(model) == []
    assert not any(n.op_type in ("Tanh", "Reshape", "Shape") for n in model.graph.node)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    packed_bits = 0
    for node in custom:
        conv = torch_model.bisr_convs()[node.name].binary_conv
        bits = inits[f"{node.name}.weight_bits"]
        np.testing.assert_array_equal(bits, pack_sign_bits(conv.weight))
        np.testing.assert_array_equal(inits[f"{node.name}.weight_scale"], conv.weight_scale().reshape(-1).numpy())
        packed_bits += conv.weight.numel()
    assert packed_bits == N_BINARY_WEIGHTS
    # No fp32 copy of any binary weight is left in the file.
    assert not any(name.endswith("binary_conv.weight") for name in inits)
    assert {p.key: p.value for p in model.metadata_props}["bisr.mode"] == "sim"


def test_inference_problems_are_detected(sim_onnx_64):
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(sim_onnx_64)
    model.graph.node.append(helper.make_node("Tanh", ["cube"], ["t"], name="ste"))
    model.graph.node.append(helper.make_node("Add", ["conv_in.weight", "conv_in.weight"], ["c"], name="const"))
    model.graph.value_info[0].type.tensor_type.shape.dim[0].dim_param = "N"
    problems = inference_problems(model)
    assert "ste: Tanh in an inference graph" in problems
    assert "const: computes a constant (not folded)" in problems
    assert any(p.endswith(f"tensor {model.graph.value_info[0].name} has a dynamic shape") for p in problems)


def test_file_is_several_times_smaller_than_fp32(sim_checkpoint, tmp_path):
    size = save_onnx(export_onnx(sim_checkpoint, 256, 256), tmp_path / "sim256.onnx")
    fp32_bytes = 4 * sum(p.numel() for p in sim_checkpoint.build_model().parameters())
    assert fp32_bytes == 4 * 659_319
    assert size < fp32_bytes / 5
    onnx.checker.check_model(str(tmp_path / "sim256.onnx"), full_check=True)


@pytest.mark.parametrize("which", ["sim", "real"])
def test_tvm_relax_imports_all_but_custom_ops(which, sim_onnx_64, real_onnx_64):
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    model = sim_onnx_64 if which == "sim" else real_onnx_64
    standard = {n.op_type for n in model.graph.node if n.domain != DOMAIN}
    assert standard <= set(_get_convert_map())
    stripped = strip_custom_ops(model)
    assert not stripped.functions and all(n.domain == "" for n in stripped.graph.node)
    onnx.checker.check_model(stripped, full_check=True)
    mod = from_onnx(stripped)
    assert str(mod["main"].ret_ty) == 'R.Tensor((1, 28, 64, 64), dtype="float32")'


# ---- preprocessing inside the graph -----------------------------------------------------------------------
def test_sim_preprocessing_bit_exact(sim_onnx_64, kaist_snapshot, kaist):
    meas, mask = kaist_snapshot[:64, :118], kaist[1][:64, :64]
    session = ort_session(_with_outputs(sim_onnx_64, ["fution_input"]))
    _, fused_in = session.run(None, {"measurement": meas[None], "mask": mask[None]})
    h, mask3d = SnapshotFrontend("sim")(torch.from_numpy(meas)[None], torch.from_numpy(mask)[None])
    np.testing.assert_array_equal(fused_in, torch.cat([h, mask3d], dim=1).numpy())


def test_real_preprocessing_and_clamp(real_onnx_64):
    meas = _real_crop(64) * 3.0 - 0.5          # values outside [0, 1] exercise the clip
    session = ort_session(_with_outputs(real_onnx_64, ["frontend.shift_back"]))
    cube, h = session.run(None, {"measurement": meas[None]})
    np.testing.assert_array_equal(h, SnapshotFrontend("real")(torch.from_numpy(meas)[None])[0].numpy())
    assert cube.min() >= 0.0 and cube.max() <= 1.0


# ---- parity -----------------------------------------------------------------------------------------------
def test_layer_parity_kaist(sim_checkpoint, kaist_snapshot, kaist):
    rows = layer_parity(sim_checkpoint.build_model(), kaist_snapshot, kaist[1])
    assert len(rows) == 59
    assert sum(r.signs for r in rows) == 27_869_184
    assert sum(r.sign_mismatches for r in rows) == 0
    for r in rows:
        assert r.max_abs_diff <= 1e-5 * r.max_abs_ref, r


def test_end_to_end_psnr_kaist(sim_checkpoint, kaist):
    cube, mask = kaist
    model = sim_checkpoint.build_model()
    result = scene_parity("kaist", model, ort_session(export_onnx(sim_checkpoint, 128, 128)), cube, mask)
    assert 29.0 < result.psnr_torch < 29.2
    assert abs(result.psnr_onnx - result.psnr_torch) < 0.1
    assert abs(result.psnr_onnx - result.psnr_torch_neg) < 0.1
    assert result.psnr_onnx_vs_torch > 35.0


def test_end_to_end_standard_mask_scene(sim_checkpoint):
    """A second scene: a 64 x 64 crop of a CAVE scene (resampled to the 28 bands) under the standard mask."""
    from bisr_deploy.data.spectra import CAVE_WAVELENGTHS, to_cassi_bands

    raw = load_array(CAVE_CLOTH, "NRD")[96:160, 96:160].astype(np.float64) / 65535.0
    cube = np.clip(to_cassi_bands(np.ascontiguousarray(raw.transpose(2, 0, 1)), CAVE_WAVELENGTHS), 0, 1)
    mask = load_array(STANDARD_MASK, "mask").astype(np.float32)[:64, :64]
    model = sim_checkpoint.build_model()
    result = scene_parity("cave", model, ort_session(export_onnx(sim_checkpoint, 64, 64)), cube, mask)
    assert result.psnr_torch > 20.0
    assert abs(result.psnr_onnx - result.psnr_torch) < 0.1


def test_real_mode_parity(real_checkpoint, real_onnx_64):
    meas = _real_crop(64)
    model = real_checkpoint.build_model()
    rows = layer_parity(model, meas)
    assert sum(r.sign_mismatches for r in rows) == 0
    assert all(r.max_abs_diff <= 1e-5 * r.max_abs_ref for r in rows)
    out = run_onnx(ort_session(real_onnx_64), meas)
    assert psnr(out, reconstruct(model, meas)) > 30.0
    assert psnr(out, reconstruct(with_negative_sign(model), meas)) > 30.0


# ---- API and CLI errors -----------------------------------------------------------------------------------
def test_mode_override_and_sizes(sim_checkpoint):
    real_view = export_onnx(SIM_PTH, 64, 32, mode="real")
    assert [i.name for i in real_view.graph.input] == ["measurement"]
    assert [d.dim_value for d in real_view.graph.output[0].type.tensor_type.shape.dim] == [1, 28, 64, 32]
    for h, w in [(0, 64), (4, 64), (64, 7)]:
        with pytest.raises(BisrError, match=f"scene size {h} x {w} is too small: BiSRNet needs at least 8 x 8"):
            export_onnx(sim_checkpoint, h, w)
    with pytest.raises(BisrError, match="cannot be exported in real mode"):
        export_onnx(sim_checkpoint, 64, 64, mode="real")


@pytest.mark.parametrize("height, width", [(37, 45), (64, 56)])
def test_sizes_not_multiple_of_8_pad_inside_the_graph(sim_checkpoint, kaist, height, width):
    """Reflect padding before conv_in and the crop after the residual are in the graph exactly where
    BiSRNet.forward has them: conv_in sees the same padded tensor and the cube stays within the parity bound."""
    cube, mask = kaist
    cube, mask = np.ascontiguousarray(cube[:, :height, :width]), np.ascontiguousarray(mask[:height, :width])
    meas = simulate_snapshot(torch.from_numpy(cube)[None], torch.from_numpy(mask))[0].numpy()
    model = export_onnx(sim_checkpoint, height, width)
    ops = [node.op_type for node in model.graph.node]
    padded = height % 8 or width % 8
    assert ops.count("Pad") == ops.count("Slice") - 28 == (1 if padded else 0)  # 28 band crops in the frontend
    torch_model = with_negative_sign(sim_checkpoint.build_model())
    padded_input = bisr_conv_io(torch_model, meas, mask)["body.0.embedding"][0].numpy()  # conv_in's output
    assert padded_input.shape == (1, 28, -(-height // 8) * 8, -(-width // 8) * 8)
    out, conv_in = ort_session(_with_outputs(model, ["conv_in"])).run(
        ["cube", "conv_in"], {"measurement": meas[None], "mask": mask[None]})
    np.testing.assert_allclose(conv_in, padded_input, rtol=0, atol=1e-5)
    assert out.shape == (1, 28, height, width)
    assert psnr(out[0], reconstruct(torch_model, meas, mask)) > 35.0  # sign flips only (README)


def _invoke(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def test_cli_export(tmp_path):
    out = tmp_path / "m.onnx"
    result = _invoke("--checkpoint", SIM_PTH, "--output", out, "--height", 64, "--width", 64)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "59 ai.bisr::BiSRConv nodes" in result.output
    model = onnx.load(out)
    assert [i.name for i in model.graph.input] == ["measurement", "mask"]
    assert list(tmp_path.iterdir()) == [out]


def test_cli_default_checkpoint_is_the_authors_simulation_model(tmp_path):
    out = tmp_path / "default.onnx"
    result = _invoke("--output", out, "--height", 64, "--width", 64)
    assert result.exit_code == 0, result.output
    from_pth = export_onnx(SIM_PTH, 64, 64)
    default = onnx.load(out)
    for a, b in zip(default.graph.initializer, from_pth.graph.initializer, strict=True):
        assert a.name == b.name and a.raw_data == b.raw_data


def _foreign_checkpoints(tmp_path):
    resnetish = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, resnetish)
    wrong_shape = tmp_path / "wrong.pth"
    state = torch.load(SIM_PTH, map_location="cpu", weights_only=True)
    state["conv_out.weight"] = torch.zeros(28, 28, 5, 5)
    torch.save(state, wrong_shape)
    missing = tmp_path / "missing.pth"
    del state["body.0.mapping.move0.k"]
    torch.save(state, missing)
    return [resnetish, wrong_shape, missing]


def test_cli_bad_input(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [["--checkpoint", c, "--output", out_dir / "m.onnx"] for c in _foreign_checkpoints(tmp_path)]
    cases += [
        ["--checkpoint", SIM_PTH, "--output", out_dir / "m.onnx", "--height", 4],
        ["--checkpoint", SIM_PTH, "--output", out_dir / "m.onnx", "--width", 0],
        ["--checkpoint", SIM_PTH, "--output", blocker / "m.onnx", "--height", 64, "--width", 64],
        ["--checkpoint", SIM_PTH, "--output", out_dir, "--height", 64, "--width", 64],
        ["--checkpoint", tmp_path / "nope.pth", "--output", out_dir / "m.onnx"],
    ]
    for args in cases:
        result = _invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert "Traceback" not in result.output
        assert list(out_dir.iterdir()) == [] and blocker.read_text() == "x"


def test_save_onnx_failure_leaves_nothing(sim_onnx_64, tmp_path, monkeypatch):
    def failing_save(model, path):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", failing_save)
    with pytest.raises(BisrError, match="No space left"):
        save_onnx(sim_onnx_64, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
