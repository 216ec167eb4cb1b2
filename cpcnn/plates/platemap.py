"""Platemaps: which treatment (and any other annotation) each well of a plate holds.

One reader for every caller (``cpcnn profile``, plate jobs, ``cpcnn train prepare``): CSV, or JUMP's
tab-separated ``.txt`` with ``well_position``; every annotation is named ``Metadata_*`` so it is never
taken for a feature downstream. :func:`check_platemap` then holds it against a plate's sites: a well
the plate lacks is a typo that would silently annotate nothing, so it is an error, as is a well left
unannotated or listed twice.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cpcnn.errors import InputError, PayloadTooLarge
from cpcnn.plates.sites import SiteSpec

WELL_KEYS = ("Metadata_Plate", "Metadata_Well")
#: Largest platemap read: a 1536-well plate with many annotations is well under a megabyte.
MAX_PLATEMAP_BYTES = 64 * 1024 * 1024


def check_platemap(platemap: pd.DataFrame, sites: list[SiteSpec], *, source: str) -> pd.DataFrame:
    """A platemap that annotates every well of ``sites`` and names no well outside them (one line each).

    Keyed by ``Metadata_Well`` (plus ``Metadata_Plate`` when it has that column); a duplicate key is an
    error, as is a well the plate does not have (a typo would otherwise silently annotate nothing).
    """
    table = keyed_platemap(platemap, source=source)
    on = [k for k in WELL_KEYS if k in table.columns]
    plate_wells = {tuple((s.plate, s.well)[-len(on):]) for s in sites}
    listed = {tuple(row) for row in table.loc[:, on].itertuples(index=False)}
    unknown = sorted(listed - plate_wells)
    if unknown:
        shown = ", ".join(" ".join(k) for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InputError(f"platemap {source} names {len(unknown)} well(s) the plate does not have: {shown}")
    unannotated = sorted(plate_wells - listed)
    if unannotated:
        shown = ", ".join(" ".join(k) for k in unannotated[:5]) + (" ..." if len(unannotated) > 5 else "")
        raise InputError(f"platemap {source} has no row for {len(unannotated)} well(s): {shown}")
    return table


def read_platemap(path: Path) -> pd.DataFrame:
    """A platemap CSV (or JUMP's tab-separated ``.txt``) -> ``Metadata_Well`` plus ``Metadata_*`` annotations.

    JUMP's ``well_position`` is read as ``Metadata_Well`` and every other column not already named
    ``Metadata_*`` gets that prefix, so no annotation is ever taken for a feature downstream.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"platemap {path} does not exist")
    size = path.stat().st_size
    if size > MAX_PLATEMAP_BYTES:
        raise PayloadTooLarge(f"platemap {path.name} is {size} bytes, over the limit of {MAX_PLATEMAP_BYTES}")
    sep = "\t" if path.suffix.lower() in (".txt", ".tsv") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype={"Metadata_Well": str, "Metadata_Plate": str, "well_position": str})
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"platemap {path.name} is not a readable table: {exc}") from exc
    if "Metadata_Well" not in table.columns and "well_position" in table.columns:
        table = table.rename(columns={"well_position": "Metadata_Well"})
    table = table.rename(columns={c: c if c.startswith("Metadata_") else f"Metadata_{c}" for c in table.columns})
    if table.empty:
        raise InputError(f"platemap {path.name} has no rows")
    return keyed_platemap(table, source=path.name)


def keyed_platemap(platemap: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """The platemap with its well keys (``Metadata_Well``, and ``Metadata_Plate`` when present) as
    stripped text, each key at most once (a copy)."""
    table = platemap.copy()
    if "Metadata_Well" not in table.columns:
        raise InputError(f"platemap {source} has no Metadata_Well column (columns: {', '.join(map(str, table.columns))})")
    on = [k for k in WELL_KEYS if k in table.columns]
    for key in on:
        table[key] = table[key].astype(str).str.strip()
    duplicated = table.duplicated(subset=on)
    if duplicated.any():
        first = table.loc[duplicated, on].iloc[0].tolist()
        raise InputError(f"platemap {source} lists well {' '.join(first)} more than once")
    return table
