"""Crash-safe files (the service's data directory, plate outputs): write a temporary, fsync it, rename
it, fsync the folder.

A rename alone is atomic but not durable: after a power loss or a kernel crash the new name can
point at a file whose data never reached the disk (a zero-length ``state.json``, a truncated
``features.npy``), or the rename itself can be lost. So the file (every file of a folder) is
fsynced before the rename and the parent folder after it.

Temporaries are dot-names; a process killed between write and rename leaves them behind.
``remove_stale`` deletes those older than a grace period (longer than any write takes, so a write
still in progress in another process is never touched) and never touches a name without a dot.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

#: Dot-named leftovers of a crashed write older than this are removed at start (seconds).
STALE_TEMPORARY_S = 3600.0


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a folder; the data itself was synced
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then each folder (deepest first), before it is renamed."""
    folders = [folder]
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for name in files:
            fsync_path(base / name)
        folders.extend(base / d for d in dirs)
    for path in reversed(folders):
        fsync_path(path)


def replace_durably(source: Path, target: Path, *, overwrite: bool = True) -> None:
    """Rename a finished temporary (file or folder) onto ``target`` so that it survives a crash.

    With ``overwrite=False`` an existing ``target`` folder makes the rename fail (OSError), which
    callers use to detect that an identical artifact won the race.
    """
    if source.is_dir():
        fsync_tree(source)
    else:
        fsync_path(source)
    if overwrite:
        os.replace(source, target)
    else:
        os.rename(source, target)
    fsync_path(target.parent)


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers and a crash see the old file or the new one, whole."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    tmp = Path(name)
    try:
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_durably(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(temporary)`` then rename it onto ``path``: a killed writer leaves only a dot-named
    temporary, never a partial ``path`` (for writers that need a file name, e.g. Parquet). The
    temporary keeps ``path``'s suffix, so writers that choose a format by suffix choose the same one."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def remove_stale(folder: Path, *, max_age_s: float = STALE_TEMPORARY_S, depth: int = 0) -> int:
    """Delete dot-named temporaries under ``folder`` older than ``max_age_s``; returns how many went.

    ``depth=1`` also looks one level down (inside each job folder); finished artifacts never have a
    dot-name, so they are never removed.
    """
    cutoff = time.time() - max_age_s
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.name.startswith("."):
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
            elif depth > 0 and entry.is_dir(follow_symlinks=False):
                removed += remove_stale(Path(entry.path), max_age_s=max_age_s, depth=depth - 1)
        except OSError as exc:  # removed meanwhile, or not ours to remove: leave it
            logger.debug("could not remove stale %s: %s", entry.path, exc)
    if removed:
        logger.info("removed %d stale temporaries under %s", removed, folder)
    return removed
