"""Crafted TIFF and PNG uploads: refused from their headers, never decoded past what the tags declare."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from _hostile import run_probe

from cpcnn.errors import InputError, PayloadTooLarge, UnsupportedMedia
from cpcnn.io.images import MAX_TIFF_PAGES, read_channel, read_stack


def _tiff(plane: np.ndarray, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, **kwargs)
    return buffer.getvalue()


def _retarget_strip(data: bytes, payload: bytes) -> bytes:
    """Point a one-strip TIFF's StripOffsets/StripByteCounts at ``payload`` appended to the file."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        offsets, counts, order = page.tags["StripOffsets"], page.tags["StripByteCounts"], tif.byteorder
        assert offsets.count == 1 and counts.count == 1
        at_offset, at_count = offsets.valueoffset, counts.valueoffset
    patched = bytearray(data)
    struct.pack_into(order + "I", patched, at_offset, len(patched))
    struct.pack_into(order + "I", patched, at_count, len(payload))
    return bytes(patched + payload)


def jpeg_strip_tiff(side: int) -> bytes:
    """A TIFF tagged 200x200 JPEG whose one strip is a ``side`` x ``side`` JPEG."""
    tagged = _tiff(np.zeros((200, 200), np.uint8), compression="jpeg", rowsperstrip=200)
    return _retarget_strip(tagged, imagecodecs.jpeg8_encode(np.zeros((side, side), np.uint8)))


def test_jpeg_strip_larger_than_its_tags_is_refused() -> None:
    with pytest.raises(UnsupportedMedia, match="compression JPEG is not supported"):
        read_channel(jpeg_strip_tiff(4000))


@pytest.mark.parametrize("compression", ["jpeg", "png", "webp", "jpeg2000", "lerc", "lzma", "jpegxl"])
def test_codecs_outside_the_list_are_refused_before_decoding(compression: str) -> None:
    try:
        data = _tiff(np.zeros((64, 64), np.uint8), compression=compression)
    except Exception as exc:  # an encoder this imagecodecs build lacks
        pytest.skip(f"cannot write {compression} TIFF here: {exc}")
    with pytest.raises(UnsupportedMedia, match="is not supported"):
        read_channel(data)


@pytest.mark.parametrize(
    "compression, payload",
    [
        ("zlib", lambda raw: zlib.compress(raw, 9)),
        ("zstd", imagecodecs.zstd_encode),
        ("lzw", imagecodecs.lzw_encode),
        ("packbits", lambda raw: b"\x81\x00" * (len(raw) // 128)),
    ],
)
def test_listed_codecs_never_decode_past_the_tags(compression: str, payload: object) -> None:
    tagged = _tiff(np.zeros((200, 200), np.uint8), compression=compression, rowsperstrip=200)
    bomb = _retarget_strip(tagged, payload(bytes(1 << 24)))  # type: ignore[operator]
    try:
        pixels = read_channel(bomb)
    except UnsupportedMedia:
        return
    assert pixels.shape == (200, 200)


def test_listed_codecs_still_read(tmp_path: Path) -> None:
    plane = (np.arange(64 * 48, dtype=np.uint32) % 65535).astype(np.uint16).reshape(48, 64)
    for compression in (None, "lzw", "zlib", "adobe_deflate", "packbits", "zstd"):
        np.testing.assert_array_equal(read_channel(_tiff(plane, compression=compression)), plane)
    np.testing.assert_array_equal(read_channel(imagecodecs.png_encode(plane)), plane)


def test_padding_channel_order_does_not_raise_the_stack_budget() -> None:
    stack = _tiff(np.zeros((5, 200, 200), np.uint16), compression="zlib")
    padded = ["DNA", "RNA", "ER", "AGP", "Mito"] + [f"pad{i}" for i in range(5000)]
    with pytest.raises(PayloadTooLarge, match="over the limit of 50000"):
        read_stack(stack, channel_order=padded, max_pixels=10_000)
    # The budget is the model's channels: 5 planes of 200x200 fit 40,000 px per plane, 6 planes do not.
    order = ["DNA", "RNA", "ER", "AGP", "Mito"]
    assert read_stack(stack, channel_order=order, max_pixels=40_000).shape == (200, 200, 5)
    six = _tiff(np.zeros((6, 200, 200), np.uint16), compression="zlib")
    with pytest.raises(PayloadTooLarge):
        read_stack(six, channel_order=[*order, "Brightfield"], max_pixels=40_000)
    with pytest.raises(InputError, match="names 7 channels but the image has shape"):
        read_stack(six, channel_order=[*order, "a", "b"], max_pixels=400_000)


def test_page_count_and_loops_are_checked_before_tifffile_walks_them() -> None:
    many = io.BytesIO()
    with tifffile.TiffWriter(many) as writer:
        for _ in range(MAX_TIFF_PAGES + 1):
            writer.write(np.zeros((2, 2), np.uint8), contiguous=False)
    with pytest.raises(PayloadTooLarge, match=f"more than {MAX_TIFF_PAGES} pages"):
        read_stack(many.getvalue(), channel_order=[f"c{i}" for i in range(MAX_TIFF_PAGES + 1)])
    single = bytearray(_tiff(np.zeros((4, 4), np.uint8)))
    first_ifd = struct.unpack_from("<I", single, 4)[0]
    entries = struct.unpack_from("<H", single, first_ifd)[0]
    struct.pack_into("<I", single, first_ifd + 2 + 12 * entries, first_ifd)  # next IFD = itself
    with pytest.raises(UnsupportedMedia, match="loops"):
        read_channel(bytes(single))


def test_pixel_type_and_samples_are_checked_before_decoding() -> None:
    with pytest.raises(InputError, match="unsupported pixel type float64"):
        read_channel(_tiff(np.zeros((8, 8), np.float64), compression="zlib"))
    with pytest.raises(InputError, match="single-channel"):
        read_channel(_tiff(np.zeros((8, 8, 3), np.uint8), photometric="rgb"))


def _png_with_header(data: bytes, width: int, height: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(">II", patched, 16, width, height)
    struct.pack_into(">I", patched, 29, zlib.crc32(bytes(patched[12:29])))
    return bytes(patched)


def test_png_decodes_no_more_than_its_header_declares() -> None:
    big = imagecodecs.png_encode(np.zeros((2000, 2000), np.uint8))
    try:
        pixels = read_channel(_png_with_header(big, 10, 10))
    except UnsupportedMedia:
        pixels = None
    assert pixels is None or pixels.shape == (10, 10)
    with pytest.raises(InputError, match="not a single-channel 8/16-bit grayscale"):
        read_channel(imagecodecs.png_encode(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(PayloadTooLarge, match="100000x100000"):
        read_channel(_png_with_header(big, 100_000, 100_000))


@pytest.mark.slow
def test_hostile_images_keep_peak_memory_near_a_benign_decode(tmp_path: Path) -> None:
    benign = tmp_path / "benign.tif"
    benign.write_bytes(_tiff(np.zeros((200, 200), np.uint8), compression="zlib"))
    jpeg = tmp_path / "jpeg.tif"
    jpeg.write_bytes(jpeg_strip_tiff(16000))
    stack = tmp_path / "stack.tif"
    stack.write_bytes(_tiff(np.zeros((5, 8000, 8000), np.uint16), compression="zlib"))
    setup = "from pathlib import Path\nfrom cpcnn.io.images import read_channel, read_stack"
    base = run_probe(setup, f"read_channel(Path({str(benign)!r}))")
    assert base["outcome"] == "ok", base
    padded = ["DNA", "RNA", "ER", "AGP", "Mito"] + [f"p{i}" for i in range(5000)]
    for call in (
        f"read_channel(Path({str(jpeg)!r}))",
        f"read_stack(Path({str(stack)!r}), channel_order={padded!r}, max_pixels=4_000_000)",
    ):
        hostile = run_probe(setup, call)
        assert hostile["outcome"].split(":")[0] in ("UnsupportedMedia", "PayloadTooLarge"), hostile
        assert int(hostile["peak"]) - int(base["peak"]) < 100 * 2**20, (call[:40], hostile)


def test_byte_flips_give_only_input_errors() -> None:
    import random

    plane = (np.arange(96 * 80, dtype=np.uint32) % 4099).astype(np.uint16).reshape(80, 96)
    rng = random.Random(0)
    for data in (_tiff(plane, compression="lzw", tile=(16, 16)), _tiff(plane, compression="zlib"),
                 imagecodecs.png_encode(plane)):
        for _ in range(150):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            try:
                pixels = read_channel(bytes(mutated), max_pixels=1_000_000)
            except InputError:
                continue
            assert pixels.size <= 1_000_000
