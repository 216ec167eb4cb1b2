"""EfficientNet-B0 structure: block table, TensorFlow 'same' padding, parameter count, feature shapes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from _model_fixtures import random_crops, seeded_net, torch_threads
from cpcnn.training.arch import B0_BLOCKS, FEATURE_LAYERS, feature_width, tf_same_pads
from cpcnn.training.net import EfficientNetB0, FeatureExtractor, SameConv2d

#: torch takes seconds to import; `pytest -m "not slow"` does not import this module.
pytestmark = pytest.mark.slow

# efficientnet.tfkeras.EfficientNetB0(include_top=False, weights=None, input_shape=(128, 128, 5)) + pool5 +
# Dense(490): Keras count_params() = 4,677,830, of which 42,016 are BN moving means/variances.
KERAS_PARAMS_TOTAL = 4_677_830
KERAS_BN_MOVING_STATS = 42_016

# REFERENCE.md: (top, bottom) pads of the strided convolutions for a 128x128 input.
STRIDED_PADS_128 = {
    "stem_conv": (0, 1),
    "blocks.block2a.dwconv": (0, 1),
    "blocks.block3a.dwconv": (1, 2),
    "blocks.block4a.dwconv": (0, 1),
    "blocks.block6a.dwconv": (1, 2),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def test_block_table_matches_keras_names_and_widths() -> None:
    names = [b.name for b in B0_BLOCKS]
    assert names[:4] == ["block1a", "block2a", "block2b", "block3a"]
    assert len(names) == 16 and names[-1] == "block7a"
    by_name = {b.name: b for b in B0_BLOCKS}
    # SE width comes from the block *input* filters, as efficientnet 1.1.1 computes it.
    assert [by_name[n].se_ch for n in ("block1a", "block2a", "block2b", "block6a", "block7a")] == [
        8,
        4,
        6,
        28,
        48,
    ]
    assert not by_name["block1a"].has_expand and by_name["block2a"].has_expand
    assert by_name["block6a"].mid_ch == feature_width("block6a_activation") == 672
    assert feature_width("top_activation") == feature_width("pool5") == 1280


def test_parameter_count_matches_keras() -> None:
    net = EfficientNetB0(in_chans=5, num_classes=490)
    params = sum(p.numel() for p in net.parameters())
    moving = sum(
        b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var"))
    )
    assert moving == KERAS_BN_MOVING_STATS
    assert params + moving == KERAS_PARAMS_TOTAL


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [
        (128, 3, 2, (0, 1)),
        (32, 5, 2, (1, 2)),
        (8, 5, 2, (1, 2)),
        (7, 3, 2, (1, 1)),
        (7, 5, 2, (2, 2)),
        (16, 5, 1, (2, 2)),
    ],
)
def test_tf_same_pads(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> None:
    assert tf_same_pads(size, kernel, stride) == pads


def test_strided_convs_pad_like_tensorflow_at_128() -> None:
    net = EfficientNetB0(num_classes=0).eval()
    seen: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, module in net.named_modules():
        if isinstance(module, SameConv2d) and module.stride[0] == 2:

            def record(
                mod: torch.nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor, name: str = name
            ) -> None:
                (x,) = inputs
                seen[name] = tf_same_pads(x.shape[-2], mod.kernel_size[0], 2)
                # The module's output equals an explicit pad with the expected values and an unpadded conv.
                top, bottom = STRIDED_PADS_128[name]
                ref = F.conv2d(F.pad(x, (top, bottom, top, bottom)), mod.weight, None, 2, 0, 1, mod.groups)
                torch.testing.assert_close(out, ref, rtol=0, atol=0)

            hooks.append(module.register_forward_hook(record))
    with torch.no_grad():
        net.forward_features(torch.rand(1, 5, 128, 128), "top_activation")
    for hook in hooks:
        hook.remove()
    assert seen == STRIDED_PADS_128


def test_feature_shapes() -> None:
    net = seeded_net(num_classes=490)
    crops = random_crops(2).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert net.forward_features(crops).shape == (2, 672, 4, 4)
        assert net.embed(crops).shape == (2, 672)
        assert net.forward_features(crops, "top_activation").shape == (2, 1280, 4, 4)
        assert net.embed(crops, "pool5").shape == (2, 1280)
        assert net.forward_features(crops, "block1a_activation").shape == (2, 32, 64, 64)
        assert net(crops).shape == (2, 490)


def test_truncates_at_the_requested_layer() -> None:
    net = seeded_net()
    called: list[str] = []
    for name in ("blocks.block6a.se_reduce", "blocks.block6b.dwconv", "top_conv"):
        net.get_submodule(name).register_forward_hook(lambda *_, name=name: called.append(name))
    with torch.no_grad():
        net.embed(random_crops(1).permute(0, 3, 1, 2))
    assert called == []


def test_feature_extractor_takes_channels_last() -> None:
    net = seeded_net()
    crops = random_crops(3, seed=1)
    extractor = FeatureExtractor(net, "block6a_activation")
    with torch.no_grad():
        torch.testing.assert_close(extractor(crops), net.embed(crops.permute(0, 3, 1, 2)), rtol=0, atol=0)
    assert extractor.feature_size == 672


def test_bad_layer_and_headless_forward_are_refused() -> None:
    net = EfficientNetB0(num_classes=0)
    with pytest.raises(ValueError, match="unknown feature layer"):
        net.forward_features(torch.zeros(1, 5, 32, 32), "block9a_activation")
    with pytest.raises(ValueError, match="unknown feature layer"):
        FeatureExtractor(net, "block6a_bn")
    with pytest.raises(RuntimeError, match="no classification head"):
        net(torch.zeros(1, 5, 32, 32))
    assert "block6a_activation" in FEATURE_LAYERS


def test_drop_path_only_in_training() -> None:
    net = seeded_net()
    crops = random_crops(4).permute(0, 3, 1, 2)
    with torch.no_grad():
        first, second = net(crops), net(crops)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    net.train()
    logits = net(crops)
    logits.sum().backward()
    assert net.stem_conv.weight.grad is not None
