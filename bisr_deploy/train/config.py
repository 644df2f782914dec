"""Training configuration: a TOML file with three tables, plus ``section.key=value`` overrides.

``[model]`` holds ``BiSRNetConfig`` fields (architecture, input mode, sign approximation); ``[data]`` and
``[train]`` hold ``DataConfig`` and ``TrainSettings`` below. Unknown tables or keys, wrong types and
impossible values raise ``BisrError`` naming the offending key, before any data is read or any step taken.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..data.config import DataConfig
from ..errors import BisrError
from ..model import BiSRNetConfig


@dataclass
class TrainSettings:
    """Optimisation and bookkeeping."""

    output_dir: str = "runs/bisrnet"
    epochs: int = 10
    batch_size: int = 4  # per process
    lr: float = 4e-4
    lr_min: float = 1e-6  # cosine annealing floor, reached at the last step
    seed: int = 0
    threads: int = 0  # torch intra-op threads per process; 0 = cores / processes (distributed.threads_per_process)
    checkpoint_every: int = 50  # steps between checkpoint + training-state writes (also at each epoch end)
    val_every: int = 1  # epochs between validations
    amp: bool = False  # bfloat16 autocast on CUDA (ignored on CPU)
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # tqdm progress bar on rank 0 (on a terminal, without bisr-deploy --quiet)


@dataclass
class TrainConfig:
    model: BiSRNetConfig = field(default_factory=BiSRNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)

    def to_dict(self) -> dict:
        return {"model": asdict(self.model), "data": asdict(self.data), "train": asdict(self.train)}


_SECTIONS = {"model": BiSRNetConfig, "data": DataConfig, "train": TrainSettings}


def _check_type(where: str, value, default):
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise BisrError(f"config {where} = {value!r}: must be a finite number")
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if not ok:
        raise BisrError(f"config {where} = {value!r}: expected {type(default).__name__}")
    return value


def _build(raw: dict) -> TrainConfig:
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise BisrError(f"config: unknown table(s) {', '.join(sorted(unknown))}; expected model, data, train")
    parts = {}
    for name, cls in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise BisrError(f"config: [{name}] must be a table")
        defaults = cls()
        known = {f.name for f in fields(cls)}
        bad = set(table) - known
        if bad:
            raise BisrError(f"config: unknown key(s) in [{name}]: {', '.join(sorted(bad))}")
        values = {k: _check_type(f"{name}.{k}", v, getattr(defaults, k)) for k, v in table.items()}
        parts[name] = cls(**values)
    config = TrainConfig(**parts)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Raise ``BisrError`` for impossible values."""
    config.model.validate()
    d, t = config.data, config.train

    def need(cond: bool, message: str):
        if not cond:
            raise BisrError(f"config: {message}")

    need(d.patch_size >= 16 and d.patch_size % 8 == 0, f"data.patch_size must be a multiple of 8, at least 16 (got {d.patch_size})")
    need(d.val_size >= 16 and d.val_size % 8 == 0, f"data.val_size must be a multiple of 8, at least 16 (got {d.val_size})")
    need(0.0 <= d.synthetic_fraction <= 1.0, f"data.synthetic_fraction must be in [0, 1] (got {d.synthetic_fraction})")
    need(d.synthetic_fraction > 0 or d.train_folders, "no training data: data.train_folders is empty and data.synthetic_fraction is 0")
    need(d.samples_per_epoch >= 1, f"data.samples_per_epoch must be positive (got {d.samples_per_epoch})")
    need(d.scale == "auto" or (isinstance(d.scale, (int, float)) and 0 < d.scale < math.inf), f"data.scale must be \"auto\" or a positive number (got {d.scale!r})")
    need(d.mask_size >= d.patch_size, f"data.mask_size {d.mask_size} is smaller than data.patch_size {d.patch_size}")
    need(d.val_synthetic >= 0, "data.val_synthetic must be >= 0")
    need(t.epochs >= 1, f"train.epochs must be positive (got {t.epochs})")
    need(t.batch_size >= 1, f"train.batch_size must be positive (got {t.batch_size})")
    need(t.lr > 0 and 0 <= t.lr_min <= t.lr, f"need 0 <= train.lr_min <= train.lr and lr > 0 (got {t.lr}, {t.lr_min})")
    need(t.threads >= 0, "train.threads must be >= 0")
    need(t.checkpoint_every >= 1, "train.checkpoint_every must be positive")
    need(t.val_every >= 1, "train.val_every must be positive")
    need(t.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda (got {t.device!r})")
    need(t.batch_size <= d.samples_per_epoch, "train.batch_size is larger than data.samples_per_epoch")


def parse_override(text: str) -> tuple[str, str, object]:
    """``"train.epochs=3"`` -> ("train", "epochs", 3); the value is read as TOML, else taken as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise BisrError(f"override {text!r} must look like section.key=value (e.g. train.epochs=3)")
    lhs, rhs = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {rhs.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs.strip()
    return section, key, value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a TOML config (``None``: all defaults), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise BisrError(f"{path}: cannot read config ({exc.strerror})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise BisrError(f"{path}: not valid TOML ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise BisrError(f"{path}: not valid TOML (not UTF-8 text at byte {exc.start})") from exc
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise BisrError(f"config: [{section}] must be a table")
        raw[section][key] = value
    return _build(raw)


def config_from_dict(raw: dict) -> TrainConfig:
    """The inverse of ``TrainConfig.to_dict`` (validated)."""
    return _build(raw)
