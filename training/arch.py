"""EfficientNet-B0 as typed data, with the Keras layer names of ``efficientnet==1.1.1``.

The network is described once here so that the torch module, the Keras weight mapping and the tests all
agree on block order, widths and names; only ``training/net.py`` turns it into modules.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Literal

#: Keras ``BatchNormalization`` default epsilon, kept by efficientnet 1.1.1.
BN_EPS = 1e-3
#: Keras momentum 0.99 updates running stats by 1%; torch counts the other way.
BN_MOMENTUM = 0.01
#: Squeeze-excite width is ``int(block_input_filters * SE_RATIO)``, not a fraction of the expanded width.
SE_RATIO = 0.25
#: Stochastic depth rate of the last block; block ``i`` drops with ``DROP_CONNECT_RATE * i / n_blocks``.
DROP_CONNECT_RATE = 0.2
#: Classes of the CNN-1 weakly supervised task (DeepProfiler's ``ClassProb`` head).
CNN1_NUM_CLASSES = 490


@dataclass(frozen=True)
class Stage:
    """One row of the B0 table: ``repeats`` MBConv blocks, the first one strided."""

    block: Literal["ds", "ir"]  # "ds": no expansion conv (block1a); "ir": inverted residual
    repeats: int
    kernel: int
    stride: int
    expand: int
    out_ch: int


@dataclass(frozen=True)
class Block:
    """One MBConv block, fully resolved (input width, stride, SE width and Keras prefix)."""

    name: str  # Keras prefix without the trailing underscore, e.g. "block2b"
    index: int  # 0-based position among all blocks (drives the drop-connect rate)
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    expand: int
    se_ch: int

    @property
    def mid_ch(self) -> int:
        """Width of the depthwise conv and of ``{name}_activation``."""
        return self.in_ch * self.expand

    @property
    def has_expand(self) -> bool:
        return self.expand != 1

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch

    @property
    def activation(self) -> str:
        return f"{self.name}_activation"


STEM_CH = 32
TOP_CH = 1280

B0: tuple[Stage, ...] = (
    Stage("ds", 1, 3, 1, 1, 16),
    Stage("ir", 2, 3, 2, 6, 24),
    Stage("ir", 2, 5, 2, 6, 40),
    Stage("ir", 3, 3, 2, 6, 80),
    Stage("ir", 3, 5, 1, 6, 112),
    Stage("ir", 4, 5, 2, 6, 192),
    Stage("ir", 1, 3, 1, 6, 320),
)


def blocks(stages: tuple[Stage, ...] = B0, *, stem_ch: int = STEM_CH) -> tuple[Block, ...]:
    """Expand stages into blocks named as Keras does: ``block{stage}{a,b,c,...}``."""
    resolved: list[Block] = []
    in_ch = stem_ch
    for stage_idx, stage in enumerate(stages, start=1):
        for rep in range(stage.repeats):
            resolved.append(
                Block(
                    name=f"block{stage_idx}{string.ascii_lowercase[rep]}",
                    index=len(resolved),
                    in_ch=in_ch,
                    out_ch=stage.out_ch,
                    kernel=stage.kernel,
                    stride=stage.stride if rep == 0 else 1,
                    expand=stage.expand,
                    se_ch=max(1, int(in_ch * SE_RATIO)),
                )
            )
            in_ch = stage.out_ch
    return tuple(resolved)


B0_BLOCKS: tuple[Block, ...] = blocks()

#: Layers whose output ``forward_features`` can return, in network order.
FEATURE_LAYERS: tuple[str, ...] = ("stem_activation", *(b.activation for b in B0_BLOCKS), "top_activation")


def feature_width(layer: str) -> int:
    """Channels of a named activation (672 for ``block6a_activation``, 1280 for ``top_activation``/``pool5``)."""
    if layer == "stem_activation":
        return STEM_CH
    if layer in ("top_activation", "pool5"):
        return TOP_CH
    for block in B0_BLOCKS:
        if block.activation == layer:
            return block.mid_ch
    raise ValueError(f"unknown feature layer {layer!r}; choose one of {', '.join(FEATURE_LAYERS)} or pool5")


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) zero padding of TensorFlow ``padding='same'``; the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2
