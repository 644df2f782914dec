"""bisr_deploy.train: config checks, a short run that learns, crash-and-resume bit-exactness, DDP replicas,
the evaluate command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from bisr_deploy.checkpoint import load_checkpoint
from bisr_deploy.cli import main
from bisr_deploy.errors import BisrError
from bisr_deploy.train.config import load_config
from bisr_deploy.train.trainer import Trainer

from .conftest import KAIST_NPZ, REPO, SIM_PTH, STANDARD_MASK

# A tiny, fast run: 32 x 32 patches, batch 2, 8 steps per epoch, one thread.
TINY = ["data.patch_size=32", "data.samples_per_epoch=16", "train.batch_size=2", "train.threads=1",
        "data.val_synthetic=1", "data.val_size=32", "train.progress=false", "data.mask_size=64"]


def tiny(tmp_path, *extra) -> list[str]:
    return TINY + [f'train.output_dir="{tmp_path / "run"}"', *extra]


def test_config_rejects_unknown_keys_and_impossible_values(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = 2\nlearning_rate = 0.1\n")
    with pytest.raises(BisrError, match=r"unknown key\(s\) in \[train\]: learning_rate"):
        load_config(bad)
    bad.write_text("[optim]\nlr = 0.1\n")
    with pytest.raises(BisrError, match="unknown table"):
        load_config(bad)
    bad.write_text("[train\n")
    with pytest.raises(BisrError, match="not valid TOML"):
        load_config(bad)
    for override, message in [("data.patch_size=30", "multiple of 8"), ("train.epochs=0", "epochs must be positive"),
                              ("train.lr=-1", "lr"), ("data.synthetic_fraction=1.5", r"\[0, 1\]"),
                              ("train.batch_size=\"four\"", "expected int"), ("model.sign_approx=\"ste\"", "sign approximation"),
                              ("model.n_feat=32", "in_channels == out_channels == n_feat"), ("epochs=3", "section.key=value")]:
        with pytest.raises(BisrError, match=message):
            load_config(None, [override])
    config = load_config(None, ["train.epochs=3", "model.sign_approx=clip", 'data.keys=["img"]'])
    assert (config.train.epochs, config.model.sign_approx, config.data.keys) == (3, "clip", ["img"])


def test_cli_reports_bad_input_in_one_line_before_training(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    cases = [
        ["--set", "data.patch_size=30"],
        ["--set", f'data.train_folders=["{empty}"]'],
        ["--set", "train.unknown=1"],
        ["--resume"],
    ]
    for args in cases:
        result = CliRunner().invoke(main, ["train", "--output-dir", str(out), *args])
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
        assert not out.exists()


def test_wrong_band_count_and_foreign_architecture_fail_before_training(tmp_path):
    cubes = tmp_path / "cubes"
    cubes.mkdir()
    np.save(cubes / "a.npy", np.zeros((40, 40, 25), np.float32))
    with pytest.raises(BisrError, match="neither 28 nor 31 bands"):
        Trainer(load_config(None, tiny(tmp_path, f'data.train_folders=["{cubes}"]')))
    # --init with weights of another architecture (the authors' model has num_blocks [1, 1, 1]).
    with pytest.raises(BisrError, match="different BiSRNet architecture.*num_blocks"):
        Trainer(load_config(None, tiny(tmp_path, "model.num_blocks=[1, 1, 2]")), init=str(SIM_PTH))
    # --resume of a run made with another architecture.
    Trainer(load_config(None, tiny(tmp_path, "train.epochs=1", "data.samples_per_epoch=2")), log=lambda _: None).fit()
    with pytest.raises(BisrError, match="different BiSRNet architecture.*stage: 1 there, 2 in the config"):
        Trainer(load_config(None, tiny(tmp_path, "model.stage=2")), resume=True)
    with pytest.raises(BisrError, match="already holds a run"):
        Trainer(load_config(None, tiny(tmp_path)))
    with pytest.raises(BisrError, match="other settings for data.patch_size, train.lr; resume with the same"):
        Trainer(load_config(None, tiny(tmp_path, "train.epochs=1", "data.samples_per_epoch=2", "data.patch_size=40",
                                   "train.lr=0.1")), resume=True)
    # A damaged training state (not even a torch file).
    (tmp_path / "run" / "train_state.pt").write_bytes(b"garbage")
    with pytest.raises(BisrError, match="train_state.pt: not a usable training state"):
        Trainer(load_config(None, tiny(tmp_path)), resume=True)


def test_short_run_learns_and_writes_project_checkpoints(tmp_path):
    config = load_config(None, tiny(tmp_path, "train.epochs=4", "train.lr=2e-3", "data.samples_per_epoch=32",
                                    "train.checkpoint_every=5", "data.val_synthetic=2"))
    trainer = Trainer(config, log=lambda _: None)
    before = trainer.validate()["psnr"]
    trainer.fit()
    history = trainer.history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and trainer.global_step == 64
    assert history[-1]["psnr"] > before + 3, (before, history)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert ckpt.training["global_step"] == 64 and ckpt.training["config"]["data"]["patch_size"] == 32
    assert ckpt.provenance["source"].startswith("bisr-deploy") and ckpt.provenance["threads"] == 1
    model = ckpt.build_model()
    for name, value in model.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[name]), name
    best = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert best.training["last_validation"]["psnr"] == max(h["psnr"] for h in history)
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 4 and state["position"] == 0 and state["scheduler"]["last_epoch"] == 64


def _train_cmd(tmp_path, run_dir, *extra):
    overrides = TINY + [f'train.output_dir="{run_dir}"', "train.epochs=3", "train.checkpoint_every=1",
                        "data.synthetic_fraction=0.5", f'data.train_folders=["{tmp_path / "cubes"}"]']
    args = [sys.executable, "-c", "from bisr_deploy.cli import main; main()", "train"]
    for item in overrides:
        args += ["--set", item]
    return args + list(extra)


def _weights(path):
    return load_file(str(path))


def test_killed_run_resumes_bit_exactly(tmp_path):
    """SIGKILL mid-epoch, --resume, and the final weights equal an uninterrupted run's, bit for bit."""
    (tmp_path / "cubes").mkdir()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "cubes" / "c.npy", rng.uniform(0, 1, size=(40, 48, 31)).astype(np.float32))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = subprocess.run(_train_cmd(tmp_path, tmp_path / "full"), env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr

    crash_dir = tmp_path / "crash"
    proc = subprocess.Popen(_train_cmd(tmp_path, crash_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_path = crash_dir / "train_state.pt"
    killed_at = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if state_path.exists():
            try:
                state = torch.load(state_path, weights_only=True)
            except Exception:  # the file is replaced atomically, but it can vanish between exists() and load
                continue
            if state["global_step"] >= 11:  # epoch 2 of 3, step 3 of 8
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = state["global_step"]
                break
        time.sleep(0.02)
    assert proc.returncode == -signal.SIGKILL and killed_at is not None and killed_at < 24
    state = torch.load(state_path, weights_only=True)
    assert 0 < state["position"] < 8, "the kill must land mid-epoch"

    resumed = subprocess.run(_train_cmd(tmp_path, crash_dir, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "trained 24 steps" in resumed.stdout
    a, b = _weights(tmp_path / "full" / "checkpoint.safetensors"), _weights(crash_dir / "checkpoint.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Not trivially equal: training moved the weights away from their initial values.
    init = torch.load(state_path, weights_only=True)  # resumed final state
    assert init["global_step"] == 24
    fa = torch.load(tmp_path / "full" / "train_state.pt", weights_only=True)
    assert fa["history"] == init["history"]
    for group_a, group_b in zip(fa["optimizer"]["state"].values(), init["optimizer"]["state"].values()):
        assert torch.equal(group_a["exp_avg_sq"], group_b["exp_avg_sq"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, overrides: list[str]):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from bisr_deploy.train import distributed

    trainer = Trainer(load_config(None, overrides), log=lambda _: None)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    torch.save({"final": trainer.model.state_dict(), "initial": initial}, os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.teardown()


def test_two_process_ddp_replicas_stay_identical(tmp_path):
    overrides = tiny(tmp_path, "train.epochs=2", "data.samples_per_epoch=12", "train.checkpoint_every=2")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), overrides), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    moved = 0
    for key, value in r0["final"].items():
        assert torch.equal(value, r1["final"][key]), key
        assert torch.equal(r0["initial"][key], r1["initial"][key]), key
        moved += not torch.equal(value, r0["initial"][key])
    assert moved > 100  # 6 steps (12 samples / (2 x 2) x 2 epochs) changed most tensors
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert ckpt.provenance["world_size"] == 2 and ckpt.training["global_step"] == 6
    for key, value in ckpt.state_dict.items():
        assert torch.equal(value, r0["final"][key]), key


def test_evaluate_command_reproduces_the_authors_kaist_score(tmp_path):
    out = tmp_path / "table.md"
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", f"authors={SIM_PTH}", "--scene", str(KAIST_NPZ),
                                       "--key", "img", "--mask", str(STANDARD_MASK), "--synthetic", "2",
                                       "--size", "64", "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in result.output.splitlines()[2:]}
    assert set(rows) == {"kaist_crop128.npz", "synthetic-seed1", "synthetic-seed3", "**synthetic mean**"}
    assert abs(float(rows["kaist_crop128.npz"][0]) - 29.10) < 0.1  # the reference figure in ../shared/data/README.md
    assert 0.80 < float(rows["kaist_crop128.npz"][1]) < 0.86
    mean = (float(rows["synthetic-seed1"][0]) + float(rows["synthetic-seed3"][0])) / 2
    assert abs(float(rows["**synthetic mean**"][0]) - mean) < 0.006
    assert out.read_text().strip() == result.output.strip()
    bad = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(SIM_PTH)])
    assert bad.exit_code == 2 and "no scenes" in bad.output


def test_shipped_checkpoint_is_this_trainers_output(kaist, kaist_snapshot):
    """trained-sim was made by configs/train-shipped.toml and keeps its KAIST score (bisr_deploy/shipped/MODEL_CARD.md)."""
    from bisr_deploy.metrics import psnr
    from bisr_deploy.reconstruct import reconstruct

    ckpt = load_checkpoint("trained-sim")
    assert ckpt.config.mode == "sim" and ckpt.provenance["source"].startswith("bisr-deploy")
    recorded = ckpt.training["config"]
    expected = load_config(REPO / "configs" / "train-shipped.toml", ['train.output_dir="/tmp/shipped-run"']).to_dict()
    assert recorded == expected
    assert ckpt.training["global_step"] == ckpt.training["total_steps"] == 640
    cube, mask = kaist
    score = psnr(reconstruct(ckpt.build_model(), kaist_snapshot, mask), cube)
    assert abs(score - 20.05) < 0.3, score


def test_threads_per_process_share_the_cores():
    from bisr_deploy.train.distributed import threads_per_process

    assert threads_per_process(0, 1, 8) == (8, None)
    assert threads_per_process(0, 2, 2) == (1, None)
    assert threads_per_process(0, 4, 2) == (1, None)  # never 0
    assert threads_per_process(3, 2, 8) == (3, None)  # an explicit value that fits wins
    threads, warning = threads_per_process(2, 2, 2)  # train-small's old 2 under torchrun on 2 cores: 530 s vs 58 s
    assert threads == 1
    assert warning == "warning: train.threads = 2 x 2 processes exceeds the 2 cores; using 1 thread(s) per process"
