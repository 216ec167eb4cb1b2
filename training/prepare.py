"""Raw plate images -> illumination-corrected 8-bit PNGs and a training index, as the paper prepared its data.

Per plate and channel: an illumination function (computed with :func:`cpcnn.illum.compute_illum`, or the
``.npy`` files a LoadData CSV names), applied by division; then intensities are stretched between the
plate's 0.05 and 99.95 percentiles (after correction) onto 0..255. The percentiles come from a bounded
sample: the same seeded random pixel positions in every image of the plate, ``max(1000, 2,000,000 / images)``
positions per image (at most every pixel), so memory stays bounded whatever the plate's size.

Written under OUT: ``images/<Plate>/<Well>_s<Site>_<Ch>.png``, ``illum/<Plate>/<Plate>_Illum<Ch>.npy`` (when
computed) and ``illum/<Plate>/scaling.json`` (percentiles and settings), ``locations/<Plate>/<Well>_s<Site>.csv``
(when the cells come from a plate-level table) and ``index.csv`` (the :mod:`cpcnn.training.data` format,
paths relative to OUT). Images are written under a temporary name and renamed, so a rerun skips exactly
the images a previous run finished, and a plate whose images are all written is not read again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
from tqdm import tqdm

from cpcnn._types import CHANNELS, F32Array
from cpcnn.errors import InputError
from cpcnn.illum import DEFAULT_DOWNSAMPLE, DEFAULT_FILTER_SIZE, MeanImage, illum_from_mean, read_illum
from cpcnn.io.durable import write_bytes_durably
from cpcnn.io.images import read_channel
from cpcnn.plates.sites import SiteSpec, file_safe

logger = logging.getLogger(__name__)

IllumMode = Literal["auto", "compute", "given", "none"]
ILLUM_MODES: tuple[str, ...] = ("auto", "compute", "given", "none")
SCALING_FORMAT = "cpcnn-prepare/1"
#: Pixels sampled per plate and channel for the percentiles, and the least per image.
SAMPLE_PIXELS = 2_000_000
MIN_SAMPLE_PER_IMAGE = 1000
_SAMPLE_SEED = 0
#: zlib level of the PNGs: on 1080 x 1080 Cell Painting planes level 1 encodes 5x faster than the
#: default for files 12% larger (83 vs 448 ms, 496 vs 441 kB).
PNG_LEVEL = 1
KEY_COLUMNS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
LOCATIONS_COLUMN = "locations"


@dataclass(frozen=True)
class PrepSite:
    """A site to prepare: its images (and illumination files), where its cells are when that is a file
    (a training index), and the other columns of its row, carried into the new index."""

    spec: SiteSpec
    locations: Path | None = None
    columns: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PrepareSettings:
    """What decides the pixels written; a change makes a rerun recompute a plate's scaling."""

    channels: tuple[str, ...] = CHANNELS
    illum: IllumMode = "auto"
    filter_size: float = DEFAULT_FILTER_SIZE
    downsample: int = DEFAULT_DOWNSAMPLE
    low_percentile: float = 0.05
    high_percentile: float = 99.95

    def check(self) -> None:
        if self.illum not in ILLUM_MODES:
            raise InputError(f"--illum must be one of {', '.join(ILLUM_MODES)}, got {self.illum!r}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise InputError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {self.low_percentile}, {self.high_percentile}"
            )
        if self.filter_size <= 0 or self.downsample < 1:
            raise InputError(
                f"--filter-size must be > 0 and --downsample >= 1, got {self.filter_size}, {self.downsample}"
            )


@dataclass
class PrepareResult:
    index: Path
    sites: int = 0
    images_written: int = 0
    images_done_before: int = 0
    skipped: list[str] = field(default_factory=list)
    scaling: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def summary(self) -> str:
        text = (
            f"{self.sites} sites in {self.index}: {self.images_written} images written, "
            f"{self.images_done_before} already done"
        )
        if self.skipped:
            text += f"; {len(self.skipped)} sites skipped (first: {self.skipped[0]})"
        return text


# --- inputs -----------------------------------------------------------------------------------------------


def sites_from_index(path: Path, *, label: str, channels: Sequence[str] = CHANNELS) -> list[PrepSite]:
    """A training index (checked by :func:`cpcnn.training.data.read_index`) -> sites, all columns kept."""
    from cpcnn.training.data import _read_columns, read_index

    indexed = read_index(path, label=label, channels=channels)
    columns = _read_columns(Path(path))
    skip = {c.lower() for c in (*KEY_COLUMNS, *channels, LOCATIONS_COLUMN)}
    extra = [c for c in columns if c.lower() not in skip]
    return [
        PrepSite(
            spec=SiteSpec(s.plate, s.well, s.site, dict(s.images), row=s.row),
            locations=s.locations,
            columns={c: columns[c][s.row - 1] or "" for c in extra},
        )
        for s in indexed
    ]


def sites_from_load_data(path: Path, *, channels: Sequence[str] = CHANNELS) -> list[PrepSite]:
    """A LoadData CSV (:func:`cpcnn.plates.load_data.read_load_data`) -> sites, with their illum files."""
    from cpcnn.plates.load_data import read_load_data

    return [PrepSite(spec) for spec in read_load_data(Path(path), model_channels=channels)]


def read_platemap(path: Path) -> pd.DataFrame:
    """Platemap CSV: ``Metadata_Well`` (and optionally ``Metadata_Plate``) plus label columns, as text."""
    from cpcnn.profiles.tables import read_csv_table

    table = read_csv_table(Path(path), what=f"platemap {Path(path).name}")
    if "Metadata_Well" not in table.columns:
        raise InputError(f"platemap {Path(path).name} lacks Metadata_Well; found {', '.join(table.columns)}")
    keys = [c for c in ("Metadata_Plate", "Metadata_Well") if c in table.columns]
    table = table.astype(str)
    duplicated = table.duplicated(keys)
    if duplicated.any():
        row = table[duplicated].iloc[0]
        raise InputError(f"platemap {Path(path).name} lists {', '.join(row[k] for k in keys)} twice")
    return table


# --- workers (top-level functions: they run in other processes) -----------------------------------------


@dataclass(frozen=True)
class _ChannelStats:
    mean: MeanImage | None
    shape: tuple[int, int]
    positions: np.ndarray  # (k,) flat pixel indices
    samples: F32Array  # (images, k) raw values at the positions


@lru_cache(maxsize=4)
def _sample_positions(shape: tuple[int, int], per_image: int) -> np.ndarray:
    """The plate's sampled pixels (flat indices, sorted): the same in every image and every process."""
    n = shape[0] * shape[1]
    if per_image >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(_SAMPLE_SEED).choice(n, size=per_image, replace=False))


def _channel_stats(paths: list[Path], per_image: int, want_mean: bool) -> _ChannelStats:
    """Raw images of one channel -> running sum (when computing the function) and sampled pixels."""
    mean = MeanImage() if want_mean else None
    shape: tuple[int, int] | None = None
    positions = np.empty(0, np.int64)
    rows: list[F32Array] = []
    for path in paths:
        plane = read_channel(path, name=str(path))
        if shape is None:
            shape = (int(plane.shape[0]), int(plane.shape[1]))
            positions = _sample_positions(shape, per_image)
        elif plane.shape != shape:
            raise InputError(
                f"{path} is {plane.shape[1]}x{plane.shape[0]}, other images of its plate {shape[1]}x{shape[0]}"
            )
        if mean is not None:
            mean.add(plane)
        rows.append(plane.reshape(-1)[positions].astype(np.float32))
    assert shape is not None  # callers never pass an empty chunk
    return _ChannelStats(mean, shape, positions, np.stack(rows))


@lru_cache(maxsize=32)
def _illum_function(path: Path, shape: tuple[int, int]) -> F32Array:
    return read_illum(path, shape=shape)


@dataclass(frozen=True)
class _ImageJob:
    source: Path
    target: Path
    illum: Path | None
    low: float
    high: float


def _write_images(jobs: list[_ImageJob]) -> int:
    """Read, divide by the illumination function, stretch to 0..255, write PNG (temporary name, then rename)."""
    import imagecodecs

    for job in jobs:
        plane = read_channel(job.source, name=str(job.source))
        values = plane.astype(np.float32)
        if job.illum is not None:
            values /= _illum_function(job.illum, (int(plane.shape[0]), int(plane.shape[1])))
        scaled = (values - np.float32(job.low)) * np.float32(255.0 / (job.high - job.low))
        pixels = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        _write_atomically(job.target, imagecodecs.png_encode(pixels, level=PNG_LEVEL))
    return len(jobs)


def _write_atomically(path: Path, data: bytes) -> None:
    """A killed run leaves a dot-named temporary, never a partial file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_durably(path, data)


# --- the run ----------------------------------------------------------------------------------------------


class _Inline(Executor):
    """One worker: run in this process (no start-up cost, plain tracebacks)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


T = TypeVar("T")


def _chunks(items: Sequence[T], n: int) -> Iterator[list[T]]:
    size = max(1, -(-len(items) // max(1, n)))
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def image_path(out: Path, site: SiteSpec, channel: str) -> Path:
    return (
        out
        / "images"
        / file_safe(site.plate)
        / f"{file_safe(site.well)}_s{file_safe(str(site.site))}_{channel}.png"
    )


def prepare(
    sites: Sequence[PrepSite],
    out: Path,
    *,
    settings: PrepareSettings = PrepareSettings(),
    locations: Any | None = None,
    platemap: pd.DataFrame | None = None,
    workers: int = 1,
    progress: bool = True,
) -> PrepareResult:
    """Prepare every site (see the module docstring); ``locations`` is a
    :class:`cpcnn.plates.locations.LocationSource` when the sites carry no locations file."""
    settings.check()
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if not sites:
        raise InputError("no sites to prepare")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = PrepareResult(index=out / "index.csv")
    usable = _usable_sites(sites, settings.channels, locations, out, result)
    mode = _illum_mode(usable, settings)
    by_plate: dict[str, list[PrepSite]] = {}
    for site in usable:
        by_plate.setdefault(site.spec.plate, []).append(site)
    pool: Executor = _Inline() if workers == 1 else ProcessPoolExecutor(workers)
    with pool:
        for plate, plate_sites in by_plate.items():
            result.scaling[plate] = _prepare_plate(
                plate, plate_sites, out, settings, mode, pool, workers, progress, result
            )
    rows = _index_rows(usable, out, settings.channels)
    index = _join_platemap(pd.DataFrame(rows), platemap, result)
    result.sites = len(index)
    if result.sites == 0:
        raise InputError("no site left to write an index for: " + "; ".join(result.skipped[:3]))
    _write_atomically(result.index, index.to_csv(index=False).encode())
    return result


def _usable_sites(
    sites: Sequence[PrepSite],
    channels: Sequence[str],
    locations: Any | None,
    out: Path,
    result: PrepareResult,
) -> list[PrepSite]:
    """Sites whose images exist and whose cells can be found (writing per-site CSVs from a plate table)."""
    if locations is None and any(s.locations is None for s in sites):
        raise InputError("sites without a locations file need a plate-level locations table (--locations)")
    if locations is not None:
        locations.check([s.spec for s in sites])
    usable: list[PrepSite] = []
    for site in sites:
        missing = [c for c in channels if c not in site.spec.images]
        if missing:
            raise InputError(f"{site.spec.describe()} has no image for channel(s) {', '.join(missing)}")
        absent = [str(site.spec.images[c]) for c in channels if not Path(site.spec.images[c]).is_file()]
        if absent:
            result.skipped.append(f"{site.spec.describe()}: missing {absent[0]}")
            continue
        if site.locations is None:
            target = (
                out
                / "locations"
                / file_safe(site.spec.plate)
                / f"{file_safe(site.spec.well)}_s{file_safe(str(site.spec.site))}.csv"
            )
            if not target.is_file():
                try:
                    cells = locations.for_site(site.spec)
                except InputError as exc:
                    result.skipped.append(f"{site.spec.describe()}: {exc}")
                    continue
                _write_atomically(target, _locations_csv(cells.centers, cells.object_numbers))
            site = PrepSite(site.spec, target, site.columns)
        usable.append(site)
    if result.skipped:
        logger.warning("%d sites skipped, first: %s", len(result.skipped), result.skipped[0])
    if not usable:
        raise InputError(f"no site can be prepared: {result.skipped[0]}")
    return usable


def _locations_csv(centers: np.ndarray, numbers: np.ndarray) -> bytes:
    lines = ["Location_Center_X,Location_Center_Y,ObjectNumber"]
    lines += [f"{x!r},{y!r},{n}" for (x, y), n in zip(centers.tolist(), numbers.tolist(), strict=True)]
    return ("\n".join(lines) + "\n").encode()


def _illum_mode(sites: Sequence[PrepSite], settings: PrepareSettings) -> IllumMode:
    """``auto``: the files the input names when every site names one per channel, else compute."""
    if settings.illum in ("compute", "none"):
        return settings.illum
    lacking = [(s, c) for s in sites for c in settings.channels if c not in s.spec.illum]
    if settings.illum == "auto":
        return "compute" if lacking else "given"
    if lacking:
        site, channel = lacking[0]
        raise InputError(
            f"--illum given: {site.spec.describe()} names no illumination function for {channel} "
            f"(LoadData column FileName_Illum{channel})"
        )
    absent = sorted(
        {
            str(s.spec.illum[c])
            for s in sites
            for c in settings.channels
            if not Path(s.spec.illum[c]).is_file()
        }
    )
    if absent:
        raise InputError(f"illumination function {absent[0]} does not exist ({len(absent)} files missing)")
    return "given"


def _prepare_plate(
    plate: str,
    sites: list[PrepSite],
    out: Path,
    settings: PrepareSettings,
    mode: IllumMode,
    pool: Executor,
    workers: int,
    progress: bool,
    result: PrepareResult,
) -> dict[str, dict[str, Any]]:
    todo = [(s, c) for s in sites for c in settings.channels if not image_path(out, s.spec, c).is_file()]
    result.images_done_before += len(sites) * len(settings.channels) - len(todo)
    scaling_path = out / "illum" / file_safe(plate) / "scaling.json"
    fingerprint = {**asdict(settings), "illum": mode, "channels": list(settings.channels)}
    saved = _read_scaling(scaling_path, fingerprint, out)
    if not todo:
        return saved or {}
    scaling = (
        saved
        if saved is not None
        else _plate_scaling(plate, sites, out, settings, mode, pool, workers, progress)
    )
    if saved is None:
        _write_atomically(
            scaling_path,
            json.dumps(
                {"format": SCALING_FORMAT, "settings": fingerprint, "channels": scaling}, indent=2
            ).encode(),
        )
    jobs = [
        _ImageJob(
            source=Path(site.spec.images[channel]),
            target=image_path(out, site.spec, channel),
            illum=_illum_file(site, channel, mode, scaling, out),
            low=scaling[channel]["low"],
            high=scaling[channel]["high"],
        )
        for site, channel in todo
    ]
    with tqdm(total=len(jobs), desc=f"{plate} images", unit="image", disable=not progress) as bar:
        for written in _results(pool, _write_images, [(c,) for c in _chunks(jobs, 32 * workers)]):
            bar.update(written)
            result.images_written += written
    return scaling


def _illum_file(
    site: PrepSite, channel: str, mode: IllumMode, scaling: dict[str, dict[str, Any]], out: Path
) -> Path | None:
    if mode == "given":
        return Path(site.spec.illum[channel])
    if mode == "compute":
        return out / scaling[channel]["illum"]
    return None


def _read_scaling(path: Path, fingerprint: dict[str, Any], out: Path) -> dict[str, dict[str, Any]] | None:
    """A previous run's percentiles when it used the same settings (else None: recompute)."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("format") != SCALING_FORMAT or saved.get("settings") != json.loads(json.dumps(fingerprint)):
        return None
    channels: dict[str, dict[str, Any]] = saved["channels"]
    if any(entry["illum"] and not (out / entry["illum"]).is_file() for entry in channels.values()):
        return None  # a computed function was removed: compute it (and the percentiles) again
    return channels


def _results(pool: Executor, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> Iterator[T]:
    """``fn(*call)`` for every call, results in call order; in this process one at a time (so a progress
    bar moves), else all submitted at once."""
    if isinstance(pool, _Inline):
        for call in calls:
            yield fn(*call)
        return
    futures = [pool.submit(fn, *call) for call in calls]
    try:
        for future in futures:
            yield future.result()
    finally:
        for future in futures:
            future.cancel()


def _plate_scaling(
    plate: str,
    sites: list[PrepSite],
    out: Path,
    settings: PrepareSettings,
    mode: IllumMode,
    pool: Executor,
    workers: int,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """Per channel: the illumination function (computed and saved, or the given files) and the percentiles."""
    per_image = max(MIN_SAMPLE_PER_IMAGE, SAMPLE_PIXELS // len(sites))
    scaling: dict[str, dict[str, Any]] = {}
    with tqdm(
        total=len(sites) * len(settings.channels),
        desc=f"{plate} statistics",
        unit="image",
        disable=not progress,
    ) as bar:
        for channel in settings.channels:
            chunks = list(_chunks(sites, 2 * workers))
            paths = [[Path(s.spec.images[channel]) for s in chunk] for chunk in chunks]
            parts: list[_ChannelStats] = []
            calls = [(p, per_image, mode == "compute") for p in paths]
            for part in _results(pool, _channel_stats, calls):  # in order: samples line up with sites
                parts.append(part)
                bar.update(len(part.samples))
            shapes = {p.shape for p in parts}
            if len(shapes) > 1:
                raise InputError(f"plate {plate} channel {channel}: images differ in size ({sorted(shapes)})")
            shape = parts[0].shape
            positions = parts[0].positions
            samples = np.concatenate([p.samples for p in parts])
            entry: dict[str, Any] = {"illum": None, "images": len(sites), "pixels_sampled": int(samples.size)}
            if mode == "compute":
                mean = MeanImage()
                for part in parts:
                    assert part.mean is not None
                    mean.merge(part.mean)
                function = illum_from_mean(
                    mean.mean(), filter_size=settings.filter_size, downsample=settings.downsample
                )
                relative = Path("illum") / file_safe(plate) / f"{file_safe(plate)}_Illum{channel}.npy"
                _save_npy(out / relative, function)
                entry["illum"] = relative.as_posix()
                samples = samples / function.reshape(-1)[positions]
            elif mode == "given":
                for row, site in enumerate(sites):
                    function = _illum_function(Path(site.spec.illum[channel]), shape)
                    samples[row] = samples[row] / function.reshape(-1)[positions]
            low, high = np.percentile(samples, [settings.low_percentile, settings.high_percentile])
            if not high > low:
                raise InputError(
                    f"plate {plate} channel {channel}: the {settings.low_percentile} and {settings.high_percentile} "
                    f"percentiles are equal ({low:g}); the images are blank"
                )
            entry.update(low=float(low), high=float(high))
            scaling[channel] = entry
    return scaling


def _save_npy(path: Path, array: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    _write_atomically(path, buffer.getvalue())


def _index_rows(sites: Sequence[PrepSite], out: Path, channels: Sequence[str]) -> list[dict[str, str]]:
    rows = []
    for site in sites:
        assert site.locations is not None
        row = {
            "Metadata_Plate": site.spec.plate,
            "Metadata_Well": site.spec.well,
            "Metadata_Site": str(site.spec.site),
        }
        row.update({c: image_path(out, site.spec, c).relative_to(out).as_posix() for c in channels})
        row[LOCATIONS_COLUMN] = _relative_or_absolute(site.locations, out)
        row.update(site.columns)
        rows.append(row)
    return rows


def _relative_or_absolute(path: Path, out: Path) -> str:
    try:
        return Path(path).resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def _join_platemap(index: pd.DataFrame, platemap: pd.DataFrame | None, result: PrepareResult) -> pd.DataFrame:
    """Add the platemap's columns (those the index lacks) by well, and by plate when it has Metadata_Plate;
    sites whose well it does not list are left out of the index."""
    if platemap is None:
        return index
    keys = [c for c in ("Metadata_Plate", "Metadata_Well") if c in platemap.columns]
    extra = [c for c in platemap.columns if c not in index.columns]
    joined = index.merge(platemap[keys + extra], on=keys, how="left", indicator=True)
    unmatched = joined["_merge"] != "both"
    if unmatched.any():
        first = joined[unmatched].iloc[0]
        result.skipped.append(
            f"{int(unmatched.sum())} sites whose well the platemap does not list "
            f"(first: plate {first['Metadata_Plate']} well {first['Metadata_Well']})"
        )
        logger.warning(result.skipped[-1])
    return joined[~unmatched].drop(columns="_merge").reset_index(drop=True)
