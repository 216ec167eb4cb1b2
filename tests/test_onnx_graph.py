"""Squeeze-excite pooling in two stages: accurate in ONNX Runtime's NCHWc fast path, older exports upgraded."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _model_fixtures import random_crops, seeded_net, torch_threads
from _tiny_model import save_tiny_model
from cpcnn.model_export.export_onnx import export_onnx
from cpcnn.training.net import FeatureExtractor
from onnx import helper

from cpcnn import embedding
from cpcnn.embedding import Embedder
from cpcnn.manifest import ModelManifest
from cpcnn.model_store import StoredModel
from cpcnn.onnx_graph import GRAPH_REVISION, GRAPH_REVISION_KEY, MIN_SPLIT_PIXELS, pool_block

#: torch takes seconds to import; `pytest -m "not slow"` does not import this module.
pytestmark = pytest.mark.slow

#: Worst relative error of a pool over >= 256 pixels in the fast path (measured 2.6e-7 split, 1.3e-6
#: to 1.9e-6 as one GlobalAveragePool on the same network and crops).
POOL_RTOL = 6e-7


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> StoredModel:
    folder = tmp_path_factory.mktemp("onnx")
    manifest = ModelManifest(name="m", feature_size=672, source="m.pt")
    with torch_threads(1):
        path = export_onnx(FeatureExtractor(seeded_net(seed=7, num_classes=5)), folder / "m.onnx", manifest=manifest)
    return StoredModel(path, manifest)


@pytest.fixture
def older(exported: StoredModel, tmp_path: Path) -> StoredModel:
    """The same network as the exporter wrote it before: one GlobalAveragePool per block, no revision."""
    model = onnx.load(str(exported.onnx_path))
    producers = {out: node for node in model.graph.node for out in node.output}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "AveragePool":
            continue
        source = producers.get(node.input[0])
        if node.op_type == "GlobalAveragePool" and source is not None and source.op_type == "AveragePool":
            node = helper.make_node("GlobalAveragePool", [source.input[0]], list(node.output), name=node.name)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [p for p in model.metadata_props if p.key != GRAPH_REVISION_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "old.onnx"))
    return StoredModel(tmp_path / "old.onnx", exported.manifest)


@pytest.fixture
def crops() -> Iterator[np.ndarray]:
    """Random crops, two of them half zero-filled like border cells."""
    values = random_crops(4, seed=3).numpy().copy()
    values[:2, :64] = 0
    yield values


def pool_errors(model: onnx.ModelProto, crops: np.ndarray) -> list[tuple[int, float]]:
    """(pixels pooled, max |ORT - float64 mean| / max |float64 mean|) for each squeeze-excite pool,
    run with full optimization (the NCHWc layout), its input and output exposed."""
    producers = {out: node for node in model.graph.node for out in node.output}
    pairs = []
    for node in model.graph.node:
        if node.op_type == "GlobalAveragePool":
            source = producers.get(node.input[0])
            first = source.input[0] if source is not None and source.op_type == "AveragePool" else node.input[0]
            pairs.append((first, node.output[0]))
    for name in (name for pair in pairs for name in pair):
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"crops": crops})[1:]
    errors = []
    for activation, pooled in zip(outputs[::2], outputs[1::2], strict=True):
        exact = activation.astype(np.float64).mean(axis=(2, 3), keepdims=True)
        errors.append((activation.shape[2] * activation.shape[3], float(np.abs(pooled - exact).max() / np.abs(exact).max())))
    return errors


def test_pool_block_balances_the_two_stages() -> None:
    assert [pool_block(s, s) for s in (64, 32, 16, 8, 7)] == [8, 4, 4, 2, 1]
    assert pool_block(64, 48) == 4 and pool_block(13, 64) == 1


def test_export_splits_long_pools_and_marks_the_revision(exported: StoredModel) -> None:
    model = onnx.load(str(exported.onnx_path))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("AveragePool") == 5  # blocks 1a-4b pool 64x64, 32x32 (2) and 16x16 (2) maps
    assert ops.count("GlobalAveragePool") == 11
    props = {p.key: p.value for p in model.metadata_props}
    assert props[GRAPH_REVISION_KEY] == str(GRAPH_REVISION)


def test_fast_path_pools_are_accurate(exported: StoredModel, crops: np.ndarray) -> None:
    """The regression: one GlobalAveragePool over 64x64 in ONNX Runtime's NCHWc layout is a running
    float32 sum of 4,096 terms (1.3e-6 here, ~5e-5 on real border cells with a calibrated network)."""
    errors = pool_errors(onnx.load(str(exported.onnx_path)), crops)
    long_pools = [error for pixels, error in errors if pixels >= MIN_SPLIT_PIXELS]
    assert len(long_pools) == 5
    assert max(error for _, error in errors) <= POOL_RTOL, errors


def test_older_export_is_upgraded_in_memory(
    exported: StoredModel, older: StoredModel, crops: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    assert max(error for _, error in pool_errors(onnx.load(str(older.onnx_path)), crops)) > POOL_RTOL
    with caplog.at_level(logging.WARNING, logger="cpcnn.embedding"):
        upgraded = Embedder(older, device="cpu", threads=1).embed_crops(crops)
    assert "upgraded in memory" in caplog.text
    assert "cpcnn models import m.pt --name m --overwrite" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cpcnn.embedding"):
        current = Embedder(exported, device="cpu", threads=1).embed_crops(crops)
    assert not caplog.text
    assert np.array_equal(upgraded, current)


def test_older_export_without_onnx_runs_without_nchwc(
    exported: StoredModel,
    older: StoredModel,
    crops: np.ndarray,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(path: Path) -> bytes:
        raise ImportError("No module named 'onnx'")

    monkeypatch.setattr(embedding, "upgraded_model", missing)
    with caplog.at_level(logging.WARNING, logger="cpcnn.embedding"):
        fallback = Embedder(older, device="cpu", threads=1).embed_crops(crops)
    assert "without that layout" in caplog.text and "No module named 'onnx'" in caplog.text
    current = Embedder(exported, device="cpu", threads=1).embed_crops(crops)
    assert np.abs(fallback - current).max() <= 1e-5 * np.abs(current).max()


def test_unmarked_model_without_long_pools_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cpcnn.embedding"):
        Embedder(save_tiny_model(tmp_path), device="cpu", threads=1)
    assert not caplog.text
