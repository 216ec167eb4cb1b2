"""Result encodings: content negotiation, the JSON document and the Parquet table (``cpcnn embed``'s columns).

A result of 50,000 cells is 134 MB of float32; as Python objects it would be gigabytes. Both encodings are
therefore made a block of rows at a time from the memory-mapped ``.npy`` files: the JSON is streamed, the
Parquet file is written once beside the result and then served from disk.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from fastapi import HTTPException

from cpcnn._types import F32Array, F64Array
from cpcnn.io.cells import cells_table
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


def json_chunks(job: JobPublic, feature_prefix: str, features: F32Array, centers: F64Array) -> Iterator[bytes]:
    """The ``CellsResult`` document, same fields and order, as a few-MB block of rows at a time.

    Non-finite values become ``null``, as pydantic writes them.
    """
    n_cells, feature_size = int(features.shape[0]), int(features.shape[1])
    head = {"job_id": job.id, "model": job.model, "feature_prefix": feature_prefix, "metadata": job.metadata,
            "n_cells": n_cells, "feature_size": feature_size}
    yield json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"locations":['
    for start in range(0, n_cells, JSON_BLOCK_ROWS):
        block = np.asarray(centers[start:start + JSON_BLOCK_ROWS], dtype=np.float64)
        yield (b"," if start else b"") + _rows_json(block)
    yield b'],"features":['
    for start in range(0, n_cells, JSON_BLOCK_ROWS):
        block = np.asarray(features[start:start + JSON_BLOCK_ROWS], dtype=np.float32)
        yield (b"," if start else b"") + _rows_json(block)
    yield b"]}"


def _rows_json(block: np.ndarray) -> bytes:
    """(R, K) -> ``[..],[..]`` (no outer brackets), floats as shortest round-trip text."""
    rows = block.astype(np.float64).tolist()
    if not np.isfinite(block).all():
        rows = [[value if math.isfinite(value) else None for value in row] for row in rows]
    return json.dumps(rows, separators=(",", ":"), allow_nan=False)[1:-1].encode()


def parquet_file(folder: Path, job: JobPublic, feature_prefix: str, features: F32Array, centers: F64Array) -> Path:
    """``folder/cells.parquet``, written once a row group at a time (then renamed into place) and reused."""
    import pyarrow.parquet as pq

    path = folder / "cells.parquet"
    if path.is_file():
        return path
    handle = tempfile.NamedTemporaryFile(dir=folder, prefix=".cells-", suffix=".parquet", delete=False)
    try:
        with handle, pq.ParquetWriter(handle, _parquet_schema(job, feature_prefix, features, centers)) as writer:
            for start in range(0, max(int(features.shape[0]), 1), PARQUET_BLOCK_ROWS):
                stop = start + PARQUET_BLOCK_ROWS
                writer.write_table(_parquet_block(job, feature_prefix, features[start:stop], centers[start:stop]))
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def _parquet_block(job: JobPublic, feature_prefix: str, features: F32Array, centers: F64Array):  # -> pyarrow.Table
    return cells_table(np.asarray(features, np.float32), np.asarray(centers, np.float64), metadata=job.metadata,
                       model_name=job.model, feature_prefix=feature_prefix)


def _parquet_schema(job: JobPublic, feature_prefix: str, features: F32Array, centers: F64Array):  # -> pyarrow.Schema
    return _parquet_block(job, feature_prefix, features[:0], centers[:0]).schema
