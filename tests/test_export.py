"""ONNX export, ORT-vs-torch verification, import into the store, and the ``models`` commands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _model_fixtures import keras_tensors, random_crops, seeded_net, torch_threads, write_keras_h5
from cpcnn.model_export import cli as models_cli
from cpcnn.model_export.export_onnx import export_onnx, read_manifest
from cpcnn.model_export.importer import import_weights
from cpcnn.model_export.verify import cpu_session, verify_onnx
from cpcnn.training.checkpoint import save_checkpoint
from cpcnn.training.net import EfficientNetB0, FeatureExtractor

from cpcnn.errors import ConflictError, InputError, ModelImportError
from cpcnn.manifest import ONNX_METADATA_KEY, ModelManifest, sha256_file
from cpcnn.model_store import ModelStore

#: torch takes seconds to import; `pytest -m "not slow"` does not import this module.
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def net() -> EfficientNetB0:
    return seeded_net(seed=7, num_classes=5)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory, net: EfficientNetB0) -> Path:
    return write_keras_h5(tmp_path_factory.mktemp("h5") / "cnn.h5", keras_tensors(net))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, net: EfficientNetB0) -> Path:
    manifest = ModelManifest(name="m", feature_size=672, source_sha256="ab" * 32)
    return export_onnx(FeatureExtractor(net), tmp_path_factory.mktemp("onnx") / "m.onnx", manifest=manifest)


def test_export_contract(exported: Path) -> None:
    model = onnx.load(str(exported))
    onnx.checker.check_model(model)
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert (graph_input.name, dims) == ("crops", ["batch", 128, 128, 5])
    assert graph_output.name == "features"
    assert [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim] == ["batch", 672]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["feature_layer"] == "block6a_activation" and props["feature_size"] == "672"
    assert props["channels"] == "DNA,RNA,ER,AGP,Mito" and props["crop_size"] == "128"
    assert props["normalization"] == "minmax" and props["model_name"] == "m"
    assert props["source_sha256"] == "ab" * 32
    assert json.loads(props[ONNX_METADATA_KEY])["feature_size"] == 672
    assert read_manifest(exported).name == "m"


def test_ort_matches_torch_within_feature_scaled_tolerance(exported: Path, net: EfficientNetB0) -> None:
    results = verify_onnx(exported, FeatureExtractor(net), batch_sizes=(1, 7))
    assert [r.batch_size for r in results] == [1, 7]
    assert all(r.ok and r.max_abs_diff <= 1e-5 * max(1.0, r.feature_scale) for r in results)


def test_verify_reports_the_numbers_on_mismatch(exported: Path) -> None:
    other = FeatureExtractor(seeded_net(seed=8, num_classes=5))
    with pytest.raises(
        ModelImportError, match=r"ONNX export disagrees with torch: batch 1: max\|diff\| .* > .*scale"
    ):
        verify_onnx(exported, other, batch_sizes=(1,))


def test_import_keras_file_into_store(tmp_path: Path, keras_file: Path, net: EfficientNetB0) -> None:
    store = ModelStore(tmp_path / "models")
    stored = import_weights(keras_file, name="cnn1", store=store)
    manifest = stored.manifest
    assert (manifest.name, manifest.feature_size, manifest.source) == ("cnn1", 672, "cnn.h5")
    assert manifest.source_sha256 == sha256_file(keras_file)
    assert manifest.onnx_sha256 == sha256_file(stored.onnx_path)
    assert manifest.normalization == "minmax" and manifest.notes["num_classes"] == 5
    assert store.get("cnn1").manifest == manifest
    crops = random_crops(3, seed=11)
    (features,) = cpu_session(stored.onnx_path).run(None, {"crops": crops.numpy()})
    with torch.no_grad():
        expected = net.embed(crops.permute(0, 3, 1, 2)).numpy()
    assert np.abs(features - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))
    with pytest.raises(ConflictError, match="already exists"):
        import_weights(keras_file, name="cnn1", store=store)


def test_import_checkpoint_keeps_its_normalization_and_other_layers(
    tmp_path: Path, net: EfficientNetB0
) -> None:
    checkpoint = save_checkpoint(tmp_path / "run.pt", net, normalization="minmax_paper")
    store = ModelStore(tmp_path / "models")
    stored = import_weights(checkpoint, name="mine", feature_layer="pool5", store=store)
    assert stored.manifest.normalization == "minmax_paper"
    assert (stored.manifest.feature_layer, stored.manifest.feature_size) == ("pool5", 1280)
    with pytest.raises(InputError, match="unknown feature layer"):
        import_weights(checkpoint, name="bad", feature_layer="block9z_activation", store=store)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cpcnn")
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_models_commands(
    tmp_path: Path, keras_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CPCNN_HOME", str(tmp_path))
    assert _run(["models", "list"]) == 0
    assert "no models" in capsys.readouterr().out
    assert _run(["models", "import", str(keras_file), "--name", "k", "--normalization", "minmax_paper"]) == 0
    assert "imported" in capsys.readouterr().out
    assert _run(["models", "list"]) == 0
    assert capsys.readouterr().out.startswith("k\tblock6a_activation\t672\tminmax_paper")
    assert _run(["models", "info", "k"]) == 0
    assert ModelManifest.from_json(capsys.readouterr().out).normalization == "minmax_paper"


def test_models_import_without_train_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    real_find_spec = models_cli.importlib.util.find_spec
    monkeypatch.setattr(
        models_cli.importlib.util,
        "find_spec",
        lambda name: None if name == "torch" else real_find_spec(name),
    )
    assert _run(["models", "import", str(tmp_path / "x.h5")]) == 1
    assert capsys.readouterr().err.strip() == models_cli.TRAIN_EXTRA_HINT
    assert "cpcnn[serve,train]" in models_cli.TRAIN_EXTRA_HINT


def test_exported_graph_has_pads_folded_into_convolutions(exported: Path) -> None:
    """TF 'same' pads live in Conv attributes: no Pad node, and SE squeezes are GlobalAveragePool."""
    ops = [node.op_type for node in onnx.load(str(exported)).graph.node]
    assert "Pad" not in ops
    assert ops.count("GlobalAveragePool") >= 10
    strided = [
        node for node in onnx.load(str(exported)).graph.node
        if node.op_type == "Conv" and any(a.name == "strides" and list(a.ints) == [2, 2] for a in node.attribute)
    ]
    pads = [next(list(a.ints) for a in node.attribute if a.name == "pads") for node in strided]
    assert [0, 0, 1, 1] in pads and [1, 1, 2, 2] in pads  # (top, left, bottom, right) as TensorFlow pads
