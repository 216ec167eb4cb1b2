"""``FeatureExtractor`` -> ONNX file that carries its own preprocessing contract.

The graph takes ``crops`` (N, 128, 128, 5) float32, channels last and already normalized, and returns
``features`` (N, D); only the batch axis is dynamic. The manifest JSON is embedded in
``metadata_props`` so a bare ``.onnx`` file still says which channels, crop and normalization it needs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from cpcnn.model_export.simplify import simplify
from cpcnn.training.net import FeatureExtractor

from cpcnn.errors import InputError
from cpcnn.manifest import ONNX_METADATA_KEY, ModelManifest
from cpcnn.onnx_graph import mark_revision

#: Highest opset the TorchScript exporter of torch 2.x handles without onnxscript.
OPSET = 17


def manifest_metadata(manifest: ModelManifest) -> dict[str, str]:
    """ONNX ``metadata_props``: the whole manifest plus flat keys readable without parsing JSON."""
    return {
        ONNX_METADATA_KEY: manifest.model_dump_json(),
        "model_name": manifest.name,
        "feature_layer": manifest.feature_layer,
        "feature_size": str(manifest.feature_size),
        "channels": ",".join(manifest.channels),
        "crop_size": str(manifest.crop_size),
        "normalization": manifest.normalization,
        "source_sha256": manifest.source_sha256,
    }


def export_onnx(extractor: FeatureExtractor, path: Path, *, manifest: ModelManifest) -> Path:
    """Trace ``extractor`` to ``path`` (opset 17, dynamic batch), embed ``manifest`` and check the model."""
    if manifest.feature_size != extractor.feature_size:
        raise ValueError(
            f"manifest feature_size {manifest.feature_size} != network's {extractor.feature_size}"
        )
    extractor = extractor.eval()
    example = torch.zeros(2, manifest.crop_size, manifest.crop_size, len(manifest.channels))
    path = Path(path)
    with warnings.catch_warnings():
        # Spatial size is fixed by the manifest, so traced pad sizes are constants by design; the pad
        # index juggling the exporter leaves unfolded is folded by simplify() below.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        # The TorchScript exporter is deprecated but, unlike the dynamo one, needs no onnxscript.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        torch.onnx.export(
            extractor,
            (example,),
            str(path),
            input_names=[manifest.input_name],
            output_names=[manifest.output_name],
            dynamic_axes={manifest.input_name: {0: "batch"}, manifest.output_name: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = simplify(onnx.load(str(path)))
    model.doc_string = f"cpcnn {manifest.name}: {manifest.feature_layer} features ({manifest.feature_size})"
    onnx.helper.set_model_props(model, manifest_metadata(manifest))
    mark_revision(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def read_manifest(path: Path) -> ModelManifest:
    """The manifest embedded in an ONNX file by :func:`export_onnx`."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if ONNX_METADATA_KEY not in props:
        raise InputError(f"{path} has no embedded cpcnn manifest ({ONNX_METADATA_KEY!r} metadata)")
    return ModelManifest.from_json(props[ONNX_METADATA_KEY])
