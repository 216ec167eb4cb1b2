"""Which server paths a plate may name: only files under the roots the operator allows.

A plate request names files on a volume the service shares with the lab (the LoadData CSV, every image
and illumination function in it, a locations table, a platemap). Each is checked before anything is
queued: a ``..`` component is refused outright, and the path, resolved through every symlink, must lie
under one of ``CPCNN_PLATES__ROOTS`` (also resolved), so neither ``../../etc`` nor a symlink pointing out
of a root reaches a worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from cpcnn.errors import InputError

DISABLED = ("plate jobs are disabled on this server: the operator sets CPCNN_PLATES__ROOTS to the folders "
            "plates may be read from")


class AllowedRoots:
    """The resolved roots; ``check`` returns a path's resolved form or raises InputError naming it."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = tuple(Path(root).resolve() for root in roots)

    def require_enabled(self) -> None:
        if not self.roots:
            raise InputError(DISABLED)

    def check(self, path: Path | str, *, what: str) -> Path:
        self.require_enabled()
        text = str(path)
        candidate = Path(text)
        if ".." in candidate.parts:
            raise InputError(f"{what} {text!r} contains '..'; name files under the allowed roots without it")
        if not candidate.is_absolute():
            raise InputError(f"{what} {text!r} is not an absolute path on the server's shared volume")
        resolved = candidate.resolve()
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise InputError(f"{what} {text!r} is outside the folders this server reads plates from "
                             "(CPCNN_PLATES__ROOTS)")
        return resolved

    def check_files(self, paths: Iterable[tuple[Path, str]], *, max_listed: int = 5) -> None:
        """Every ``(path, what)`` under the roots and an existing file; one error naming the missing ones."""
        missing: list[str] = []
        n_missing = 0
        for path, what in paths:
            resolved = self.check(path, what=what)
            if not resolved.is_file():
                n_missing += 1
                if len(missing) < max_listed:
                    missing.append(f"{what} {path}")
        if n_missing:
            more = f" and {n_missing - len(missing)} more" if n_missing > len(missing) else ""
            raise InputError(f"{n_missing} file(s) listed in the LoadData CSV do not exist: "
                             f"{'; '.join(missing)}{more}")
