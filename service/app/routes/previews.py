"""Crop previews: a field of view as the web console shows it, computed by the same code as a job.

``POST /v1/crops/preview`` takes the upload of ``POST /v1/jobs`` (channels, locations or
``detect_nuclei``) and answers at once, without a job: the nucleus centres, a false-colour composite
and, for the cells asked for, their crops after the model's normalization, one PNG per channel.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from cpcnn.service.app.deps import ApiKeyDep, ModelStoreDep, SettingsDep
from cpcnn.service.app.intake import Submission, read_image, read_part, uploaded_locations
from cpcnn.service.app.problems import problem_responses
from cpcnn.service.config import Limits
from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from cpcnn._types import CHANNELS
from cpcnn.errors import InputError, NotFoundError, UnsupportedMedia
from cpcnn.locations import Locations
from cpcnn.manifest import ModelManifest
from cpcnn.preview import composite as false_colour
from cpcnn.preview import encode_png, network_crops
from cpcnn.schemas import MAX_PREVIEW_CROPS, CellCrops, CropPreview

router = APIRouter(prefix="/crops", tags=["crops"], dependencies=[ApiKeyDep])

_PARTS = {*CHANNELS, "image", "channel_order", "locations", "model", "normalization", "detect_nuclei",
          "composite", "cells"}


@router.post(
    "/preview",
    response_model=CropPreview,
    summary="Nuclei, a false-colour composite and chosen cells' normalized crops of one field of view",
    responses=problem_responses(400, 401, 413, 415, 422),
)
async def preview_crops(
    request: Request,
    settings: SettingsDep,
    models: ModelStoreDep,
    dna: Annotated[UploadFile | None, File(alias="DNA", description="DNA channel: TIFF or PNG")] = None,
    rna: Annotated[UploadFile | None, File(alias="RNA", description="RNA channel: TIFF or PNG")] = None,
    er: Annotated[UploadFile | None, File(alias="ER", description="ER channel: TIFF or PNG")] = None,
    agp: Annotated[UploadFile | None, File(alias="AGP", description="AGP channel: TIFF or PNG")] = None,
    mito: Annotated[UploadFile | None, File(alias="Mito", description="Mito channel: TIFF or PNG")] = None,
    image: Annotated[UploadFile | None, File(description="all channels in one multi-page or 3-D TIFF")] = None,
    channel_order: Annotated[str | None, Form(description="planes of `image` as stored")] = None,
    locations: Annotated[UploadFile | str | None, File(description="nuclei CSV or JSON")] = None,
    model: Annotated[str | None, Form(description="whose crop size, channels and normalization to use")] = None,
    normalization: Annotated[Literal["minmax", "minmax_paper"] | None, Form()] = None,
    detect_nuclei: Annotated[bool, Form(description="find nuclei on the DNA channel instead of `locations`")] = False,
    composite: Annotated[bool, Form(description="include the false-colour composite")] = True,
    cells: Annotated[str, Form(max_length=200, description=f"comma-separated 0-based rows whose crops to return "
                                                          f"(at most {MAX_PREVIEW_CROPS})")] = "",
) -> CropPreview:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMedia(f"send previews as multipart/form-data, not {content_type or 'an untyped body'}")
    form = await request.form()
    unknown = sorted(k for k in form if k not in _PARTS)
    if unknown:
        raise InputError(f"unknown form part(s) {', '.join(unknown)}; channels are {', '.join(CHANNELS)}")
    limit = settings.limits.max_part_bytes
    parts = {"DNA": dna, "RNA": rna, "ER": er, "AGP": agp, "Mito": mito}
    location_bytes = None
    if isinstance(locations, StarletteUploadFile):
        location_bytes = await read_part(locations, "locations", limit)
    elif locations is not None:
        location_bytes = str(locations).encode()
    sub = Submission(
        model=model or settings.default_model,
        channels={name: await read_part(part, name, limit) for name, part in parts.items() if part is not None},
        stack=await read_part(image, "image", limit) if image is not None else None,
        channel_order=channel_order, locations=location_bytes, normalization=normalization,
        detect_nuclei=detect_nuclei,
    )
    try:
        manifest = models.get(sub.model).manifest
    except (NotFoundError, InputError) as exc:
        raise InputError(f"unknown model {sub.model!r}; GET /v1/models lists them") from exc
    return await run_in_threadpool(build_preview, sub, manifest, settings.limits, parse_rows(cells), composite)


def parse_rows(text: str) -> list[int]:
    """``"3, 7"`` -> [3, 7]: bounded, non-negative, no repeats."""
    rows: list[int] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not item.isdigit() or len(item) > 9:
            raise InputError(f"cells must be comma-separated row numbers, got {item[:20]!r}")
        if int(item) not in rows:
            rows.append(int(item))
    if len(rows) > MAX_PREVIEW_CROPS:
        raise InputError(f"cells names {len(rows)} rows; a preview returns at most {MAX_PREVIEW_CROPS}")
    return rows


def build_preview(sub: Submission, manifest: ModelManifest, limits: Limits, rows: list[int],
                  with_composite: bool) -> CropPreview:
    image = read_image(sub, manifest, limits).astype(np.float32, copy=False)
    cells = _cells(sub, image, manifest, limits)
    outside = [row for row in rows if row >= len(cells)]
    if outside:
        raise InputError(f"cells {outside} are past the {len(cells)} nuclei of this site (rows start at 0)")
    normalization = sub.normalization or manifest.normalization
    crops: list[CellCrops] = []
    if rows:
        pixels = network_crops(image, cells.centers[rows], crop_size=manifest.crop_size,
                               normalization=normalization)  # type: ignore[arg-type]
        for row, cell in zip(rows, pixels, strict=True):
            crops.append(CellCrops(
                index=row, object_number=int(cells.object_numbers[row]),
                x=float(cells.centers[row, 0]), y=float(cells.centers[row, 1]),
                channels={name: _data_url(encode_png(cell[:, :, c])) for c, name in enumerate(manifest.channels)},
            ))
    picture, scale = false_colour(image, manifest.channels) if with_composite else (None, 1)
    return CropPreview(
        width=image.shape[1], height=image.shape[0], channels=list(manifest.channels), crop_size=manifest.crop_size,
        normalization=normalization, centers=[(float(x), float(y)) for x, y in cells.centers],
        object_numbers=[int(n) for n in cells.object_numbers],
        composite=None if picture is None else _data_url(encode_png(picture)), composite_scale=scale, crops=crops,
    )


def _cells(sub: Submission, image: np.ndarray, manifest: ModelManifest, limits: Limits) -> Locations:
    cells = uploaded_locations(sub, image.shape[:2], manifest, limits)
    if cells is not None:
        return cells
    from cpcnn.nuclei import detect_nuclei

    dna = [c.lower() for c in manifest.channels].index("dna")
    return Locations.numbered(detect_nuclei(image[:, :, dna], max_nuclei=limits.max_cells))


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
