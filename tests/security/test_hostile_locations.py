"""Hostile locations: only the documented shapes, counted while parsing, and never a 500 over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _hostile import run_probe
from _servers import live_server
from _tiny_model import upload
from cpcnn.service.app.main import create_app
from cpcnn.service.config import ApiSettings, Limits

from cpcnn.errors import InputError, PayloadTooLarge
from cpcnn.locations import parse_locations_text

CSV_HEADER = "Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n"


@pytest.mark.parametrize(
    "text",
    [
        "[[10,20,30],[40,50,60]]",  # triples read as 3 cells before
        '{"x":"123","y":"456"}',  # strings zipped character by character before
        '{"x":[1,2],"y":[3,4],"z":[5,6]}',
        '[{"x":1,"y":2,"z":3}]',
        '[{"x":"1","y":2}]',
        "[[true,false]]",
        "[[1,2],[3]]",
        "[1,2]",
        '{"x":[[1]],"y":[[2]]}',
        "[[1,2]] trailing",
        "[" * 100_000,
        "{" * 100_000,
        '[{"x":' * 50_000,
        "[[1," + "9" * 5000 + "]]",
        "[[1,2e999999]]",
        "[[1," + "1" * 4000 + "]]",
        '[[1,2],{"x":1}]',
    ],
)
def test_only_documented_json_shapes(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_locations_text(text, max_cells=10)
    assert not isinstance(caught.value, PayloadTooLarge)


@pytest.mark.parametrize(
    "text", ["[[1, 2], [3, 4]]", '[{"x": 1, "y": 2}, {"y": 4, "x": 3}]', '{"x": [1, 3], "y": [2, 4]}',
             '{"Location_Center_X": [1, 3], "Location_Center_Y": [2, 4]}', ' \n[[1.0,2.0] , [3,4.0]]\n']
)
def test_documented_json_shapes_still_read(text: str) -> None:
    assert parse_locations_text(text, max_cells=2).tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_cells_are_counted_while_parsing() -> None:
    for text in (CSV_HEADER + "1,2\n" * 3, "[" + ",".join(["[1,2]"] * 3) + "]",
                 '{"x":[1,1,1],"y":[2,2,2]}', "[" + ",".join(['{"x":1,"y":2}'] * 3) + "]"):
        assert parse_locations_text(text, max_cells=3).shape == (3, 2)
        with pytest.raises(PayloadTooLarge, match="over the limit of 2 cells"):
            parse_locations_text(text, max_cells=2)


def test_malformed_csv_is_an_input_error() -> None:
    with pytest.raises(InputError, match="malformed"):
        parse_locations_text(CSV_HEADER + '"' + "x" * 200_000 + '",1\n')


@pytest.fixture
def small_api(make_settings: Callable[..., ApiSettings]) -> Iterator[httpx.Client]:
    limits = Limits(max_cells=50)
    with live_server(create_app(make_settings(limits=limits))) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


@pytest.mark.parametrize(
    "text, status",
    [
        (b"[" * 100_000, 422),
        (b"[[1," + b"9" * 5000 + b"]]", 422),
        (b"[[10,20,30],[40,50,60]]", 422),
        (b'{"x":"123","y":"456"}', 422),
        (CSV_HEADER.encode() + b"10,10\n" * 51, 413),
        (b"[" + b",".join([b"[10,10]"] * 51) + b"]", 413),
    ],
)
def test_hostile_locations_over_http(small_api: httpx.Client, site: dict[str, Any], text: bytes, status: int) -> None:
    response = small_api.post("/v1/jobs", files=upload(site, locations=("n.json", text, "application/json")))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.slow
def test_oversized_locations_keep_peak_memory_near_a_benign_parse(tmp_path: Path) -> None:
    rows = 1_000_000  # about 12 MB of CSV, 50,000 cells allowed
    csv_path = tmp_path / "n.csv"
    csv_path.write_text(CSV_HEADER + "1234.5,678.25\n" * rows)
    json_path = tmp_path / "n.json"
    json_path.write_text(json.dumps([[1.5, 2.5]] * rows))
    benign = tmp_path / "ok.csv"
    benign.write_text(CSV_HEADER + "1234.5,678.25\n" * 100)
    setup = "from pathlib import Path\nfrom cpcnn.locations import parse_locations_text"
    base = run_probe(setup, f"parse_locations_text(Path({str(benign)!r}).read_text(), max_cells=50_000)")
    assert base["outcome"] == "ok"
    for path in (csv_path, json_path):
        # The text itself (what the upload costs) is held before the probe's baseline is taken.
        probe = run_probe(setup + f"\ntext = Path({str(path)!r}).read_text()",
                          "parse_locations_text(text, max_cells=50_000)")
        assert probe["outcome"].startswith("PayloadTooLarge"), probe
        assert int(probe["peak"]) - int(probe["before"]) < 100 * 2**20, probe
