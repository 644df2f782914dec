"""The training loop: RMSE loss, Adam (0.9, 0.999), per-step cosine annealing, periodic validation and
crash-safe checkpoints.

Output directory (written by rank 0 only, every file atomically):
- ``checkpoint.safetensors``: the latest weights in the project format, with the training config and
  provenance in its metadata (written every ``train.checkpoint_every`` steps and at each epoch end);
- ``best.safetensors``: the weights with the best validation PSNR so far;
- ``train_state.pt``: everything ``--resume`` needs — weights, Adam and scheduler state, the python/numpy/torch
  RNG states, the epoch, the position inside it and the step count; tensors and plain containers only, so
  it is read with ``torch.load(weights_only=True)``;
- ``history.json``: the validation record.

Exactness: a sample is a pure function of (seed, epoch, index) and the order of an epoch of (seed, epoch)
(``datasets``), and the state file holds everything else that changes, so a run killed at any moment and
resumed ends with the same bits as an uninterrupted one (same machine, threads and world size).
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import platform
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__, progress
from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..errors import BisrError
from ..fileio import atomic_output
from ..frontend import SnapshotFrontend
from ..metrics import psnr, ssim
from ..model import BiSRNet
from ..reconstruct import reconstruct
from . import distributed
from .config import TrainConfig
from ..data.datasets import SampleMaker, epoch_order, load_folder, load_mask, validation_set

STATE_FILE = "train_state.pt"
CHECKPOINT_FILE = "checkpoint.safetensors"
BEST_FILE = "best.safetensors"
HISTORY_FILE = "history.json"
# Settings that may differ between a run and its resumption (they do not change what is computed).
_RESUMABLE_CHANGES = {"output_dir", "threads", "checkpoint_every", "val_every", "progress", "device"}


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Trainer:
    """Set up from a validated ``TrainConfig``: every input is checked in ``__init__``, before any step."""

    def __init__(self, config: TrainConfig, resume: bool = False, init: str | None = None, log=print):
        self.config, self.log = config, log
        d, t = config.data, config.train
        self.ctx = distributed.setup(t.device)
        threads, warning = distributed.threads_per_process(t.threads, self.ctx.world_size, distributed.usable_cores())
        torch.set_num_threads(threads)
        if warning and self.ctx.is_main:
            log(warning)
        self.out = Path(t.output_dir)
        state_path = self.out / STATE_FILE
        if resume and not state_path.is_file():
            raise BisrError(f"--resume: no training state {state_path} to resume from")
        if not resume and state_path.exists():
            raise BisrError(f"{self.out} already holds a run ({STATE_FILE}); pass --resume or choose another train.output_dir")
        if self.out.exists() and not self.out.is_dir():
            raise BisrError(f"train.output_dir {self.out} exists and is not a directory")
        if not resume and any((self.out / name).exists() for name in (CHECKPOINT_FILE, BEST_FILE, HISTORY_FILE)):
            raise BisrError(f"{self.out} already holds checkpoints or a history but no training state; "
                            "choose another train.output_dir rather than overwrite them")
        mask = load_mask(d)
        cubes = [cube for folder in d.train_folders for _, cube in load_folder(folder, d, d.patch_size)]
        noisy = config.model.mode == "real" or d.shot_noise
        self.samples = SampleMaker(d, mask, cubes, t.seed, noisy)
        self.val = validation_set(d, mask, noisy) if self.ctx.is_main else []
        self.steps_per_epoch = d.samples_per_epoch // (t.batch_size * self.ctx.world_size)
        if self.steps_per_epoch < 1:
            raise BisrError(f"data.samples_per_epoch {d.samples_per_epoch} is less than one global batch "
                            f"({t.batch_size} x {self.ctx.world_size} processes)")
        self.total_steps = self.steps_per_epoch * t.epochs

        torch.manual_seed(t.seed)
        self.model = BiSRNet.from_config(config.model)
        if init:
            self._load_init(init)
        self.model.to(self.ctx.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, betas=(0.9, 0.999))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.total_steps, eta_min=t.lr_min)
        self.frontend = SnapshotFrontend(config.model.mode, config.model.in_channels, config.model.step)
        self.epoch, self.position, self.global_step = 0, 0, 0
        self.elapsed, self.history, self.best_psnr = 0.0, [], -math.inf
        if resume:
            self._load_state(state_path)
        unused = config.model.mode == "real" or config.model.sign_approx != "tanh"
        self.ddp = distributed.wrap(self.model, self.ctx, find_unused=unused)
        if self.ctx.is_main:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BisrError(f"cannot create output directory {self.out}: {exc.strerror}") from exc

    # ----- loading -----------------------------------------------------------------------------------
    def _check_architecture(self, saved: dict, source: str) -> None:
        wanted = self.config.model.to_dict()
        differs = {k: (saved.get(k), v) for k, v in wanted.items() if k != "sign_approx" and saved.get(k) != v}
        if differs:
            detail = ", ".join(f"{k}: {a!r} there, {b!r} in the config" for k, (a, b) in sorted(differs.items()))
            raise BisrError(f"{source} holds a different BiSRNet architecture ({detail})")

    def _load_init(self, path: str) -> None:
        ckpt = load_checkpoint(path, self.config.model.mode)
        self._check_architecture(ckpt.config.to_dict(), path)
        self.model.load_state_dict(ckpt.state_dict, strict=True)

    def _load_state(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            saved_config = state["config"]
            self._check_architecture(saved_config["model"], str(path))
            now = self.config.to_dict()
            changed = [f"{section}.{key}" for section in ("model", "data", "train") for key, value in now[section].items()
                       if key not in _RESUMABLE_CHANGES and saved_config[section].get(key) != value]
            if changed:
                raise BisrError(f"{path}: the run was saved with other settings for {', '.join(changed)}; resume with the same")
            if state["world_size"] != self.ctx.world_size:
                raise BisrError(f"{path}: saved by {state['world_size']} process(es), resumed by {self.ctx.world_size}; use the same")
            self.model.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.position, self.global_step = state["epoch"], state["position"], state["global_step"]
            self.elapsed, self.history, self.best_psnr = state["elapsed"], state["history"], state["best_psnr"]
            _set_rng_state(state["rng"])
        except BisrError:
            raise
        except Exception as exc:  # torch.load raises UnpicklingError, RuntimeError, EOFError...; state dicts KeyError...
            if isinstance(exc, pickle.UnpicklingError):
                first = "corrupt, or holds more than tensors and plain containers"
            elif isinstance(exc, KeyError):
                first = f"no entry {exc}"
            else:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise BisrError(f"{path}: not a usable training state ({first})") from exc
        self.log(f"resumed {self.out} at epoch {self.epoch + 1}, step {self.global_step}/{self.total_steps}")

    # ----- saving ------------------------------------------------------------------------------------
    def _training_record(self) -> dict:
        last = self.history[-1] if self.history else {}
        return {"config": self.config.to_dict(), "epoch": self.epoch, "global_step": self.global_step,
                "total_steps": self.total_steps, "wall_time_s": round(self.elapsed, 1), "last_validation": last}

    def _provenance(self) -> dict:
        return {"source": f"bisr-deploy {__version__} train", "git_commit": _git_commit(), "torch": torch.__version__,
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "world_size": self.ctx.world_size,
                "device": self.ctx.device.type, "threads": torch.get_num_threads()}

    def _save(self, best: bool = False) -> None:
        if not self.ctx.is_main:
            return
        ckpt = Checkpoint(self.config.model, self.model.state_dict(), self._training_record(), self._provenance())
        save_checkpoint(ckpt, self.out / CHECKPOINT_FILE)
        if best:
            save_checkpoint(ckpt, self.out / BEST_FILE)
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "position": self.position,
                 "global_step": self.global_step, "elapsed": self.elapsed, "history": self.history,
                 "best_psnr": self.best_psnr, "rng": _rng_state(), "world_size": self.ctx.world_size,
                 "config": self.config.to_dict()}
        with atomic_output(self.out / STATE_FILE) as tmp:
            torch.save(state, tmp)

    # ----- the loop ----------------------------------------------------------------------------------
    def _step(self) -> float:
        t = self.config.train
        order = epoch_order(t.seed, self.epoch, self.config.data.samples_per_epoch)
        start = (self.position * self.ctx.world_size + self.ctx.rank) * t.batch_size
        truth, mask, y = self.samples.batch(self.epoch, order[start : start + t.batch_size])
        dev = self.ctx.device
        h, mask3d = self.frontend(y.to(dev), mask.to(dev))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=t.amp and dev.type == "cuda"):
            out = self.ddp(h, mask3d)
        loss = torch.sqrt(F.mse_loss(out.float(), truth.to(dev)))
        if not distributed.all_true(bool(torch.isfinite(loss.detach())), self.ctx):
            self._stop(f"the loss is {float(loss.detach())} (not finite)")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self._stop("the weights are no longer finite after this step")
        return float(loss.detach())

    def _stop(self, why: str) -> None:
        """End a diverged run with a ``BisrError``; the checkpoint files keep the last finite weights."""
        kept = self.out / CHECKPOINT_FILE
        keeps = f"{kept} keeps the last good weights" if kept.is_file() else "no checkpoint was written"
        raise BisrError(f"training stopped at epoch {self.epoch + 1}, step {self.global_step + 1}: {why}; {keeps} "
                        "(try a smaller train.lr)")

    def validate(self) -> dict:
        """PSNR/SSIM (``bisr_deploy.metrics``) of each validation scene and their means."""
        model = self.model if self.ctx.device.type == "cpu" else copy.deepcopy(self.model).cpu()
        model.eval()
        scenes = {}
        for name, truth, mask, y in self.val:
            cube = reconstruct(model, y, mask)
            scenes[name] = {"psnr": round(psnr(cube, truth), 3), "ssim": round(ssim(cube, truth), 4)}
        self.model.train()
        record = {"epoch": self.epoch, "step": self.global_step, "scenes": scenes}  # epochs completed
        if scenes:
            record["psnr"] = round(float(np.mean([s["psnr"] for s in scenes.values()])), 3)
            record["ssim"] = round(float(np.mean([s["ssim"] for s in scenes.values()])), 4)
        return record

    def fit(self) -> BiSRNet:
        """Train to ``train.epochs`` (from the resumed position if any); return the trained model."""
        t = self.config.train
        from tqdm import tqdm

        shown = t.progress and self.ctx.is_main and progress.enabled()  # terminal only, not under --quiet
        bar = tqdm(total=self.total_steps, initial=self.global_step, disable=not shown,
                   desc="train", unit="step", dynamic_ncols=True, mininterval=2.0)
        self.model.train()
        tick = time.perf_counter()
        try:
            self._loop(bar, tick)
        finally:
            bar.close()
        return self.model

    def _loop(self, bar, tick: float) -> None:
        t = self.config.train
        while self.epoch < t.epochs:
            while self.position < self.steps_per_epoch:
                loss = self._step()
                self.position += 1
                self.global_step += 1
                bar.update(1)
                bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if self.global_step % t.checkpoint_every == 0 and self.position < self.steps_per_epoch:
                    self.elapsed += time.perf_counter() - tick
                    tick = time.perf_counter()
                    distributed.check_replicas(self.model, self.ctx)
                    self._save()
            self.epoch, self.position = self.epoch + 1, 0
            self.elapsed += time.perf_counter() - tick
            tick = time.perf_counter()
            best = False
            if self.ctx.is_main and (self.epoch % t.val_every == 0 or self.epoch == t.epochs) and self.val:
                record = self.validate()
                self.history.append(record)
                best = record["psnr"] > self.best_psnr
                self.best_psnr = max(self.best_psnr, record["psnr"])
                bar.write(f"epoch {self.epoch}/{t.epochs} step {self.global_step}: validation PSNR {record['psnr']:.2f} dB "
                          f"SSIM {record['ssim']:.4f}")
                with atomic_output(self.out / HISTORY_FILE) as tmp:
                    Path(tmp).write_text(json.dumps(self.history, indent=1))
            distributed.check_replicas(self.model, self.ctx)
            self._save(best=best)
