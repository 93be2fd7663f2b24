"""Candidate target layers of a classifier: the feature maps and token tensors on the path to the logits."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxcam.autodiff.gradients import default_layer, fix_model_input, path_nodes
from onnxcam.autodiff.rules import RULES
from onnxcam.core.contract import ADAPTER, strip_gradients
from onnxcam.core.graph_queries import ancestors, image_dependents, producers
from onnxcam.core.metadata import read_metadata
from onnxcam.core.tensor_info import TensorInfo


@dataclass(frozen=True)
class LayerInfo:
    """One candidate: tensor name, producing op, shape (None = batch), whether gradients flow from the logits
    to it (``blocker`` says why not), and whether it is the default / an exported target."""

    name: str
    op: str
    shape: tuple[int | None, ...]
    flows: bool
    blocker: str
    default: bool
    target: bool


def candidate_layers(model: onnx.ModelProto, *, input_size: tuple[int, int] | None = None,
                     input_layout: str | None = None) -> list[LayerInfo]:
    """Every 4-D (spatial size > 1) or 3-D float tensor computed from the image that feeds the logits, in
    graph order (never weights or Constant outputs). ``input_size`` / ``input_layout`` as for add_gradients."""
    meta = read_metadata(model)
    forward, _ = fix_model_input(strip_gradients(model), meta, input_size, input_layout)
    graph = forward.graph
    logits = graph.output[0].name
    info = TensorInfo(forward)
    feeds_logits = ancestors(graph, logits) & image_dependents(graph)
    try:
        default = default_layer(forward, logits, info)
    except Exception:  # noqa: BLE001 - no 4-D candidate: no default to mark
        default = None
    made_by = producers(graph)
    out = []
    for node in graph.node:
        for name in node.output:
            shape = info.shapes.get(name)
            if not (name in feeds_logits and info.is_float(name) and shape and made_by[name] is node
                    and not node.name.startswith(ADAPTER)):
                continue
            if not (len(shape) == 3 or (len(shape) == 4 and None not in shape[2:] and shape[2] * shape[3] > 1)):
                continue
            nodes, _ = path_nodes(forward, info, name, logits)
            missing = [n for n in nodes if n.op_type not in RULES]
            blocker = f"no rule for {missing[0].op_type} (node '{missing[0].name}')" if missing else ""
            out.append(LayerInfo(name, node.op_type, shape, not missing, blocker, name == default,
                                 name in meta.target_tensors))
    return out
