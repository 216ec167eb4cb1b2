"""An optional progress bar (tqdm when installed); off unless asked for or on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _NoBar:
    def update(self, n: int = 1) -> None:
        """Nothing to show."""


@contextmanager
def progress_bar(total: int, enabled: bool | None) -> Iterator[Any]:
    """``enabled=None``: show only for more than one item on an interactive stderr."""
    if enabled is None:
        enabled = total > 1 and sys.stderr.isatty()
    if not enabled:
        yield _NoBar()
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield _NoBar()
        return
    with tqdm(total=total, unit="site", desc="embedding") as bar:
        yield bar
