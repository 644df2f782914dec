"""Checkpoints: project round trip, safe import of the authors' files, refusal of code-execution payloads."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

from bisr_deploy.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from bisr_deploy.errors import BisrError
from bisr_deploy.model import BiSRNetConfig
from bisr_deploy.safe_pickle import read_tensors

from .conftest import REAL_PTH, SIM_PTH


class _Payload:
    """Pickles to a call of os.system — what a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_project_format_round_trip(tmp_path, sim_checkpoint):
    path = tmp_path / "model.safetensors"
    ckpt = Checkpoint(sim_checkpoint.config, sim_checkpoint.state_dict, {"epochs": 3}, {"note": "test"})
    save_checkpoint(ckpt, path)
    loaded = load_checkpoint(path)
    assert loaded.config == sim_checkpoint.config
    assert loaded.training == {"epochs": 3} and loaded.provenance == {"note": "test"}
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in sim_checkpoint.state_dict.items())
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left


def test_real_checkpoint_is_read_without_unpickling_its_classes():
    tensors = read_tensors(str(REAL_PTH))
    assert len(tensors) == 457
    sim = torch.load(SIM_PTH, map_location="cpu", weights_only=True)
    assert set(tensors) == set(sim)
    assert tensors["body.0.embedding.binary_conv.weight"].shape == (28, 28, 3, 3)
    # the real model is a different training run: same names, different values
    assert not torch.equal(tensors["conv_in.weight"], sim["conv_in.weight"])


@pytest.mark.parametrize("wrap", [lambda p: p, lambda p: {"conv_in.weight": torch.zeros(1), "evil": p}])
def test_code_execution_payload_is_refused_without_running(tmp_path, wrap):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save(wrap(_Payload(marker)), path)
    with pytest.raises(BisrError, match=r"refusing to load: .*(posix|os)\.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_foreign_files(tmp_path):
    data = SIM_PTH.read_bytes()
    truncated = tmp_path / "half.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BisrError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a model\n")
    with pytest.raises(BisrError, match="not a checkpoint"):
        load_checkpoint(text)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(BisrError, match="not a checkpoint"):
        load_checkpoint(empty)
    with pytest.raises(BisrError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pth")


def test_storage_missing_from_archive(tmp_path):
    broken = tmp_path / "broken.pth"
    with zipfile.ZipFile(REAL_PTH) as src, zipfile.ZipFile(broken, "w") as dst:
        names = src.namelist()
        dropped = next(n for n in names if "/data/" in n)
        for name in names:
            if name != dropped:
                dst.writestr(name, src.read(name))
    with pytest.raises(BisrError, match="truncated or corrupt: storage .* is missing"):
        load_checkpoint(broken)


def test_other_architecture_is_refused(tmp_path):
    other = {"conv_in.weight": torch.zeros(16, 16, 3, 3), "conv_out.weight": torch.zeros(16, 16, 3, 3),
             "body.0.embedding.move0.k": torch.zeros(1, 16, 1, 1)}
    torch.save(other, tmp_path / "x.pth")
    with pytest.raises(BisrError, match="does not fit the BiSRNet architecture"):
        load_checkpoint(tmp_path / "x.pth").build_model()
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "y.pth")
    with pytest.raises(BisrError, match="not a BiSRNet checkpoint"):
        load_checkpoint(tmp_path / "y.pth")


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    with pytest.raises(BisrError, match="not a bisr-deploy checkpoint"):
        load_checkpoint(tmp_path / "w.safetensors")


def test_config_validation():
    with pytest.raises(BisrError, match="unknown input mode"):
        BiSRNetConfig(mode="video").validate()
    with pytest.raises(BisrError, match="unknown sign approximation"):
        BiSRNetConfig(sign_approx="relu").validate()
