"""Test fixtures without a real network: a tiny ONNX model with CNN-1's contract, synthetic sites.

The model maps (N, 128, 128, 5) float32 NHWC crops to (N, 672) float32 features: the mean of each
channel times a fixed matrix, so results are deterministic and checkable by hand.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from cpcnn._types import CHANNELS, CROP_SIZE
from cpcnn.manifest import ModelManifest
from cpcnn.model_store import ModelStore, StoredModel

FEATURE_SIZE = 672


def tiny_weights() -> np.ndarray:
    """(5, 672) float32, fixed."""
    return np.random.default_rng(7).standard_normal((len(CHANNELS), FEATURE_SIZE)).astype(np.float32)


def tiny_onnx_bytes() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    crops = helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["N", CROP_SIZE, CROP_SIZE, len(CHANNELS)])
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURE_SIZE])
    weights = numpy_helper.from_array(tiny_weights(), name="W")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["crops"], ["pooled"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["pooled", "W"], ["features"]),
        ],
        "tiny_cnn1",
        [crops],
        [features],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def save_tiny_model(store_root: Path, name: str = "cnn1") -> StoredModel:
    """Write the tiny model into a store folder (tests point CPCNN_HOME or models_dir there)."""
    store_root.mkdir(parents=True, exist_ok=True)
    onnx_path = store_root / f".{name}-source.onnx"
    onnx_path.write_bytes(tiny_onnx_bytes())
    manifest = ModelManifest(name=name, feature_size=FEATURE_SIZE, source="tests/_tiny_model.py")
    stored = ModelStore(store_root).save(onnx_path, manifest, overwrite=True)
    onnx_path.unlink()
    return stored


def expected_features(crops: np.ndarray) -> np.ndarray:
    """What the tiny model computes, in numpy."""
    return crops.mean(axis=(1, 2)) @ tiny_weights()


def synthetic_site(
    *, size: int = 256, n_cells: int = 6, seed: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Five uint16 channels with bright round nuclei on DNA -> (channels, (N, 2) float64 centres)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    margin = 20
    grid = int(np.ceil(np.sqrt(n_cells)))
    step = (size - 2 * margin) / max(grid, 1)
    centers = np.array(
        [(margin + step * (i % grid + 0.5), margin + step * (i // grid + 0.5)) for i in range(n_cells)], np.float64
    )
    centers = np.round(centers + rng.uniform(-2, 2, centers.shape), 3)
    dna = np.full((size, size), 300.0)
    for x, y in centers:
        dna += 9000.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 6.0**2))
    channels = {"DNA": dna}
    for index, name in enumerate(CHANNELS[1:], start=1):
        channels[name] = 200.0 * index + rng.uniform(0, 800, (size, size)) + 0.3 * dna
    return {k: np.clip(v, 0, 65535).astype(np.uint16) for k, v in channels.items()}, centers


def tiff_bytes(plane: np.ndarray, *, compression: str | None = None) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, compression=compression)
    return buffer.getvalue()


def locations_csv(centers: np.ndarray) -> bytes:
    lines = ["Nuclei_Location_Center_X,Nuclei_Location_Center_Y"]
    lines += [f"{x:.3f},{y:.3f}" for x, y in centers]
    return ("\n".join(lines) + "\n").encode()


def slow_onnx_bytes(width: int = 48) -> bytes:
    """Like the tiny model but with two 3x3 convolutions first, so each cell costs real time (~10-50 ms
    on one core): long enough to kill a worker in the middle of a job."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    crops = helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["N", CROP_SIZE, CROP_SIZE, len(CHANNELS)])
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURE_SIZE])
    inits = [
        numpy_helper.from_array(rng.standard_normal((width, len(CHANNELS), 3, 3)).astype(np.float32) * 0.1, "K1"),
        numpy_helper.from_array(rng.standard_normal((width, width, 3, 3)).astype(np.float32) * 0.05, "K2"),
        numpy_helper.from_array(rng.standard_normal((width, FEATURE_SIZE)).astype(np.float32), "W"),
    ]
    nodes = [
        helper.make_node("Transpose", ["crops"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "K1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "K2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c2"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["features"]),
    ]
    graph = helper.make_graph(nodes, "slow_cnn1", [crops], [features], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def save_slow_model(store_root: Path, name: str = "slow", width: int = 48) -> StoredModel:
    store_root.mkdir(parents=True, exist_ok=True)
    onnx_path = store_root / f".{name}-source.onnx"
    onnx_path.write_bytes(slow_onnx_bytes(width))
    stored = ModelStore(store_root).save(onnx_path, ModelManifest(name=name, feature_size=FEATURE_SIZE), overwrite=True)
    onnx_path.unlink()
    return stored


def upload(site: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """httpx ``files=`` for a site fixture (channels + locations CSV), with extra or replaced parts."""
    files: dict[str, Any] = dict(site["files"])
    files["locations"] = ("nuclei.csv", site["locations"], "text/csv")
    files.update(extra)
    return files
