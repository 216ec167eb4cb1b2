"""One platemap reader: CSV or JUMP's .txt, annotations named Metadata_*, wells once, size capped."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpcnn.errors import InputError, PayloadTooLarge
from cpcnn.plates import platemap
from cpcnn.plates.platemap import read_platemap


def test_jump_txt_is_read_with_metadata_names(tmp_path: Path) -> None:
    path = tmp_path / "map.txt"
    path.write_text("plate_map_name\twell_position\tbroad_sample\nP\tA01\tBRD-1\nP\tA02\tDMSO\n")
    table = read_platemap(path)
    assert list(table.columns) == ["Metadata_plate_map_name", "Metadata_Well", "Metadata_broad_sample"]
    assert table["Metadata_Well"].tolist() == ["A01", "A02"]


def test_a_well_listed_twice_is_named(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_text("Metadata_Well,Metadata_Treatment\nA01,x\n A01 ,y\n")
    with pytest.raises(InputError, match="lists well A01 more than once"):
        read_platemap(path)


def test_oversized_platemap_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "map.csv"
    path.write_text("Metadata_Well,Metadata_Treatment\n" + "A01,x\n" * 100)
    monkeypatch.setattr(platemap, "MAX_PLATEMAP_BYTES", 64)
    with pytest.raises(PayloadTooLarge, match="is 633 bytes, over the limit of 64"):
        read_platemap(path)


def test_binary_platemap_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_bytes(b"\xff\xfe\x00\x01" * 50)
    with pytest.raises(InputError, match="platemap map.csv"):
        read_platemap(path)
