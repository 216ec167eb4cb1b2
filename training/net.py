"""EfficientNet-B0 in torch, numerically the network ``efficientnet==1.1.1`` builds in Keras.

Module names follow the Keras layer names (``blocks.block2a.dwconv`` is Keras ``block2a_dwconv``,
``stem_conv``, ``top_bn``, ``class_prob`` is ``ClassProb``), so importing Keras weights is a table,
not a search. Convolutions pad like TensorFlow ``'same'`` (extra pixel bottom/right when strided),
batch norm uses epsilon 1e-3, activations are swish.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from cpcnn.training.arch import (
    B0_BLOCKS,
    BN_EPS,
    BN_MOMENTUM,
    CNN1_NUM_CLASSES,
    DROP_CONNECT_RATE,
    FEATURE_LAYERS,
    STEM_CH,
    TOP_CH,
    Block,
    feature_width,
    tf_same_pads,
)
from torch import nn

from cpcnn._types import FEATURE_LAYER


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``padding='same'``, pads derived from the actual input size.

    Stride-1 convolutions with odd kernels pad symmetrically inside the conv; strided ones pad
    explicitly because TensorFlow puts the odd pixel bottom/right, which torch's padding cannot express.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, groups: int = 1, bias: bool = False
    ) -> None:
        self._explicit_pad = stride > 1 or kernel % 2 == 0
        super().__init__(
            in_ch,
            out_ch,
            kernel,
            stride=stride,
            padding=0 if self._explicit_pad else kernel // 2,
            groups=groups,
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._explicit_pad:
            # int(): spatial size is fixed per exported graph, so pads become constants.
            top, bottom = tf_same_pads(int(x.shape[-2]), self.kernel_size[0], self.stride[0])
            left, right = tf_same_pads(int(x.shape[-1]), self.kernel_size[1], self.stride[1])
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Keras ``FixedDropout(noise_shape=(N, 1, 1, 1))``: drop whole samples of the residual branch."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excite, as ``efficientnet.model.mb_conv_block``."""

    def __init__(self, spec: Block, *, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        self.drop_rate = drop_rate
        mid = spec.mid_ch
        if spec.has_expand:
            self.expand_conv = SameConv2d(spec.in_ch, mid, 1)
            self.expand_bn = _bn(mid)
        self.dwconv = SameConv2d(mid, mid, spec.kernel, stride=spec.stride, groups=mid)
        self.bn = _bn(mid)
        self.se_reduce = nn.Conv2d(mid, spec.se_ch, 1, bias=True)
        self.se_expand = nn.Conv2d(spec.se_ch, mid, 1, bias=True)
        self.project_conv = SameConv2d(mid, spec.out_ch, 1)
        self.project_bn = _bn(spec.out_ch)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """Output of Keras ``{block}_activation``: (expand) -> depthwise -> BN -> swish."""
        if self.spec.has_expand:
            x = F.silu(self.expand_bn(self.expand_conv(x)))
        return F.silu(self.bn(self.dwconv(x)))

    def finish(self, inputs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Squeeze-excite, projection and residual, given the block input and its activation."""
        # Global average pooling (not mean over dims) exports as GlobalAveragePool, which ONNX Runtime
        # runs in its blocked CPU layout; a ReduceMean would force two layout reorders per block. The
        # exporter splits the long ones in two stages, for accuracy there (cpcnn.onnx_graph).
        se = F.adaptive_avg_pool2d(act, 1)
        se = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(se))))
        x: torch.Tensor = self.project_bn(self.project_conv(act * se))
        if self.spec.has_skip:
            x = _drop_path(x, self.drop_rate, self.training) + inputs
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(x, self.activation(x))


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 for (N, in_chans, H, W) float32 crops; ``num_classes=0`` builds no head."""

    def __init__(self, *, in_chans: int = 5, num_classes: int = CNN1_NUM_CLASSES) -> None:
        super().__init__()
        if in_chans < 1 or num_classes < 0:
            raise ValueError(f"in_chans must be >= 1 and num_classes >= 0, got {in_chans}, {num_classes}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.stem_conv = SameConv2d(in_chans, STEM_CH, 3, stride=2)
        self.stem_bn = _bn(STEM_CH)
        n_blocks = len(B0_BLOCKS)
        self.blocks = nn.ModuleDict(
            {b.name: MBConv(b, drop_rate=DROP_CONNECT_RATE * b.index / n_blocks) for b in B0_BLOCKS}
        )
        self.top_conv = SameConv2d(B0_BLOCKS[-1].out_ch, TOP_CH, 1)
        self.top_bn = _bn(TOP_CH)
        self.class_prob = nn.Linear(TOP_CH, num_classes) if num_classes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras initializers: conv truncated-normal fan-out scale 2; dense Glorot-uniform; BN 1/0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                fan_out = kh * kw * module.out_channels // module.groups
                std = math.sqrt(2.0 / fan_out) / 0.87962566103423978  # truncation at 2 std shrinks variance
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor, layer: str = FEATURE_LAYER) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C, h, w) activation of a Keras layer; later blocks are not computed.

        ``layer`` is ``stem_activation``, any ``blockNx_activation`` or ``top_activation``.
        """
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"unknown feature layer {layer!r}; choose one of {', '.join(FEATURE_LAYERS)}")
        x = F.silu(self.stem_bn(self.stem_conv(x)))
        if layer == "stem_activation":
            return x
        for name, block in self.blocks.items():
            block = cast(MBConv, block)
            act = block.activation(x)
            if layer == f"{name}_activation":
                return act
            x = block.finish(x, act)
        return F.silu(self.top_bn(self.top_conv(x)))

    def embed(self, x: torch.Tensor, layer: str = FEATURE_LAYER) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C): the named activation averaged over space (``pool5`` = top)."""
        if layer == "pool5":
            layer = "top_activation"
        return self.forward_features(x, layer).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, num_classes) logits; Keras ``ClassProb`` adds the softmax."""
        if self.class_prob is None:
            raise RuntimeError("this network was built with num_classes=0 and has no classification head")
        logits: torch.Tensor = self.class_prob(self.embed(x, "pool5"))
        return logits


class FeatureExtractor(nn.Module):
    """Export wrapper: (N, H, W, C) float32 normalized crops, channels last -> (N, D) features."""

    def __init__(self, net: EfficientNetB0, layer: str = FEATURE_LAYER) -> None:
        super().__init__()
        self.feature_size = feature_width(layer)
        self.net = net
        self.layer = layer

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net.embed(crops.permute(0, 3, 1, 2), self.layer)
