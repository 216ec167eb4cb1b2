"""Result encodings: content negotiation, the JSON document and the Parquet table (``cpcnn embed``'s columns:
``Metadata_*`` including the cell's object number and centre, then the features).

A result of 50,000 cells is 134 MB of float32; as Python objects it would be gigabytes. Both encodings are
therefore made a block of rows at a time, read from the ``.npy`` files with plain reads (a memory map would
count every page it touched as resident): the JSON is streamed, the Parquet file is written once beside
the result and then served from disk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydantic_core
from cpcnn.service.job_store import read_object_numbers
from fastapi import HTTPException

from cpcnn._types import F32Array, F64Array, I64Array
from cpcnn.io.cells import cells_table
from cpcnn.locations import Locations
from cpcnn.schemas import MEDIA_JSON, MEDIA_NPY, MEDIA_PARQUET, JobPublic

#: Rows encoded per block: about 2 MB of JSON text for 672 features, a few MB of Python floats.
JSON_BLOCK_ROWS = 256
#: Rows per Parquet row group (11 MB of float32 features at 672 features).
PARQUET_BLOCK_ROWS = 4096

#: Accept values -> the media type served.
ACCEPTED: dict[str, str] = {
    MEDIA_JSON: MEDIA_JSON,
    "application/*": MEDIA_JSON,
    "*/*": MEDIA_JSON,
    MEDIA_PARQUET: MEDIA_PARQUET,
    "application/x-parquet": MEDIA_PARQUET,
    "application/parquet": MEDIA_PARQUET,
    MEDIA_NPY: MEDIA_NPY,
    "application/octet-stream": MEDIA_NPY,
}


def negotiate(accept: str | None) -> str:
    """The best media type for an Accept header (JSON when absent); 406 when nothing fits."""
    if not accept or not accept.strip():
        return MEDIA_JSON
    offers: list[tuple[float, int, str]] = []
    for index, item in enumerate(accept.split(",")):
        media, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        served = ACCEPTED.get(media.strip().lower())
        if served is not None and quality > 0:
            offers.append((-quality, index, served))
    if not offers:
        raise HTTPException(
            status_code=406,
            detail=f"cannot serve {accept!r}; use {MEDIA_JSON}, {MEDIA_PARQUET} or {MEDIA_NPY} (or ?format=)",
        )
    return min(offers)[2]


@dataclass(frozen=True)
class StoredResult:
    """A job's result files: ``features.npy`` (N, D) float32, ``cells.npy`` (N, 2) float64 centres and
    the cells' object numbers (``objects.npy``, else 1..N; see ``read_object_numbers``)."""

    folder: Path

    def open(self) -> tuple[NpyRows, NpyRows, I64Array]:
        """Features, centres (opened now, so a missing file fails before a response starts) and the
        (N,) object numbers (8 bytes a cell, read whole)."""
        features = NpyRows(self.folder / "features.npy")
        try:
            centers = NpyRows(self.folder / "cells.npy")
        except BaseException:
            features.close()
            raise
        return features, centers, read_object_numbers(self.folder, centers.shape[0])


class NpyRows:
    """Read a 2-D C-order ``.npy`` file a block of rows at a time, without mapping or loading all of it."""

    def __init__(self, path: Path) -> None:
        self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            version = np.lib.format.read_magic(self._file)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f"{path.name}: unsupported .npy version {version}")
            shape, fortran_order, dtype = readers[version](self._file)
        except BaseException:
            self._file.close()
            raise
        if fortran_order or len(shape) != 2 or dtype.hasobject:
            self._file.close()
            raise ValueError(f"{path.name}: expected a 2-D C-order numeric array, got {shape} {dtype}")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = dtype

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        """(<= rows, K) arrays in order; the file is closed at the end."""
        row_bytes = self.shape[1] * self.dtype.itemsize
        try:
            for start in range(0, self.shape[0], rows):
                count = min(rows, self.shape[0] - start)
                data = self._file.read(count * row_bytes)
                if len(data) != count * row_bytes:
                    raise ValueError(f"{self._file.name} is truncated")
                yield np.frombuffer(data, dtype=self.dtype).reshape(count, self.shape[1])
        finally:
            self.close()

    def close(self) -> None:
        self._file.close()


def json_chunks(
    job: JobPublic, feature_prefix: str, features: NpyRows, centers: NpyRows, object_numbers: I64Array
) -> Iterator[bytes]:
    """The ``CellsResult`` document, same fields and order, a few MB of rows at a time.

    Non-finite values become ``null``, as pydantic writes them.
    """
    try:
        head = {"job_id": job.id, "model": job.model, "feature_prefix": feature_prefix, "metadata": job.metadata,
                "n_cells": features.shape[0], "feature_size": features.shape[1]}
        yield pydantic_core.to_json(head)[:-1] + b',"locations":['
        for index, block in enumerate(centers.blocks(JSON_BLOCK_ROWS)):
            yield (b"," if index else b"") + _rows_json(block)
        yield b'],"object_numbers":' + pydantic_core.to_json(object_numbers.tolist()) + b',"features":['
        for index, block in enumerate(features.blocks(JSON_BLOCK_ROWS)):
            yield (b"," if index else b"") + _rows_json(block)
        yield b"]}"
    finally:
        features.close()
        centers.close()


def _rows_json(block: np.ndarray) -> bytes:
    """(R, K) -> ``[..],[..]`` (no outer brackets), written by pydantic's encoder: the same text as before."""
    return pydantic_core.to_json(block.astype(np.float64).tolist(), inf_nan_mode="null")[1:-1]


def parquet_file(stored: StoredResult, job: JobPublic, feature_prefix: str) -> Path:
    """``cells.parquet`` beside the result: written once, a row group at a time, renamed into place, reused."""
    import pyarrow.parquet as pq

    path = stored.folder / "cells.parquet"
    if path.is_file():
        return path
    features, centers, object_numbers = stored.open()
    handle = tempfile.NamedTemporaryFile(dir=stored.folder, prefix=".cells-", suffix=".parquet", delete=False)
    try:
        empty = _parquet_block(job, feature_prefix, np.zeros((0, features.shape[1]), np.float32), np.zeros((0, 2)),
                               object_numbers[:0])
        with handle, pq.ParquetWriter(handle, empty.schema) as writer:
            blocks = zip(features.blocks(PARQUET_BLOCK_ROWS), centers.blocks(PARQUET_BLOCK_ROWS), strict=True)
            for index, (feature_block, center_block) in enumerate(blocks):
                start = index * PARQUET_BLOCK_ROWS
                numbers = object_numbers[start : start + len(center_block)]
                writer.write_table(_parquet_block(job, feature_prefix, feature_block, center_block, numbers))
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    finally:
        features.close()
        centers.close()
    return path


def _parquet_block(
    job: JobPublic, feature_prefix: str, features: F32Array, centers: F64Array, object_numbers: I64Array
):  # -> pyarrow.Table
    cells = Locations(centers=np.asarray(centers, np.float64), object_numbers=object_numbers)
    return cells_table(features, cells, metadata=job.metadata, model_name=job.model, feature_prefix=feature_prefix)
