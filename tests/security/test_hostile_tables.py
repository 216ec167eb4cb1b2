"""Hostile profile-table uploads: bounded before decoding, exact headers, no ragged rows, linear checks."""

from __future__ import annotations

import gzip
import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _hostile import run_probe
from cpcnn.service.app.table_intake import decode_table
from cpcnn.service.config import Limits

from cpcnn.errors import InputError, PayloadTooLarge
from cpcnn.profiles.tables import duplicate_names, read_profiles


def gzip_bomb(n_bytes: int, columns: int = 100) -> bytes:
    """gzip of a numeric CSV of about ``n_bytes``: a few KB that inflate a thousandfold."""
    header = ",".join(f"f{i}" for i in range(columns)) + "\n"
    row = ",".join(["0"] * columns) + "\n"
    with io.BytesIO() as buffer:
        with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as stream:
            stream.write(header.encode())
            block = (row * 1000).encode()
            for _ in range(max(1, n_bytes // len(block))):
                stream.write(block)
        return buffer.getvalue()


def parquet_bytes(table: pa.Table, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **kwargs)
    return buffer.getvalue()


def zeros_parquet(rows: int, columns: int) -> bytes:
    zeros = pa.array(np.zeros(rows, np.float64))
    return parquet_bytes(pa.table({f"f{i}": zeros for i in range(columns)}), compression="zstd")


def test_gzip_bomb_is_refused_within_its_expansion_budget() -> None:
    bomb = gzip_bomb(20_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge, match="decompresses to more than the limit"):
        decode_table(bomb, "t.csv.gz", None, Limits())


def test_parquet_bombs_are_refused_from_the_footer() -> None:
    small = zeros_parquet(2_000_000, 20)
    assert len(small) < 300_000
    with pytest.raises(PayloadTooLarge, match="decode to about"):
        decode_table(small, "t.parquet", None, Limits())
    long_text = pa.array(["x" * 1000] * 200_000)  # dictionary + RLE: tiny on disk, 200 MB decoded
    repeated = parquet_bytes(pa.table({"Metadata_Name": long_text, "f0": pa.array(np.zeros(200_000))}))
    with pytest.raises(PayloadTooLarge):
        decode_table(repeated, "t.parquet", None, Limits(max_table_expansion=10_000, max_table_bytes=100_000_000))
    nested = parquet_bytes(pa.table({"f0": pa.array([[0.0] * 1000] * 10)}))
    with pytest.raises(InputError, match="nested"):
        decode_table(nested, "t.parquet", None, Limits())


def test_parquet_strings_read_as_before() -> None:
    frame = pd.DataFrame({"Metadata_Well": ["A01", "A02", None], "f0": [1.0, 2.0, 3.0]})
    data = parquet_bytes(pa.Table.from_pandas(frame))
    table = decode_table(data, "t.parquet", None, Limits())
    plain = pq.read_table(io.BytesIO(data)).to_pandas()
    pd.testing.assert_series_equal(table["Metadata_Well"], plain["Metadata_Well"])


def test_csv_values_are_bounded_from_newlines_before_parsing() -> None:
    data = (",".join(f"f{i}" for i in range(1000)) + "\n").encode() + b"\n" * 200_000
    with pytest.raises(PayloadTooLarge, match="rows x 1000 columns is over the limit"):
        decode_table(data, "t.csv", None, Limits())


@pytest.mark.parametrize(
    "data, message",
    [
        (b"Metadata_Well,f0\nA01,1,2\nA02,3\n", "ragged"),  # pandas used column 1 as the index
        (b"Metadata_Well,f0\nA01,1\nA02\n", "ragged"),  # pandas filled NaN
        (b"Metadata_Well,f0,f0\nA01,1,2\n", "duplicate column names: f0"),  # pandas renamed to f0.1
        (b"f0,f0.1,f0\n1,2,3\n", "duplicate column names: f0"),
    ],
)
def test_ragged_rows_and_raw_duplicate_names(data: bytes, message: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=message):
        decode_table(data, "t.csv", None, Limits())
    with pytest.raises(InputError, match=message):
        decode_table(gzip.compress(data), "t.csv.gz", None, Limits())
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(data))
    with pytest.raises(InputError, match=message):
        read_profiles(tmp_path / "t.csv.gz")


def test_quoted_newlines_and_commas_are_not_ragged() -> None:
    data = b'Metadata_Name,f0\n"a, b\nc",1\n"d",2\n'
    assert decode_table(data, "t.csv", None, Limits())["Metadata_Name"].tolist() == ["a, b\nc", "d"]


def test_duplicate_check_is_linear() -> None:
    names = [f"f{i}" for i in range(200_000)] + ["f7"]
    started = time.perf_counter()
    assert duplicate_names(names) == ["f7"]
    assert time.perf_counter() - started < 1.0  # the quadratic check took about 3 s at 20,000 names


def test_hostile_tables_over_http(api: httpx.Client) -> None:
    for data, name, status in (
        (gzip_bomb(30_000_000), "t.csv.gz", 413),
        (zeros_parquet(2_000_000, 20), "t.parquet", 413),
        (b"Metadata_Well,f0\nA01,1,2\n", "t.csv", 422),
        (b"Metadata_Well,f0,f0\nA01,1,2\n", "t.csv", 422),
    ):
        response = api.post("/v1/tables", files={"file": (name, data, "application/octet-stream")})
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.slow
def test_table_bombs_keep_peak_memory_near_a_benign_upload(tmp_path: Path) -> None:
    bombs = {"t.csv.gz": gzip_bomb(500_000_000), "t.parquet": zeros_parquet(5_000_000, 25)}
    benign = tmp_path / "benign.csv"
    benign.write_bytes(b"Metadata_Well,f0,f1\n" + b"A01,1.5,2.5\n" * 1000)
    setup = ("from pathlib import Path\nfrom service.app.table_intake import decode_table\n"
             "from cpcnn.service.config import Limits\n")
    base = run_probe(setup, f"decode_table(Path({str(benign)!r}).read_bytes(), 'b.csv', None, Limits())")
    assert base["outcome"] == "ok", base
    for name, data in bombs.items():
        path = tmp_path / name
        path.write_bytes(data)
        probe = run_probe(setup + f"data = Path({str(path)!r}).read_bytes()\n",
                          f"decode_table(data, {name!r}, None, Limits())")
        assert probe["outcome"].startswith("PayloadTooLarge"), probe
        assert int(probe["peak"]) - int(base["peak"]) < 100 * 2**20, (name, probe)


def test_streamed_csv_reads_refuse_ragged_rows_and_duplicates(tmp_path: Path) -> None:
    from cpcnn.profiles.tables import iter_feature_batches, table_kinds

    ragged = tmp_path / "ragged.csv"
    ragged.write_bytes(b"Metadata_Well,f0\nA01,1\nA02,2,9\n")
    with pytest.raises(InputError, match="ragged"):
        list(iter_feature_batches(ragged, keys=["Metadata_Well"], features=["f0"], batch_rows=10))
    duplicated = tmp_path / "dup.csv"
    duplicated.write_bytes(b"Metadata_Well,f0,f0\nA01,1,2\n")
    with pytest.raises(InputError, match="duplicate column names: f0"):
        table_kinds(duplicated)
