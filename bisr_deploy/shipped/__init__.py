"""Package data: the named checkpoints (project-format safetensors), their model card (MODEL_CARD.md) and licenses,
and the generated mask. Torch-free, so that the CLI starts and the runtime-only commands run without torch."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BisrError

SHIPPED_DIR = Path(__file__).resolve().parent
NAMED_CHECKPOINTS = {
    "authors-sim": "the authors' simulation model (BiSCI release, MIT; input: snapshot + mask)",
    "authors-real": "the authors' real-camera model (BiSCI release, MIT; input: snapshot only)",
    "trained-sim": "this project's 27-minute CPU demonstration run (simulation mode)",
}
DEFAULT_CHECKPOINT = "authors-sim"


def resolve_checkpoint(spec: str | os.PathLike | None) -> Path:
    """The file behind ``spec``: a name of ``NAMED_CHECKPOINTS`` (names win over same-named files; write
    ``./NAME`` for those), a path, or ``None`` for ``DEFAULT_CHECKPOINT``."""
    name = DEFAULT_CHECKPOINT if spec is None else str(spec)
    if name not in NAMED_CHECKPOINTS:
        return Path(name)
    path = SHIPPED_DIR / f"{name}.safetensors"
    if not path.is_file():
        raise BisrError(f"the named checkpoint {name} is not installed ({path} is missing)")
    return path
