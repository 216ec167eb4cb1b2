"""Training index -> single-cell crops cached on disk, train/validation splits and balanced epochs.

Crops come from :class:`cpcnn.embedding.SiteCrops`, the very checks, chunks, sampling and normalization inference uses, so
the network never sees a crop made differently from the ones it will embed. Decoding and resampling a
field of view costs far more than a training step, so every crop is made once and stored in a
memory-mapped ``.npy`` (uint8 = round(255 x normalized value), or float16); epochs only read it.

An index has one row per site: ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, one column per
channel (image paths), ``locations`` (nuclei CSV) and the label column. Relative paths are relative to
the index's folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import torch
from cpcnn.training.augment import augment_stored
from cpcnn.training.config import CacheDtype, TrainConfig
from cpcnn.training.sources import ClassRow, Source, cap_control_wells, check_channels, class_table

from cpcnn._types import CROP_SIZE, I64Array, Normalization
from cpcnn.batching import SiteCrops, release_crop_buffer
from cpcnn.errors import InputError
from cpcnn.io.images import read_site
from cpcnn.locations import read_locations

logger = logging.getLogger(__name__)

KEY_COLUMNS: tuple[str, ...] = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
LOCATIONS_COLUMN = "locations"
#: Bump when the cache files change meaning; a different value rebuilds the cache.
CACHE_FORMAT = "cpcnn-crop-cache/1"


@dataclass(frozen=True)
class Site:
    """One row of the index, paths resolved."""

    row: int  # 1-based data row in the index file, for messages
    plate: str
    well: str
    site: str
    label: str
    images: dict[str, Path]
    locations: Path
    source: str = ""  # the index's file name when the run combines several
    control: bool = False

    def describe(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}plate {self.plate} well {self.well} site {self.site}"


def read_index(path: Path, *, label: str, channels: Sequence[str]) -> list[Site]:
    """CSV or Parquet index -> sites; every column, value and file is checked before any crop is made."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"index {path} does not exist")
    columns = _read_columns(path)
    lower = {name.lower(): name for name in columns}
    if label.lower() not in lower:
        raise InputError(f"index {path.name} has no label column {label!r}; found {', '.join(columns)}")
    wanted = [*KEY_COLUMNS, *channels, LOCATIONS_COLUMN, label]
    missing = [w for w in wanted if w.lower() not in lower]
    if missing:
        raise InputError(
            f"index {path.name} lacks column(s) {', '.join(missing)}; found {', '.join(columns)}"
        )
    values: dict[str, list[str]] = {}
    for name in wanted:
        column = columns[lower[name.lower()]]
        empty = [i + 1 for i, v in enumerate(column) if v is None or not v.strip()]
        if empty:
            raise InputError(
                f"index {path.name}: column {name} is empty in row {empty[0]} ({len(empty)} rows)"
            )
        values[name] = [v.strip() for v in column if v is not None]
    n_rows = len(values[label])
    if n_rows == 0:
        raise InputError(f"index {path.name} has no rows")
    base = path.parent
    sites = [
        Site(
            row=i + 1,
            plate=values["Metadata_Plate"][i],
            well=values["Metadata_Well"][i],
            site=values["Metadata_Site"][i],
            label=values[label][i],
            images={c: _resolve(base, values[c][i]) for c in channels},
            locations=_resolve(base, values[LOCATIONS_COLUMN][i]),
        )
        for i in range(n_rows)
    ]
    seen: set[tuple[str, str, str]] = set()
    for key in ((s.plate, s.well, s.site) for s in sites):
        if key in seen:
            raise InputError(f"index {path.name}: plate {key[0]} well {key[1]} site {key[2]} appears twice")
        seen.add(key)
    absent = [(s, str(p)) for s in sites for p in (*s.images.values(), s.locations) if not p.is_file()]
    if absent:
        site, file = absent[0]
        raise InputError(
            f"{len(absent)} file(s) named in {path.name} do not exist, first: {file} (row {site.row})"
        )
    return sites


def _resolve(base: Path, value: str) -> Path:
    candidate = Path(value.strip())
    return candidate if candidate.is_absolute() else base / candidate


def _read_columns(path: Path) -> dict[str, list[str | None]]:
    """Every column as strings (plate ``0123`` stays ``0123``); Parquet by magic bytes, else CSV/TSV."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    try:
        if magic == b"PAR1":
            table = pq.read_table(path)
        else:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle, delimiter="\t" if path.suffix == ".tsv" else ","), [])
            table = pa_csv.read_csv(
                path,
                parse_options=pa_csv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ","),
                convert_options=pa_csv.ConvertOptions(column_types={h: pa.string() for h in header}),
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"index {path.name} is not a readable CSV or Parquet table ({exc})".splitlines()[0]
        ) from exc
    return {
        name: [None if v is None else str(v) for v in table.column(name).to_pylist()]
        for name in table.column_names
    }


@dataclass(frozen=True)
class CropCache:
    """(N, S, S, C) crops on disk plus, per cell, its site (index row order) and row in its locations file."""

    crops: np.ndarray  # memmap, uint8 or float16
    site_of_cell: npt.NDArray[np.int32]
    cell_in_site: npt.NDArray[np.int32]
    folder: Path
    #: Sites left out because an image could not be read: index position -> reason.
    skipped: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    @property
    def scale(self) -> float:
        """Stored value x scale = normalized value."""
        return 1 / 255 if self.crops.dtype == np.uint8 else 1.0

    def batch(self, cells: I64Array) -> torch.Tensor:
        """Cell indices -> (B, C, S, S) float32 in [0, 1], channels first for the network."""
        stored = self.crops[np.asarray(cells)]
        values = stored.astype(np.float32)
        if stored.dtype == np.uint8:
            values *= np.float32(1 / 255)
        return torch.from_numpy(values).permute(0, 3, 1, 2).contiguous()

    def stored(self, cells: I64Array) -> torch.Tensor:
        """Cell indices -> the cached (B, S, S, C) values as they are stored (x ``scale`` = normalized)."""
        return torch.from_numpy(np.ascontiguousarray(self.crops[np.asarray(cells)]))

    def augmented(self, cells: I64Array, *, generator: torch.Generator) -> torch.Tensor:
        """``augment_batch(self.batch(cells))`` up to float rounding, from the stored values directly."""
        return augment_stored(self.crops[np.asarray(cells)], scale=self.scale, generator=generator)


def _fingerprint(sites: Sequence[Site], *, normalization: str, dtype: str, channels: Sequence[str]) -> str:
    digest = hashlib.sha256(
        f"{CACHE_FORMAT}|{CROP_SIZE}|{normalization}|{dtype}|{','.join(channels)}".encode()
    )
    for s in sites:
        for p in (*(s.images[c] for c in channels), s.locations):
            stat = p.stat()
            digest.update(
                f"|{s.plate}|{s.well}|{s.site}|{p.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
            )
    return digest.hexdigest()


def load_or_build_cache(
    sites: Sequence[Site],
    folder: Path,
    *,
    channels: Sequence[str],
    normalization: Normalization = "minmax",
    dtype: CacheDtype = "uint8",
) -> CropCache:
    """Reuse ``folder``'s cache when it was made from the same files and settings, else (re)build it."""
    folder = Path(folder)
    fingerprint = _fingerprint(sites, normalization=normalization, dtype=dtype, channels=channels)
    meta_path = folder / "cache.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint:
            logger.info("reusing crop cache %s (%d cells, %s)", folder, meta["n_cells"], dtype)
            return _open_cache(folder)
        logger.info("crop cache %s was made from other files or settings; rebuilding", folder)
    return _build_cache(
        sites, folder, channels=channels, normalization=normalization, dtype=dtype, fingerprint=fingerprint
    )


def _open_cache(folder: Path) -> CropCache:
    cells = np.load(folder / "cells.npz")
    crops = np.load(folder / "crops.npy", mmap_mode="r")
    meta = json.loads((folder / "cache.json").read_text())
    skipped = {int(k): str(v) for k, v in meta.get("skipped", {}).items()}
    return CropCache(crops, cells["site_of_cell"], cells["cell_in_site"], folder, skipped)


def _build_cache(
    sites: Sequence[Site],
    folder: Path,
    *,
    channels: Sequence[str],
    normalization: Normalization,
    dtype: CacheDtype,
    fingerprint: str,
) -> CropCache:
    started = time.perf_counter()
    centers = []
    for s in sites:
        try:
            centers.append(read_locations(s.locations))
        except InputError as exc:
            raise InputError(f"{s.describe()}: {exc}") from exc
    counts = np.array([c.shape[0] for c in centers], np.int64)
    total = int(counts.sum())
    if total == 0:
        raise InputError("the index's locations files hold no cells")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cache.json").unlink(missing_ok=True)
    partial = folder / "crops.partial.npy"
    crops = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.dtype(dtype), shape=(total, CROP_SIZE, CROP_SIZE, len(channels))
    )
    offset = 0
    skipped: dict[int, str] = {}
    for number, (s, where) in enumerate(zip(sites, centers, strict=True), start=1):
        if where.shape[0]:
            try:
                image = read_site({c: s.images[c] for c in channels}, channel_order=channels)
            except (InputError, OSError) as exc:
                # One unreadable field must not cost a run of thousands: leave it out and say so.
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                logger.warning("skipping %s: image not readable (%s)", s.describe(), reason)
                skipped[number - 1] = reason
                counts[number - 1] = 0
                continue
            try:
                site = SiteCrops.check(image, where, normalization=normalization)
            except InputError as exc:
                raise InputError(f"{s.describe()}: {exc}") from exc
            for rows, chunk in site.chunks():
                crops[offset + rows.start : offset + rows.stop] = _quantize(chunk, dtype)
            offset += where.shape[0]
        if number % 100 == 0 or number == len(sites):
            elapsed = time.perf_counter() - started
            logger.info(
                "cropped %d/%d sites, %d cells (%.0f cells/s)",
                number,
                len(sites),
                offset,
                offset / max(elapsed, 1e-9),
            )
    release_crop_buffer()
    crops.flush()
    if offset == 0:
        raise InputError(f"no site of the index could be read ({len(skipped)} skipped)")
    if offset < total:
        crops = _compact(partial, crops, offset)
    del crops
    partial.replace(folder / "crops.npy")
    total = offset
    site_of_cell = np.repeat(np.arange(len(sites), dtype=np.int32), counts)
    cell_in_site = np.concatenate([np.arange(n, dtype=np.int32) for n in counts])
    np.savez(folder / "cells.npz", site_of_cell=site_of_cell, cell_in_site=cell_in_site)
    meta = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "n_cells": total,
        "dtype": dtype,
        "normalization": normalization,
        "channels": list(channels),
        "crop_size": CROP_SIZE,
        "skipped": {str(k): v for k, v in skipped.items()},
    }
    (folder / "cache.json").write_text(json.dumps(meta, indent=2) + "\n")  # written last: marks it complete
    logger.info(
        "cached %d crops from %d sites in %s (%.1f s)",
        total,
        len(sites),
        folder,
        time.perf_counter() - started,
    )
    return _open_cache(folder)


def _compact(partial: Path, crops: np.ndarray, n_cells: int) -> np.ndarray:
    """The first ``n_cells`` rows of ``crops`` rewritten as ``partial`` (sites were skipped)."""
    smaller = partial.with_name("crops.compact.npy")
    out = np.lib.format.open_memmap(smaller, mode="w+", dtype=crops.dtype, shape=(n_cells, *crops.shape[1:]))
    for start in range(0, n_cells, 1024):
        out[start : start + 1024] = crops[start : min(start + 1024, n_cells)]
    out.flush()
    del crops
    smaller.replace(partial)
    return out


def _quantize(crops: np.ndarray, dtype: CacheDtype) -> np.ndarray:
    """Normalized float32 crops in [0, 1] -> stored values (uint8 rounds to the nearest 1/255)."""
    if dtype == "uint8":
        return np.clip(np.rint(crops * np.float32(255)), 0, 255).astype(np.uint8)
    return crops.astype(np.float16)


def split_cells(groups: I64Array, *, fraction: float, rng: np.random.Generator) -> tuple[I64Array, I64Array]:
    """Leave-cells-out: per group (well) a random ``round(fraction * n)`` cells train, the rest validate.

    groups (N,) int codes -> (train, val) sorted cell indices; a well of one cell trains on it.
    """
    order = np.lexsort((rng.random(groups.size), groups))
    counts = np.bincount(groups)
    starts = np.cumsum(counts) - counts
    ranked = groups[order]
    rank = np.arange(groups.size) - starts[ranked]
    n_train = np.floor(counts * fraction + 0.5).astype(np.int64)
    is_train = rank < n_train[ranked]
    return np.sort(order[is_train]), np.sort(order[~is_train])


def split_plates(plates: Sequence[str], holdout: Sequence[str]) -> tuple[I64Array, I64Array]:
    """Leave-plates-out: cells of ``holdout`` plates validate, all others train -> (train, val) indices."""
    plate_array = np.asarray(plates, dtype=object)
    known = set(plate_array.tolist())
    unknown = [p for p in holdout if p not in known]
    if unknown:
        raise InputError(
            f"holdout plate(s) {', '.join(unknown)} not in the index (plates: {', '.join(sorted(known))})"
        )
    held = np.isin(plate_array, list(holdout))
    if held.all():
        raise InputError("every plate is held out; leave at least one plate for training")
    return np.flatnonzero(~held), np.flatnonzero(held)


def balanced_epoch(labels: I64Array, n_classes: int, *, rng: np.random.Generator) -> I64Array:
    """One epoch's draw: the median class count from every class, shuffled -> positions into ``labels``.

    Classes above the median are subsampled without replacement; smaller ones keep every cell once and
    are topped up with draws with replacement. The median is rounded down (at least 1).
    """
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        raise InputError(f"{int((counts == 0).sum())} class(es) have no training cells")
    target = max(1, int(np.median(counts)))
    order = np.argsort(labels, kind="stable")
    starts = np.cumsum(counts) - counts
    picks = []
    for start, count in zip(starts, counts, strict=True):
        members = order[start : start + count]
        if count >= target:
            picks.append(rng.choice(members, target, replace=False))
        else:
            picks.append(np.concatenate([members, rng.choice(members, target - count, replace=True)]))
    epoch = np.concatenate(picks)
    rng.shuffle(epoch)
    return epoch


@dataclass(frozen=True)
class TrainingData:
    """Cached crops, class names (head order), every cell's class code and the two cell subsets."""

    cache: CropCache
    classes: tuple[str, ...]
    labels: I64Array  # (N,) class code of every cached cell
    train: I64Array  # cell indices
    val: I64Array
    #: Every class found, kept or dropped, with its cells, plates and sources.
    table: tuple[ClassRow, ...] = ()
    #: Sites left out of the cache (unreadable images) and why.
    skipped: Sequence[tuple[Site, str]] = ()

    def epoch_cells(self, epoch: int, *, seed: int) -> I64Array:
        """The balanced, shuffled training cells of ``epoch`` (a pure function of seed and epoch)."""
        rng = np.random.default_rng([seed, epoch, 1])
        return self.train[balanced_epoch(self.labels[self.train], len(self.classes), rng=rng)]


def read_sources(sources: Sequence[Source], config: TrainConfig) -> list[Site]:
    """Every source's sites, in source order, control wells capped per plate where a source asks."""
    check_channels(sources, config.channels)
    combined = len(sources) > 1
    sites: list[Site] = []
    for source in sources:
        label = source.key or config.label
        read = read_index(source.index, label=label, channels=config.channels)
        controls = set(source.controls)
        read = [
            replace(s, source=source.name if combined else "", control=s.label in controls) for s in read
        ]
        keep = cap_control_wells(
            [(s.plate, s.well) for s in read],
            [s.control for s in read],
            source.control_wells_per_plate,
            seed=config.seed,
        )
        if not keep.all():
            logger.info(
                "%s: %d control sites left out (at most %d control wells per plate)",
                source.name,
                int((~keep).sum()),
                source.control_wells_per_plate,
            )
        sites.extend(s for s, k in zip(read, keep, strict=True) if k)
    return sites


def prepare_data(
    index: Path | Sequence[Source], config: TrainConfig, *, cache_dir: Path
) -> TrainingData:
    """Read the index (or sources), build or reuse the crop cache, label every cell, drop classes under
    ``config.min_cells`` and split per ``config``."""
    sources = [Source(index=Path(index), key=config.label)] if isinstance(index, str | Path) else list(index)
    sites = read_sources(sources, config)
    cache = load_or_build_cache(
        sites,
        cache_dir,
        channels=config.channels,
        normalization=config.normalization,
        dtype=config.cache_dtype,
    )
    cells_per_site = np.bincount(cache.site_of_cell, minlength=len(sites))
    table = class_table(
        [s.label for s in sites],
        cells_per_site.tolist(),
        [s.plate for s in sites],
        [s.source or sources[0].name for s in sites],
        {s.label for s in sites if s.control},
        min_cells=config.min_cells,
    )
    dropped = [row.name for row in table if not row.kept]
    if dropped:
        logger.warning(
            "dropping %d class(es) with fewer than %d cells: %s%s",
            len(dropped),
            config.min_cells,
            ", ".join(dropped[:5]),
            ", ..." if len(dropped) > 5 else "",
        )
    classes = tuple(row.name for row in table if row.kept)
    if len(classes) < 2:
        raise InputError(
            f"column {config.label} names {len(classes)} class with at least {config.min_cells} cells "
            f"({len(table)} before dropping small ones); training needs at least 2"
        )
    code = {name: i for i, name in enumerate(classes)}
    site_codes = np.array([code.get(s.label, -1) for s in sites], np.int64)
    labels = site_codes[cache.site_of_cell]
    plates = [sites[i].plate for i in range(len(sites))]
    cell_plates = np.asarray(plates, dtype=object)[cache.site_of_cell]
    if config.split == "plates":
        train, val = split_plates(cell_plates.tolist(), config.holdout_plates)
    else:
        wells = np.array([f"{s.source}\x00{s.plate}\x00{s.well}" for s in sites], dtype=object)
        _, well_codes = np.unique(wells, return_inverse=True)
        rng = np.random.default_rng([config.seed, 0])
        train, val = split_cells(
            well_codes[cache.site_of_cell].astype(np.int64), fraction=config.train_fraction, rng=rng
        )
    train, val = train[labels[train] >= 0], val[labels[val] >= 0]
    empty = [c for i, c in enumerate(classes) if not (labels[train] == i).any()]
    if empty:
        raise InputError(f"{len(empty)} class(es) have no training cells: {', '.join(empty[:5])}")
    per_class = np.bincount(labels[train], minlength=len(classes))
    small = [c for c, n in zip(classes, per_class, strict=True) if n < config.batch_size]
    if small:
        logger.warning(
            "%d class(es) have fewer training cells than a batch (%d), drawn with repetition: %s",
            len(small),
            config.batch_size,
            ", ".join(small[:5]),
        )
    if config.val_max_cells is not None and val.size > config.val_max_cells:
        rng = np.random.default_rng([config.seed, 2])
        val = np.sort(rng.choice(val, config.val_max_cells, replace=False))
    logger.info(
        "%d classes; %d training cells, %d validation cells (split by %s)",
        len(classes),
        train.size,
        val.size,
        config.split,
    )
    skipped = [(sites[i], reason) for i, reason in sorted(cache.skipped.items())]
    return TrainingData(
        cache=cache, classes=classes, labels=labels, train=train, val=val, table=tuple(table), skipped=skipped
    )
