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

from cpcnn.io.cells import SITE_KEYS
from cpcnn.io.durable import write_bytes_durably, write_durably
from cpcnn.plates.platemap import WELL_KEYS
from cpcnn.plates.sites import SiteSpec
from cpcnn.profiles.aggregate import aggregate
from cpcnn.profiles.tables import COUNT_CELLS, COUNT_ROWS, metadata_columns, write_profiles


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
        write_durably(self.sites_path, lambda tmp: write_profiles(sites, tmp))
        write_durably(self.wells_path, lambda tmp: write_profiles(wells, tmp))
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
