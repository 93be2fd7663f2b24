"""Where float32 can legitimately disagree: forward values within rounding of a kink (ReLU at 0, Clip
bounds, HardSwish at ±3, …) between the target layer and the logits.

Two correct float32 implementations (torch and ONNX Runtime sum in different orders) may put such a value on
different sides of the kink and so pass or block the gradient through it; parity checks use this to tell a
rounding flip from a wrong rule.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxcam.autodiff.gradients import path_nodes
from onnxcam.core.contract import strip_gradients
from onnxcam.core.graph_builder import set_ir_version
from onnxcam.core.graph_queries import attributes
from onnxcam.core.metadata import read_metadata
from onnxcam.core.ort import onnxruntime
from onnxcam.core.tensor_info import TensorInfo


def _kinks(node: onnx.NodeProto, info: TensorInfo) -> list[float]:
    """The input values at which ``node``'s derivative jumps."""
    op, a = node.op_type, attributes(node)
    if op in ("Relu", "LeakyRelu", "PRelu"):
        return [0.0]
    if op == "HardSwish":
        return [-3.0, 3.0]
    if op == "HardSigmoid":
        alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
        return [-beta / alpha, (1 - beta) / alpha]
    if op == "Clip":
        bounds = [a.get("min"), a.get("max")]
        for i, name in enumerate(node.input[1:3]):
            value = info.constant(name)
            bounds[i] = float(value) if value is not None else None
        return [b for b in bounds if b is not None]
    return []


def near_kink(model: onnx.ModelProto, batch: np.ndarray, relative: float = 1e-4) -> np.ndarray:
    """Per image of ``batch``: does a kink op between target layer and logits see a value within
    ``relative`` × (that tensor's largest magnitude) of its kink? Uses ONNX Runtime on the forward graph.

    1e-4 is a band, not a proof: a 25088-long float32 dot product (VGG's first linear layer) was seen to
    flip a ReLU at 3e-5 of its layer's scale. Callers count what is set aside, so a wrong rule, which fails
    every image, cannot hide behind it."""
    ort = onnxruntime()
    forward = strip_gradients(model)
    logits = forward.graph.output[0].name
    info = TensorInfo(forward)
    watched: dict[str, list[float]] = {}
    for target in read_metadata(model).target_tensors:
        nodes, _ = path_nodes(forward, info, target, logits)
        for node in nodes:
            kinks = _kinks(node, info)
            if kinks:
                watched.setdefault(node.input[0], []).extend(kinks)
    flags = np.zeros(len(batch), bool)
    if not watched:
        return flags
    del forward.graph.output[:]
    forward.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in watched)
    set_ir_version(forward)
    opts = ort.SessionOptions()  # the optimisation level parity checks run at
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(forward.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for kinks, values in zip(watched.values(), sess.run(list(watched), {"input": batch})):
        v = values.reshape(len(batch), -1).astype(np.float64)
        scale = np.abs(v).max(axis=1) + 1e-30
        distance = np.min([np.abs(v - k).min(axis=1) for k in kinks], axis=0)
        flags |= distance < relative * scale
    return flags
