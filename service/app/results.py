"""Result encodings: content negotiation and the Parquet table (the same columns as ``cpcnn embed``:
``Metadata_*`` including the cell's object number and centre, then the features)."""

from __future__ import annotations

import io

from fastapi import HTTPException

from cpcnn._types import F32Array
from cpcnn.io.cells import cells_table
from cpcnn.locations import Locations
from cpcnn.schemas import MEDIA_JSON, MEDIA_NPY, MEDIA_PARQUET, JobPublic

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


def parquet_bytes(features: F32Array, cells: Locations, job: JobPublic, feature_prefix: str) -> bytes:
    import pyarrow.parquet as pq

    table = cells_table(features, cells, metadata=job.metadata, model_name=job.model, feature_prefix=feature_prefix)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
