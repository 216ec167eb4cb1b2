"""A plate's output folder: ``cells/`` (one Parquet per site), ``sites.parquet``, ``wells.parquet``, ``run.json``.

Every file is written under a dot-named temporary and renamed when whole, so a killed run leaves
nothing a rerun would take as done; Arrow and DuckDB skip dot-names when they read ``cells/`` as one
dataset. Site profiles are the median of each site's cells and well profiles the mean of their
sites, computed by :func:`cpcnn.profiles.aggregate` one site file at a time (memory bounded by one
site whatever the plate size), the same numbers ``cpcnn aggregate`` gives on the cells.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from cpcnn.errors import InputError
from cpcnn.io.cells import SITE_KEYS
from cpcnn.io.durable import write_bytes_durably, write_durably
from cpcnn.plates.sites import SiteSpec
from cpcnn.profiles.aggregate import aggregate
from cpcnn.profiles.tables import COUNT_CELLS, COUNT_ROWS, metadata_columns, write_profiles

WELL_KEYS = ("Metadata_Plate", "Metadata_Well")


class PlateOutput:
    """Where one plate's results go, and which sites are already done."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.cells_dir = self.root / "cells"

    @property
    def sites_path(self) -> Path:
        return self.root / "sites.parquet"

    @property
    def wells_path(self) -> Path:
        return self.root / "wells.parquet"

    @property
    def run_path(self) -> Path:
        return self.root / "run.json"

    def site_path(self, site: SiteSpec) -> Path:
        return self.cells_dir / f"{site.name}.parquet"

    def done(self, site: SiteSpec) -> bool:
        """True once the site's cells file exists (it only ever appears whole)."""
        return self.site_path(site).is_file()

    def cells_in(self, site: SiteSpec) -> int:
        """Rows of a done site's cells file, from its footer."""
        import pyarrow.parquet as pq

        return int(pq.read_metadata(self.site_path(site)).num_rows)

    def write_site(self, site: SiteSpec, table: Any) -> Path:
        """Write one site's cells (a pandas DataFrame or pyarrow Table) atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrow = table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False)
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        return write_durably(self.site_path(site), lambda tmp: pq.write_table(arrow, tmp))

    def cell_files(self) -> list[Path]:
        """Finished site files, in name order (temporaries excluded)."""
        if not self.cells_dir.is_dir():
            return []
        return sorted(p for p in self.cells_dir.glob("*.parquet") if not p.name.startswith((".", "_")))

    def site_profiles(self) -> pd.DataFrame:
        """Median of each site's cells, one file at a time; empty sites give no row."""
        import pyarrow.parquet as pq

        parts = []
        for path in self.cell_files():
            cells = pq.read_table(path).to_pandas()
            if len(cells):
                parts.append(aggregate(cells, by=SITE_KEYS, op="median").profiles)
        if not parts:
            return pd.DataFrame(columns=[*SITE_KEYS, COUNT_CELLS, COUNT_ROWS])
        return pd.concat(parts, ignore_index=True)

    def finish(self, *, platemap: pd.DataFrame | None, run: dict[str, Any], jump_layout: bool = False) -> None:
        """Write ``sites.parquet``, ``wells.parquet`` (joined with ``platemap``), the JUMP layout when
        asked, and ``run.json`` last (adds ``timings.summaries_s`` when ``run`` has ``timings``)."""
        started = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        sites = self.site_profiles()
        wells = well_profiles(sites, platemap)
        write_durably(self.sites_path, lambda tmp: _write_parquet(sites, tmp))
        write_durably(self.wells_path, lambda tmp: _write_parquet(wells, tmp))
        if jump_layout:
            from cpcnn.plates.jump import write_jump_wells

            run["jump_layout"] = [str(p) for p in write_jump_wells(wells, self.root / "jump")]
        if isinstance(run.get("timings"), dict):
            run["timings"]["summaries_s"] = round(time.perf_counter() - started, 3)
        self.write_run(run)

    def write_run(self, run: dict[str, Any]) -> None:
        """Replace ``run.json`` atomically (a run writes it at start, marked incomplete, and at the end)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_bytes_durably(self.run_path, (json.dumps(run, indent=2, allow_nan=False) + "\n").encode())


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    """``write_profiles`` picks the format by suffix; the temporary's name ends in ``.parquet-XXXX``."""
    target = path.with_name(path.name + ".parquet")
    write_profiles(table, target)
    target.replace(path)


def well_profiles(sites: pd.DataFrame, platemap: pd.DataFrame | None) -> pd.DataFrame:
    """Mean of each well's site profiles, with the platemap's annotations after the well keys."""
    if sites.empty:
        wells = pd.DataFrame(columns=[*WELL_KEYS, COUNT_CELLS, COUNT_ROWS])
    else:
        wells = aggregate(sites, by=WELL_KEYS, op="mean").profiles
    if platemap is None:
        return wells
    on = [k for k in WELL_KEYS if k in platemap.columns]
    annotations = [c for c in platemap.columns if c not in on]
    joined = wells.merge(platemap, on=on, how="left", validate="many_to_one")
    meta = [*WELL_KEYS, *annotations, *(c for c in metadata_columns(wells) if c not in WELL_KEYS)]
    features = [c for c in wells.columns if c not in set(meta)]
    return joined.loc[:, meta + features]


def check_platemap(platemap: pd.DataFrame, sites: list[SiteSpec], *, source: str) -> pd.DataFrame:
    """A platemap that annotates every well of ``sites`` and names no well outside them (one line each).

    Keyed by ``Metadata_Well`` (plus ``Metadata_Plate`` when it has that column); a duplicate key is an
    error, as is a well the plate does not have (a typo would otherwise silently annotate nothing).
    """
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
    return table
