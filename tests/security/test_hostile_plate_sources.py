"""Hostile plate inputs: SQLite names that try to break out of quoting, corrupt files, wide tables, deep JSON."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from _hostile import run_probe

from cpcnn.errors import CpcnnError, InputError, UnsupportedMedia
from cpcnn.plates.deepprofiler import read_deepprofiler_project
from cpcnn.plates.locations import open_locations
from cpcnn.plates.sites import SiteSpec

EVIL = 'x" ; DROP TABLE Per_Image; --'


def test_sqlite_identifiers_stay_quoted(tmp_path: Path) -> None:
    """Table and column names come from the file; they are quoted, and the file is opened read-only."""
    path = tmp_path / "plate.sqlite"
    with sqlite3.connect(path) as db:
        db.execute('CREATE TABLE Per_Image (ImageNumber INTEGER, Image_Metadata_Plate TEXT, '
                   'Image_Metadata_Well TEXT, Image_Metadata_Site INTEGER)')
        db.execute("INSERT INTO Per_Image VALUES (1, 'P1', 'A01', 1)")
        table = (EVIL + "Per_Nuclei").replace('"', '""')
        db.execute(f'CREATE TABLE "{table}" (ImageNumber INTEGER, Nuclei_Number_Object_Number INTEGER, '
                   'Nuclei_Location_Center_X REAL, Nuclei_Location_Center_Y REAL)')
        db.execute(f'INSERT INTO "{table}" VALUES (1, 1, 2.0, 3.0)')
    before = path.read_bytes()
    source = open_locations(path)
    np.testing.assert_array_equal(source.for_site(SiteSpec("P1", "A01", 1, {})).centers, [[2.0, 3.0]])
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("plate.sqlite", b"SQLite format 3\x00" + b"\xff" * 200, InputError),
        ("plate.db", b"not a database at all", UnsupportedMedia),
        ("plate.parquet", b"PAR1" + b"\x00" * 64 + b"PAR1", InputError),
        ("plate.csv", b"\xff\xfe\x00garbage\x00\n\x00", InputError),
        ("plate.csv.gz", b"\x1f\x8b\x08\x00 truncated gzip", CpcnnError),
    ],
)
def test_corrupt_files_are_one_line_errors(tmp_path: Path, name: str, content: bytes, error: type) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(error) as info:
        open_locations(path)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_wide_table_is_read_a_few_columns_at_a_time(tmp_path: Path) -> None:
    """A CellProfiler object table with 3,000 feature columns: only the key and centre columns are held."""
    rows, extra = 8_000, 3_000
    path = tmp_path / "wide.csv"
    zeros = ",0" * extra
    with path.open("w") as handle:
        handle.write("Metadata_Plate,Metadata_Well,Metadata_Site,Location_Center_X,Location_Center_Y,ObjectNumber")
        handle.write("".join(f",Feature_{i}" for i in range(extra)) + "\n")
        handle.writelines(f"P1,A01,{row // 100},1,2,{row % 100 + 1}{zeros}\n" for row in range(rows))
    full = rows * extra * 8  # what a whole-table read would hold as float64, before parsing overhead
    probe = run_probe("from cpcnn.plates.locations import open_locations", f"open_locations(__import__('pathlib').Path({str(path)!r}))")
    assert probe["outcome"] == "ok", probe
    assert int(probe["peak"]) - int(probe["before"]) < full / 2, probe


def test_deeply_nested_deepprofiler_config(tmp_path: Path) -> None:
    (tmp_path / "inputs" / "config").mkdir(parents=True)
    (tmp_path / "inputs" / "config" / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(InputError, match="not valid JSON"):
        read_deepprofiler_project(tmp_path)
    (tmp_path / "inputs" / "config" / "config.json").write_text(json.dumps({"dataset": {"images": {"channels": "DNA"}}}))
    with pytest.raises(InputError, match="must be a list of names"):
        read_deepprofiler_project(tmp_path)
