"""Read one field of view into an (H, W, C) float32 array in a model's channel order.

Sources are file paths, raw bytes or 2-D arrays. TIFF (8/16-bit or float32; uncompressed, LZW,
Deflate, PackBits or Zstd) is decoded by tifffile with imagecodecs; 8/16-bit grayscale PNG by
imagecodecs. Everything that sets the decoded size is checked from the headers before any pixel is
decoded: page count, compression, pixel type, shape and planes, so a small file that claims a huge
image (a decompression bomb) is refused without allocating it. Only codecs that are given the
declared output size are accepted (a JPEG strip, for one, decodes to its own size whatever the
TIFF tags say).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from cpcnn._types import CHANNELS, F32Array
from cpcnn.errors import InputError, PayloadTooLarge, UnsupportedMedia

#: Default ceiling on pixels per channel (about 10,000 x 10,000).
DEFAULT_MAX_PIXELS = 100_000_000

#: Pixel types a microscope writes that we accept. Floats must be finite.
SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

ImageSource = str | PathLike[str] | bytes | bytearray | memoryview | np.ndarray

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: TIFF compressions accepted: tifffile decodes these into a buffer of the size the tags declare.
TIFF_COMPRESSIONS = {1: "none", 5: "LZW", 8: "Deflate", 32946: "Deflate", 32773: "PackBits", 50000: "Zstd", 34926: "Zstd"}
#: Most pages (IFDs) a TIFF may have: a stack's planes plus thumbnails, never thousands.
MAX_TIFF_PAGES = 64
_PNG_GRAY = 0
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_channel(source: ImageSource, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One single-channel image -> 2-D array in its own dtype (uint8, uint16 or float32)."""
    if isinstance(source, np.ndarray):
        return _check_plane(source, name, max_pixels)
    data = _read_bytes(source, name)
    if data[:4] in _TIFF_MAGIC:
        pixels = _decode_tiff(data, name, max_pixels=max_pixels)
    elif data[:8] == _PNG_MAGIC:
        pixels = _decode_png(data, name, max_pixels)
    else:
        raise UnsupportedMedia(f"{name}: not a TIFF or PNG image (first bytes {bytes(data[:8])!r})")
    if pixels.ndim == 3 and 1 in (pixels.shape[0], pixels.shape[-1]):
        pixels = pixels.reshape(pixels.shape[1:] if pixels.shape[0] == 1 else pixels.shape[:-1])
    return _check_plane(pixels, name, max_pixels)


def read_site(
    channels: Mapping[str, ImageSource],
    *,
    channel_order: Sequence[str] = CHANNELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> F32Array:
    """Channel name -> single-channel source, for every name in ``channel_order`` -> (H, W, C) float32.

    Names are matched case-insensitively; a missing or unknown channel is an error, never a guess.
    """
    by_name = _match_channel_names(list(channels), channel_order)
    planes = [read_channel(channels[by_name[want]], name=want, max_pixels=max_pixels) for want in channel_order]
    return stack_planes(planes, channel_order)


def read_stack(
    source: ImageSource,
    *,
    channel_order: Sequence[str],
    model_channels: Sequence[str] = CHANNELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> F32Array:
    """One multi-page or 3-D TIFF whose planes are named by ``channel_order`` -> (H, W, C) float32.

    ``channel_order`` names the planes as stored (extra planes such as brightfield are allowed and
    dropped); the result is in ``model_channels`` order.
    """
    order = [c.strip() for c in channel_order]
    _reject_duplicates(order, "channel order")
    # The budget follows the model, never the client's list: padding channel_order buys nothing.
    max_total = max_pixels * len(model_channels)
    if isinstance(source, np.ndarray):
        stack = source
    else:
        data = _read_bytes(source, "stack")
        if data[:4] not in _TIFF_MAGIC:
            raise UnsupportedMedia("multi-channel image must be a TIFF (multi-page or 3-D)")
        stack = _decode_tiff(data, "stack", max_pixels=max_pixels, planes=len(order), max_total=max_total)
    if stack.ndim != 3:
        raise InputError(f"multi-channel image must be 3-D (channels x height x width), got shape {stack.shape}")
    if stack.size > max_total:
        raise PayloadTooLarge(f"stack of shape {stack.shape} is over the limit of {max_total} pixels")
    if stack.shape[0] == len(order):
        planes = list(stack)
    elif stack.shape[-1] == len(order):
        planes = [stack[..., i] for i in range(stack.shape[-1])]
    else:
        raise InputError(
            f"channel order names {len(order)} channels but the image has shape {stack.shape}"
        )
    by_name = _match_channel_names(order, model_channels, allow_extra=True)
    wanted = [planes[order.index(by_name[want])] for want in model_channels]
    return stack_planes([_check_plane(p, name, max_pixels) for p, name in zip(wanted, model_channels, strict=True)],
                        model_channels)


def stack_planes(planes: Sequence[np.ndarray], names: Sequence[str]) -> F32Array:
    """Equal-shape 2-D planes -> (H, W, C) float32 (raw values: uint16 stays 0..65535)."""
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        listing = ", ".join(f"{n}={p.shape[1]}x{p.shape[0]}" for n, p in zip(names, planes, strict=True))
        raise InputError(f"channels differ in size (width x height): {listing}")
    height, width = planes[0].shape
    image = np.empty((height, width, len(planes)), np.float32)
    for index, plane in enumerate(planes):
        image[:, :, index] = plane
    return image


def parse_channel_args(items: Sequence[str]) -> dict[str, str]:
    """``["DNA=a.tif", ...]`` (CLI form) -> {"DNA": "a.tif", ...}; duplicates are an error."""
    mapping: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InputError(f"--image expects NAME=PATH, got {item!r}")
        key = name.strip()
        if key.lower() in {k.lower() for k in mapping}:
            raise InputError(f"channel {key} given more than once")
        mapping[key] = value.strip()
    return mapping


def _match_channel_names(
    given: Sequence[str], wanted: Sequence[str], *, allow_extra: bool = False
) -> dict[str, str]:
    """Map each wanted channel to the given name that matches it case-insensitively."""
    _reject_duplicates(given, "channels")
    lower = {g.lower(): g for g in given}
    missing = [w for w in wanted if w.lower() not in lower]
    if missing:
        raise InputError(
            f"missing channel(s) {', '.join(missing)}; need all of {', '.join(wanted)} (got {', '.join(given) or 'none'})"
        )
    extra = [g for g in given if g.lower() not in {w.lower() for w in wanted}]
    if extra and not allow_extra:
        raise InputError(f"unknown channel(s) {', '.join(extra)}; expected {', '.join(wanted)}")
    return {w: lower[w.lower()] for w in wanted}


def _reject_duplicates(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name.lower() in seen:
            raise InputError(f"duplicate channel {name} in {what}")
        seen.add(name.lower())


def _read_bytes(source: ImageSource, name: str) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)  # type: ignore[arg-type]
        if not path.is_file():
            raise InputError(f"{name}: file {path} does not exist")
        data = path.read_bytes()
    if not data:
        raise UnsupportedMedia(f"{name}: empty file")
    return data


def _count_tiff_pages(data: bytes, name: str) -> int:
    """Walk the IFD chain from the raw bytes (no tifffile) and refuse more than MAX_TIFF_PAGES pages."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"\x00+", b"+\x00")
    try:
        offset = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise UnsupportedMedia(f"{name}: TIFF page chain loops")
            seen.add(offset)
            if len(seen) > MAX_TIFF_PAGES:
                raise PayloadTooLarge(f"{name}: TIFF has more than {MAX_TIFF_PAGES} pages")
            if big:
                (entries,) = struct.unpack_from(order + "Q", data, offset)
                offset = struct.unpack_from(order + "Q", data, offset + 8 + 20 * entries)[0]
            else:
                (entries,) = struct.unpack_from(order + "H", data, offset)
                offset = struct.unpack_from(order + "I", data, offset + 2 + 12 * entries)[0]
    except struct.error as exc:
        raise UnsupportedMedia(f"{name}: cannot decode TIFF (page directory outside the file)") from exc
    return len(seen)


def _decode_tiff(
    data: bytes, name: str, *, max_pixels: int, planes: int = 1, max_total: int | None = None
) -> np.ndarray:
    """TIFF bytes -> array, after checking pages, codecs, pixel type and declared shape.

    ``planes`` is how many planes the image must hold (1 for a channel file); each plane may have
    at most ``max_pixels`` pixels and all of them together at most ``max_total``.
    """
    import tifffile

    n_pages = _count_tiff_pages(data, name)
    max_total = max_pixels * planes if max_total is None else max_total
    try:
        with tifffile.TiffFile(io.BytesIO(data), _multifile=False) as tif:
            for index in range(n_pages):
                page = tif.pages[index]
                code = int(getattr(page, "compression", 1))
                if code not in TIFF_COMPRESSIONS:
                    raise UnsupportedMedia(
                        f"{name}: TIFF compression {_compression_name(code)} is not supported; use "
                        "none, LZW, Deflate, PackBits or Zstd"
                    )
            series = tif.series[0]
            shape = tuple(int(n) for n in series.shape)
            if np.dtype(series.dtype) not in SUPPORTED_DTYPES:
                raise InputError(
                    f"{name}: unsupported pixel type {np.dtype(series.dtype)}; expected 8-bit, 16-bit or float32"
                )
            _check_declared_shape(shape, name, planes=planes, pages=n_pages, max_pixels=max_pixels, max_total=max_total)
            return series.asarray()
    except (PayloadTooLarge, InputError):
        raise
    except Exception as exc:  # tifffile raises many types for corrupt or truncated files
        raise UnsupportedMedia(f"{name}: cannot decode TIFF ({type(exc).__name__}: {exc})".splitlines()[0]) from exc


def _compression_name(code: int) -> str:
    import tifffile

    try:
        return tifffile.COMPRESSION(code).name
    except ValueError:
        return str(code)


def _check_declared_shape(
    shape: tuple[int, ...], name: str, *, planes: int, pages: int, max_pixels: int, max_total: int
) -> None:
    """Refuse a declared shape that is over the limits or cannot hold ``planes`` planes."""
    n_pixels = 1
    for extent in shape:
        n_pixels *= extent
    if n_pixels > max_total:
        raise PayloadTooLarge(f"{name}: TIFF declares {shape} = {n_pixels} pixels, over the limit of {max_total}")
    dims = [n for n in shape if n != 1] if planes == 1 else list(shape)
    if planes == 1 and len(dims) > 2:
        if pages > 1:
            raise InputError(
                f"{name}: TIFF has {pages} pages; send one channel per file or a multi-channel "
                "stack with its channel order"
            )
        raise InputError(f"{name}: expected a single-channel 2-D image, got shape {shape}")
    if planes > 1:
        if len(dims) != 3:
            raise InputError(f"multi-channel image must be 3-D (channels x height x width), got shape {shape}")
        if planes not in (dims[0], dims[-1]):
            raise InputError(f"channel order names {planes} channels but the image has shape {shape}")
    if n_pixels // planes > max_pixels:
        raise PayloadTooLarge(
            f"{name}: TIFF declares {n_pixels // planes} pixels per plane, over the limit of {max_pixels}"
        )


def _decode_png(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise UnsupportedMedia(f"{name}: truncated PNG header")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])
    if width * height > max_pixels:
        raise PayloadTooLarge(f"{name}: PNG declares {width}x{height} pixels, over the limit of {max_pixels}")
    if color_type != _PNG_GRAY or bit_depth not in (8, 16):
        raise InputError(
            f"{name}: PNG is not a single-channel 8/16-bit grayscale image (color type {color_type}, "
            f"bit depth {bit_depth})"
        )
    import imagecodecs

    try:
        pixels: Any = imagecodecs.png_decode(data)
    except Exception as exc:
        raise UnsupportedMedia(f"{name}: cannot decode PNG ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    pixels = np.asarray(pixels)
    if pixels.shape[:2] != (height, width):
        raise UnsupportedMedia(f"{name}: PNG decoded to {pixels.shape}, not the {width}x{height} its header declares")
    return pixels


def _check_plane(pixels: np.ndarray, name: str, max_pixels: int) -> np.ndarray:
    if pixels.ndim != 2:
        raise InputError(f"{name}: expected a single-channel 2-D image, got shape {pixels.shape}")
    if pixels.size > max_pixels:
        raise PayloadTooLarge(f"{name}: {pixels.shape[1]}x{pixels.shape[0]} pixels is over the limit of {max_pixels}")
    if pixels.size == 0:
        raise InputError(f"{name}: image has no pixels")
    if pixels.dtype not in SUPPORTED_DTYPES:
        raise InputError(f"{name}: unsupported pixel type {pixels.dtype}; expected 8-bit, 16-bit or float32")
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise InputError(f"{name}: image contains NaN or infinite values")
    return pixels
