"""Plate-wide location sources: tables read once and indexed by site, DeepProfiler folders, detection."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpcnn.errors import InputError, PayloadTooLarge, UnsupportedMedia
from cpcnn.plates import locations as plate_locations
from cpcnn.plates.locations import (
    DeepProfilerLocations,
    DetectNuclei,
    LocationSource,
    TableLocations,
    open_locations,
)
from cpcnn.plates.sites import SiteSpec


def spec(plate: str = "P1", well: str = "A01", site: str | int = 1) -> SiteSpec:
    return SiteSpec(plate, well, site, images={})


def nuclei_table() -> pd.DataFrame:
    """Two sites of P1/A01 and one of P1/B02, the columns ``cpcnn synth plate`` writes."""
    return pd.DataFrame(
        {
            "Metadata_Plate": ["P1", "P1", "P1", "P1", "P1"],
            "Metadata_Well": ["A01", "A01", "A01", "B02", "B02"],
            "Metadata_Site": [1, 1, 2, 1, 1],
            "ObjectNumber": [1, 2, 1, 7, 9],
            "Location_Center_X": [10.0, 20.0, 30.0, 40.0, 50.0],
            "Location_Center_Y": [11.0, 21.0, 31.0, 41.0, 51.0],
        }
    )


def test_csv_table_gives_each_site_its_rows_in_order(tmp_path: Path) -> None:
    path = tmp_path / "nuclei.csv"
    nuclei_table().to_csv(path, index=False)
    source = open_locations(path)
    assert isinstance(source, TableLocations) and isinstance(source, LocationSource)
    assert not source.needs_image
    a01 = source.for_site(spec(site=1))
    np.testing.assert_array_equal(a01.centers, [[10.0, 11.0], [20.0, 21.0]])
    np.testing.assert_array_equal(a01.object_numbers, [1, 2])
    b02 = source.for_site(spec(well="B02", site="1"))  # site "1" matches the table's 1
    np.testing.assert_array_equal(b02.object_numbers, [7, 9])
    assert len(source.for_site(spec(site=2))) == 1
    source.check([spec(site=2), spec(well="Z99")])
    assert "5 cells, 3 sites" in source.describe()


def test_key_text_is_kept_as_written(tmp_path: Path) -> None:
    table = nuclei_table().assign(Metadata_Plate="0042", Metadata_Site=["01", "01", "02", "01", "01"])
    path = tmp_path / "nuclei.csv"
    table.to_csv(path, index=False)
    source = open_locations(path)
    assert len(source.for_site(spec(plate="0042", site="01"))) == 2
    with pytest.raises(InputError, match="no locations for plate 0042 well A01 site 1"):
        source.for_site(spec(plate="0042", site=1))


def test_missing_columns_are_listed_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nuclei.csv"
    nuclei_table().drop(columns=["Location_Center_Y"]).to_csv(path, index=False)
    with pytest.raises(InputError, match="Location_Center_X") as info:
        open_locations(path)
    assert "\n" not in str(info.value) and "it has Metadata_Plate" in str(info.value)
    nuclei_table().drop(columns=["Metadata_Site"]).to_csv(path, index=False)
    with pytest.raises(InputError, match="Metadata_Site or Image_Metadata_Site"):
        open_locations(path)


def test_corrupt_site_fails_alone(tmp_path: Path) -> None:
    table = nuclei_table()
    table.loc[0, "Location_Center_X"] = np.nan
    table.loc[4, "ObjectNumber"] = 7
    path = tmp_path / "nuclei.csv"
    table.to_csv(path, index=False)
    source = open_locations(path)
    with pytest.raises(InputError, match="well A01 site 1.*NaN or infinite"):
        source.for_site(spec())
    with pytest.raises(InputError, match="well B02 site 1.*object number 7 appears more than once"):
        source.for_site(spec(well="B02"))
    assert len(source.for_site(spec(site=2))) == 1


def test_text_in_a_coordinate_column_is_refused(tmp_path: Path) -> None:
    table = nuclei_table().astype({"Location_Center_X": object})
    table.loc[3, "Location_Center_X"] = "left"
    path = tmp_path / "nuclei.csv"
    table.to_csv(path, index=False)
    with pytest.raises(InputError, match="'left' at row 3 is not a number"):
        open_locations(path)


def test_check_names_an_example_of_each_key(tmp_path: Path) -> None:
    path = tmp_path / "nuclei.csv"
    nuclei_table().to_csv(path, index=False)
    with pytest.raises(InputError, match=r"none of the plate's 1 sites.*\('P2', 'A01', '1'\).*\('P1',"):
        open_locations(path).check([spec(plate="P2")])


def test_cellprofiler_object_export_joins_its_image_table(tmp_path: Path) -> None:
    images = pd.DataFrame(
        {"ImageNumber": [1, 2, 3], "Metadata_Plate": ["P1"] * 3, "Metadata_Well": ["A01", "A01", "B02"],
         "Metadata_Site": [1, 2, 1]}
    )
    images.to_csv(tmp_path / "MyExpt_Image.csv", index=False)
    objects = pd.DataFrame(
        {"ImageNumber": [1, 1, 3], "ObjectNumber": [1, 2, 1], "Location_Center_X": [1.0, 2.0, 3.0],
         "Location_Center_Y": [4.0, 5.0, 6.0], "AreaShape_Area": [100, 120, 90]}
    )
    objects.to_csv(tmp_path / "MyExpt_Nuclei.csv", index=False)
    source = open_locations(tmp_path / "MyExpt_Nuclei.csv")
    np.testing.assert_array_equal(source.for_site(spec()).centers, [[1.0, 4.0], [2.0, 5.0]])
    assert len(source.for_site(spec(site=2))) == 0  # an image without nuclei: zero cells, not missing
    np.testing.assert_array_equal(source.for_site(spec(well="B02")).centers, [[3.0, 6.0]])
    objects.assign(ImageNumber=[1, 1, 9]).to_csv(tmp_path / "MyExpt_Nuclei.csv", index=False)
    with pytest.raises(InputError, match="ImageNumber '9'"):
        open_locations(tmp_path / "MyExpt_Nuclei.csv")


def test_cytotable_parquet(tmp_path: Path) -> None:
    """CytoTable's cellprofiler_sqlite naming, with the site added to the join."""
    table = pd.DataFrame(
        {
            "Metadata_ImageNumber": [1, 1, 2],
            "Image_Metadata_Plate": ["P1"] * 3,
            "Image_Metadata_Well": ["A01", "A01", "A02"],
            "Image_Metadata_Site": [1, 1, 3],
            "Cells_Number_Object_Number": [5, 6, 7],
            "Nuclei_Number_Object_Number": [1, 2, 3],
            "Cells_Location_Center_X": [0.0, 0.0, 0.0],
            "Cells_Location_Center_Y": [0.0, 0.0, 0.0],
            "Nuclei_Location_Center_X": [12.5, 13.5, 14.5],
            "Nuclei_Location_Center_Y": [22.5, 23.5, 24.5],
        }
    )
    path = tmp_path / "plate.parquet"
    table.to_parquet(path)
    source = open_locations(path)
    site = source.for_site(spec())
    np.testing.assert_array_equal(site.centers, [[12.5, 22.5], [13.5, 23.5]])
    np.testing.assert_array_equal(site.object_numbers, [1, 2])
    assert len(source.for_site(spec(well="A02", site=3))) == 1


def test_cytotable_parquet_without_site_names_what_to_add(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"Metadata_ImageNumber": [1], "Image_Metadata_Plate": ["P1"], "Image_Metadata_Well": ["A01"],
         "Metadata_ObjectNumber": [1], "Nuclei_Location_Center_X": [1.0], "Nuclei_Location_Center_Y": [2.0]}
    )
    sub = tmp_path / "cytotable"
    sub.mkdir()
    table.to_parquet(sub / "plate.parquet")
    with pytest.raises(InputError, match="Image_Metadata_Site.*with an image table"):
        open_locations(sub / "plate.parquet")
    images = pd.DataFrame({"ImageNumber": [1], "Metadata_Plate": ["P1"], "Metadata_Well": ["A01"], "Metadata_Site": [4]})
    images.to_csv(tmp_path / "images.csv", index=False)
    source = open_locations(sub / "plate.parquet", image_table=tmp_path / "images.csv")
    assert len(source.for_site(spec(site=4))) == 1


SHARED_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"


@pytest.mark.parametrize(
    ("folder", "key"),
    [("cpjump1-BR00117006-A01-s1-partial", ("BR00117006", "A01", 1)), ("pcatlas-BR00143976-C03-s3", ("BR00143976", "C03", 3))],
)
def test_real_cytotable_files(folder: str, key: tuple[str, str, int]) -> None:
    """Two CytoTable outputs from public studies (JUMP cpg0016 plate, pediatric cancer atlas plate)."""
    site_folder = SHARED_IMAGES / folder
    if not site_folder.is_dir():
        pytest.skip("shared data not present")
    table = next(site_folder.glob("*_shrunken.parquet"))
    expected = pd.read_csv(next(site_folder.glob("*-Nuclei_cellprofiler_subset.csv")))
    cells = open_locations(table).for_site(spec(*key))
    np.testing.assert_allclose(cells.centers, expected[["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]])
    np.testing.assert_array_equal(cells.object_numbers, expected["Metadata_ObjectNumber"])


def write_cellprofiler_sqlite(path: Path, *, per_object: bool = False, prefix: str = "MyExpt") -> None:
    """The tables CellProfiler's ExportToDatabase writes (a few of their many columns)."""
    with sqlite3.connect(path) as db:
        db.execute(
            f"CREATE TABLE {prefix}Per_Image (ImageNumber INTEGER PRIMARY KEY, Image_Metadata_Plate TEXT, "
            "Image_Metadata_Well TEXT, Image_Metadata_Site INTEGER, Image_Count_Nuclei INTEGER)"
        )
        db.executemany(
            f"INSERT INTO {prefix}Per_Image VALUES (?, ?, ?, ?, ?)",
            [(1, "P1", "A01", 1, 2), (2, "P1", "A01", 2, 0), (3, "P1", "B02", 1, 1)],
        )
        if per_object:
            db.execute(
                f"CREATE TABLE {prefix}Per_Object (ImageNumber INTEGER, ObjectNumber INTEGER, "
                "Nuclei_Location_Center_X REAL, Nuclei_Location_Center_Y REAL, Cells_AreaShape_Area REAL)"
            )
            rows = [(1, 1, 5.0, 6.0, 1.0), (1, 2, 7.0, 8.0, 1.0), (1, 3, None, None, 1.0), (3, 1, 9.0, 10.0, 1.0)]
            db.executemany(f"INSERT INTO {prefix}Per_Object VALUES (?, ?, ?, ?, ?)", rows)
        else:
            db.execute(
                f"CREATE TABLE {prefix}Per_Nuclei (ImageNumber INTEGER, Nuclei_Number_Object_Number INTEGER, "
                "Nuclei_Location_Center_X REAL, Nuclei_Location_Center_Y REAL, Nuclei_AreaShape_Area REAL)"
            )
            rows = [(1, 1, 5.0, 6.0, 1.0), (1, 2, 7.0, 8.0, 1.0), (3, 1, 9.0, 10.0, 1.0)]
            db.executemany(f"INSERT INTO {prefix}Per_Nuclei VALUES (?, ?, ?, ?, ?)", rows)


@pytest.mark.parametrize("per_object", [False, True])
def test_cellprofiler_sqlite(tmp_path: Path, per_object: bool) -> None:
    path = tmp_path / "plate.sqlite"
    write_cellprofiler_sqlite(path, per_object=per_object)
    source = open_locations(path)
    site = source.for_site(spec())
    np.testing.assert_array_equal(site.centers, [[5.0, 6.0], [7.0, 8.0]])
    np.testing.assert_array_equal(site.object_numbers, [1, 2])
    assert len(source.for_site(spec(site=2))) == 0
    np.testing.assert_array_equal(source.for_site(spec(well="B02")).centers, [[9.0, 10.0]])


def test_sqlite_without_cellprofiler_tables(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE things (a INTEGER)")
    with pytest.raises(InputError, match="Per_Image.*it has tables things"):
        open_locations(path)


def test_file_named_sqlite_that_is_not(tmp_path: Path) -> None:
    path = tmp_path / "plate.sqlite"
    path.write_bytes(b"Metadata_Plate,Metadata_Well\nP1,A01\n")
    with pytest.raises(UnsupportedMedia, match="not an SQLite database"):
        open_locations(path)


def test_unknown_file_type(tmp_path: Path) -> None:
    path = tmp_path / "plate.xlsx"
    path.write_bytes(b"PK\x03\x04 a spreadsheet")
    with pytest.raises(UnsupportedMedia, match="expected a CSV, Parquet"):
        open_locations(path)
    with pytest.raises(InputError, match="does not exist"):
        open_locations(tmp_path / "absent.csv")


def test_tables_over_the_row_limit_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plate_locations, "MAX_TABLE_ROWS", 3)
    nuclei_table().to_csv(tmp_path / "nuclei.csv", index=False)
    nuclei_table().to_parquet(tmp_path / "nuclei.parquet")
    write_cellprofiler_sqlite(tmp_path / "plate.sqlite")
    for name in ("nuclei.csv", "nuclei.parquet"):
        with pytest.raises(PayloadTooLarge, match="over the limit of 3"):
            open_locations(tmp_path / name)
    monkeypatch.setattr(plate_locations, "MAX_TABLE_ROWS", 2)
    with pytest.raises(PayloadTooLarge, match="over the limit of 2"):
        open_locations(tmp_path / "plate.sqlite")


def write_deepprofiler_locations(root: Path) -> None:
    (root / "P1").mkdir(parents=True)
    pd.DataFrame({"Nuclei_Location_Center_X": [3.0, 4.0], "Nuclei_Location_Center_Y": [5.0, 6.0]}).to_csv(
        root / "P1" / "A01-1-Nuclei.csv", index=False
    )
    (root / "P1" / "A01-2-Nuclei.csv").write_text("Nuclei_Location_Center_X,Nuclei_Location_Center_Y\nnan,1\n")


def test_deepprofiler_folder(tmp_path: Path) -> None:
    write_deepprofiler_locations(tmp_path / "locations")
    source = open_locations(tmp_path / "locations")
    assert isinstance(source, DeepProfilerLocations)
    site = source.for_site(spec())
    np.testing.assert_array_equal(site.centers, [[3.0, 5.0], [4.0, 6.0]])
    np.testing.assert_array_equal(site.object_numbers, [1, 2])
    with pytest.raises(InputError, match="A01-2-Nuclei.csv.*site 2.*NaN"):
        source.for_site(spec(site=2))
    with pytest.raises(InputError, match="no locations file .*A01-3-Nuclei.csv"):
        source.for_site(spec(site=3))
    source.check([spec(site=3), spec(site=1)])
    with pytest.raises(InputError, match="none of the plate's 1 sites.*P2/A01-1-Nuclei.csv.*P1/A01-"):
        source.check([spec(plate="P2")])
    with pytest.raises(InputError, match="cannot name a locations file"):
        source.for_site(spec(plate=".."))


def test_detect_nuclei_finds_bright_discs() -> None:
    image = np.zeros((120, 160, 5), np.float32)
    yy, xx = np.mgrid[:120, :160]
    for x, y in [(40, 30), (110, 80)]:
        image[:, :, 0] += ((xx - x) ** 2 + (yy - y) ** 2 < 10**2).astype(np.float32)
    source = DetectNuclei()
    assert source.needs_image
    found = source.for_site(spec(), image)
    np.testing.assert_allclose(found.centers, [[40, 30], [110, 80]], atol=1.0)
    np.testing.assert_array_equal(found.object_numbers, [1, 2])
    with pytest.raises(InputError, match="needs the site's"):
        source.for_site(spec())
