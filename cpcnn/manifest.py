"""The preprocessing contract that travels with every ONNX model.

A model is only usable if the caller crops, orders channels and normalizes exactly as it was trained;
the manifest says how, and it is written both into the ONNX metadata and beside the file.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cpcnn._types import CHANNELS, CROP_SIZE, FEATURE_LAYER, FEATURE_PREFIX, Normalization

#: Keys used in ONNX ``metadata_props``; values are strings there.
ONNX_METADATA_KEY = "cpcnn_manifest"


class ModelManifest(BaseModel):
    """What a model expects (input) and produces (output)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    feature_layer: str = FEATURE_LAYER
    feature_size: int = Field(gt=0)
    feature_prefix: str = FEATURE_PREFIX
    channels: tuple[str, ...] = CHANNELS
    crop_size: int = CROP_SIZE
    normalization: Normalization = "minmax"
    #: ONNX input tensor: (batch, crop, crop, channels) float32, normalized crops.
    input_name: str = "crops"
    input_layout: str = "NHWC"
    output_name: str = "features"
    source: str = ""
    source_sha256: str = ""
    onnx_sha256: str = ""
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    notes: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        return cls.model_validate(json.loads(text))


def sha256_file(path: Path, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB files need no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
