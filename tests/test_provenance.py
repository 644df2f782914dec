"""The weights' provenance record from checkpoint to ONNX metadata to the artifact manifest, and verify's check."""

import pytest

from bisr_deploy import provenance
from bisr_deploy.errors import BisrError
from bisr_deploy.fileio import file_sha256


def test_chain_from_checkpoint_to_manifest(tmp_path):
    ckpt_file = tmp_path / "weights.safetensors"
    ckpt_file.write_bytes(b"weights")
    meta = {"bisr.mode": "sim", **provenance.onnx_metadata({"file": "bisrnet.pth", "sha256": "ab" * 32})}
    assert meta["bisr.source.file"] == "bisrnet.pth"
    source = provenance.artifact_source("cd" * 32, meta, provenance.checkpoint_origin(ckpt_file))
    assert source == {"onnx_sha256": "cd" * 32, "checkpoint": "weights.safetensors",
                      "checkpoint_sha256": file_sha256(ckpt_file), "bisr.source.file": "bisrnet.pth",
                      "bisr.source.sha256": "ab" * 32}


def test_check_same_weights(tmp_path):
    mine, other = tmp_path / "mine.safetensors", tmp_path / "other.safetensors"
    mine.write_bytes(b"mine")
    other.write_bytes(b"other")
    compiled = provenance.artifact_source("00" * 32, {}, provenance.checkpoint_origin(mine))
    provenance.check_same_weights(compiled, mine, {})
    with pytest.raises(BisrError, match="compiled from another checkpoint"):
        provenance.check_same_weights(compiled, other, {})
    # an artifact compiled from an exported ONNX file records the checkpoint's provenance: the file a
    # converted checkpoint came from is accepted through the checkpoint's own provenance sha256
    from_onnx = provenance.artifact_source("00" * 32, provenance.onnx_metadata({"sha256": "ab" * 32}),
                                           provenance.onnx_file_origin(other))
    provenance.check_same_weights(from_onnx, mine, {"sha256": "ab" * 32})
    with pytest.raises(BisrError, match="compiled from another checkpoint"):
        provenance.check_same_weights(from_onnx, mine, {"sha256": "ef" * 32})
    provenance.check_same_weights(provenance.artifact_source("00" * 32, {}, None), other, {})  # records none
