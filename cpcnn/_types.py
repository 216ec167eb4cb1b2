"""Array aliases and the constants every layer agrees on."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]

#: Cell Painting CNN-1 channel order (handbook and every paper config). Always map by name.
CHANNELS: tuple[str, ...] = ("DNA", "RNA", "ER", "AGP", "Mito")

#: Side of the square single-cell crop, in pixels, centred on the nucleus.
CROP_SIZE = 128

#: The layer whose spatially averaged output is the CNN-1 embedding.
FEATURE_LAYER = "block6a_activation"

#: Per-crop, per-channel intensity scaling before the network.
#: ``minmax``: DeepProfiler 0.5.1, ``(x - min) / (max - min + 1e-7)``.
#: ``minmax_paper``: releases v0.3.0-v0.5.0 used for the paper, ``(x - min) / max``.
Normalization = Literal["minmax", "minmax_paper"]
NORMALIZATIONS: tuple[str, ...] = ("minmax", "minmax_paper")

#: pycytominer's naming of deep feature columns: ``{Metadata_Model}_{i}``.
FEATURE_PREFIX = "efficientnet"

#: Evaluation conventions. ``copairs``: exact non-interpolated AP (as copairs computes it) and a
#: Haldane-Anscombe estimate for infinite odds ratios. ``paper``: the published evaluation code of
#: the CNN-1 paper (``cpcnn.metrics.paper``).
Convention = Literal["copairs", "paper"]
CONVENTIONS: tuple[str, ...] = ("copairs", "paper")
