"""Model test fixtures: seeded networks and Keras-layout HDF5 files written with h5py alone.

The writer mirrors what TensorFlow 2.15 / Keras 2.15 writes for DeepProfiler's model, observed on real
files: ``save_weights`` puts attrs ``backend``, ``keras_version`` and ``layer_names`` (all layers, weightless
ones included) on the root; ``model.save`` adds ``model_config`` on the root and moves the rest into a
``model_weights`` group. Each layer is a group with attr ``weight_names`` (``stem_conv/kernel:0``; an empty
float64 array for weightless layers) and each tensor sits at ``<layer>/<weight_name>``, i.e. in a nested
group named after the layer again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
from cpcnn.training.keras_h5 import tensor_slots, to_keras_layout
from cpcnn.training.net import EfficientNetB0


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch threads: tiny test batches gain nothing from threads, and idle OpenMP
    workers spinning on a busy 2-core machine make them many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seeded_net(*, seed: int = 0, num_classes: int = 7, in_chans: int = 5) -> EfficientNetB0:
    """A network with random weights and non-trivial BN statistics (defaults would hide BN mistakes)."""
    torch.manual_seed(seed)
    net = EfficientNetB0(in_chans=in_chans, num_classes=num_classes)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
    return net.eval()


def keras_tensors(net: EfficientNetB0, *, head: str = "ClassProb") -> dict[str, np.ndarray]:
    """``{"layer/param": array}`` in Keras axis order, in network order."""
    state = net.state_dict()
    out: dict[str, np.ndarray] = {}
    for slot in tensor_slots(net).values():
        layer = head if slot.layer == "ClassProb" else slot.layer
        out[f"{layer}/{slot.param}"] = to_keras_layout(state[slot.torch_key].numpy(), slot.kind)
    return out


def _layer_order(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """Layers in model order with the weightless ones Keras also lists (input, activations, pool5)."""
    order = ["input_1"]
    for key in tensors:
        layer = key.split("/")[0]
        if layer in order:
            continue
        if layer in ("ClassProb", "classifier") and "pool5" not in order:
            order.append("pool5")
        order.append(layer)
        if layer.endswith("_bn") and not layer.endswith(("_project_bn", "_expand_bn")):
            order.append(layer[: -len("bn")] + "activation")
    return order


def _strings(values: Iterable[str], *, text: bool) -> np.ndarray:
    items = list(values)
    if text:
        return np.array(items, dtype=h5py.string_dtype())
    width = max((len(v) for v in items), default=1)
    return np.array([v.encode() for v in items], dtype=f"S{width}")


def write_keras_h5(
    path: Path,
    tensors: Mapping[str, np.ndarray],
    *,
    layout: Literal["weights", "model"] = "weights",
    text_attrs: bool = True,
    variable_suffix: str = "",
) -> Path:
    """Write ``{"layer/param": array}`` as Keras would; ``text_attrs=False`` writes old-Keras byte strings.

    ``variable_suffix`` (e.g. ``"_1"``) imitates graph-mode variable names like ``stem_conv_1/kernel:0``.
    """
    by_layer: dict[str, list[tuple[str, np.ndarray]]] = {}
    for key, array in tensors.items():
        layer, param = key.split("/")
        by_layer.setdefault(layer, []).append((param, array))
    with h5py.File(path, "w") as handle:
        if layout == "model":
            handle.attrs["backend"] = "tensorflow"
            handle.attrs["keras_version"] = "2.15.0"
            handle.attrs["model_config"] = json.dumps(
                {"class_name": "Functional", "config": {"name": "model"}}
            )
            root = handle.create_group("model_weights")
        else:
            root = handle
        root.attrs["backend"] = "tensorflow"
        root.attrs["keras_version"] = "2.15.0"
        layers = _layer_order(tensors)
        root.attrs["layer_names"] = _strings(layers, text=text_attrs)
        for layer in layers:
            group = root.create_group(layer)
            weights = by_layer.get(layer, [])
            names = [f"{layer}{variable_suffix}/{param}:0" for param, _ in weights]
            group.attrs["weight_names"] = _strings(names, text=text_attrs) if names else np.array([], "f8")
            for name, (_, array) in zip(names, weights, strict=True):
                group.create_dataset(name, data=np.asarray(array, dtype=np.float32))
    return path


def write_nested_keras_h5(path: Path, tensors: Mapping[str, np.ndarray], *, model_name: str) -> Path:
    """A file whose backbone is one nested-model layer group holding every sublayer's tensors."""
    with h5py.File(path, "w") as handle:
        handle.attrs["backend"] = "tensorflow"
        handle.attrs["keras_version"] = "2.15.0"
        handle.attrs["layer_names"] = _strings(["input_1", model_name], text=True)
        handle.create_group("input_1").attrs["weight_names"] = np.array([], "f8")
        group = handle.create_group(model_name)
        names = [f"{key}:0" for key in tensors]
        group.attrs["weight_names"] = _strings(names, text=True)
        for name, array in zip(names, tensors.values(), strict=True):
            group.create_dataset(name, data=np.asarray(array, dtype=np.float32))
    return path


def random_crops(n: int, *, seed: int = 0, size: int = 128, channels: int = 5) -> torch.Tensor:
    """(n, size, size, channels) float32 in [0, 1), channels last like the ONNX input."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((n, size, size, channels), dtype=np.float32))
