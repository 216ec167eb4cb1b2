"""Uploads -> a validated job: decode the images, read the locations, check limits, hash the content.

Everything that can be wrong with the input is found here, before a job exists, so the client gets a
4xx naming the problem at once instead of a failed job later. Runs in a worker thread (decoding is
CPU work).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
from cpcnn.service.config import Limits
from cpcnn.service.job_store import JobSpec
from starlette.datastructures import UploadFile

from cpcnn._types import NORMALIZATIONS
from cpcnn.crops import check_boxes_overlap
from cpcnn.errors import InputError, PayloadTooLarge
from cpcnn.io.cells import SITE_KEYS
from cpcnn.io.images import read_site, read_stack
from cpcnn.locations import Locations, parse_locations
from cpcnn.manifest import ModelManifest
from cpcnn.schemas import ImageInfo

_HASH_VERSION = b"cpcnn-job-v1"


@dataclass
class Submission:
    """The raw parts of one POST /v1/jobs."""

    model: str
    channels: dict[str, bytes] = field(default_factory=dict)
    stack: bytes | None = None
    channel_order: str | None = None
    locations: bytes | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    normalization: str | None = None
    detect_nuclei: bool = False


def job_id_for(sub: Submission) -> str:
    """Content hash of everything that determines the result: same upload, same job."""
    digest = hashlib.sha256(_HASH_VERSION)
    params = {
        "model": sub.model, "metadata": sub.metadata, "normalization": sub.normalization,
        "detect_nuclei": sub.detect_nuclei, "channel_order": sub.channel_order,
        "channels": sorted(sub.channels), "stack": sub.stack is not None, "locations": sub.locations is not None,
    }
    digest.update(json.dumps(params, sort_keys=True).encode())
    for name in sorted(sub.channels):
        _update(digest, name.encode(), sub.channels[name])
    for name, blob in (("stack", sub.stack), ("locations", sub.locations)):
        if blob is not None:
            _update(digest, name.encode(), blob)
    return digest.hexdigest()[:32]


def _update(digest: hashlib._Hash, name: bytes, blob: bytes) -> None:
    digest.update(len(name).to_bytes(4, "big") + name + len(blob).to_bytes(8, "big"))
    digest.update(blob)


async def read_part(part: UploadFile, name: str, limit: int) -> bytes:
    """One multipart part's bytes; 413 past ``limit`` (by its declared size, else once read)."""
    if part.size is not None and part.size > limit:
        raise PayloadTooLarge(f"part {name} is {part.size} bytes, over the per-part limit of {limit}")
    data = await part.read()
    if len(data) > limit:
        raise PayloadTooLarge(f"part {name} is {len(data)} bytes, over the per-part limit of {limit}")
    return data


def site_metadata(plate: str, well: str, site: str) -> dict[str, str]:
    return dict(zip(SITE_KEYS, (plate, well, site), strict=True))


def prepare(sub: Submission, job_id: str, manifest: ModelManifest, limits: Limits) -> tuple[JobSpec, np.ndarray, Locations | None]:
    """Decode and validate -> (spec, image to store, cell locations or None when nuclei will be detected)."""
    if sub.normalization is not None and sub.normalization not in NORMALIZATIONS:
        raise InputError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {sub.normalization!r}")
    image = read_image(sub, manifest, limits)
    height, width = image.shape[:2]
    cells = uploaded_locations(sub, (height, width), manifest, limits)
    spec = JobSpec(
        id=job_id, model=manifest.name, normalization=sub.normalization or manifest.normalization,
        metadata=sub.metadata, detect_nuclei=sub.detect_nuclei,
        n_locations=None if cells is None else len(cells), max_cells=limits.max_cells,
        image=ImageInfo(width=width, height=height, channels=list(manifest.channels)),
    )
    return spec, _compact(image), cells


def uploaded_locations(
    sub: Submission, shape: tuple[int, int], manifest: ModelManifest, limits: Limits
) -> Locations | None:
    """The uploaded locations, parsed (counted while parsing) and checked against the image's ``shape``
    (H, W); None when nuclei are to be detected. Exactly one of the two must be asked for."""
    if sub.locations is None:
        if not sub.detect_nuclei:
            raise InputError("no locations: upload a 'locations' part (CSV or JSON) or set detect_nuclei=true")
        return None
    if sub.detect_nuclei:
        raise InputError("send either locations or detect_nuclei=true, not both")
    try:
        text = sub.locations.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError("locations must be UTF-8 text (CSV or JSON)") from exc
    cells = parse_locations(text, max_cells=limits.max_cells)
    check_boxes_overlap(cells.centers, shape[0], shape[1], crop_size=manifest.crop_size)
    return cells


def read_image(sub: Submission, manifest: ModelManifest, limits: Limits) -> np.ndarray:
    if sub.stack is not None and sub.channels:
        raise InputError("send either one part per channel or one multi-channel 'image' part, not both")
    if sub.stack is not None:
        if not sub.channel_order:
            raise InputError(f"a multi-channel image needs channel_order naming its planes, e.g. {','.join(manifest.channels)}")
        order = [name.strip() for name in sub.channel_order.split(",")]
        return read_stack(sub.stack, channel_order=order, model_channels=manifest.channels, max_pixels=limits.max_pixels)
    if not sub.channels:
        raise InputError(f"no image: upload one part per channel ({', '.join(manifest.channels)}) or one 'image' part")
    return read_site(sub.channels, channel_order=manifest.channels, max_pixels=limits.max_pixels)


def _compact(image: np.ndarray) -> np.ndarray:
    """Store 16-bit data as uint16 when that is lossless: half the bytes on the shared volume."""
    if float(image.min()) >= 0 and float(image.max()) <= 65535:
        as_u16 = image.astype(np.uint16)
        if np.array_equal(as_u16, image):
            return as_u16
    return image
