"""Progress for the steps a user waits on (compile stages, verify scenes and layers, bench rounds, evaluate
scenes): on stderr, only when stderr is a terminal and ``bisr-deploy --quiet`` was not given, so pipes, logs
and tests see the commands' results alone.

    progress.stage("compiling kernels")          one line per stage
    for item in progress.items(seq, "scenes"):   a tqdm bar over an iterable
"""

from __future__ import annotations

import sys

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def enabled() -> bool:
    return not _quiet and sys.stderr.isatty()


def stage(message: str) -> None:
    """One line ``message ...`` on stderr (when ``enabled``)."""
    if enabled():
        print(f"{message} ...", file=sys.stderr, flush=True)


def items(iterable, description: str, total: int | None = None):
    """``iterable`` wrapped in a tqdm bar labelled ``description`` on stderr (a plain pass-through when not
    ``enabled``)."""
    if not enabled():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=description, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
