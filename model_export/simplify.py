"""Make the exported graph fast and accurate on ONNX Runtime.

The TorchScript exporter writes TensorFlow 'same' padding of strided convolutions as a ``Pad`` node
whose pad sizes come from a small index-arithmetic subgraph. ONNX Runtime neither folds that Pad into
the convolution nor runs it in its blocked (NCHWc) layout, so each one costs a copy plus two layout
reorders: about a third of CPU inference time. ONNX ``Conv`` takes asymmetric pads, so we fold the
constants (ONNX Runtime's basic, hardware-independent level) and move each zero Pad into its Conv.
Long global average pools are then split in two stages (:mod:`cpcnn.onnx_graph` says why): the only
change of value, and it brings ONNX Runtime's fast path to float32 torch's accuracy.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cpcnn.onnx_graph import mark_revision, split_global_average_pools


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant-fold with ONNX Runtime's basic level: standard ops only, portable to any provider."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="cpcnn-fold-") as tmp:
        source, folded = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(source))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(folded))


def fuse_pad_into_conv(model: onnx.ModelProto) -> int:
    """Fold zero-valued constant ``Pad`` nodes that feed only a 2-D ``Conv`` into its ``pads``; returns count."""
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {out.name for out in graph.output}
    fused = 0
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        users = consumers[pad.output[0]]
        if len(users) != 1 or users[0].op_type != "Conv" or pad.output[0] in graph_outputs:
            continue
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        if mode != b"constant" or pad.input[1] not in constants:
            continue
        if len(pad.input) > 2 and pad.input[2] and float(np.asarray(constants.get(pad.input[2], 1)).item()) != 0.0:
            continue
        pads = constants[pad.input[1]].astype(np.int64).tolist()
        if len(pads) != 8 or pads[0] or pads[1] or pads[4] or pads[5] or min(pads) < 0:
            continue
        conv = users[0]
        old = [a for a in conv.attribute if a.name == "pads"]
        top, left, bottom, right = list(old[0].ints) if old else [0, 0, 0, 0]
        if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in conv.attribute):
            continue
        for attribute in old:
            conv.attribute.remove(attribute)
        conv.attribute.append(
            helper.make_attribute("pads", [top + pads[2], left + pads[3], bottom + pads[6], right + pads[7]])
        )
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
        fused += 1
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return fused


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants, fuse pads, split long pools; metadata and doc string are kept, the revision marked."""
    props = {p.key: p.value for p in model.metadata_props}
    doc = model.doc_string
    simplified = fold_constants(model)
    fuse_pad_into_conv(simplified)
    split_global_average_pools(simplified)
    del simplified.metadata_props[:]
    onnx.helper.set_model_props(simplified, props)
    mark_revision(simplified)
    simplified.doc_string = doc
    return simplified
