"""Embedder: batching, site pipelining and input checks, on a tiny ONNX model with known math."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _tiny_model import expected_features, save_tiny_model, synthetic_site

from cpcnn.crops import crop_cells
from cpcnn.embedding import Embedder
from cpcnn.errors import InputError
from cpcnn.io.images import read_site


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return Embedder(save_tiny_model(tmp_path_factory.mktemp("models")), device="cpu", batch_size=4)


def test_embed_site_batches_and_keeps_row_order(embedder: Embedder) -> None:
    channels, centers = synthetic_site(n_cells=11)
    image = read_site(channels)
    features = embedder.embed_site(image, centers)
    expected = expected_features(crop_cells(image, centers))
    assert features.shape == (11, embedder.feature_size)
    assert np.abs(features - expected).max() <= 1e-4 * np.abs(expected).max()  # float32 sums differ in order


def test_embed_sites_pipeline_equals_one_by_one(embedder: Embedder) -> None:
    sites = [synthetic_site(n_cells=n, seed=n) for n in (3, 7, 0, 5)]
    loaders = [(i, lambda s=s: (read_site(s[0]), s[1])) for i, s in enumerate(sites)]
    results = list(embedder.embed_sites(loaders))
    assert [key for key, _ in results] == [0, 1, 2, 3]
    for (_, features), (channels, centers) in zip(results, sites, strict=True):
        np.testing.assert_array_equal(features, embedder.embed_site(read_site(channels), centers))


def test_embed_sites_reports_a_bad_site(embedder: Embedder) -> None:
    channels, _ = synthetic_site(n_cells=2)
    loaders = [("bad", lambda: (read_site(channels), np.array([[5000.0, 5000.0]])))]
    with pytest.raises(InputError, match="entirely outside"):
        list(embedder.embed_sites(loaders))


def test_a_bad_cell_past_the_first_batch_is_named_by_its_site_row(embedder: Embedder) -> None:
    channels, centers = synthetic_site(n_cells=11)
    centers = np.array(centers, dtype=np.float64)
    centers[9] = (5000.0, 5000.0)  # batch size 4: row 1 of the third batch
    with pytest.raises(InputError, match=r"row 9 \(x=5000, y=5000\)"):
        embedder.embed_site(read_site(channels), centers)


def test_wrong_channel_count(embedder: Embedder) -> None:
    with pytest.raises(InputError, match="expects 5 channels"):
        embedder.embed_site(np.zeros((200, 200, 3), np.float32), np.array([[100.0, 100.0]]))


def test_wrong_crop_shape(embedder: Embedder) -> None:
    with pytest.raises(InputError, match="crops must be"):
        embedder.embed_crops(np.zeros((2, 64, 64, 5), np.float32))


def test_missing_model_file(tmp_path: Path) -> None:
    from cpcnn.errors import NotFoundError
    from cpcnn.model_store import ModelStore

    with pytest.raises(NotFoundError, match="not in the store"):
        ModelStore(tmp_path).get("cnn1")


def test_auto_batch_size_picks_a_measured_candidate(tmp_path: Path) -> None:
    from cpcnn.embedding import BATCH_CANDIDATES

    tuned = Embedder(save_tiny_model(tmp_path / "models"), device="cpu", batch_size="auto")
    assert tuned.info.batch_size in BATCH_CANDIDATES[False]


def test_bad_device_and_batch_size(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "models")
    with pytest.raises(InputError, match="unknown device 'gpu'"):
        Embedder(model, device="gpu")
    with pytest.raises(InputError, match="at least 1"):
        Embedder(model, device="cpu", batch_size=-3)
    with pytest.raises(InputError, match="threads must be at least 1"):
        Embedder(model, device="cpu", threads=0)
