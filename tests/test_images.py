"""Reading fields of view: formats, channel mapping by name, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from cpcnn._types import CHANNELS
from cpcnn.errors import InputError, PayloadTooLarge, UnsupportedMedia
from cpcnn.io.images import parse_channel_args, read_channel, read_site, read_stack

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "pcatlas-BR00143976-C03-s3"
SAMPLE_CHANNELS = {"DNA": 5, "RNA": 6, "ER": 2, "AGP": 3, "Mito": 4}


def tiff_bytes(array: np.ndarray, **kwargs: object) -> bytes:
    import io

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


@pytest.fixture()
def planes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: rng.integers(0, 65535, (40, 50), dtype=np.uint16) for name in CHANNELS}


@pytest.mark.parametrize("compression", [None, "lzw", "zlib"])
def test_16bit_tiff_kept_raw(planes: dict[str, np.ndarray], compression: str | None) -> None:
    sources = {name: tiff_bytes(p, compression=compression) for name, p in planes.items()}
    image = read_site(sources)
    assert image.shape == (40, 50, 5) and image.dtype == np.float32
    for index, name in enumerate(CHANNELS):
        assert np.array_equal(image[:, :, index], planes[name].astype(np.float32))


def test_channels_mapped_by_name_not_position(planes: dict[str, np.ndarray]) -> None:
    reordered = {name.lower(): tiff_bytes(planes[name]) for name in reversed(CHANNELS)}
    image = read_site(reordered)
    assert np.array_equal(image[:, :, 0], planes["DNA"])
    assert np.array_equal(image[:, :, 4], planes["Mito"])


def test_8bit_png_and_tiff() -> None:
    plane = np.arange(40 * 50, dtype=np.uint32).reshape(40, 50).astype(np.uint8)
    assert np.array_equal(read_channel(imagecodecs.png_encode(plane)), plane)
    assert np.array_equal(read_channel(tiff_bytes(plane)), plane)


def test_multipage_stack_with_channel_order(planes: dict[str, np.ndarray]) -> None:
    stored = ["Mito", "Brightfield", "DNA", "ER", "RNA", "AGP"]
    stack = np.stack([planes.get(n, np.zeros((40, 50), np.uint16)) for n in stored])
    image = read_stack(tiff_bytes(stack), channel_order=stored)
    for index, name in enumerate(CHANNELS):
        assert np.array_equal(image[:, :, index], planes[name])


def test_real_sample_site_reads() -> None:
    if not SAMPLE.is_dir():
        pytest.skip("sample site not present")
    files = {n: SAMPLE / f"r03c03f03p01-ch{c}sk1fk1fl1.tiff" for n, c in SAMPLE_CHANNELS.items()}
    image = read_site(files)
    assert image.shape == (1080, 1080, 5)
    assert image[:, :, 4].max() == 65535  # Mito is the saturated channel per the MANIFEST


def test_missing_channel(planes: dict[str, np.ndarray]) -> None:
    del planes["ER"]
    with pytest.raises(InputError, match="missing channel.*ER"):
        read_site(planes)


def test_unknown_channel(planes: dict[str, np.ndarray]) -> None:
    planes["Brightfield"] = planes["DNA"]
    with pytest.raises(InputError, match="unknown channel.*Brightfield"):
        read_site(planes)


def test_duplicate_channel_argument() -> None:
    with pytest.raises(InputError, match="(?i)DNA given more than once"):
        parse_channel_args(["DNA=a.tif", "dna=b.tif"])
    with pytest.raises(InputError, match="NAME=PATH"):
        parse_channel_args(["a.tif"])


def test_shape_mismatch(planes: dict[str, np.ndarray]) -> None:
    planes["RNA"] = planes["RNA"][:, :49]
    with pytest.raises(InputError, match="differ in size.*RNA=49x40"):
        read_site(planes)


def test_not_an_image() -> None:
    with pytest.raises(UnsupportedMedia, match="not a TIFF or PNG"):
        read_channel(b"hello, world")


def test_truncated_tiff(planes: dict[str, np.ndarray]) -> None:
    data = tiff_bytes(planes["DNA"], compression="zlib")
    with pytest.raises(UnsupportedMedia, match="cannot decode TIFF"):
        read_channel(data[: len(data) // 2])


def test_unsupported_dtype() -> None:
    with pytest.raises(InputError, match="unsupported pixel type int32"):
        read_channel(tiff_bytes(np.zeros((4, 4), np.int32)))


def test_rgb_is_not_a_channel() -> None:
    with pytest.raises(InputError, match="single-channel"):
        read_channel(tiff_bytes(np.zeros((8, 8, 3), np.uint8), photometric="rgb"))


def test_pixel_limit_checked_before_decoding() -> None:
    # A tiny file that declares 20000 x 20000 pixels: refused from the header, nothing allocated.
    bomb = tiff_bytes(np.zeros((20000, 20000), np.uint8), compression="zlib")
    assert len(bomb) < 2_000_000
    with pytest.raises(PayloadTooLarge, match="over the limit"):
        read_channel(bomb, max_pixels=10_000_000)


def test_png_pixel_limit_from_header() -> None:
    png = imagecodecs.png_encode(np.zeros((300, 300), np.uint8))
    with pytest.raises(PayloadTooLarge, match="300x300"):
        read_channel(png, max_pixels=1000)


def test_nonfinite_float_image() -> None:
    plane = np.zeros((4, 4), np.float32)
    plane[1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        read_channel(plane)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_channel(tmp_path / "nope.tif")
