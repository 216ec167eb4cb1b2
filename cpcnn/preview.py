"""Pictures of a field of view for people: a false-colour composite and the network's crops as PNG.

The web console shows what the embedder sees, so the crops come from ``SiteCrops`` (the same cropping
and per-crop normalization as a job) and are only mapped from [0, 1] to 8 bits for display. PNGs are
written here with zlib (no imaging library needed on the server).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

from cpcnn._types import CROP_SIZE, F32Array, F64Array, Normalization
from cpcnn.batching import SiteCrops
from cpcnn.errors import InputError

#: Additive colour of each Cell Painting channel in the composite (R, G, B).
CHANNEL_COLOURS: dict[str, tuple[float, float, float]] = {
    "DNA": (0.0, 0.35, 1.0),
    "RNA": (0.0, 0.0, 0.0),
    "ER": (0.0, 1.0, 0.0),
    "AGP": (1.0, 0.0, 0.0),
    "Mito": (0.6, 0.0, 0.6),
}
#: Percentiles stretched to black and white in each channel of the composite.
STRETCH_PERCENTILES = (0.5, 99.5)


def encode_png(pixels: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG bytes (8-bit grayscale or RGB, no filtering)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise InputError(f"a PNG needs (H, W) or (H, W, 3) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    colour_type = 0 if pixels.ndim == 2 else 2
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def downscale_factor(height: int, width: int, max_side: int) -> int:
    """Smallest integer factor that brings the longer side to at most ``max_side`` pixels."""
    return max(1, -(-max(height, width) // max_side))


def composite(image: F32Array, channels: Sequence[str], *, max_side: int = 768) -> tuple[np.ndarray, int]:
    """(H, W, C) site -> ((h, w, 3) uint8 false-colour picture, downscale factor).

    Each channel is stretched between its 0.5th and 99.5th percentiles, block-averaged by the factor and
    added in its colour (DNA blue, ER green, AGP red, Mito magenta; RNA is left out to keep it legible).
    """
    if image.ndim != 3 or image.shape[2] != len(channels):
        raise InputError(f"composite needs (H, W, {len(channels)}) pixels, got {image.shape}")
    factor = downscale_factor(image.shape[0], image.shape[1], max_side)
    height, width = image.shape[0] // factor, image.shape[1] // factor
    rgb = np.zeros((height, width, 3), np.float32)
    for index, name in enumerate(channels):
        colour = np.asarray(CHANNEL_COLOURS.get(name, (0.0, 0.0, 0.0)), np.float32)
        if not colour.any():
            continue
        plane = image[: height * factor, : width * factor, index].astype(np.float32)
        plane = plane.reshape(height, factor, width, factor).mean(axis=(1, 3))
        low, high = np.percentile(plane, STRETCH_PERCENTILES)
        scaled = np.clip((plane - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(plane)
        rgb += scaled[:, :, None] * colour
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), factor


def network_crops(
    image: F32Array, centers: F64Array, *, crop_size: int = CROP_SIZE, normalization: Normalization = "minmax"
) -> np.ndarray:
    """(N, S, S, C) uint8: each cell's crop exactly as the embedder normalizes it, times 255."""
    site = SiteCrops.check(image, centers, crop_size=crop_size, normalization=normalization)
    crops = site.crop(slice(0, len(site)))
    return (np.clip(crops, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
