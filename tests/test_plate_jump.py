"""Well profiles in JUMP's cpcnn_zenodo_7114558 layout: written, read back, and JUMP's own files read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cpcnn.errors import InputError
from cpcnn.plates.jump import read_jump_wells, write_jump_wells
from cpcnn.profiles import read_profiles

WIDTH = 672
FEATURES = [f"efficientnet_{i}" for i in range(WIDTH)]


def wells_table(plates: tuple[str, ...] = ("P1", "P2"), wells: tuple[str, ...] = ("A01", "A02", "B01")) -> pd.DataFrame:
    """What cpcnn's wells.parquet holds: keys, platemap annotations, counts, efficientnet_0..671."""
    rng = np.random.default_rng(0)
    rows = [(plate, well) for plate in plates for well in wells]
    table = pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Well"])
    table["Metadata_Treatment"] = "DMSO"
    table["Metadata_Count_Cells"] = 100
    features = pd.DataFrame(rng.normal(size=(len(rows), WIDTH)).astype(np.float32), columns=FEATURES)
    return pd.concat([table, features], axis=1)


def test_write_gives_one_file_per_plate_in_jump_paths(tmp_path: Path) -> None:
    wells = wells_table()
    written = write_jump_wells(wells, tmp_path)
    base = tmp_path / "source_local" / "workspace_dl" / "profiles" / "cpcnn_zenodo_7114558" / "local"
    assert written == [base / "P1" / "P1.parquet", base / "P2" / "P2.parquet"]
    table = pq.read_table(written[0])
    assert table.schema.names == ["source", "batch", "plate", "well", "all_emb"]
    assert table.schema.field("plate").type == pa.string()
    assert table.schema.field("all_emb").type == pa.list_(pa.float32(), WIDTH)
    assert table.column("well").to_pylist() == ["A01", "A02", "B01"]
    np.testing.assert_array_equal(
        np.asarray(table.column("all_emb").to_pylist()[1], np.float32), wells.loc[1, FEATURES].to_numpy(np.float32)
    )


def test_round_trip_gives_our_columns_back(tmp_path: Path) -> None:
    wells = wells_table().assign(Metadata_Source="source_lab", Metadata_Batch="2026_12_01_Batch1")
    meta = [c for c in wells.columns if c.startswith("Metadata_")]
    shuffled = wells[[*meta, *reversed(FEATURES)]]  # column order is not embedding order
    write_jump_wells(shuffled, tmp_path)
    back = read_jump_wells(tmp_path)
    assert list(back.columns) == ["Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_Well", *FEATURES]
    assert back["Metadata_Batch"].eq("2026_12_01_Batch1").all()
    np.testing.assert_array_equal(back[FEATURES].to_numpy(), wells[FEATURES].to_numpy(np.float32))
    assert back[FEATURES].dtypes.eq(np.float32).all()


def test_a_hand_made_jump_file_is_a_profile_table(tmp_path: Path) -> None:
    """Five columns, a variable-length list of doubles: how another writer may store the same layout."""
    path = tmp_path / "source_4" / "workspace_dl" / "profiles" / "cpcnn_zenodo_7114558" / "2021_04_26_Batch1"
    path = path / "BR00117035" / "BR00117035.parquet"
    path.parent.mkdir(parents=True)
    vectors = [[float(i + row) for i in range(WIDTH)] for row in range(3)]
    table = pa.table(
        {
            "source": ["source_4"] * 3,
            "batch": ["2021_04_26_Batch1"] * 3,
            "plate": ["BR00117035"] * 3,
            "well": ["A01", "A02", "A03"],
            "all_emb": pa.array(vectors, pa.list_(pa.float64())),
        }
    )
    pq.write_table(table, path)
    profiles = read_profiles(path)  # the profile commands' reader
    assert list(profiles.columns[:4]) == ["Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_Well"]
    assert profiles.shape == (3, 4 + WIDTH)
    assert profiles.loc[2, "efficientnet_5"] == 7.0


def test_ragged_embeddings_are_refused(tmp_path: Path) -> None:
    table = pa.table({"plate": ["P"] * 2, "well": ["A01", "A02"], "all_emb": pa.array([[1.0, 2.0], [1.0]])})
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="all_emb: rows hold \\[1, 2\\] values"):
        read_jump_wells(tmp_path / "bad.parquet")


def test_files_of_other_layouts_are_named(tmp_path: Path) -> None:
    pd.DataFrame({"Metadata_Plate": ["P"], "x": [1.0]}).to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(InputError, match="not in JUMP's layout.*Metadata_Plate, x"):
        read_jump_wells(tmp_path / "plain.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .parquet files"):
        read_jump_wells(tmp_path / "empty")


def test_write_refuses_what_jump_cannot_hold(tmp_path: Path) -> None:
    wells = wells_table(plates=("P1",))
    with pytest.raises(InputError, match="appears more than once"):
        write_jump_wells(pd.concat([wells, wells.iloc[[0]]]), tmp_path)
    with pytest.raises(InputError, match="without gaps"):
        write_jump_wells(wells.drop(columns=["efficientnet_3"]), tmp_path)
    with pytest.raises(InputError, match="duplicate column names: efficientnet_0"):
        write_jump_wells(pd.concat([wells, wells[["efficientnet_0"]]], axis=1), tmp_path)
    with pytest.raises(InputError, match="lacks Metadata_Well"):
        write_jump_wells(wells.drop(columns=["Metadata_Well"]), tmp_path)
    written = write_jump_wells(wells.assign(Metadata_Plate="../up"), tmp_path)
    assert written[0].parent.name == ".._up" and tmp_path in written[0].parents
