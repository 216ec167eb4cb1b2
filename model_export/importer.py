"""Weights file (Keras HDF5 or cpcnn checkpoint) -> verified ONNX model in the local store.

One entry point so the CLI, ``models fetch`` and scripts all go through the same strict load,
export and ORT-vs-torch check; nothing reaches the store unless all three pass.
"""

from __future__ import annotations

import logging
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

import h5py
from cpcnn.model_export.export_onnx import export_onnx
from cpcnn.model_export.verify import verify_onnx
from cpcnn.training.arch import feature_width
from cpcnn.training.checkpoint import load_checkpoint
from cpcnn.training.keras_h5 import load_keras_h5
from cpcnn.training.net import EfficientNetB0, FeatureExtractor

from cpcnn._types import CHANNELS, CROP_SIZE, FEATURE_LAYER, NORMALIZATIONS, Normalization
from cpcnn.errors import ConflictError, InputError, ModelImportError
from cpcnn.manifest import ModelManifest, sha256_file
from cpcnn.model_store import ModelStore, StoredModel, validate_model_name

logger = logging.getLogger(__name__)

SourceFormat = Literal["keras_h5", "torch_checkpoint"]


def detect_format(path: Path) -> SourceFormat:
    """Sniff the file's bytes (HDF5 signature, torch zip) rather than trusting its extension."""
    if not path.exists():
        raise InputError(f"weights file {path} does not exist")
    if not path.is_file():
        raise InputError(f"weights path {path} is not a file")
    if h5py.is_hdf5(path):
        return "keras_h5"
    if zipfile.is_zipfile(path):
        return "torch_checkpoint"
    raise ModelImportError(
        f"{path} is neither a Keras HDF5 file (.h5/.hdf5) nor a cpcnn torch checkpoint (.pt/.pth)"
    )


def _load(path: Path, fmt: SourceFormat) -> tuple[EfficientNetB0, tuple[str, ...], Normalization | None]:
    if fmt == "keras_h5":
        return load_keras_h5(path, in_chans=len(CHANNELS)), CHANNELS, None
    checkpoint = load_checkpoint(path)
    return checkpoint.build(), checkpoint.channels, checkpoint.normalization


def import_weights(
    path: Path,
    *,
    name: str,
    feature_layer: str = FEATURE_LAYER,
    normalization: Normalization | None = None,
    store: ModelStore | None = None,
    overwrite: bool = False,
) -> StoredModel:
    """Load weights strictly, export ``feature_layer`` features to ONNX, verify with ORT, store as ``name``.

    ``normalization`` defaults to the checkpoint's own, else ``minmax`` (DeepProfiler 0.5.1).
    """
    path = Path(path)
    validate_model_name(name)
    try:
        feature_size = feature_width(feature_layer)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if normalization is not None and normalization not in NORMALIZATIONS:
        raise InputError(
            f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}"
        )
    store = store if store is not None else ModelStore()
    if not overwrite and name in store.names():
        raise ConflictError(f"model {name!r} already exists in {store.root}; pass overwrite to replace it")
    fmt = detect_format(path)
    net, channels, own_normalization = _load(path, fmt)
    manifest = ModelManifest(
        name=name,
        feature_layer=feature_layer,
        feature_size=feature_size,
        channels=channels,
        crop_size=CROP_SIZE,
        normalization=normalization or own_normalization or "minmax",
        source=path.name,
        source_sha256=sha256_file(path),
        notes={"source_format": fmt, "num_classes": net.num_classes},
    )
    extractor = FeatureExtractor(net, feature_layer)
    with tempfile.TemporaryDirectory(prefix="cpcnn-export-") as tmp:
        onnx_path = export_onnx(extractor, Path(tmp) / "model.onnx", manifest=manifest)
        results = verify_onnx(onnx_path, extractor)
        stored = store.save(onnx_path, manifest, overwrite=overwrite)
    logger.info(
        "imported %s as %r (%s, %d features; ORT vs torch max|diff| %.2g)",
        path.name,
        name,
        feature_layer,
        feature_size,
        max(r.max_abs_diff for r in results),
    )
    return stored
