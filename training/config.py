"""How a CNN-1 network is trained, as one validated value written next to every checkpoint.

Defaults are the paper's (Moshkov et al., DeepProfiler's EfficientNet plugin): SGD with Nesterov momentum
0.9, learning rate 0.005 without a schedule, batch 32, 30 epochs, L2 1e-5 on kernels. A run's folder
holds this as ``config.json`` so any checkpoint can be traced back to the settings that made it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cpcnn._types import CHANNELS, Normalization
from cpcnn.errors import InputError

SplitMode = Literal["cells", "plates"]
CacheDtype = Literal["uint8", "float16"]


class TrainConfig(BaseModel):
    """Everything that decides what a training run computes (not where it writes or how fast)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(
        default="Metadata_Treatment", min_length=1, description="index column holding the class"
    )
    channels: tuple[str, ...] = CHANNELS
    normalization: Normalization = "minmax"
    # Optimizer, as DeepProfiler's EfficientNet plugin builds it.
    lr: float = Field(default=0.005, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    batch_size: int = Field(default=32, ge=1)
    epochs: int = Field(default=30, ge=1)
    #: Keras ``l2(1e-5)`` adds ``1e-5 * sum(w**2)`` to the loss for conv and dense kernels (not
    #: depthwise kernels, biases or batch norm): the gradient is ``2e-5 * w`` (see ``loop.py``).
    l2: float = Field(default=1e-5, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    seed: int = 0
    # Data.
    split: SplitMode = "cells"
    #: leave-cells-out: share of every well's cells used for training (paper: about 60%).
    train_fraction: float = Field(default=0.6, gt=0, le=1)
    #: leave-plates-out: plates whose cells are only used for validation.
    holdout_plates: tuple[str, ...] = ()
    #: uint8 quantizes normalized crops to 1/255 (the paper trained on 8-bit crops); float16 keeps ~3 digits.
    cache_dtype: CacheDtype = "uint8"
    augment: bool = True
    #: Classes with fewer cells than this (after cropping) are left out (paper: 100).
    min_cells: int = Field(default=100, ge=1)
    #: Validate on at most this many cells (a fixed seeded subset); None validates on all.
    val_max_cells: int | None = Field(default=None, ge=1)
    #: ImageNet stem adaptation: rescale the repeated RGB filters by 3/in_chans (timm) or copy them as is
    #: (DeepProfiler's ``copy_pretrained_weights``).
    stem_rescale: bool = True
    imagenet_weights: str | None = None

    @model_validator(mode="after")
    def _split_is_complete(self) -> TrainConfig:
        if self.split == "plates" and not self.holdout_plates:
            raise ValueError("split 'plates' needs at least one holdout plate")
        if self.split == "cells" and self.holdout_plates:
            raise ValueError("holdout plates are only used with split 'plates'")
        if len(set(self.channels)) != len(self.channels) or not self.channels:
            raise ValueError(f"channels must be distinct and non-empty, got {self.channels}")
        return self


def make_config(**values: object) -> TrainConfig:
    """TrainConfig from loose values (CLI, JSON); a bad value is a one-line InputError, not a traceback."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise InputError(f"invalid training setting {where}: {first['msg']}") from exc


def write_config(config: TrainConfig, folder: Path) -> Path:
    """``folder/config.json``; rewritten on resume so it always shows the settings last used."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(config.model_dump_json(indent=2) + "\n")
    return path
