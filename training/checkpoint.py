"""cpcnn's own training checkpoint: a ``torch.save`` dict that says how to rebuild and feed the network.

Weights alone are not a model: the channel order and crop normalization used in training must travel
with them, so the importer can write a correct manifest without the user restating them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from cpcnn.training.net import EfficientNetB0

from cpcnn._types import CHANNELS, NORMALIZATIONS, Normalization
from cpcnn.errors import ModelImportError

#: Value of the ``format`` key; bump the suffix when the dict's meaning changes.
CHECKPOINT_FORMAT = "cpcnn-checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds, loaded and validated."""

    state_dict: dict[str, torch.Tensor]
    num_classes: int
    in_chans: int
    channels: tuple[str, ...] = CHANNELS
    normalization: Normalization = "minmax"
    config: dict[str, Any] = field(default_factory=dict)

    def build(self) -> EfficientNetB0:
        """The network with these weights loaded strictly, in eval mode."""
        net = EfficientNetB0(in_chans=self.in_chans, num_classes=self.num_classes)
        try:
            net.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())
            raise ModelImportError(f"checkpoint weights do not fit EfficientNet-B0: {detail}") from exc
        return net.eval()


def save_checkpoint(
    path: Path,
    net: EfficientNetB0,
    *,
    channels: tuple[str, ...] = CHANNELS,
    normalization: Normalization = "minmax",
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``net`` and its input contract; ``config`` (JSON-like) records how it was trained."""
    if len(channels) != net.in_chans:
        raise ValueError(f"{len(channels)} channel names for a network with {net.in_chans} input channels")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "num_classes": net.num_classes,
        "in_chans": net.in_chans,
        "channels": list(channels),
        "normalization": normalization,
        "config": dict(config or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; only tensors and plain data are unpickled."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises bare pickle/zip errors for foreign files
        raise ModelImportError(f"{path}: not a readable torch checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelImportError(
            f"{path}: not a cpcnn checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    normalization = payload.get("normalization", "minmax")
    if normalization not in NORMALIZATIONS:
        raise ModelImportError(f"{path}: unknown normalization {normalization!r}")
    return Checkpoint(
        state_dict=payload["state_dict"],
        num_classes=int(payload["num_classes"]),
        in_chans=int(payload["in_chans"]),
        channels=tuple(payload.get("channels", CHANNELS)),
        normalization=normalization,
        config=dict(payload.get("config", {})),
    )
