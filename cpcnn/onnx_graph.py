"""Keep ONNX Runtime's fast CPU path as accurate as the network it runs.

ONNX Runtime's NCHWc layout (``ORT_ENABLE_ALL``) computes ``GlobalAveragePool`` as one running float32
sum per channel over every pixel. Over the 64 x 64 maps of the first squeeze-excite blocks that sum
of 4,096 terms loses ~5e-5 of the pooled value, and a network with random or badly conditioned
weights (half zero-filled border crops) amplifies it to ~1e-3 of the features, 20x DeepProfiler's
own float32 error. Pooling in two exact stages, an ``AveragePool`` over b x b blocks then a
``GlobalAveragePool`` of the block means (b ~ the fourth root of the pixel count), gives the same
mean with sums of ~64 terms each, stays in the NCHWc layout and costs nothing measurable.

The exporter writes graphs pooled this way and marks them with :data:`GRAPH_REVISION_KEY`; an unmarked
model with long pools (exported before) is rewritten in memory when loaded (needs the ``onnx`` package).
``onnx`` is imported lazily: ``import cpcnn`` stays light.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: ONNX ``metadata_props`` key: the revision of the graph conventions a model was exported with.
GRAPH_REVISION_KEY = "cpcnn_graph_revision"
#: 2 = squeeze-excite pooling in two stages; models without the key are revision 1.
GRAPH_REVISION = 2
#: Pools over fewer pixels are accurate as they are (8 x 8 maps: ~2e-7).
MIN_SPLIT_PIXELS = 256


def graph_revision(metadata: dict[str, str]) -> int:
    """The graph revision recorded in a model's metadata (1 when absent or unreadable)."""
    try:
        return int(metadata.get(GRAPH_REVISION_KEY, "1"))
    except ValueError:
        return 1


def pool_block(height: int, width: int) -> int:
    """Side b of the first pooling stage for an (height, width) map: the largest common divisor
    of both sides with b*b <= sqrt(height*width), so both stages sum about equally many terms."""
    limit = math.isqrt(height * width)
    return max(b for b in range(1, min(height, width) + 1) if height % b == 0 and width % b == 0 and b * b <= limit)


def split_global_average_pools(model: onnx.ModelProto, *, min_pixels: int = MIN_SPLIT_PIXELS) -> int:
    """Rewrite each ``GlobalAveragePool`` over a static map of >= ``min_pixels`` pixels as
    ``AveragePool(b x b, stride b)`` + ``GlobalAveragePool`` (same mean, short sums); returns how many.

    Needs static spatial sizes (true of every cpcnn export); pools whose size shape inference cannot
    tell, or with no common divisor of the sides, are left as they are.
    """
    from onnx import helper, shape_inference

    inferred = shape_inference.infer_shapes(model)
    spatial: dict[str, tuple[int, int]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[2].HasField("dim_value") and dims[3].HasField("dim_value"):
            spatial[info.name] = (dims[2].dim_value, dims[3].dim_value)
    nodes = []
    split = 0
    for node in model.graph.node:
        height, width = spatial.get(node.input[0], (0, 0)) if node.op_type == "GlobalAveragePool" else (0, 0)
        block = pool_block(height, width) if height * width >= min_pixels else 1
        if block == 1:
            nodes.append(node)
            continue
        blocks = f"{node.output[0]}/block_means"
        nodes.append(
            helper.make_node(
                "AveragePool",
                [node.input[0]],
                [blocks],
                name=f"{node.name or node.output[0]}/blocks",
                kernel_shape=[block, block],
                strides=[block, block],
            )
        )
        nodes.append(helper.make_node("GlobalAveragePool", [blocks], list(node.output), name=node.name))
        split += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return split


def mark_revision(model: onnx.ModelProto) -> None:
    """Record :data:`GRAPH_REVISION` in ``metadata_props``, keeping every other entry."""
    for prop in model.metadata_props:
        if prop.key == GRAPH_REVISION_KEY:
            prop.value = str(GRAPH_REVISION)
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = GRAPH_REVISION_KEY, str(GRAPH_REVISION)


def upgraded_model(path: Path) -> bytes | None:
    """The unmarked model at ``path`` rewritten to :data:`GRAPH_REVISION` and serialized, or None when
    it has no pool to split (a graph that is not an older cpcnn export). The file is untouched."""
    import onnx

    model = onnx.load(str(path))
    if not split_global_average_pools(model):
        return None
    mark_revision(model)
    return model.SerializeToString()
