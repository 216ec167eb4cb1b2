"""The SDK against the real app (embedded mode): paths, bytes, arrays, stacks, many sites, async."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _tiny_model import expected_features, locations_csv, tiff_bytes

from cpcnn._types import CHANNELS
from cpcnn.client import AsyncClient, Client, InputError, Site
from cpcnn.crops import crop_cells
from cpcnn.io.cells import cells_table
from cpcnn.io.images import stack_planes


def _expected(planes: dict[str, Any], centers: np.ndarray) -> np.ndarray:
    image = stack_planes([planes[c] for c in CHANNELS], CHANNELS)
    return expected_features(crop_cells(image, centers))


def test_embed_arrays_returns_cpcnn_embed_columns(server_url: str, planes_and_centers: Any) -> None:
    planes, centers = planes_and_centers
    with Client(server_url) as client:
        cells = client.embed(planes, centers, metadata={"plate": "P1", "well": "B02", "site": "3"})
    assert isinstance(cells, pd.DataFrame) and len(cells) == 4
    reference = cells_table(np.zeros((4, 672), np.float32), centers, model_name="cnn1",
                            metadata={"Metadata_Plate": "P1", "Metadata_Well": "B02", "Metadata_Site": "3"})
    assert list(cells.columns) == reference.column_names
    assert (cells["Metadata_Well"] == "B02").all() and (cells["Metadata_Model"] == "cnn1").all()
    features = cells[[f"efficientnet_{i}" for i in range(672)]].to_numpy()
    np.testing.assert_allclose(features, _expected(planes, centers), rtol=1e-4, atol=1e-3)


def test_embed_paths_and_csv(server_url: str, planes_and_centers: Any, tmp_path: Path) -> None:
    planes, centers = planes_and_centers
    paths = {}
    for name, plane in planes.items():
        paths[name] = tmp_path / f"{name}.tif"
        paths[name].write_bytes(tiff_bytes(plane, compression="zlib"))
    (tmp_path / "nuclei.csv").write_bytes(locations_csv(centers))
    frame = pd.DataFrame(centers, columns=["Location_Center_X", "Location_Center_Y"])
    with Client(server_url) as client:
        from_paths = client.embed({k: str(v) for k, v in paths.items()}, str(tmp_path / "nuclei.csv"))
        from_frame = client.embed({k: v.read_bytes() for k, v in paths.items()}, frame)
        stacked = client.embed(np.stack([planes[c] for c in reversed(CHANNELS)]), centers,
                               channel_order=list(reversed(CHANNELS)))
    assert len(from_paths) == len(from_frame) == len(stacked) == 4
    assert from_paths["Metadata_ObjectNumber"].tolist() == [1, 2, 3, 4]
    with Client(server_url) as client:  # the input's own object numbers travel to the result rows
        numbered = client.embed(planes, frame.assign(ObjectNumber=[40, 30, 20, 10]), metadata={"site": "7"})
    assert numbered["Metadata_ObjectNumber"].tolist() == [40, 30, 20, 10]
    assert numbered["Metadata_Site"].tolist() == [7] * 4 and numbered["Metadata_Site"].dtype == np.int64
    np.testing.assert_array_equal(from_paths["efficientnet_9"].to_numpy(), from_frame["efficientnet_9"].to_numpy())
    np.testing.assert_array_equal(from_paths["efficientnet_9"].to_numpy(), stacked["efficientnet_9"].to_numpy())


def test_submit_result_numpy_and_models(server_url: str, planes_and_centers: Any) -> None:
    planes, centers = planes_and_centers
    with Client(server_url) as client:
        assert [m.name for m in client.models()] == ["cnn1"] and client.model("cnn1").feature_size == 672
        job = client.submit(planes, centers, metadata={"plate": "numpy"})
        assert client.wait(job.id).n_cells == 4
        features = client.result(job.id, format="numpy")
        assert features.shape == (4, 672) and features.dtype == np.float32
        assert client.result(job.id, format="json").n_cells == 4
        assert client.ready().ready and client.health().status == "ok"
        client.delete(job.id)


def test_server_errors_carry_the_message(server_url: str, planes_and_centers: Any) -> None:
    planes, centers = planes_and_centers
    with Client(server_url) as client, pytest.raises(InputError, match="outside") as info:
        client.submit(planes, centers + 10_000)
    assert info.value.status_code == 422 and info.value.problem is not None


def test_embed_many_in_order_with_progress(server_url: str, planes_and_centers: Any, capsys: Any) -> None:
    planes, centers = planes_and_centers
    sites = [Site(planes, centers[: n + 1], {"plate": "many", "site": str(n)}) for n in range(4)]
    with Client(server_url) as client:
        cells = client.embed_many(sites, max_in_flight=2, progress=True)
    assert cells["Metadata_Site"].tolist() == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert "embedding" in capsys.readouterr().err


def test_async_client(server_url: str, planes_and_centers: Any) -> None:
    planes, centers = planes_and_centers

    async def main() -> tuple[Any, Any]:
        async with AsyncClient(server_url) as client:
            one = await client.embed(planes, centers, metadata={"plate": "async"})
            many = await client.embed_many(
                [{"images": planes, "locations": centers[:2], "metadata": {"site": str(i)}} for i in range(3)],
                max_in_flight=3,
            )
            return one, many

    one, many = asyncio.run(main())
    assert len(one) == 4 and len(many) == 6 and many["Metadata_Site"].tolist() == [0, 0, 1, 1, 2, 2]
