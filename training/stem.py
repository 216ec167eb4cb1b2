"""ImageNet initialization for a 5-channel EfficientNet-B0: adapt the RGB stem, load the rest as is.

The paper starts CNN-1 from ImageNet weights with the stem filters repeated across the five channels.
Nothing is downloaded: the user passes a file, either the Keras HDF5 of EfficientNet-B0 ("notop" or
with its top; the ``efficientnet`` package's or ``keras.applications``') or a torch state dict (this
network's names, a cpcnn checkpoint, or timm ``tf_efficientnet_b0``, matched by position and shape).
Input channel ``i`` gets RGB filter ``i % 3``; with ``rescale`` the result is multiplied by
``3 / in_chans`` so the stem's response to a uniform input keeps its ImageNet scale (timm's
``adapt_input_conv``); DeepProfiler's ``copy_pretrained_weights`` copies without rescaling.
The classification head is never loaded: it starts from random init.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import torch
from cpcnn.training.checkpoint import CHECKPOINT_FORMAT
from cpcnn.training.keras_h5 import HEAD_NAMES, read_keras_h5, state_dict_from_keras, tensor_slots
from cpcnn.training.net import EfficientNetB0

from cpcnn.errors import ModelImportError

logger = logging.getLogger(__name__)

STEM_KEY = "stem_conv.weight"
#: Keras layers that are not part of this backbone and are dropped with a log line: ImageNet heads and
#: ``keras.applications``' in-model preprocessing (our crops are already scaled to [0, 1]).
KERAS_EXTRA_LAYERS = (*HEAD_NAMES, "probs", "predictions", "normalization", "rescaling")
#: Head tensors of torch state dicts (ours, timm's).
TORCH_HEAD_PREFIXES = ("class_prob.", "classifier.", "fc.", "head.")


def adapt_stem(weight: torch.Tensor, in_chans: int, *, rescale: bool = True) -> torch.Tensor:
    """(out, k, kh, kw) stem kernel -> (out, in_chans, kh, kw): input channel i copies filter i % k."""
    if weight.ndim != 4:
        raise ValueError(f"stem kernel must be (out, in, kh, kw), got shape {tuple(weight.shape)}")
    have = int(weight.shape[1])
    if have == in_chans:
        return weight.clone()
    adapted = weight[:, [i % have for i in range(in_chans)]].clone()
    if rescale:
        adapted *= have / in_chans
    return adapted


def load_imagenet(net: EfficientNetB0, path: Path, *, rescale: bool = True) -> list[str]:
    """Fill ``net``'s backbone (everything but the head) from ``path``; returns the log lines it wrote."""
    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"ImageNet weights file {path} does not exist")
    backbone = EfficientNetB0(in_chans=net.in_chans, num_classes=0)
    if h5py.is_hdf5(path):
        state, notes = _from_keras(path, backbone, rescale=rescale)
    else:
        state, notes = _from_torch(path, backbone, rescale=rescale)
    missing, unexpected = net.load_state_dict(state, strict=False)
    stray = [k for k in missing if not k.startswith("class_prob.")] + list(unexpected)
    if stray:
        raise ModelImportError(
            f"{path.name}: ImageNet weights left tensors unfilled or unused: {', '.join(stray[:8])}"
        )
    notes.append(
        f"loaded {len(state)} backbone tensors from {path.name}; the classification head starts random"
    )
    for line in notes:
        logger.info("ImageNet init: %s", line)
    return notes


def _stem_note(before: tuple[int, ...], in_chans: int, rescale: bool) -> str:
    have = before[1]
    if have == in_chans:
        return f"stem kernel already has {in_chans} input channels; loaded as is"
    cycle = ", ".join(f"{i}<-{i % have}" for i in range(in_chans))
    scale = f"scaled by {have}/{in_chans}" if rescale else "not rescaled"
    return f"stem kernel {before} -> {in_chans} input channels by repeating filters ({cycle}), {scale}"


def _from_keras(
    path: Path, backbone: EfficientNetB0, *, rescale: bool
) -> tuple[dict[str, torch.Tensor], list[str]]:
    known = {slot.layer for slot in tensor_slots(backbone).values()} | set(KERAS_EXTRA_LAYERS)
    tensors = read_keras_h5(path, known_layers=known)
    extra = [t for t in tensors if t.layer.startswith(KERAS_EXTRA_LAYERS)]
    kept = [t for t in tensors if not t.layer.startswith(KERAS_EXTRA_LAYERS)]
    notes = []
    if extra:
        layers = sorted({t.layer for t in extra})
        notes.append(f"ignored {len(extra)} tensors of layer(s) {', '.join(layers)} (head or preprocessing)")
    stems = [t for t in kept if t.layer == "stem_conv" and t.param == "kernel"]
    if len(stems) != 1:
        raise ModelImportError(f"{path.name}: expected one stem_conv/kernel, found {len(stems)}")
    stem = stems[0]
    before = tuple(int(d) for d in stem.array.shape)  # Keras (kh, kw, in, out)
    torch_layout = torch.from_numpy(np.ascontiguousarray(stem.array.transpose(3, 2, 0, 1)))
    adapted = adapt_stem(torch_layout, backbone.in_chans, rescale=rescale).numpy().transpose(2, 3, 1, 0)
    kept[kept.index(stem)] = type(stem)(stem.path, stem.layer, stem.param, np.ascontiguousarray(adapted))
    notes.append(_stem_note((before[3], before[2], before[0], before[1]), backbone.in_chans, rescale))
    return state_dict_from_keras(kept, backbone), notes


def _from_torch(
    path: Path, backbone: EfficientNetB0, *, rescale: bool
) -> tuple[dict[str, torch.Tensor], list[str]]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises bare pickle/zip errors for foreign files
        raise ModelImportError(
            f"{path.name}: neither a Keras HDF5 file nor a torch state dict ({type(exc).__name__})"
        ) from exc
    if isinstance(payload, dict) and (payload.get("format") == CHECKPOINT_FORMAT or "state_dict" in payload):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ModelImportError(f"{path.name}: not a state dict of tensors")
    theirs = {k: v for k, v in payload.items() if not k.startswith(TORCH_HEAD_PREFIXES)}
    ours = backbone.state_dict()
    notes = []
    required = {k for k in ours if not k.endswith("num_batches_tracked")}
    if required <= set(theirs):
        mapped = {k: theirs[k] for k in ours if k in theirs}
        notes.append("matched tensors by name")
    else:
        mapped = _by_position(theirs, ours, path)
        notes.append(f"names differ; matched {len(mapped)} tensors by position and shape")
    for key, value in ours.items():
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = value.clone()
    before = tuple(int(d) for d in mapped[STEM_KEY].shape)
    mapped[STEM_KEY] = adapt_stem(mapped[STEM_KEY], backbone.in_chans, rescale=rescale)
    notes.append(_stem_note(before, backbone.in_chans, rescale))
    bad = [k for k, v in ours.items() if tuple(mapped[k].shape) != tuple(v.shape)]
    if bad:
        raise ModelImportError(f"{path.name}: tensors have the wrong shape: {', '.join(bad[:8])}")
    return {k: v.to(ours[k].dtype) for k, v in mapped.items()}, notes


def _by_position(
    theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """Pair tensors in network order (timm and this network register them in the same order)."""
    their_items = [(k, v) for k, v in theirs.items() if not k.endswith("num_batches_tracked")]
    our_keys = [k for k in ours if not k.endswith("num_batches_tracked")]
    if len(their_items) != len(our_keys):
        raise ModelImportError(
            f"{path.name}: {len(their_items)} backbone tensors where EfficientNet-B0 has {len(our_keys)}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for key, (their_key, value) in zip(our_keys, their_items, strict=True):
        want = tuple(ours[key].shape)
        got = tuple(value.shape)
        fits = got == want or (key == STEM_KEY and got[:1] + got[2:] == want[:1] + want[2:])
        if not fits:
            raise ModelImportError(f"{path.name}: {their_key} {got} does not fit {key} {want}")
        mapped[key] = value
    return mapped
