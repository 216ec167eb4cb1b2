"""CellProfiler LoadData CSV -> one :class:`SiteSpec` per row.

A LoadData CSV lists one field of view per row: ``Metadata_Plate``, ``Metadata_Well``,
``Metadata_Site``, and per channel ``FileName_<Name>``/``PathName_<Name>`` (JUMP names its raw
channels ``OrigDNA``, ``OrigRNA``, ... and, in ``load_data_with_illum.csv``, its illumination functions
``IllumDNA``, ...). Relative ``PathName`` values are resolved against the CSV's folder. Files are not
opened here: a missing image is a skipped site for the pipeline, not a reason to refuse the plate.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from cpcnn._types import CHANNELS
from cpcnn.errors import InputError
from cpcnn.plates.sites import SiteSpec

SITE_COLUMNS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
#: Prefix of JUMP's raw-image names (``OrigDNA``) and of its illumination functions (``IllumDNA``).
RAW_PREFIX = "Orig"
ILLUM_PREFIX = "Illum"


def default_channel_names(model_channels: Sequence[str] = CHANNELS) -> dict[str, str]:
    """JUMP's names: model channel ``DNA`` is LoadData's ``OrigDNA``."""
    return {channel: f"{RAW_PREFIX}{channel}" for channel in model_channels}


def illum_name(model_channel: str, load_data_name: str) -> str:
    """The illumination function's LoadData name: ``OrigX`` -> ``IllumX``; any other name -> ``Illum`` +
    the model channel."""
    if load_data_name.startswith(RAW_PREFIX) and len(load_data_name) > len(RAW_PREFIX):
        return ILLUM_PREFIX + load_data_name[len(RAW_PREFIX) :]
    return ILLUM_PREFIX + model_channel


def parse_channel_names(
    items: Sequence[str], model_channels: Sequence[str] = CHANNELS, *, defaults: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``["DNA=OrigHoechst", ...]`` (CLI form) -> ``defaults`` (JUMP's names when None) with those renamed."""
    names = dict(default_channel_names(model_channels) if defaults is None else defaults)
    by_lower = {c.lower(): c for c in model_channels}
    for item in items:
        channel, sep, name = (part.strip() for part in item.partition("="))
        if not sep or not channel or not name:
            raise InputError(f"--channel expects CHANNEL=LOADDATA_NAME (e.g. DNA=OrigDNA), got {item!r}")
        if channel.lower() not in by_lower:
            raise InputError(f"unknown channel {channel} in --channel {item}; model channels: {', '.join(model_channels)}")
        names[by_lower[channel.lower()]] = name
    return names


def read_load_data(
    path: Path,
    *,
    channels: Mapping[str, str] | None = None,
    model_channels: Sequence[str] = CHANNELS,
) -> list[SiteSpec]:
    """Every row of a LoadData CSV as a site, in file order (see the module notes).

    ``channels`` maps a model channel to its LoadData name (default ``OrigDNA`` etc.). Raises
    InputError (one line) for unknown channels, missing columns, duplicate sites or an empty file.
    """
    path = Path(path)
    names = dict(channels) if channels is not None else default_channel_names(model_channels)
    unknown = [c for c in names if c not in model_channels]
    if unknown:
        raise InputError(f"unknown channel(s) {', '.join(unknown)}; model channels: {', '.join(model_channels)}")
    missing_channels = [c for c in model_channels if c not in names]
    if missing_channels:
        raise InputError(f"no LoadData name for channel(s) {', '.join(missing_channels)}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            rows = list(reader)
    except FileNotFoundError as exc:
        raise InputError(f"LoadData file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"LoadData file {path.name} is not a readable CSV: {exc}") from exc
    if not header or not rows:
        raise InputError(f"LoadData file {path.name} has no rows")
    _check_columns(path, header, names)
    illum = {c: illum_name(c, names[c]) for c in model_channels}
    illum = {c: n for c, n in illum.items() if f"FileName_{n}" in header and f"PathName_{n}" in header}
    base = path.resolve().parent
    sites: list[SiteSpec] = []
    first_line: dict[tuple[str, str, str], int] = {}
    for index, raw in enumerate(rows):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        line = index + 2  # the header is line 1
        site = SiteSpec(
            plate=row["Metadata_Plate"],
            well=row["Metadata_Well"],
            site=row["Metadata_Site"],
            images={c: _file(base, row, names[c], path, line) for c in model_channels},
            illum={c: _file(base, row, n, path, line) for c, n in illum.items()},
            row=line,
        )
        if site.key in first_line:
            raise InputError(
                f"duplicate site in {path.name}: plate {site.plate} well {site.well} site {site.site} "
                f"on lines {first_line[site.key]} and {line}"
            )
        first_line[site.key] = line
        sites.append(site)
    return sites


def _check_columns(path: Path, header: Sequence[str], names: Mapping[str, str]) -> None:
    missing = [c for c in SITE_COLUMNS if c not in header]
    for name in names.values():
        missing += [c for c in (f"FileName_{name}", f"PathName_{name}") if c not in header]
    if missing:
        present = sorted({h.split("_", 1)[1] for h in header if h.startswith("FileName_")})
        raise InputError(
            f"LoadData file {path.name} lacks column(s) {', '.join(missing)}; its image names are "
            f"{', '.join(present) or 'none'} (map channels with --channel DNA=NAME)"
        )


def _file(base: Path, row: Mapping[str, str], name: str, path: Path, line: int) -> Path:
    file_name, folder = row[f"FileName_{name}"], row[f"PathName_{name}"]
    if not file_name:
        raise InputError(f"LoadData file {path.name} line {line}: FileName_{name} is empty")
    return base / folder / file_name
