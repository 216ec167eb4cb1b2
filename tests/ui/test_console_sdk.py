"""The SDK's methods for what the console shows, against a live server (sync client; async is the same source)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _profiles_data import synthetic_profiles

from cpcnn.client import Client, InputError


def test_sdk_reads_workers_jobs_throughput_previews_and_maps(
    server_url: str, planes_and_centers: tuple[dict[str, Any], Any]
) -> None:
    planes, centers = planes_and_centers
    with Client(server_url) as client:
        workers = client.workers()
        assert workers.count == 1 and workers.data[0].provider == "CPUExecutionProvider"
        client.embed(planes, centers)
        jobs = client.recent_jobs(limit=3)
        assert jobs and jobs[0].n_cells == len(centers)
        assert client.throughput(minutes=2).buckets[-1].cells >= len(centers)

        preview = client.preview_crops(planes, centers, cells=[1])
        np.testing.assert_allclose(preview.centers, centers)
        assert preview.composite is not None and [c.index for c in preview.crops] == [1]
        assert set(preview.crops[0].channels) == {"DNA", "RNA", "ER", "AGP", "Mito"}
        with pytest.raises(InputError, match="past the"):
            client.preview_crops(planes, centers, cells=[len(centers)], composite=False)

        table = client.upload_table(synthetic_profiles())
        shown = client.table_map(table.id, features="f*")
        assert shown.method == "pca" and shown.n_shown == table.n_rows and len(shown.x) == table.n_rows
        assert set(shown.metadata) == set(table.metadata_columns)
