"""A class score that comes out as ``[N,K,1,1]`` (a 1×1-convolution head) or ``[N,1,K]`` is taken as ``[N,K]``:
the same logits and gradients as the same classifier ending in an explicit Flatten."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxcam.core.errors import OnnxcamError
from onnxcam.exporter import add_gradients
from onnxcam.runtime import Explainer

K = 5


def classifier(tail: str) -> onnx.ModelProto:
    """Conv → Relu → GlobalAveragePool → 1×1 Conv to K classes, then ``tail``: "flatten" ([N,K], the
    reference), "conv" ([N,K,1,1] as it is), "row" ([N,1,K]) or "map" ([N,K,2,2], not a class score)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((K, 4, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["features"])]
    if tail == "map":
        nodes += [helper.make_node("MaxPool", ["features"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
                  helper.make_node("Conv", ["pooled", "w2"], ["y"])]
    else:
        nodes += [helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
                  helper.make_node("Conv", ["pooled", "w2"], ["head"])]
        if tail == "conv":
            nodes.append(helper.make_node("Identity", ["head"], ["y"]))
        elif tail == "flatten":
            nodes.append(helper.make_node("Flatten", ["head"], ["y"], axis=1))
        else:
            nodes += [helper.make_node("Flatten", ["head"], ["flat"], axis=1),
                      helper.make_node("Unsqueeze", ["flat", "axis1"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def outputs(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x, "class_index": np.full(len(x), -1, np.int64)})))


@pytest.mark.parametrize("tail", ["conv", "row"])
def test_unit_axes_of_the_score_are_flattened(tail):
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    reference = outputs(add_gradients(classifier("flatten"), activations="features"), x)
    got = outputs(add_gradients(classifier(tail), activations="features"), x)
    assert got["logits"].shape == (3, K)
    np.testing.assert_array_equal(got["logits"], reference["logits"])
    np.testing.assert_allclose(got["gradients"], reference["gradients"], rtol=1e-6, atol=1e-7)
    assert np.abs(got["gradients"]).max() > 0
    result = Explainer(classifier(tail), providers="cpu").explain(x, method="gradcam")
    assert result.cams.shape == (3, 8, 8) and result.logits.shape == (3, K)


def test_a_score_map_is_still_refused():
    with pytest.raises(OnnxcamError, match=r"expected logits of shape \[N, classes\], got \[None, 5, 2, 2\]"):
        add_gradients(classifier("map"), activations="features")
