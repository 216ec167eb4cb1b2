"""Locations: accepted layouts, row order kept, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpcnn.errors import InputError
from cpcnn.locations import read_locations

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "pcatlas-BR00143976-C03-s3"


def test_cellprofiler_csv(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    path.write_text("ImageNumber,Nuclei_Location_Center_Y,Nuclei_Location_Center_X\n1,2.5,10\n1,7,3.25\n")
    assert read_locations(path).tolist() == [[10.0, 2.5], [3.25, 7.0]]


def test_plain_location_columns_and_bytes() -> None:
    data = b"Location_Center_X,Location_Center_Y\n1,2\n"
    assert read_locations(data).tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize(
    "text", ['[[1, 2], [3, 4]]', '[{"x": 1, "y": 2}, {"x": 3, "y": 4}]', '{"x": [1, 3], "y": [2, 4]}']
)
def test_json_layouts(text: str) -> None:
    assert read_locations(text.encode()).tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_array_and_dataframe() -> None:
    assert read_locations(np.array([[1, 2]])).tolist() == [[1.0, 2.0]]
    frame = pd.DataFrame({"Nuclei_Location_Center_X": [5.0], "Nuclei_Location_Center_Y": [6.0]})
    assert read_locations(frame).tolist() == [[5.0, 6.0]]


def test_zero_rows_is_not_an_error() -> None:
    assert read_locations(b"Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n").shape == (0, 2)
    assert read_locations(b"[]").shape == (0, 2)


def test_sample_site_locations() -> None:
    if not SAMPLE.is_dir():
        pytest.skip("sample site not present")
    centers = read_locations(SAMPLE / "r03c03f03p01-Nuclei.csv")
    assert centers.shape == (41, 2)
    assert centers[0].tolist() == [512.638, 58.136]


def test_missing_columns() -> None:
    with pytest.raises(InputError, match="Nuclei_Location_Center_X/Nuclei_Location_Center_Y"):
        read_locations(b"x,y\n1,2\n")


def test_nan_and_inf_rejected() -> None:
    with pytest.raises(InputError, match="first at row 1"):
        read_locations(b"Location_Center_X,Location_Center_Y\n1,2\nnan,3\n")
    with pytest.raises(InputError, match="NaN or infinite"):
        read_locations(np.array([[np.inf, 1.0]]))


def test_non_numeric_cell_names_the_line() -> None:
    with pytest.raises(InputError, match="line 3"):
        read_locations(b"Location_Center_X,Location_Center_Y\n1,2\nabc,3\n")


def test_bad_json() -> None:
    with pytest.raises(InputError, match="not valid JSON"):
        read_locations(b"[[1, 2]")
    with pytest.raises(InputError, match="numeric x and y"):
        read_locations(b'[{"x": 1}]')


def test_wrong_array_shape() -> None:
    with pytest.raises(InputError, match=r"\(N, 2\)"):
        read_locations(np.zeros((3, 3)))


def test_object_numbers_from_the_input_or_by_position(tmp_path: Path) -> None:
    from cpcnn.locations import load_locations

    csv = b"ObjectNumber,Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n7,1,2\n\n3,4,5\n"
    cells = load_locations(csv)
    assert cells.object_numbers.tolist() == [7, 3] and cells.centers.tolist() == [[1, 2], [4, 5]]
    assert load_locations(b"Location_Center_X,Location_Center_Y\n1,2\n\n3,4\n").object_numbers.tolist() == [1, 2]
    assert load_locations(np.zeros((3, 2))).object_numbers.tolist() == [1, 2, 3]
    frame = pd.DataFrame({"Metadata_ObjectNumber": [5.0, 6.0], "Metadata_Nuclei_Location_Center_X": [1, 2],
                          "Metadata_Nuclei_Location_Center_Y": [3, 4]})  # a cpcnn cells table as locations
    assert load_locations(frame).object_numbers.tolist() == [5, 6]
    assert load_locations(b'[{"x": 1, "y": 2, "ObjectNumber": 9}]').object_numbers.tolist() == [9]
    assert load_locations(b'{"x": [1, 2], "y": [3, 4], "ObjectNumber": [4, 2]}').object_numbers.tolist() == [4, 2]
    assert load_locations(b"[[1, 2], [3, 4]]").object_numbers.tolist() == [1, 2]
    assert load_locations(b"ObjectNumber,Location_Center_X,Location_Center_Y\n").object_numbers.shape == (0,)
    assert read_locations(csv).tolist() == [[1, 2], [4, 5]]  # centres alone, as before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"ObjectNumber,Location_Center_X,Location_Center_Y\n1,1,2\n1,3,4\n", "object number 1 appears more than once"),
        (b"ObjectNumber,Location_Center_X,Location_Center_Y\n1.5,1,2\n", "'1.5' at row 0 is not a whole number"),
        (b"ObjectNumber,Location_Center_X,Location_Center_Y\n-1,1,2\n", "'-1' at row 0"),
        (b"ObjectNumber,Location_Center_X,Location_Center_Y\n,1,2\n", "'' at row 0"),
        (b'[{"x": 1, "y": 2, "ObjectNumber": 1}, {"x": 1, "y": 2}]', "given for some locations but not all"),
        (b'{"x": [1], "y": [2], "ObjectNumber": [1, 2]}', "2 object numbers for 1 locations"),
    ],
)
def test_bad_object_numbers(text: bytes, message: str) -> None:
    from cpcnn.locations import load_locations

    with pytest.raises(InputError, match=message):
        load_locations(text)
