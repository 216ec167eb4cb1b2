"""Profile tables: formats, feature detection, DeepProfiler npz reading and input errors."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpcnn.errors import InputError
from cpcnn.locations import Locations
from cpcnn.profiles import feature_columns, read_profiles, write_profiles
from cpcnn.profiles._npz import read_site_metadata

NPZ_DIR = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "profiles" / "deepprofiler-npz-example"
)


def small_table(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {"Metadata_Well": [f"A{i:02d}" for i in range(n)], "Metadata_dose": np.arange(n, dtype=float)}
    )
    for j in range(4):
        table[f"f{j}"] = rng.standard_normal(n)
    return table


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.parquet"])
def test_roundtrip_formats_give_float32_features(tmp_path: Path, name: str) -> None:
    table = small_table()
    path = write_profiles(table, tmp_path / name)
    back = read_profiles(path)
    assert feature_columns(back) == ["f0", "f1", "f2", "f3"]
    assert all(back[c].dtype == np.float32 for c in ["f0", "f1", "f2", "f3"])
    np.testing.assert_allclose(back["f2"].to_numpy(), table["f2"].to_numpy(np.float32))
    assert back["Metadata_Well"].tolist() == table["Metadata_Well"].tolist()


def test_several_inputs_are_concatenated(tmp_path: Path) -> None:
    a, b = small_table(3), small_table(4)
    out = read_profiles(
        [write_profiles(a, tmp_path / "a.csv"), write_profiles(b[b.columns[::-1]], tmp_path / "b.parquet")]
    )
    assert len(out) == 7 and feature_columns(out) == ["f0", "f1", "f2", "f3"]


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_profiles(tmp_path / "missing.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(InputError, match="unknown table format"):
        read_profiles(tmp_path / "t.xlsx")
    only_meta = pd.DataFrame({"Metadata_Well": ["A01"]})
    with pytest.raises(InputError, match="no feature columns"):
        read_profiles(write_profiles(only_meta, tmp_path / "m.csv"))
    text = small_table().assign(Plate_Map="x")
    with pytest.raises(InputError, match="non-numeric feature columns: Plate_Map"):
        read_profiles(write_profiles(text, tmp_path / "s.csv"), features=["f0", "Plate_Map"])
    a = write_profiles(small_table(), tmp_path / "a.parquet")
    b = write_profiles(small_table().rename(columns={"f3": "g3"}), tmp_path / "b.parquet")
    with pytest.raises(InputError, match="feature mismatch.*missing 1.*f3.*unexpected 1.*g3"):
        read_profiles([a, b])
    with pytest.raises(InputError, match="not in the table: nope"):
        feature_columns(small_table(), ["f0", "nope"])


@pytest.mark.skipif(not NPZ_DIR.is_dir(), reason="shared DeepProfiler example data not present")
def test_reads_deepprofiler_npz_with_pycytominer_names(tmp_path: Path) -> None:
    site_dir = tmp_path / "features" / "SQ00014812" / "A01"
    site_dir.mkdir(parents=True)
    for site in (5, 8):
        (site_dir / f"{site}.npz").write_bytes((NPZ_DIR / f"SQ00014812_A01_{site}.npz").read_bytes())
    table = read_profiles(tmp_path / "features")
    names = feature_columns(table)
    assert len(table) == 158 + 179 and names[0] == "efficientnet_0" and names[-1] == "efficientnet_6399"
    assert table["Metadata_Site"].tolist() == [5] * 158 + [8] * 179  # digit-only sites are integers
    assert (
        table["Metadata_Treatment"].iloc[0] == "DMSO@NA" and table["Metadata_Plate"].iloc[0] == "SQ00014812"
    )
    with np.load(NPZ_DIR / "SQ00014812_A01_5.npz", allow_pickle=False) as raw:
        np.testing.assert_array_equal(table[names].to_numpy()[:158], raw["features"])
        np.testing.assert_array_equal(
            table["Metadata_Nuclei_Location_Center_X"].to_numpy()[:158], raw["locations"][:, 0]
        )


@pytest.mark.parametrize(
    "numbers, message",
    [
        (np.array([1, 2, 2], np.int64), "object number 2 appears more than once"),
        (np.array([1, 2], np.int64), "2 object numbers for 3 locations"),
        (np.array([1.0, 2.0, 3.0]), "expected one integer per cell"),
        (np.array([[1, 2, 3]], np.int64), "expected one integer per cell"),
        (np.array([1, -2, 3], np.int64), "not a whole number >= 0"),
    ],
)
def test_npz_object_numbers_are_checked(tmp_path: Path, numbers: np.ndarray, message: str) -> None:
    path = tmp_path / "P1" / "A01" / "1.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, features=np.ones((3, 2), np.float32), locations=np.zeros((3, 2)), object_numbers=numbers)
    with pytest.raises(InputError, match=message):
        read_profiles(tmp_path)


def test_npz_object_numbers_and_site_read_as_the_other_formats(tmp_path: Path) -> None:
    """Our npz writer's ``object_numbers`` -> int64 Metadata_ObjectNumber; a digit-only site -> int64,
    as the Parquet and CSV outputs of the same cells give."""
    from cpcnn.io.cells import write_cells

    features = np.arange(6, dtype=np.float32).reshape(3, 2)
    cells = Locations.numbered(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), [7, 3, 11])
    metadata = {"Metadata_Plate": "P1", "Metadata_Well": "A01", "Metadata_Site": "4"}
    tables = {
        suffix: read_profiles(write_cells(tmp_path / f"cells{suffix}", features, cells, metadata=metadata,
                                          model_name="m"))
        for suffix in (".npz", ".parquet", ".csv")
    }
    for suffix, table in tables.items():
        assert table["Metadata_ObjectNumber"].dtype == np.int64, suffix
        assert table["Metadata_ObjectNumber"].tolist() == [7, 3, 11], suffix
        assert table["Metadata_Site"].dtype == np.int64 and table["Metadata_Site"].tolist() == [4] * 3, suffix
        assert feature_columns(table) == ["efficientnet_0", "efficientnet_1"], suffix
        np.testing.assert_array_equal(table["Metadata_Nuclei_Location_Center_X"], [1.0, 3.0, 5.0])


@pytest.mark.skipif(not NPZ_DIR.is_dir(), reason="shared DeepProfiler example data not present")
def test_npz_folder_with_two_models_is_a_feature_mismatch() -> None:
    with pytest.raises(InputError, match="feature mismatch"):
        read_profiles(NPZ_DIR)
    week1 = read_profiles(NPZ_DIR / "Week1_22123_B02_s1.npz")
    assert feature_columns(week1)[0] == "cnn_0" and len(feature_columns(week1)) == 50


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_npz_metadata_unpickler_refuses_arbitrary_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    payload = io.BytesIO()
    np.lib.format.write_array_header_1_0(payload, {"descr": "|O", "fortran_order": False, "shape": ()})
    pickle.dump(np.array({"k": _Exploit()}, dtype=object), payload, protocol=3)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.npy", payload.getvalue())
        buf = io.BytesIO()
        np.save(buf, np.zeros((2, 3), np.float32))
        zf.writestr("features.npy", buf.getvalue())
    with pytest.raises(InputError, match="refusing to load global builtins.print"):
        read_site_metadata(path)


def test_feature_selection_by_names_and_globs() -> None:
    table = small_table().assign(g0=1.0, label="x")
    assert feature_columns(table) == ["f0", "f1", "f2", "f3", "g0"]  # numeric, not Metadata_*, not text
    assert feature_columns(table, "f*") == ["f0", "f1", "f2", "f3"]
    assert feature_columns(table, ["f[2-3]", "g0", "f2"]) == ["f2", "f3", "g0"]  # selection order, no repeats
    assert feature_columns(table, "f3, f0") == ["f3", "f0"]
    assert feature_columns(table, ["f3,f1"]) == ["f3", "f1"]
    assert feature_columns(table.drop(columns="label"), "*") == ["f0", "f1", "f2", "f3", "g0"]  # no Metadata_*
    with pytest.raises(InputError, match="non-numeric feature columns: label"):
        feature_columns(table, "*")  # what a pattern matches must be numeric, as for names
    with pytest.raises(InputError, match="not in the table: h\\*"):
        feature_columns(table, "h*")
    with pytest.raises(InputError, match="cannot be features \\(Metadata_dose\\)"):
        feature_columns(table, ["f0", "Metadata_dose"])
    with pytest.raises(InputError, match="non-numeric feature columns: label"):
        feature_columns(table, "f0,label")
    with pytest.raises(InputError, match="selection is empty"):
        feature_columns(table, " , ")
    with pytest.raises(InputError, match="no feature columns"):
        feature_columns(table[["Metadata_Well", "label"]])
    with pytest.raises(InputError, match="101 feature patterns is over the limit of 100"):
        feature_columns(table, [f"f{i}*" for i in range(101)])
    assert feature_columns(table, [f"f{i % 4}" for i in range(500)]) == ["f0", "f1", "f2", "f3"]  # names: no limit
    literal = pd.DataFrame({"a[1]": [1.0], "a1": [2.0]})  # a name that exists is never a pattern
    assert feature_columns(literal, "a[1]") == ["a[1]"]


def test_unprefixed_coordinates_are_metadata_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cpcnn.profiles.tables import LEGACY_METADATA, metadata_columns

    table = small_table()
    for name in LEGACY_METADATA:
        table[name] = np.arange(len(table), dtype=float) * 100
    assert feature_columns(table) == ["f0", "f1", "f2", "f3"]
    assert metadata_columns(table) == ["Metadata_Well", "Metadata_dose", *LEGACY_METADATA]
    paths = [write_profiles(table, tmp_path / "a.csv"), write_profiles(table, tmp_path / "b.parquet")]
    with caplog.at_level("WARNING", logger="cpcnn"):
        back = read_profiles(paths)
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "Nuclei_Location_Center_X" in notes[0] and "ObjectNumber" in notes[0]
    assert list(back.columns[-4:]) == ["f0", "f1", "f2", "f3"] and back["ObjectNumber"].tolist()[:2] == [0, 100]
    # asked for explicitly, a legacy column is a feature (the user's choice)
    assert feature_columns(table, "f0,Location_Center_X") == ["f0", "Location_Center_X"]


def test_sites_given_and_not_given_aggregate_together(tmp_path: Path) -> None:
    """Integer sites next to cells embedded without --site (text ""): one Parquet column of text."""
    from cpcnn.io.cells import write_cells
    from cpcnn.profiles import aggregate_files

    features, centers = np.ones((2, 3), np.float32), np.array([[1.0, 2.0], [3.0, 4.0]])
    paths = [
        write_cells(tmp_path / f"{i}.parquet", features * (i + 1), centers, model_name="m",
                    metadata={"Metadata_Plate": "P", "Metadata_Well": "A01", "Metadata_Site": site})
        for i, site in enumerate(["3", ""])
    ]
    result = aggregate_files(paths, by=["Metadata_Plate", "Metadata_Well", "Metadata_Site"], op="median")
    out = read_profiles(write_profiles(result.profiles, tmp_path / "sites.parquet"))
    assert out["Metadata_Site"].tolist() == ["3", ""] and out["efficientnet_0"].tolist() == [1, 2]
    both = read_profiles(paths)
    assert read_profiles(write_profiles(both, tmp_path / "cells.parquet"))["Metadata_Site"].tolist() == ["3"] * 2 + [""] * 2
