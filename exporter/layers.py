"""Candidate target layers of a classifier: the 4-D feature maps on the path to the logits."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxcam.runtime.metadata import read_metadata

from .gradient_pass import ancestors, default_layer, producers, strip_gradients
from .graph import TensorInfo


@dataclass(frozen=True)
class LayerInfo:
    """One candidate: tensor name, producing op, shape (None = batch), default / current-target flags."""

    name: str
    op: str
    shape: tuple[int | None, ...]
    default: bool
    target: bool


def candidate_layers(model: onnx.ModelProto) -> list[LayerInfo]:
    """Every 4-D float tensor with spatial size > 1 that feeds the logits, in graph order."""
    meta = read_metadata(model)
    forward = strip_gradients(model)
    graph = forward.graph
    logits = graph.output[0].name
    info = TensorInfo(forward)
    feeds_logits = ancestors(graph, logits)
    default = default_layer(forward, logits)
    made_by = producers(graph)
    out = []
    for node in graph.node:
        for name in node.output:
            shape = info.shapes.get(name)
            if (name in feeds_logits and info.is_float(name) and shape and len(shape) == 4
                    and None not in shape[2:] and shape[2] * shape[3] > 1 and made_by[name] is node):
                out.append(LayerInfo(name, node.op_type, shape, name == default, name in meta.target_tensors))
    return out
