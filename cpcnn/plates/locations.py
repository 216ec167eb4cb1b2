"""Where each site's cells are, for a whole plate: one table read once, a folder of per-site files, or
nucleus detection on the site's own image.

A table is read once, only the columns needed (plate, well, site, centre, object number), and
indexed by (plate, well, site) compared as text: site ``"1"`` in a table matches site ``1`` in a
LoadData file. Each site's rows are validated by ``cpcnn.locations`` when the site is asked for, so a
corrupt site (NaN centres, repeated object numbers) is skipped by the pipeline, not the whole plate.

Accepted tables (column names as their tools write them):

- CSV: ``Metadata_Plate/Well/Site`` with ``Location_Center_X/Y``, ``Nuclei_Location_Center_X/Y`` or
  ``Metadata_Nuclei_Location_Center_X/Y`` and optionally ``ObjectNumber``; or CellProfiler's per-object
  export (``Nuclei.csv``: ``ImageNumber, ObjectNumber, Location_Center_X/Y``) joined on ``ImageNumber``
  with its image table (``Image.csv`` next to it, or ``image_table=``).
- CytoTable Parquet. CytoTable's ``cellprofiler_csv``/``cellprofiler_sqlite`` presets
  (cytomining/CytoTable ``cytotable/presets.py``, renaming in ``_prepend_column_name``) write
  ``Metadata_ImageNumber``, ``Image_Metadata_Plate``, ``Image_Metadata_Well`` (or ``Metadata_Plate/Well``,
  which the CSV preset does not rename), the compartment-prefixed ``Nuclei_Location_Center_X/Y``, and the
  nucleus number as ``Nuclei_Number_Object_Number`` (SQLite preset), ``Metadata_Nuclei_Number_Object_Number``
  (``cellprofiler_sqlite_pycytominer``) or, in the CSV preset, ``Metadata_Cytoplasm_Parent_Nuclei`` (its join
  key; the bare ``Metadata_ObjectNumber`` there is the cytoplasm's, with the cells' and nuclei's as
  ``Metadata_ObjectNumber_1/_2`` in older releases). Two real CytoTable files (JUMP BR00117006 and pediatric
  atlas BR00143976, ``../shared/data/images``) read as documented. The presets' default joins keep no site
  column: add ``Image_Metadata_Site`` to the join, or join ``Metadata_ImageNumber`` with an image table
  (``image_table=``).
- CellProfiler SQLite (ExportToDatabase): ``[prefix]Per_Image`` (``ImageNumber``,
  ``Image_Metadata_Plate/Well/Site``) joined on ``ImageNumber`` with ``[prefix]Per_Nuclei`` (one table per
  object: ``Nuclei_Number_Object_Number``, ``Nuclei_Location_Center_X/Y``) or ``[prefix]Per_Object`` (one
  table for all objects: ``ObjectNumber``). Only those columns are selected. Table names are
  ``prefix + "Per_" + object`` and the key columns ``ImageNumber``/``ObjectNumber`` (CellProfiler/CellProfiler
  ``modules/exporttodatabase.py``: ``get_table_name``, ``C_IMAGE_NUMBER``, ``C_OBJECT_NUMBER``); the
  per-object-table names are those CytoTable's ``cellprofiler_sqlite`` preset joins on.
- A DeepProfiler locations folder: ``{root}/{Plate}/{Well}-{Site}-Nuclei.csv``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cpcnn._types import CHANNELS, F32Array, F64Array, I64Array
from cpcnn.errors import InputError, PayloadTooLarge, UnsupportedMedia
from cpcnn.locations import COLUMN_PAIRS, Locations, parse_locations
from cpcnn.plates.sites import SiteSpec
from cpcnn.profiles.tables import csv_header, read_csv_table

#: Rows (cells) one plate table may hold: a 384-well plate at 9 sites and 5,000 cells is 17 million.
MAX_TABLE_ROWS = 50_000_000
#: Bytes one per-site locations file may hold (a site with 100,000 cells is about 5 MB).
MAX_SITE_FILE_BYTES = 64 * 1024 * 1024

#: Accepted column names for each part of a site's identity, in order of preference.
SITE_COLUMNS: dict[str, tuple[str, ...]] = {
    "plate": ("Metadata_Plate", "Image_Metadata_Plate"),
    "well": ("Metadata_Well", "Image_Metadata_Well"),
    "site": ("Metadata_Site", "Image_Metadata_Site"),
}
IMAGE_NUMBER_COLUMNS: tuple[str, ...] = ("ImageNumber", "Metadata_ImageNumber")
#: A nucleus's number, most specific first (a CytoTable join also carries cells' and cytoplasm's).
OBJECT_NUMBER_COLUMNS: tuple[str, ...] = (
    "Nuclei_Number_Object_Number",
    "Metadata_Nuclei_Number_Object_Number",
    "ObjectNumber",
    "Metadata_Cytoplasm_Parent_Nuclei",  # CytoTable's CSV preset joins nuclei on it
    "Metadata_ObjectNumber",
)
CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_PARQUET_MAGIC = b"PAR1"

SiteKey = tuple[str, str, str]


@runtime_checkable
class LocationSource(Protocol):
    """Where a plate's cells come from, asked one site at a time."""

    #: True only when ``for_site`` needs the site's image (nucleus detection).
    needs_image: bool

    def for_site(self, site: SiteSpec, image: F32Array | None = None) -> Locations:
        """The site's cells; InputError naming the site when they are missing or corrupt (the site is skipped)."""
        ...

    def check(self, sites: Sequence[SiteSpec]) -> None:
        """InputError when the source matches none of the sites (wrong plate, wrong naming)."""
        ...

    def describe(self) -> str: ...


def open_locations(path: Path, *, image_table: Path | None = None) -> LocationSource:
    """A locations table (CSV, Parquet, CellProfiler SQLite) or a DeepProfiler locations folder, by file type.

    ``image_table`` (CSV or Parquet with ``ImageNumber`` and ``Metadata_Plate/Well/Site``) gives the sites
    of an object table that names its images only by number.
    """
    path = Path(path)
    if path.is_dir():
        return DeepProfilerLocations(path)
    if not path.is_file():
        raise InputError(f"locations {path} does not exist")
    name = path.name.lower()
    magic = _magic(path)
    if name.endswith(SQLITE_SUFFIXES) or magic == _SQLITE_MAGIC:
        return read_sqlite_locations(path)
    if name.endswith(PARQUET_SUFFIXES) or magic[:4] == _PARQUET_MAGIC:
        return read_table_locations(path, image_table=image_table)
    if name.endswith(CSV_SUFFIXES):
        return read_table_locations(path, image_table=image_table)
    raise UnsupportedMedia(
        f"locations {path}: expected a CSV, Parquet or CellProfiler SQLite file or a DeepProfiler locations folder"
    )


def _magic(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(len(_SQLITE_MAGIC))


class TableLocations:
    """Locations of many sites held as three arrays and an index from site key to rows."""

    needs_image = False

    def __init__(
        self,
        index: Mapping[SiteKey, I64Array],
        centers: F64Array,
        object_numbers: np.ndarray | None,
        *,
        source: str,
    ) -> None:
        self._index = dict(index)
        self._centers = centers
        self._numbers = object_numbers
        self._source = source

    @classmethod
    def from_columns(
        cls,
        plate: Any,
        well: Any,
        site: Any,
        x: Any,
        y: Any,
        object_numbers: Any = None,
        *,
        source: str,
        empty_sites: Iterable[SiteKey] = (),
    ) -> TableLocations:
        """Build the index from column arrays; ``empty_sites`` are sites known to have no cells."""
        centers = np.column_stack([_numeric(x, f"{source}: x"), _numeric(y, f"{source}: y")])
        index: dict[SiteKey, I64Array] = {key: np.zeros(0, np.int64) for key in empty_sites}
        index.update(_index_by_site(plate, well, site))
        numbers = None if object_numbers is None else np.asarray(object_numbers)
        return cls(index, centers, numbers, source=source)

    @property
    def site_keys(self) -> list[SiteKey]:
        return list(self._index)

    def __len__(self) -> int:
        return int(self._centers.shape[0])

    def for_site(self, site: SiteSpec, image: F32Array | None = None) -> Locations:
        rows = self._index.get(site.key)
        if rows is None:
            raise InputError(f"{self._source} has no locations for {site.describe()}")
        numbers = None if self._numbers is None else self._numbers[rows]
        try:
            return Locations.numbered(self._centers[rows], numbers)
        except InputError as exc:
            raise InputError(f"{self._source}, {site.describe()}: {exc}") from exc

    def check(self, sites: Sequence[SiteSpec]) -> None:
        _check_matches(self.describe(), [site.key for site in sites], self._index.keys())

    def describe(self) -> str:
        return f"locations table {self._source} ({len(self)} cells, {len(self._index)} sites)"


def _check_matches(what: str, wanted: Sequence[SiteKey], have: Iterable[SiteKey]) -> None:
    if not wanted:
        return
    have_set = set(have)
    if any(key in have_set for key in wanted):
        return
    example = next(iter(have_set), None)
    if example is None:
        raise InputError(f"{what} holds no sites, so it matches none of the plate's {len(wanted)} sites")
    raise InputError(
        f"{what} matches none of the plate's {len(wanted)} sites: a site is {_show(wanted[0])}, "
        f"a table key is {_show(example)} (plate, well and site must be spelled the same)"
    )


def _show(key: SiteKey) -> str:
    return "(" + ", ".join(repr(part) for part in key) + ")"


def _text(value: Any) -> str:
    """A key value as text: whole floats without ``.0`` (pandas reads an int column with gaps as float)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _index_by_site(plate: Any, well: Any, site: Any) -> dict[SiteKey, I64Array]:
    """Row numbers of each (plate, well, site), keys as text; distinct raw values with one text merge."""
    parts = [pd.factorize(pd.Series(column), use_na_sentinel=False) for column in (plate, well, site)]
    if not len(parts[0][0]):
        return {}
    names = [[_text(value) for value in uniques] for _, uniques in parts]
    codes = pd.DataFrame({"plate": parts[0][0], "well": parts[1][0], "site": parts[2][0]})
    index: dict[SiteKey, I64Array] = {}
    for (p, w, s), rows in codes.groupby(["plate", "well", "site"], sort=False).indices.items():
        key = (names[0][p], names[1][w], names[2][s])
        rows = np.asarray(rows, np.int64)
        index[key] = np.sort(np.concatenate([index[key], rows])) if key in index else rows
    return index


def _numeric(values: Any, what: str) -> F64Array:
    """Coordinates as float64; text that is not a number is an error here, NaN is one for its site."""
    series = pd.Series(values)
    numbers = pd.to_numeric(series, errors="coerce")
    bad = numbers.isna() & series.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{what} value {str(series.iloc[row])[:40]!r} at row {row} is not a number")
    return numbers.to_numpy(dtype=np.float64)


def _pick(names: Sequence[str], candidates: Sequence[str]) -> str | None:
    present = set(names)
    return next((name for name in candidates if name in present), None)


def _centre_columns(names: Sequence[str], what: str) -> tuple[str, str]:
    present = set(names)
    for x_col, y_col in COLUMN_PAIRS:
        if x_col in present and y_col in present:
            return x_col, y_col
    wanted = " or ".join(f"{x}/{y}" for x, y in COLUMN_PAIRS)
    raise InputError(f"{what}: needs columns {wanted}; it has {_listing(names)}")


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:20])
    return f"{shown}, ... ({len(names)} columns)" if len(names) > 20 else shown or "no columns"


def _site_columns(names: Sequence[str]) -> dict[str, str] | None:
    """The plate, well and site columns, or None when any is missing."""
    found = {part: _pick(names, candidates) for part, candidates in SITE_COLUMNS.items()}
    if any(column is None for column in found.values()):
        return None
    return {part: str(column) for part, column in found.items()}


def _missing_sites_message(what: str, names: Sequence[str]) -> str:
    wanted = ", ".join(" or ".join(candidates) for candidates in SITE_COLUMNS.values())
    return (
        f"{what}: needs columns {wanted} (or {' or '.join(IMAGE_NUMBER_COLUMNS)} with an image table); "
        f"it has {_listing(names)}"
    )


def _table_columns(path: Path) -> list[str]:
    if path.name.lower().endswith(PARQUET_SUFFIXES) or _magic(path)[:4] == _PARQUET_MAGIC:
        try:
            return list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path}: unreadable Parquet file ({str(exc).splitlines()[0][:160]})") from exc
    return csv_header(path, what=str(path))


def _read_columns(path: Path, columns: Sequence[str], text_columns: Sequence[str]) -> pd.DataFrame:
    """Only ``columns`` of a CSV or Parquet table, key columns as written, at most MAX_TABLE_ROWS rows."""
    what = str(path)
    if not (path.name.lower().endswith(PARQUET_SUFFIXES) or _magic(path)[:4] == _PARQUET_MAGIC):
        try:
            return read_csv_table(
                path, what=what, columns=columns, text_columns=text_columns, max_rows=MAX_TABLE_ROWS
            )
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{what}: unreadable CSV ({str(exc).splitlines()[0][:160]})") from exc
    try:
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows > MAX_TABLE_ROWS:
            raise PayloadTooLarge(f"{what}: {parquet.metadata.num_rows} rows is over the limit of {MAX_TABLE_ROWS}")
        return parquet.read(columns=list(columns)).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{what}: unreadable Parquet file ({str(exc).splitlines()[0][:160]})") from exc


def read_table_locations(path: Path, *, image_table: Path | None = None) -> TableLocations:
    """A CSV or Parquet object table -> TableLocations (see the module notes for the column names)."""
    path = Path(path)
    what = str(path)
    names = _table_columns(path)
    x_col, y_col = _centre_columns(names, what)
    number_col = _pick(names, OBJECT_NUMBER_COLUMNS)
    sites = _site_columns(names)
    image_col = _pick(names, IMAGE_NUMBER_COLUMNS)
    if sites is None and (image_col is None or (image_table is None and _image_table_beside(path) is None)):
        raise InputError(_missing_sites_message(what, names))
    key_cols = list(sites.values()) if sites is not None else [str(image_col)]
    wanted = [*key_cols, x_col, y_col, *([number_col] if number_col else [])]
    table = _read_columns(path, wanted, key_cols)
    numbers = None if number_col is None else table[number_col].to_numpy()
    if sites is not None:
        return TableLocations.from_columns(
            table[sites["plate"]], table[sites["well"]], table[sites["site"]], table[x_col], table[y_col],
            numbers, source=what,
        )
    images_path = image_table if image_table is not None else _image_table_beside(path)
    assert images_path is not None
    images = _read_image_table(Path(images_path))
    image_numbers = table[str(image_col)].map(_text)
    known = image_numbers.isin(images.index)
    if not known.all():
        row = int(np.flatnonzero(~known.to_numpy())[0])
        raise InputError(f"{what}: ImageNumber {image_numbers.iloc[row]!r} (row {row}) is not in {images_path}")
    matched = images.loc[image_numbers.to_numpy()]
    return TableLocations.from_columns(
        matched["plate"].to_numpy(), matched["well"].to_numpy(), matched["site"].to_numpy(),
        table[x_col], table[y_col], numbers, source=what,
        empty_sites=map(tuple, images[["plate", "well", "site"]].itertuples(index=False)),
    )


def _image_table_beside(path: Path) -> Path | None:
    """CellProfiler's ExportToSpreadsheet image table next to an object table: ``[prefix]Image.csv``."""
    candidates = sorted(
        p for p in path.parent.iterdir() if p.is_file() and p.name.lower().endswith(("image.csv", "image.parquet"))
    )
    return candidates[0] if len(candidates) == 1 else None


def _read_image_table(path: Path) -> pd.DataFrame:
    """An image table -> DataFrame indexed by ImageNumber text with columns plate, well, site (text)."""
    what = str(path)
    names = _table_columns(path)
    sites = _site_columns(names)
    image_col = _pick(names, IMAGE_NUMBER_COLUMNS)
    if sites is None or image_col is None:
        wanted = ", ".join(" or ".join(c) for c in (IMAGE_NUMBER_COLUMNS, *SITE_COLUMNS.values()))
        raise InputError(f"image table {what}: needs columns {wanted}; it has {_listing(names)}")
    columns = [image_col, *sites.values()]
    table = _read_columns(path, columns, columns)
    images = pd.DataFrame({part: table[column].map(_text) for part, column in sites.items()})
    images.index = table[image_col].map(_text)
    if images.index.duplicated().any():
        duplicate = images.index[images.index.duplicated()][0]
        raise InputError(f"image table {what}: ImageNumber {duplicate!r} appears more than once")
    return images


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_sqlite_locations(path: Path) -> TableLocations:
    """CellProfiler ExportToDatabase SQLite -> TableLocations: Per_Image joined with Per_Nuclei or Per_Object.

    The file is opened read-only and only the key, centre and object-number columns are selected.
    """
    path = Path(path)
    what = str(path)
    if _magic(path) != _SQLITE_MAGIC:
        raise UnsupportedMedia(f"{what} is not an SQLite database")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise InputError(f"{what}: cannot open the SQLite database ({exc})") from exc
    try:
        return _sqlite_locations(connection, what)
    except sqlite3.Error as exc:
        raise InputError(f"{what}: unreadable SQLite database ({str(exc)[:160]})") from exc
    finally:
        connection.close()


def _sqlite_tables(connection: sqlite3.Connection) -> list[str]:
    return [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]


def _sqlite_columns(connection: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in connection.execute(f"PRAGMA table_info({_quote(table)})")]


def _find_table(tables: Sequence[str], suffixes: Sequence[str]) -> str | None:
    for suffix in suffixes:
        found = sorted(t for t in tables if t.lower().endswith(suffix))  # ExportToDatabase: prefix + "Per_" + name
        if found:
            return found[0]
    return None


def _sqlite_locations(connection: sqlite3.Connection, what: str) -> TableLocations:
    tables = _sqlite_tables(connection)
    image_table = _find_table(tables, ("per_image",))
    object_table = _find_table(tables, ("per_nuclei", "per_object", "nuclei"))
    if image_table is None or object_table is None:
        raise InputError(
            f"{what}: needs CellProfiler's Per_Image table and a Per_Nuclei, Per_Object or Nuclei table; "
            f"it has tables {_listing(tables)}"
        )
    image_names = _sqlite_columns(connection, image_table)
    sites = _site_columns(image_names)
    if sites is None or "ImageNumber" not in image_names:
        raise InputError(_missing_sites_message(f"{what} table {image_table}", image_names))
    object_names = _sqlite_columns(connection, object_table)
    x_col, y_col = _centre_columns(object_names, f"{what} table {object_table}")
    if "ImageNumber" not in object_names:
        raise InputError(f"{what} table {object_table}: needs column ImageNumber; it has {_listing(object_names)}")
    number_col = _pick(object_names, OBJECT_NUMBER_COLUMNS)
    keys = ", ".join(f"i.{_quote(sites[part])}" for part in ("plate", "well", "site"))
    number = f"o.{_quote(number_col)}" if number_col else "NULL"
    query = (
        f"SELECT {keys}, o.{_quote(x_col)}, o.{_quote(y_col)}, {number} "
        f"FROM {_quote(object_table)} AS o JOIN {_quote(image_table)} AS i ON o.ImageNumber = i.ImageNumber"
    )
    if object_table.lower().endswith("per_object"):  # one table for all objects: rows without a nucleus
        query += f" WHERE o.{_quote(x_col)} IS NOT NULL OR o.{_quote(y_col)} IS NOT NULL"
    rows: list[tuple[Any, ...]] = []
    cursor = connection.execute(query)
    while batch := cursor.fetchmany(100_000):
        rows.extend(batch)
        if len(rows) > MAX_TABLE_ROWS:
            raise PayloadTooLarge(f"{what}: more than {MAX_TABLE_ROWS} objects is over the limit of {MAX_TABLE_ROWS}")
    columns = list(zip(*rows, strict=True)) if rows else [()] * 6
    image_keys = connection.execute(f"SELECT {keys} FROM {_quote(image_table)} AS i").fetchall()
    return TableLocations.from_columns(
        *(np.asarray(column, dtype=object) for column in columns[:5]),
        None if number_col is None else np.asarray(columns[5], dtype=object),
        source=what,
        empty_sites=[tuple(_text(part) for part in key) for key in image_keys],
    )


class DeepProfilerLocations:
    """DeepProfiler's locations folder: one CSV per site, ``{root}/{Plate}/{Well}-{Site}-{suffix}.csv``."""

    needs_image = False

    def __init__(self, root: Path, *, suffix: str = "Nuclei") -> None:
        self.root = Path(root)
        self.suffix = suffix

    def site_file(self, site: SiteSpec) -> Path:
        """The site's file; plate, well or site names that would leave the folder are refused."""
        plate, well, number = site.key
        path = self.root / plate / f"{well}-{number}-{self.suffix}.csv"
        if any(part in ("", ".", "..") or "/" in part or "\\" in part for part in (plate, well, number)):
            raise InputError(f"{site.describe()}: plate, well and site cannot name a locations file")
        return path

    def for_site(self, site: SiteSpec, image: F32Array | None = None) -> Locations:
        path = self.site_file(site)
        if not path.is_file():
            raise InputError(f"no locations file {path} for {site.describe()}")
        if path.stat().st_size > MAX_SITE_FILE_BYTES:
            raise PayloadTooLarge(f"{path}: over the limit of {MAX_SITE_FILE_BYTES} bytes per site")
        try:
            return parse_locations(path.read_text(encoding="utf-8-sig", errors="replace"))
        except InputError as exc:
            raise InputError(f"{path} ({site.describe()}): {exc}") from exc

    def check(self, sites: Sequence[SiteSpec]) -> None:
        if not sites or any(self._exists(site) for site in sites):
            return
        example = next(self.root.glob(f"*/*-{self.suffix}.csv"), None)
        if example is None:
            raise InputError(
                f"{self.describe()} holds no {{Plate}}/{{Well}}-{{Site}}-{self.suffix}.csv files, "
                f"so it matches none of the plate's {len(sites)} sites"
            )
        raise InputError(
            f"{self.describe()} matches none of the plate's {len(sites)} sites: "
            f"{sites[0].describe()} would be {self.site_file(sites[0]).relative_to(self.root)}, "
            f"a file there is {example.relative_to(self.root)}"
        )

    def _exists(self, site: SiteSpec) -> bool:
        try:
            return self.site_file(site).is_file()
        except InputError:
            return False

    def describe(self) -> str:
        return f"DeepProfiler locations folder {self.root}"


class DetectNuclei:
    """Nucleus centres found on each site's DNA channel by ``cpcnn.nuclei.detect_nuclei``."""

    needs_image = True

    def __init__(self, *, dna_channel: int = CHANNELS.index("DNA"), **detect_options: Any) -> None:
        self.dna_channel = dna_channel
        self.detect_options = detect_options

    def for_site(self, site: SiteSpec, image: F32Array | None = None) -> Locations:
        from cpcnn.nuclei import detect_nuclei

        if image is None or image.ndim != 3 or not 0 <= self.dna_channel < image.shape[2]:
            shape = None if image is None else image.shape
            raise InputError(f"nucleus detection for {site.describe()} needs the site's (H, W, C) image, got {shape}")
        try:
            return Locations.numbered(detect_nuclei(image[:, :, self.dna_channel], **self.detect_options))
        except InputError as exc:
            raise InputError(f"{site.describe()}: {exc}") from exc

    def check(self, sites: Sequence[SiteSpec]) -> None:
        """Every site has an image, so detection matches them all."""

    def describe(self) -> str:
        return "nucleus detection on the DNA channel (Otsu threshold and watershed)"
