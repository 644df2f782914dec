"""Where the reference data is: a folder laid out like the project's ``../shared/data`` (ground-truth scenes,
CASSI masks, real snapshots), chosen by ``--data``, ``$BISR_DATA`` or a checkout's ``../shared/data``. Torch-free."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BisrError

DATA_ENV = "BISR_DATA"
CHECKOUT_DATA = Path("..") / "shared" / "data"  # relative to the working directory: a checkout's ../shared


@dataclass(frozen=True)
class ReferenceData:
    """A folder laid out like the project's reference data (``../shared/data`` beside a checkout)."""

    root: Path

    @property
    def scenes(self) -> Path:
        return self.root / "hsi-scenes"

    @property
    def real(self) -> Path:
        return self.root / "tsa-cassi" / "real_measurements"

    def mask(self, mode: str) -> Path:
        return self.root / "tsa-cassi" / {"sim": "mask_simulation_256.mat", "real": "mask_real_660.mat"}[mode]

    def needed(self, mode: str) -> list[Path]:
        return [self.scenes, self.mask(mode)] + ([self.real] if mode == "real" else [])


def reference_data(data_dir: str | None, mode: str) -> ReferenceData | None:
    """``--data DIR``, else ``$BISR_DATA``, else ``../shared/data`` of the working directory when it exists;
    ``None`` when there is none. A chosen folder must hold what ``mode`` needs, else ``BisrError`` naming it."""
    source, root = ("--data", data_dir) if data_dir else (DATA_ENV, os.environ.get(DATA_ENV))
    if not root:
        if not CHECKOUT_DATA.is_dir():
            return None
        source, root = "the default ../shared/data", CHECKOUT_DATA
    data = ReferenceData(Path(root))
    missing = [str(p) for p in data.needed(mode) if not p.exists()]
    if missing:
        raise BisrError(f"reference data from {source} lacks {', '.join(missing)} (see `bisr-deploy verify --help`)")
    return data
