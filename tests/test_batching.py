"""The one crop loop: a site checked as a whole, cropped chunk by chunk into reused per-thread buffers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cpcnn.batching import CROP_CHUNK, SiteCrops, crop_buffer
from cpcnn.crops import crop_cells
from cpcnn.errors import InputError


def _site(n_cells: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.random((300, 340, 5), dtype=np.float32) * 1000
    centers = np.column_stack([rng.uniform(-30, 370, n_cells), rng.uniform(-30, 330, n_cells)])
    return image, centers


def test_chunks_are_bit_identical_to_cropping_the_whole_site() -> None:
    image, centers = _site(2 * CROP_CHUNK + 5)
    site = SiteCrops.check(image, centers)
    whole = crop_cells(image, centers)
    seen = []
    for rows, crops in site.chunks():
        np.testing.assert_array_equal(crops, whole[rows])
        seen.append((rows.start, rows.stop))
    assert seen == [(0, 64), (64, 128), (128, 133)]
    raw = SiteCrops.check(image, centers[:7], normalization=None, crop_size=96)
    np.testing.assert_array_equal(
        np.concatenate([c.copy() for _, c in raw.chunks(3)]),
        crop_cells(image, centers[:7], normalization=None, crop_size=96),
    )


def test_bad_cell_beyond_the_first_chunk_is_named_by_its_site_row() -> None:
    image, centers = _site(CROP_CHUNK + 20)
    outside, nan = centers.copy(), centers.copy()
    outside[CROP_CHUNK + 6] = (5000.0, 5000.0)
    nan[CROP_CHUNK + 11, 1] = np.nan
    with pytest.raises(InputError, match=rf"1 location\(s\) .* row {CROP_CHUNK + 6} \(x=5000, y=5000\)"):
        SiteCrops.check(image, outside)
    with pytest.raises(InputError, match=f"first at row {CROP_CHUNK + 11}$"):
        SiteCrops.check(image, nan)
    with pytest.raises(InputError, match="height, width, channels"):
        SiteCrops.check(image[:, :, 0], centers)


def test_empty_site_has_no_chunks() -> None:
    image, _ = _site(0)
    site = SiteCrops.check(image, np.zeros((0, 2)))
    assert len(site) == 0 and list(site.chunks()) == []


def test_each_thread_reuses_its_own_buffer() -> None:
    first = crop_buffer(10, 128, 5)
    again = crop_buffer(4, 128, 5)
    assert np.shares_memory(first, again) and again.shape == (4, 128, 128, 5)
    grown = crop_buffer(20, 128, 5, at_least=32)
    assert grown.shape[0] == 20 and grown.base is not None and grown.base.shape[0] == 32
    other: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: other.append(crop_buffer(4, 128, 5)))
    thread.start()
    thread.join()
    assert not np.shares_memory(other[0], crop_buffer(4, 128, 5))
