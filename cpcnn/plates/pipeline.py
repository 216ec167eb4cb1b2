"""A whole plate through one pipeline: decode, crop and embed overlap, one cells file per site.

Sites stream through :meth:`cpcnn.embedding.Embedder.embed_sites` (or anything with the same method,
e.g. a service client), which decodes a couple of sites ahead of the one being embedded: memory is a
few images whatever the plate size, and every core has work. A site whose images, illumination
functions or locations are missing or corrupt is skipped with its reason; the others go on. Sites
whose cells file already exists are not recomputed, so a rerun does only what is missing.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cpcnn._types import CHANNELS, F32Array, F64Array, Normalization
from cpcnn.batching import SiteCrops
from cpcnn.errors import CpcnnError
from cpcnn.illum import apply_illum, read_illum
from cpcnn.io.cells import cells_table
from cpcnn.io.durable import remove_stale
from cpcnn.io.images import DEFAULT_MAX_PIXELS, read_channel, stack_planes
from cpcnn.locations import Locations
from cpcnn.manifest import ModelManifest
from cpcnn.plates.output import PlateOutput
from cpcnn.plates.sites import SiteSpec

if TYPE_CHECKING:
    from cpcnn.plates.locations import LocationSource


#: Illumination functions kept decoded: two plates' five (a LoadData may interleave plates).
ILLUM_CACHE = 10


class SiteEmbedder(Protocol):
    """What the pipeline needs of an embedder: :class:`cpcnn.embedding.Embedder` or a service client."""

    manifest: ModelManifest

    def embed_sites(
        self, sites: Iterable[tuple[Any, Callable[[], tuple[F32Array, F64Array]]]], *,
        normalization: Normalization | None = None,
    ) -> Iterator[tuple[Any, F32Array]]: ...


def _illum_function(path: Path, shape: tuple[int, int]) -> F32Array:
    """The plate's function, decoded once per file version (a rewritten file is read again)."""
    try:
        stat = path.stat()
    except OSError:
        return read_illum(path, shape=shape)  # raises the one-line "does not exist"
    return _cached_illum(path, shape, (stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=ILLUM_CACHE)
def _cached_illum(path: Path, shape: tuple[int, int], version: tuple[int, int]) -> F32Array:
    function = read_illum(path, shape=shape)
    function.setflags(write=False)  # shared by every site of the plate
    return function


def load_site(
    site: SiteSpec,
    *,
    illum: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    channels: Sequence[str] = CHANNELS,
) -> F32Array:
    """The site's images -> (H, W, C) float32 in ``channels`` order, divided by the illumination
    functions (CellProfiler's *Divide*) when ``illum``. InputError names the file that is missing or
    unreadable."""
    planes = []
    for channel in channels:
        if channel not in site.images:
            raise CpcnnError(f"{site.describe()} has no {channel} image")
        plane = read_channel(site.images[channel], name=f"{channel} image {site.images[channel]}", max_pixels=max_pixels)
        if illum:
            if channel not in site.illum:
                raise CpcnnError(f"{site.describe()} has no {channel} illumination function (--illum)")
            plane = apply_illum(plane, _illum_function(Path(site.illum[channel]), plane.shape))
        planes.append(plane)
    return stack_planes(planes, channels)


@dataclass
class PlateRun:
    """What one run did: sites embedded now, reused from an earlier run, skipped (with why), timings."""

    sites: int = 0
    embedded: dict[str, int] = field(default_factory=dict)  # site name -> cells
    reused: dict[str, int] = field(default_factory=dict)  # site name -> cells, done by an earlier run
    skipped: dict[str, str] = field(default_factory=dict)  # site name -> reason
    seconds: float = 0.0

    @property
    def cells(self) -> int:
        return sum(self.embedded.values())

    @property
    def cells_per_s(self) -> float:
        return self.cells / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> bool:
        return bool(self.skipped)

    def summary(self) -> str:
        return (
            f"{len(self.embedded)} sites embedded ({self.cells} cells, {self.cells_per_s:.0f} cells/s), "
            f"{len(self.reused)} already done, {len(self.skipped)} skipped"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": self.sites,
            "sites_embedded": len(self.embedded),
            "sites_reused": len(self.reused),
            "sites_skipped": len(self.skipped),
            "cells": self.cells,
            "seconds": round(self.seconds, 3),
            "cells_per_s": round(self.cells_per_s, 1),
            "cells_per_site": {**self.reused, **self.embedded},
            "reused": list(self.reused),
            "skipped": self.skipped,
        }


class _Skipped(Exception):
    """Raised inside a loader; carried to the consumer as a placeholder site with no cells."""


def profile_plate(
    sites: Sequence[SiteSpec],
    locations: LocationSource,
    embedder: SiteEmbedder,
    output: PlateOutput,
    *,
    illum: bool = False,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    normalization: Normalization | None = None,
) -> PlateRun:
    """Embed every site of ``sites`` not yet in ``output``, one cells file per site (see the module notes).

    Never raises for one site's bad input: that site is skipped and reported (``PlateRun.skipped``, a
    warning on stderr) and the run goes on.
    """
    from tqdm import tqdm

    manifest = embedder.manifest
    remove_stale(output.cells_dir)  # temporaries of a run killed over an hour ago
    run = PlateRun(sites=len(sites))
    started = time.perf_counter()
    pending = []
    for site in sites:
        if output.done(site):
            run.reused[site.name] = output.cells_in(site)
        else:
            pending.append(site)
    found: dict[str, Locations] = {}
    problems: dict[str, str] = {}
    lock = threading.Lock()

    def loader(site: SiteSpec) -> Callable[[], tuple[F32Array, F64Array]]:
        def load() -> tuple[F32Array, F64Array]:
            try:
                image = load_site(site, illum=illum, max_pixels=max_pixels, channels=manifest.channels)
                cells = locations.for_site(site, image if locations.needs_image else None)
                SiteCrops.check(image, cells.centers, crop_size=manifest.crop_size, normalization=None)
            except Exception as exc:  # noqa: BLE001 - one bad site is reported and skipped, never fatal
                reason = str(exc) if isinstance(exc, CpcnnError) else f"{type(exc).__name__}: {exc}"
                with lock:
                    problems[site.name] = reason
                return np.zeros((1, 1, len(manifest.channels)), np.float32), np.zeros((0, 2), np.float64)
            with lock:
                found[site.name] = cells
            return image, cells.centers

        return load

    bar = tqdm(
        total=len(sites), initial=len(run.reused), unit="site", desc="sites",
        disable=not progress or not sys.stderr.isatty(), file=sys.stderr,
    )
    try:
        stream = embedder.embed_sites(((site, loader(site)) for site in pending), normalization=normalization)
        for site, features in stream:
            with lock:
                reason = problems.pop(site.name, None)
                cells = found.pop(site.name, None)
            if reason is not None or cells is None:
                run.skipped[site.name] = reason or "no locations"
                tqdm.write(f"cpcnn: skipped {site.describe()}: {run.skipped[site.name]}", file=sys.stderr)
            else:
                metadata = {"Metadata_Plate": site.plate, "Metadata_Well": site.well, "Metadata_Site": site.site}
                table = cells_table(features, cells, metadata=metadata, model_name=manifest.name,
                                    feature_prefix=manifest.feature_prefix)
                output.write_site(site, table)
                run.embedded[site.name] = len(cells)
            run.seconds = time.perf_counter() - started
            bar.set_postfix_str(f"{run.cells_per_s:.0f} cells/s", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    run.seconds = time.perf_counter() - started
    return run
