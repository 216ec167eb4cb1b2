"""Profile artifacts on disk: uploaded tables, sphering transforms and reference libraries.

Layout under the data directory; every id is 32 hex digits, a content hash of what made the artifact,
so a path is safe to build from it and the same request finds the same artifact::

    profiles/tables/<id>.parquet     Metadata_* + float32 features; name and origin in the footer
    profiles/transforms/<id>.npz     a ``Sphering`` file (plain arrays, no pickle)
    profiles/libraries/<id>/         a ``Library`` folder (features.npy is memory-mapped) + origin.json

Every artifact is written under a dot-name, fsynced and renamed into place (then its folder is
fsynced), so a crash never leaves half of one and an existing artifact is never overwritten;
dot-named leftovers of a crash are removed when the store is opened. Libraries stay open (memory-mapped) in a small
LRU: a query costs one matrix product over mapped pages, not a read of the library.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cpcnn.errors import InputError, NotFoundError
from cpcnn.io.durable import STALE_TEMPORARY_S, remove_stale, replace_durably, write_durably
from cpcnn.profiles import Library, Sphering
from cpcnn.profiles.sphering import read_sphering_info
from cpcnn.profiles.tables import ROW_GROUP_ROWS, check_finite, feature_columns, is_metadata, metadata_columns
from cpcnn.schemas import LibraryPublic, TablePublic, TransformPublic

_ID = re.compile(r"[0-9a-f]{32}")
_TABLE_META = b"cpcnn-table"
_ORIGIN = "origin.json"
T = TypeVar("T")


def artifact_id(kind: str, *parts: str | bytes) -> str:
    """Content hash of an artifact's inputs: 32 hex digits."""
    digest = hashlib.sha256(f"cpcnn-{kind}-v1".encode())
    for part in parts:
        blob = part if isinstance(part, bytes) else part.encode()
        digest.update(len(blob).to_bytes(8, "big") + blob)
    return digest.hexdigest()[:32]


def selection_key(features: Sequence[str] | None) -> tuple[str, ...]:
    """Id parts for a feature selection: none for the default, so ids made before selections existed hold."""
    return () if features is None else ("features", json.dumps(list(features)))


def check_id(artifact_id: str, kind: str) -> str:
    """Ids are 32 hex digits; anything else cannot exist (and never reaches the filesystem)."""
    if not _ID.fullmatch(artifact_id):
        raise NotFoundError(f"{kind} {artifact_id!r} does not exist (ids are 32 hexadecimal digits)")
    return artifact_id


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _when(text: str | None, path: Path) -> dt.datetime:
    """A recorded ISO time, else the file's modification time."""
    if text:
        return dt.datetime.fromisoformat(text)
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)


class ProfileStore:
    """Tables, transforms and libraries under ``root/profiles``."""

    def __init__(self, root: Path, *, open_libraries: int = 8, stale_s: float = STALE_TEMPORARY_S) -> None:
        self.root = Path(root) / "profiles"
        self.tables_dir = self.root / "tables"
        self.transforms_dir = self.root / "transforms"
        self.libraries_dir = self.root / "libraries"
        for folder in (self.tables_dir, self.transforms_dir, self.libraries_dir):
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale(folder, max_age_s=stale_s)
        self._capacity = open_libraries
        self._open: OrderedDict[str, Library] = OrderedDict()
        self._lock = threading.Lock()

    # -- tables ---------------------------------------------------------------------------------

    def table_path(self, table_id: str) -> Path:
        return self.tables_dir / f"{check_id(table_id, 'table')}.parquet"

    def has_table(self, table_id: str) -> bool:
        return self.table_path(table_id).is_file()

    def put_table(
        self, table: pd.DataFrame, table_id: str, *, name: str, provenance: dict[str, str]
    ) -> TablePublic:
        """Store a table (Metadata_* + float32 features) unless one with this id exists."""
        path = self.table_path(table_id)
        if not path.is_file():
            _check_finite_columns(table, what=name)
            try:
                arrow = pa.Table.from_pandas(table, preserve_index=False)
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise InputError(f"{name}: columns that cannot be stored as Parquet ({exc})") from exc
            info = {"name": name, "created_at": _now(), "provenance": provenance}
            arrow = arrow.replace_schema_metadata(
                {**(arrow.schema.metadata or {}), _TABLE_META: json.dumps(info)}
            )
            meta = metadata_columns(table)
            write_durably(
                path,
                lambda tmp: pq.write_table(
                    arrow, tmp, row_group_size=ROW_GROUP_ROWS, use_dictionary=meta or False
                ),
            )
        return self.table_public(table_id)

    def table_public(self, table_id: str) -> TablePublic:
        """From the Parquet footer alone: no rows are read."""
        try:
            footer = pq.read_metadata(self.table_path(table_id))
        except FileNotFoundError as exc:
            raise NotFoundError(f"table {table_id} does not exist") from exc
        schema = footer.schema.to_arrow_schema()
        info = json.loads((schema.metadata or {}).get(_TABLE_META, b"{}"))
        names = list(schema.names)
        meta = [n for n in names if is_metadata(n)]
        return TablePublic(
            id=table_id,
            name=info.get("name", ""),
            n_rows=footer.num_rows,
            n_features=len(names) - len(meta),
            metadata_columns=meta,
            feature_names=[n for n in names if not is_metadata(n)],
            created_at=_when(info.get("created_at"), self.table_path(table_id)),
            provenance=info.get("provenance", {}),
        )

    def read_table(self, table_id: str) -> pd.DataFrame:
        try:
            return pd.read_parquet(self.table_path(table_id))
        except FileNotFoundError as exc:
            raise NotFoundError(f"table {table_id} does not exist") from exc

    def tables(self) -> list[TablePublic]:
        return _sorted(self._each(self.tables_dir, ".parquet", self.table_public))

    def delete_table(self, table_id: str) -> None:
        _delete(self.table_path(table_id), f"table {table_id}")

    # -- transforms -----------------------------------------------------------------------------

    def transform_path(self, transform_id: str) -> Path:
        return self.transforms_dir / f"{check_id(transform_id, 'transform')}.npz"

    def has_transform(self, transform_id: str) -> bool:
        return self.transform_path(transform_id).is_file()

    def put_transform(self, sphering: Sphering, transform_id: str) -> TransformPublic:
        path = self.transform_path(transform_id)
        if not path.is_file():
            write_durably(path, sphering.save)
        return self.transform_public(transform_id)

    def transform(self, transform_id: str) -> Sphering:
        path = self.transform_path(transform_id)
        if not path.is_file():
            raise NotFoundError(f"transform {transform_id} does not exist")
        return Sphering.load(path)

    def transform_public(self, transform_id: str) -> TransformPublic:
        """From the file's header and feature names alone: the (D, D) matrix is not read."""
        path = self.transform_path(transform_id)
        if not path.is_file():
            raise NotFoundError(f"transform {transform_id} does not exist")
        sphering = read_sphering_info(path)
        provenance = {str(k): str(v) for k, v in sphering.provenance.items()}
        return TransformPublic.model_validate(
            {
                "id": transform_id,
                "table_id": provenance.get("table_id", ""),
                "method": sphering.method,
                "lambda": sphering.lam,
                "controls": provenance.get("controls", ""),
                "n_controls": sphering.n_controls,
                "n_features": len(sphering.features),
                "rank": sphering.rank,
                "rank_deficient": sphering.rank_deficient,
                "warnings": list(sphering.warnings),
                "feature_names": list(sphering.features),
                "created_at": _when(provenance.get("created"), self.transform_path(transform_id)),
                "provenance": provenance,
            }
        )

    def transforms(self) -> list[TransformPublic]:
        return _sorted(self._each(self.transforms_dir, ".npz", self.transform_public))

    def delete_transform(self, transform_id: str) -> None:
        _delete(self.transform_path(transform_id), f"transform {transform_id}")

    # -- libraries ------------------------------------------------------------------------------

    def library_dir(self, library_id: str) -> Path:
        return self.libraries_dir / check_id(library_id, "library")

    def has_library(self, library_id: str) -> bool:
        return (self.library_dir(library_id) / _ORIGIN).is_file()

    def put_library(self, library: Library, library_id: str, *, table_id: str) -> LibraryPublic:
        """Save the library folder and its origin, renamed into place together."""
        target = self.library_dir(library_id)
        if not self.has_library(library_id):
            staging = Path(tempfile.mkdtemp(prefix=f".{library_id}-", dir=self.libraries_dir))
            try:
                folder = library.save(staging / "library")
                (folder / _ORIGIN).write_text(json.dumps({"table_id": table_id, "created_at": _now()}))
                try:
                    replace_durably(folder, target, overwrite=False)
                except OSError:  # an identical request saved it a moment ago
                    if not self.has_library(library_id):
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return self.library_public(library_id)

    def library_public(self, library_id: str) -> LibraryPublic:
        folder = self.library_dir(library_id)
        try:
            origin = json.loads((folder / _ORIGIN).read_text())
            meta = json.loads((folder / "library.json").read_text())
        except FileNotFoundError as exc:
            raise NotFoundError(f"library {library_id} does not exist") from exc
        return LibraryPublic(
            id=library_id,
            table_id=origin["table_id"],
            id_column=meta["id_column"],
            annotation_columns=meta["annotation_columns"],
            n_profiles=meta["n_rows"],
            n_features=len(meta["feature_names"]),
            feature_names=meta["feature_names"],
            created_at=_when(origin.get("created_at"), folder / _ORIGIN),
        )

    def library(self, library_id: str) -> Library:
        """The open (memory-mapped) library; opened once, then served from the LRU."""
        folder = self.library_dir(library_id)
        with self._lock:
            if not (folder / _ORIGIN).is_file():  # deleted, possibly by another replica
                self._open.pop(library_id, None)
                raise NotFoundError(f"library {library_id} does not exist")
            library = self._open.get(library_id)
            if library is None:
                library = Library.load(folder, mmap=True)
                self._open[library_id] = library
                while len(self._open) > self._capacity:
                    self._open.popitem(last=False)
            self._open.move_to_end(library_id)
            return library

    def open_libraries(self) -> list[str]:
        """Ids of the libraries held open, least recently used first."""
        with self._lock:
            return list(self._open)

    def libraries(self) -> list[LibraryPublic]:
        return _sorted(self._each(self.libraries_dir, "", self.library_public))

    def delete_library(self, library_id: str) -> None:
        folder = self.library_dir(library_id)
        with self._lock:
            self._open.pop(library_id, None)
        _delete(folder, f"library {library_id}")

    # -- listing --------------------------------------------------------------------------------

    @staticmethod
    def _each(folder: Path, suffix: str, public: Callable[[str], T]) -> Iterator[T]:
        for path in folder.iterdir():
            stem = path.name.removesuffix(suffix) if suffix else path.name
            if path.name.endswith(suffix) and _ID.fullmatch(stem):
                try:
                    yield public(stem)
                except (NotFoundError, InputError, OSError):  # deleted or being deleted meanwhile
                    continue


def _check_finite_columns(table: pd.DataFrame, *, what: str) -> None:
    """No stored table holds +-inf (NaN marks a missing value); checked a column at a time, no copy."""
    names = feature_columns(table)
    infinite = [n for n in names if np.isinf(table[n].to_numpy()).any()]
    if infinite:
        check_finite(table.loc[:, infinite[:5]].to_numpy(), infinite[:5], what=what)


def _sorted(items: Iterator[Any]) -> list[Any]:
    return sorted(items, key=lambda item: (item.created_at, item.id))


def _delete(path: Path, what: str) -> None:
    """Rename away first, so a concurrent reader sees the artifact whole or gone, never half deleted."""
    trash = path.parent / f".deleted-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.rename(path, trash)
    except FileNotFoundError as exc:
        raise NotFoundError(f"{what} does not exist") from exc
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)

