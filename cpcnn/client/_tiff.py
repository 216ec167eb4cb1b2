"""Just enough TIFF writing to upload numpy planes without tifffile (the SDK needs numpy only)."""

from __future__ import annotations

import struct

import numpy as np

# (BitsPerSample, SampleFormat) per dtype: 1 = unsigned integer, 3 = IEEE float.
_FORMATS = {np.dtype(np.uint8): (8, 1), np.dtype(np.uint16): (16, 1), np.dtype(np.float32): (32, 3)}


def encode_tiff(planes: np.ndarray) -> bytes:
    """(H, W) or (C, H, W) uint8/uint16/float32 -> uncompressed little-endian TIFF, one page per plane."""
    array = np.asarray(planes)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"expected a 2-D plane or (C, H, W) stack, got shape {array.shape}")
    if array.dtype not in _FORMATS:
        if np.issubdtype(array.dtype, np.integer) and array.min(initial=0) >= 0 and array.max(initial=0) <= 65535:
            array = array.astype(np.uint16)
        else:
            array = array.astype(np.float32)
    bits, sample_format = _FORMATS[array.dtype]
    n_pages, height, width = array.shape
    out = bytearray(b"II*\x00" + struct.pack("<I", 0))
    previous_link = 4
    for page in np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)):
        data_offset = len(out)
        out += page.tobytes()
        if len(out) % 2:
            out += b"\x00"
        ifd_offset = len(out)
        struct.pack_into("<I", out, previous_link, ifd_offset)
        entries = [
            (256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 1), (262, 3, 1),
            (273, 4, data_offset), (277, 3, 1), (278, 4, height), (279, 4, page.nbytes), (339, 3, sample_format),
        ]
        out += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 else struct.pack("<I", value)
            out += struct.pack("<HHI", tag, kind, 1) + packed
        previous_link = len(out)
        out += struct.pack("<I", 0)
    return bytes(out)
