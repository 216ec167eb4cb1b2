"""One field of view's cells -> crops, chunk by chunk, in a reused per-thread buffer.

Every caller that crops many cells goes through :class:`SiteCrops`: the embedder's streams, the
worker's jobs, the batcher that merges jobs' crops, and the training crop cache. The site is checked
once as a whole, so an error names a cell by its row in the site, never by its row in a chunk. Each
chunk is cropped into the calling thread's buffer, which is reused: a fresh 0.3 MB-per-cell array
costs page faults that take longer than the cropping itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cpcnn._types import CROP_SIZE, F32Array, F64Array, Normalization
from cpcnn.crops import check_boxes_overlap, crop_cells
from cpcnn.errors import InputError
from cpcnn.locations import validate_centers

#: Cells cropped at once by sequential callers: 64 crops of 128x128x5 float32 are 20 MiB, small enough
#: to stay cheap to reuse, large enough that per-call overhead does not show.
CROP_CHUNK = 64

_buffers = threading.local()


def crop_buffer(n_cells: int, crop_size: int, n_channels: int, *, at_least: int = 0) -> F32Array:
    """(n_cells, S, S, C) float32 view of this thread's reused buffer, grown to ``max(n_cells, at_least)``
    rows when too small. What it holds stays valid until the same thread asks again."""
    buffer: F32Array | None = getattr(_buffers, "crops", None)
    if buffer is None or buffer.shape[0] < n_cells or buffer.shape[1:] != (crop_size, crop_size, n_channels):
        shape = (max(n_cells, at_least), crop_size, crop_size, n_channels)
        buffer = _buffers.crops = np.empty(shape, np.float32)
    return buffer[:n_cells]


def release_crop_buffer() -> None:
    """Free this thread's buffer (a long-lived thread that has finished cropping)."""
    _buffers.__dict__.pop("crops", None)


@dataclass(frozen=True)
class SiteCrops:
    """A checked site: image (H, W, C) float32 and centres (N, 2) float64 (x = column), cropped by rows.

    Build it with :meth:`check`; then :meth:`chunks` iterates (rows, crops) sequentially, or
    :meth:`slices` + :meth:`crop` let several threads crop chunks of the same site.
    """

    image: F32Array
    centers: F64Array
    crop_size: int
    normalization: Normalization | None

    @classmethod
    def check(
        cls,
        image: F32Array,
        centers: F64Array,
        *,
        crop_size: int = CROP_SIZE,
        normalization: Normalization | None = "minmax",
    ) -> SiteCrops:
        """Validate the whole site once (finite centres, every box overlaps the image): errors name the
        site's own rows."""
        if image.ndim != 3:
            raise InputError(f"image must be (height, width, channels), got shape {image.shape}")
        centers = validate_centers(centers)
        check_boxes_overlap(centers, image.shape[0], image.shape[1], crop_size=crop_size)
        return cls(np.asarray(image, dtype=np.float32), centers, crop_size, normalization)

    def __len__(self) -> int:
        return int(self.centers.shape[0])

    def slices(self, size: int = CROP_CHUNK) -> list[slice]:
        """Consecutive row ranges of at most ``size`` cells covering the site, in order."""
        return [slice(start, min(start + size, len(self))) for start in range(0, len(self), size)]

    def crop(self, rows: slice) -> F32Array:
        """Crops of ``rows`` -> (n, S, S, C) float32 in this thread's reused buffer, valid until its next crop."""
        centers = self.centers[rows]
        out = crop_buffer(centers.shape[0], self.crop_size, self.image.shape[2])
        return crop_cells(
            self.image, centers, crop_size=self.crop_size, normalization=self.normalization, out=out
        )

    def chunks(self, size: int = CROP_CHUNK) -> Iterator[tuple[slice, F32Array]]:
        """(rows, crops) per chunk of at most ``size`` cells; the next chunk overwrites the crops."""
        for rows in self.slices(size):
            yield rows, self.crop(rows)
