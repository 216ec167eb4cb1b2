"""Units under the service: nucleus detection, settings, CLI wiring, batching, negotiation, metrics."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from _servers import REPO_ROOT
from _tiny_model import save_tiny_model, synthetic_site
from cpcnn.service.app.results import negotiate
from cpcnn.service.config import ApiSettings, WorkerSettings, WorkerTuning, load_settings
from cpcnn.service.prometheus import WorkerStats, merge_snapshots
from cpcnn.service.worker.runtime import Runtime
from fastapi import HTTPException
from pydantic import ValidationError

from cpcnn.cli.main import build_parser
from cpcnn.locations import read_locations
from cpcnn.nuclei import detect_nuclei

SAMPLE = REPO_ROOT.parent / "shared" / "data" / "images" / "pcatlas-BR00143976-C03-s3"


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="sample data (../shared) not present")
def test_detect_nuclei_on_the_real_site() -> None:
    import tifffile

    dna = tifffile.imread(SAMPLE / "r03c03f03p01-ch5sk1fk1fl1.tiff")
    found = detect_nuclei(dna)
    derived = read_locations(SAMPLE / "r03c03f03p01-Nuclei.csv")  # same recipe, made with scikit-image
    assert found.shape == derived.shape
    np.testing.assert_allclose(np.sort(found, axis=0), np.sort(derived, axis=0), atol=0.5)
    cellprofiler = read_locations(SAMPLE / "r03c03f03p01-Nuclei_cellprofiler_subset.csv")
    nearest = np.linalg.norm(cellprofiler[:, None] - found[None], axis=2).min(axis=1)
    assert nearest.max() < 5.0  # every CellProfiler nucleus has a detected centre within 5 px


def test_detect_nuclei_splits_touching_and_handles_empty() -> None:
    yy, xx = np.mgrid[0:120, 0:120]
    touching = ((xx - 50) ** 2 + (yy - 60) ** 2 < 15**2) | ((xx - 75) ** 2 + (yy - 60) ** 2 < 15**2)
    centers = detect_nuclei(touching.astype(np.uint16) * 5000 + 100)
    assert centers.shape == (2, 2)
    np.testing.assert_allclose(np.sort(centers[:, 0]), [50, 75], atol=3)
    assert detect_nuclei(np.full((50, 50), 7, np.uint16)).shape == (0, 2)
    with pytest.raises(ValueError, match="2-D"):
        detect_nuclei(np.zeros((5, 5, 5)))


def test_settings_env_nesting_and_placeholder_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPCNN_LIMITS__MAX_CELLS", "7")
    monkeypatch.setenv("CPCNN_WORKER__SLOTS", "9")
    settings = load_settings(ApiSettings, worker={"device": "cpu"}, port=9001)
    assert settings.limits.max_cells == 7 and settings.worker.slots == 9 and settings.worker.device == "cpu"
    assert settings.port == 9001 and settings.api_key is None
    with pytest.raises(ValidationError, match="placeholder"):
        ApiSettings(api_key="changeme")
    assert ApiSettings(env="dev", api_key="changeme").api_key is not None
    with pytest.raises(ValidationError, match="CPCNN_REDIS_URL"):
        WorkerSettings()


def test_cli_serve_and_worker_options() -> None:
    parser = build_parser()
    serve = parser.parse_args(["serve", "--port", "9000", "--redis-url", "redis://x:6379/0", "--max-batch", "32"])
    assert serve.port == 9000 and serve.redis_url == "redis://x:6379/0" and serve.max_batch == 32
    worker = parser.parse_args(["worker", "--model", "cnn1", "--device", "cuda", "--burst", "--max-wait-ms", "5"])
    assert worker.device == "cuda" and worker.burst and worker.max_wait_ms == 5.0


def test_cli_reports_bad_settings(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from cpcnn.cli.main import main

    monkeypatch.delenv("CPCNN_REDIS_URL", raising=False)
    assert main(["worker"]) == 1
    assert "CPCNN_REDIS_URL" in capsys.readouterr().err


def test_batcher_merges_cells_of_concurrent_jobs(tmp_path: Path) -> None:
    save_tiny_model(tmp_path)
    from cpcnn.model_store import ModelStore

    runtime = Runtime(ModelStore(tmp_path), WorkerTuning(device="cpu", threads=1, max_batch=64, max_wait_ms=500))
    batcher = runtime.batcher("cnn1")
    crops = np.random.default_rng(0).random((10, 128, 128, 5), dtype=np.float32)
    results: list[np.ndarray] = []
    start = threading.Barrier(3)

    def job(part: slice) -> None:
        with batcher.preparing():
            start.wait()
        results.append(batcher.embed(crops[part]))

    with batcher.preparing():  # the third job is still preparing: the batcher waits for it
        threads = [threading.Thread(target=job, args=(s,)) for s in (slice(0, 4), slice(4, 7))]
        for thread in threads:
            thread.start()
        start.wait()
    last = batcher.embed(crops[7:])
    for thread in threads:
        thread.join()
    sizes = runtime.stats.snapshot()["hist"]["batch_size"]["counts"]
    runtime.close()
    assert sum(sizes) <= 2 and last.shape == (3, 672)  # 10 cells from 3 jobs in at most 2 ORT calls
    assert sorted(r.shape[0] for r in [*results, last]) == [3, 3, 4]


def test_negotiate() -> None:
    assert negotiate(None) == "application/json"
    assert negotiate("application/x-npy") == "application/x-npy"
    assert negotiate("text/csv, application/vnd.apache.parquet;q=0.5, application/json;q=0.9") == "application/json"
    assert negotiate("*/*") == "application/json"
    with pytest.raises(HTTPException):
        negotiate("text/html, application/json;q=0")


def test_worker_stats_merge() -> None:
    a, b = WorkerStats(), WorkerStats()
    a.observe("batch_size", 64)
    b.observe("batch_size", 3)
    b.inc("cells_embedded", 67)
    merged = merge_snapshots([a.snapshot(), b.snapshot(), {"hist": {"batch_size": {"counts": [1]}}}])
    assert sum(merged["hist"]["batch_size"]["counts"]) == 2 and merged["counters"]["cells_embedded"] == 67


def test_synthetic_site_is_valid() -> None:
    planes, centers = synthetic_site(size=128, n_cells=4)
    assert set(planes) == {"DNA", "RNA", "ER", "AGP", "Mito"} and centers.shape == (4, 2)
