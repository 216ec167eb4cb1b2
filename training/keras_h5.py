"""Keras HDF5 (DeepProfiler / CNN-1) -> torch ``EfficientNetB0`` state dict, read with h5py only.

Keras' own ``load_weights(by_name=True)`` silently skips what does not match; here every file tensor
must land on exactly one torch tensor and every torch tensor must be filled, or the import fails
with the full list. Two file layouts exist: ``save_weights`` (root attr ``layer_names``) and
``model.save`` (the same under a ``model_weights`` group); both store each tensor at
``<layer>/<weight_name>`` where the layer group's ``weight_names`` attr lists e.g. ``stem_conv/kernel:0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
from cpcnn.training.net import EfficientNetB0
from torch import nn

from cpcnn.errors import ModelImportError

Kind = Literal["conv", "depthwise", "dense", "vector"]

#: Accepted names of the classification head (DeepProfiler renames ``ClassProb`` before loading).
HEAD_NAMES: tuple[str, ...] = ("ClassProb", "classifier")
_BN_PARAMS = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
_UNIQUIFIED = re.compile(r"(.+)_\d+")


@dataclass(frozen=True)
class TensorSlot:
    """Where one torch tensor lives in a Keras file and how its axes are laid out there."""

    torch_key: str
    layer: str
    param: str
    kind: Kind

    @property
    def keras_name(self) -> str:
        return f"{self.layer}/{self.param}"


def _keras_layer(module_path: str) -> str:
    if module_path == "class_prob":
        return HEAD_NAMES[0]
    return module_path.removeprefix("blocks.").replace(".", "_")


def tensor_slots(net: nn.Module) -> dict[str, TensorSlot]:
    """Every tensor of ``net`` that Keras stores, keyed ``layer/param`` (BN step counters excluded)."""
    slots: dict[str, TensorSlot] = {}
    for key in net.state_dict():
        module_path, attr = key.rsplit(".", 1)
        if attr == "num_batches_tracked":
            continue
        module = net.get_submodule(module_path)
        kind: Kind = "vector"
        if isinstance(module, nn.BatchNorm2d):
            param = _BN_PARAMS[attr]
        elif isinstance(module, nn.Conv2d) and attr == "weight":
            kind = "depthwise" if module.groups > 1 else "conv"
            param = "depthwise_kernel" if module.groups > 1 else "kernel"
        elif isinstance(module, nn.Linear) and attr == "weight":
            kind, param = "dense", "kernel"
        elif attr == "bias":
            param = "bias"
        else:
            raise TypeError(f"no Keras equivalent for torch tensor {key}")
        slot = TensorSlot(key, _keras_layer(module_path), param, kind)
        slots[slot.keras_name] = slot
    return slots


def to_torch_layout(array: np.ndarray, kind: Kind) -> np.ndarray:
    """Keras axes -> torch axes: conv (kh,kw,in,out)->(out,in,kh,kw), depthwise (kh,kw,C,1)->(C,1,kh,kw)."""
    if kind == "conv":
        return array.transpose(3, 2, 0, 1)
    if kind == "depthwise":
        return array.transpose(2, 3, 0, 1)
    if kind == "dense":
        return array.T
    return array


def to_keras_layout(array: np.ndarray, kind: Kind) -> np.ndarray:
    """Inverse of :func:`to_torch_layout`, for writing Keras files from torch weights."""
    if kind == "conv":
        return array.transpose(2, 3, 1, 0)
    if kind == "depthwise":
        return array.transpose(2, 3, 0, 1)
    if kind == "dense":
        return array.T
    return array


@dataclass(frozen=True)
class FileTensor:
    """One tensor read from the file: where it was and the ``layer/param`` it claims to be."""

    path: str
    layer: str
    param: str
    array: np.ndarray


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _names(attr: object) -> list[str]:
    return [_text(v) for v in np.asarray(attr).ravel() if not isinstance(v, float | np.floating)]


def _weight_names(group: h5py.Group) -> list[str]:
    """Tensor paths inside a layer group: its ``weight_names`` attr, else every dataset below it."""
    if "weight_names" in group.attrs:
        return _names(group.attrs["weight_names"])
    found: list[str] = []
    group.visit(lambda name: found.append(name) if isinstance(group[name], h5py.Dataset) else None)
    return found


def _resolve_layer(group_name: str, weight_name: str, known: set[str]) -> str:
    """Layer a tensor belongs to: the group name for flat models, else the weight name's layer part.

    Graph-mode Keras may uniquify variable names (``stem_conv_1/kernel:0``) and nested models keep all
    sublayers in one group, so the group name wins when it is a known layer.
    """
    if group_name in known:
        return group_name
    parts = weight_name.split("/")
    candidate = parts[-2] if len(parts) >= 2 else group_name
    match = _UNIQUIFIED.fullmatch(candidate)
    if candidate not in known and match and match.group(1) in known:
        return match.group(1)
    return candidate


def read_keras_h5(path: Path, *, known_layers: set[str] | None = None) -> list[FileTensor]:
    """Every weight tensor of a Keras HDF5 file (either layout), in file order."""
    known = known_layers if known_layers is not None else set()
    tensors: list[FileTensor] = []
    try:
        with h5py.File(path, "r") as handle:
            root: h5py.Group = handle["model_weights"] if "model_weights" in handle else handle
            if "layer_names" in root.attrs:
                layer_names = _names(root.attrs["layer_names"])
            else:
                layer_names = [k for k in root if isinstance(root[k], h5py.Group)]
            for layer_name in layer_names:
                group = root[layer_name]
                for weight_name in _weight_names(group):
                    param = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
                    layer = _resolve_layer(layer_name, weight_name, known)
                    array = np.asarray(group[weight_name], dtype=np.float32)
                    tensors.append(FileTensor(f"{layer_name}/{weight_name}", layer, param, array))
    except (OSError, KeyError) as exc:
        raise ModelImportError(f"{path}: not a readable Keras HDF5 weights file ({exc})") from exc
    if not tensors:
        raise ModelImportError(f"{path}: HDF5 file holds no Keras layer weights")
    return tensors


def head_classes(tensors: list[FileTensor]) -> int:
    """Number of classes of the Dense head (0 when the file has none)."""
    kernels = [t for t in tensors if t.layer in HEAD_NAMES and t.param == "kernel"]
    if len(kernels) > 1:
        raise ModelImportError(
            f"file has more than one classification head: {', '.join(t.path for t in kernels)}"
        )
    return int(kernels[0].array.shape[-1]) if kernels else 0


def state_dict_from_keras(tensors: list[FileTensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Map file tensors onto ``net``'s state dict; raise listing every unmapped, missing or misshaped tensor."""
    slots = tensor_slots(net)
    expected = net.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    duplicated: list[str] = []
    misshaped: dict[str, str] = {}
    for tensor in tensors:
        layer = HEAD_NAMES[0] if tensor.layer in HEAD_NAMES else tensor.layer
        slot = slots.get(f"{layer}/{tensor.param}")
        if slot is None:
            unmapped.append(tensor.path)
        elif slot.torch_key in mapped or slot.torch_key in misshaped:
            duplicated.append(tensor.path)
        else:
            array = to_torch_layout(tensor.array, slot.kind)
            want = tuple(expected[slot.torch_key].shape)
            if array.shape == want:
                mapped[slot.torch_key] = torch.from_numpy(np.ascontiguousarray(array))
            else:
                keras_want = to_keras_layout(np.empty(want), slot.kind).shape
                misshaped[slot.torch_key] = f"{tensor.path} {tensor.array.shape} (expected {keras_want})"
    missing = [
        f"{s.keras_name} ({s.torch_key})"
        for s in slots.values()
        if s.torch_key not in mapped and s.torch_key not in misshaped
    ]
    problems = []
    if misshaped:
        problems.append(f"{len(misshaped)} tensors have the wrong shape: {', '.join(misshaped.values())}")
    if unmapped:
        problems.append(f"{len(unmapped)} file tensors match no network tensor: {', '.join(unmapped)}")
    if duplicated:
        problems.append(
            f"{len(duplicated)} file tensors fill an already filled tensor: {', '.join(duplicated)}"
        )
    if missing:
        problems.append(f"{len(missing)} network tensors are missing from the file: {', '.join(missing)}")
    if problems:
        raise ModelImportError("weights do not fit EfficientNet-B0 (CNN-1): " + "; ".join(problems))
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            mapped[key] = value.clone()
    return mapped


def load_keras_h5(path: Path, *, in_chans: int = 5) -> EfficientNetB0:
    """Build the network a Keras file describes (class count from its head) and load it strictly."""
    net = EfficientNetB0(in_chans=in_chans, num_classes=0)
    known = {slot.layer for slot in tensor_slots(net).values()} | set(HEAD_NAMES)
    tensors = read_keras_h5(path, known_layers=known)
    net = EfficientNetB0(in_chans=in_chans, num_classes=head_classes(tensors))
    net.load_state_dict(state_dict_from_keras(tensors, net), strict=True)
    return net.eval()
