"""Where a CAM can look: the feature maps and token tensors on the path from the image to the class score, and
the default among them."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxcam.core.contract import ADAPTER
from onnxcam.core.graph_queries import ancestors, image_dependents, producers
from onnxcam.core.tensor_info import Shape, TensorInfo

#: Why the default layer is the default (``onnxcam layers`` and ``onnxcam info`` print it).
DEFAULT_RULE = "the last feature map before the head"


@dataclass(frozen=True)
class Candidate:
    """A possible target layer: the tensor's name, the op that makes it and its shape (None = batch)."""

    name: str
    op: str
    shape: Shape


def feeding(model: onnx.ModelProto, score: str) -> set[str]:
    """The tensors computed from the image that feed ``score``: never weights, Constant outputs or tensors
    computed from weights alone."""
    return ancestors(model.graph, score) & image_dependents(model.graph)


def candidates(model: onnx.ModelProto, info: TensorInfo, feeds_score: set[str]) -> list[Candidate]:
    """Every 4-D (spatial size > 1) or 3-D float tensor of ``feeds_score`` (:func:`feeding`), in graph order,
    except the outputs of onnxcam's adapter nodes."""
    graph = model.graph
    made_by = producers(graph)
    found = []
    for node in graph.node:
        for name in node.output:
            shape = info.shapes.get(name)
            if not (name in feeds_score and info.is_float(name) and shape and made_by[name] is node
                    and not node.name.startswith(ADAPTER)):
                continue
            if len(shape) == 3 or (len(shape) == 4 and (shape[2] or 0) * (shape[3] or 0) > 1):
                found.append(Candidate(name, node.op_type, shape))
    return found


def default_layer(found: list[Candidate]) -> str | None:
    """The default target: the last 4-D candidate (:data:`DEFAULT_RULE`), or None when there is none."""
    maps = [c.name for c in found if len(c.shape) == 4]
    return maps[-1] if maps else None
