"""``DataConfig``: where training and validation cubes come from and how a sample is made (the ``[data]``
table of a training config, ``bisr_deploy.train.config``; also used by verify and evaluate to read cubes)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """Where the training cubes come from and how a sample is made."""

    train_folders: list[str] = field(default_factory=list)  # folders of cubes (.mat v5/v7.3, .npy, .npz, .h5)
    val_folders: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # variable names to try in each file, in order ([] = the only one)
    scale: float | str = "auto"  # divide raw values by this; "auto": uint16 -> 65535, uint8 -> 255, float -> 1
    wavelengths: list[float] = field(default_factory=list)  # source band centres (nm); [] = by band count
    synthetic_fraction: float = 1.0  # share of training samples that are synthetic scenes (1.0 if no folders)
    samples_per_epoch: int = 256
    patch_size: int = 64  # square training crops (the authors: 256 simulation, 660 real)
    mask: str = "generated"  # coded-aperture file (.mat/.npy/...) or "generated" (bisr_deploy's Bernoulli mask)
    mask_key: str = ""
    mask_size: int = 256  # size of the generated mask
    mask_seed: int = 0
    shot_noise: bool = False  # 11-bit shot noise on the measurement (always on in real mode)
    val_synthetic: int = 4  # held-out synthetic validation scenes
    val_size: int = 128  # validation crops are val_size x val_size, top-left mask crop
