"""The class score of a classifier whose output is a probability (Softmax, LogSoftmax or Sigmoid).

Grad-CAM and the other methods are defined on the class score — the input of the final Softmax — not on
the probability. When the model's output is made by a trailing Softmax / LogSoftmax / Sigmoid (possibly
behind Identity, Reshape, Flatten or Squeeze), the score is that node's input. A score with extra unit axes
(``[N,K,1,1]`` from a 1×1-convolution head, ``[N,1,K]``) is flattened to ``[N, K]`` by an adapter node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx
from onnx import helper

from onnxcam.core.contract import ADAPTER
from onnxcam.core.tensor_info import TensorInfo

#: Output kinds recorded in the metadata (``output_kind``) and what turns the score into probabilities.
OUTPUT_KINDS = {"Softmax": "softmax", "LogSoftmax": "log_softmax", "Sigmoid": "sigmoid"}
PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


@dataclass(frozen=True)
class Score:
    """``tensor``: the class-score tensor to differentiate; ``kind``: what the model's output was
    (``logits``, ``softmax``, ``log_softmax`` or ``sigmoid``); ``output``: the model's own output tensor."""

    tensor: str
    kind: str
    output: str


def find_score(model: onnx.ModelProto, output: str, info: TensorInfo) -> Score:
    """The pre-activation score behind ``output``; ``output`` itself when no Softmax/Sigmoid ends the model.

    A Softmax over another axis than the class axis is left alone (it is part of the model, not its head).
    """
    made_by = {o: n for n in model.graph.node for o in n.output if o}
    name = output
    while name in made_by and made_by[name].op_type in PASS_THROUGH:
        name = made_by[name].input[0]
    node = made_by.get(name)
    if node is None or node.op_type not in OUTPUT_KINDS:
        return Score(output, "logits", output)
    score = node.input[0]
    shape = info.shapes.get(score)
    if node.op_type != "Sigmoid":
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if shape is None or axis not in (-1, len(shape) - 1):
            return Score(output, "logits", output)
    if shape is None or any(d != 1 for d in shape[1:-1]):
        return Score(output, "logits", output)
    return Score(score, OUTPUT_KINDS[node.op_type], output)


def flatten_score(model: onnx.ModelProto, score: Score, info: TensorInfo) -> Score:
    """``score`` as an ``[N, K]`` tensor: a Flatten adapter node is added when it has unit axes — the input of a
    final Softmax over ``[N,1,K]``, or a class score that comes out as ``[N,K,1,1]`` (a 1×1-convolution head) or
    ``[N,1,K]``. Any other shape is left for the caller to refuse."""
    shape = info.shapes.get(score.tensor)
    if shape is None or len(shape) <= 2 or None in shape[1:] or sum(d != 1 for d in shape[1:]) > 1:
        return score
    flat = f"{ADAPTER}score"
    model.graph.node.append(helper.make_node("Flatten", [score.tensor], [flat], axis=1, name=f"{ADAPTER}score"))
    info.shapes[flat] = (None, math.prod(d for d in shape[1:] if d is not None))
    info.types[flat] = info.types.get(score.tensor, onnx.TensorProto.FLOAT)
    return Score(flat, score.kind, score.output)
