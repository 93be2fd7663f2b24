"""``onnxcam layers``: the classifier view's candidate layers, each with whether gradients reach it."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxcam.autodiff.gradients import path_nodes
from onnxcam.autodiff.rules import RULES
from onnxcam.classifier.view import open_classifier
from onnxcam.core.tensor_info import Shape


@dataclass(frozen=True)
class LayerInfo:
    """One candidate: tensor name, producing op, shape (None = batch), whether gradients flow from the score
    to it (``blocker`` says why not), and whether it is the default (``reason`` says why) / an exported target."""

    name: str
    op: str
    shape: Shape
    flows: bool
    blocker: str
    default: bool
    target: bool
    reason: str = ""


def candidate_layers(model: onnx.ModelProto, *, input_size: tuple[int, int] | None = None,
                     input_layout: str | None = None) -> list[LayerInfo]:
    """Every candidate target layer of ``model`` (:func:`onnxcam.classifier.view.open_classifier`), in graph
    order, with the first op on its path to the score that has no gradient rule. ``input_size`` /
    ``input_layout`` as for add_gradients."""
    view = open_classifier(model, input_size=input_size, input_layout=input_layout)
    out = []
    for candidate in view.candidates:
        nodes, _ = path_nodes(view.model, view.info, candidate.name, view.score.tensor)
        missing = [n for n in nodes if n.op_type not in RULES]
        blocker = f"no rule for {missing[0].op_type} (node '{missing[0].name}')" if missing else ""
        default = candidate.name == view.default_layer
        out.append(LayerInfo(candidate.name, candidate.op, candidate.shape, not missing, blocker, default,
                             candidate.name in view.metadata.target_tensors, view.default_reason if default else ""))
    return out
