"""Keras HDF5 and cpcnn checkpoint import: both HDF5 layouts, strict accounting of every tensor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from _model_fixtures import (
    keras_tensors,
    random_crops,
    seeded_net,
    torch_threads,
    write_keras_h5,
    write_nested_keras_h5,
)
from cpcnn.model_export.importer import detect_format
from cpcnn.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from cpcnn.training.keras_h5 import load_keras_h5, tensor_slots
from cpcnn.training.net import EfficientNetB0

from cpcnn.errors import InputError, ModelImportError

#: torch takes seconds to import; `pytest -m "not slow"` does not import this module.
pytestmark = pytest.mark.slow

KERAS_WEIGHT_TENSORS = 311  # REFERENCE.md: the CNN-1 Keras model has 311 weight tensors


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def net() -> EfficientNetB0:
    return seeded_net(seed=3, num_classes=11)


def _same_outputs(a: EfficientNetB0, b: EfficientNetB0) -> None:
    crops = random_crops(2, seed=5).permute(0, 3, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(a.embed(crops), b.embed(crops), rtol=0, atol=0)
        torch.testing.assert_close(a(crops), b(crops), rtol=0, atol=0)


def test_slot_table_covers_every_keras_tensor() -> None:
    slots = tensor_slots(EfficientNetB0(num_classes=490))
    assert len(slots) == KERAS_WEIGHT_TENSORS
    assert slots["block1a_dwconv/depthwise_kernel"].torch_key == "blocks.block1a.dwconv.weight"
    assert slots["stem_bn/moving_variance"].torch_key == "stem_bn.running_var"
    assert slots["ClassProb/kernel"].kind == "dense"


@pytest.mark.parametrize(
    ("layout", "head", "text_attrs"),
    [("weights", "ClassProb", True), ("model", "ClassProb", True), ("weights", "classifier", False)],
)
def test_round_trip_gives_identical_outputs(
    tmp_path: Path, net: EfficientNetB0, layout: str, head: str, text_attrs: bool
) -> None:
    path = write_keras_h5(
        tmp_path / "w.h5", keras_tensors(net, head=head), layout=layout, text_attrs=text_attrs
    )
    loaded = load_keras_h5(path)
    assert loaded.num_classes == 11 and not loaded.training
    _same_outputs(net, loaded)


def test_graph_mode_variable_names_and_nested_models(tmp_path: Path, net: EfficientNetB0) -> None:
    tensors = keras_tensors(net)
    _same_outputs(net, load_keras_h5(write_keras_h5(tmp_path / "a.h5", tensors, variable_suffix="_1")))
    _same_outputs(
        net, load_keras_h5(write_nested_keras_h5(tmp_path / "b.h5", tensors, model_name="efficientnet-b0"))
    )


def test_headless_file_builds_a_headless_network(tmp_path: Path, net: EfficientNetB0) -> None:
    tensors = {k: v for k, v in keras_tensors(net).items() if not k.startswith("ClassProb/")}
    loaded = load_keras_h5(write_keras_h5(tmp_path / "w.h5", tensors))
    assert loaded.num_classes == 0
    crops = random_crops(1).permute(0, 3, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(crops), net.embed(crops), rtol=0, atol=0)


def test_unmapped_and_missing_tensors_are_all_listed(tmp_path: Path, net: EfficientNetB0) -> None:
    tensors = keras_tensors(net)
    del tensors["block3b_se_expand/bias"]
    del tensors["top_bn/moving_mean"]
    tensors["block8a_dwconv/depthwise_kernel"] = np.zeros((3, 3, 8, 1), np.float32)
    tensors["stem_bn/renorm_mean"] = np.zeros(32, np.float32)
    with pytest.raises(ModelImportError) as info:
        load_keras_h5(write_keras_h5(tmp_path / "w.h5", tensors))
    message = str(info.value)
    assert "\n" not in message
    assert "2 file tensors match no network tensor" in message
    assert "block8a_dwconv/block8a_dwconv/depthwise_kernel:0" in message
    assert "stem_bn/stem_bn/renorm_mean:0" in message
    assert (
        "2 network tensors are missing from the file: block3b_se_expand/bias (blocks.block3b.se_expand.bias), "
        "top_bn/moving_mean (top_bn.running_mean)" in message
    )


def test_wrong_architecture_names_the_shapes(tmp_path: Path) -> None:
    rgb = seeded_net(in_chans=3, num_classes=4)
    with pytest.raises(
        ModelImportError, match=r"stem_conv/kernel:0 \(3, 3, 3, 32\) \(expected \(3, 3, 5, 32\)\)"
    ):
        load_keras_h5(write_keras_h5(tmp_path / "rgb.h5", keras_tensors(rgb)))


def test_two_heads_are_ambiguous(tmp_path: Path, net: EfficientNetB0) -> None:
    tensors = keras_tensors(net)
    tensors.update(
        {f"classifier/{k.split('/')[1]}": v for k, v in tensors.items() if k.startswith("ClassProb/")}
    )
    with pytest.raises(ModelImportError, match="more than one classification head"):
        load_keras_h5(write_keras_h5(tmp_path / "w.h5", tensors))


def test_checkpoint_round_trip(tmp_path: Path, net: EfficientNetB0) -> None:
    path = save_checkpoint(
        tmp_path / "ckpt.pt", net, normalization="minmax_paper", config={"lr": 0.005, "epochs": 30}
    )
    checkpoint = load_checkpoint(path)
    assert (checkpoint.num_classes, checkpoint.in_chans, checkpoint.normalization) == (11, 5, "minmax_paper")
    assert checkpoint.config == {"lr": 0.005, "epochs": 30}
    _same_outputs(net, checkpoint.build())
    assert detect_format(path) == "torch_checkpoint"


def test_foreign_and_broken_checkpoints_are_refused(tmp_path: Path, net: EfficientNetB0) -> None:
    torch.save({"model": net.state_dict()}, tmp_path / "foreign.pt")
    with pytest.raises(ModelImportError, match="not a cpcnn checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    state = dict(net.state_dict())
    del state["top_bn.running_var"]
    payload = {"format": CHECKPOINT_FORMAT, "state_dict": state, "num_classes": 11, "in_chans": 5}
    torch.save(payload, tmp_path / "partial.pt")
    with pytest.raises(ModelImportError, match="top_bn.running_var"):
        load_checkpoint(tmp_path / "partial.pt").build()


def test_detect_format(tmp_path: Path, net: EfficientNetB0) -> None:
    assert detect_format(write_keras_h5(tmp_path / "w.weights", keras_tensors(net))) == "keras_h5"
    (tmp_path / "notes.h5").write_text("not hdf5")
    with pytest.raises(ModelImportError, match="neither a Keras HDF5 file"):
        detect_format(tmp_path / "notes.h5")
    with pytest.raises(InputError, match="does not exist"):
        detect_format(tmp_path / "absent.h5")


def test_files_without_name_attrs_are_walked(tmp_path: Path, net: EfficientNetB0) -> None:
    path = write_keras_h5(tmp_path / "w.h5", keras_tensors(net))
    with h5py.File(path, "a") as handle:
        del handle.attrs["layer_names"]
        for layer in handle:
            del handle[layer].attrs["weight_names"]
    _same_outputs(net, load_keras_h5(path))
