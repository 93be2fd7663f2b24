"""Where ONNX's shape inference leaves a spatial size open (a Pad whose amounts the graph computes from Shape at
run time, as TensorFlow-style "same" padding does), the classifier view learns it from one ONNX Runtime run:
the default layer, `onnxcam layers` and the gradient pass work on a CNN with a fixed input."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxcam.classifier.view import open_classifier
from onnxcam.core.tensor_info import TensorInfo
from onnxcam.exporter import add_gradients, candidate_layers


def same_padded_cnn() -> onnx.ModelProto:
    """x [N,3,15,15] → Pad (amounts from Shape: pad H and W up to a multiple of 4) → Conv 3×3 stride 2 → Relu
    → GlobalAveragePool → Flatten → Gemm to 3 classes."""
    rng = np.random.default_rng(0)
    consts = {"w": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
              "fc": rng.standard_normal((3, 6)).astype(np.float32),
              "hw": np.array([2, 3], np.int64), "four": np.array(4, np.int64), "zeros2": np.zeros(2, np.int64),
              "zero4": np.zeros(4, np.int64)}
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "hw"], ["size"]),
             helper.make_node("Mod", ["size", "four"], ["rest"]),
             helper.make_node("Sub", ["four", "rest"], ["short"]),
             helper.make_node("Mod", ["short", "four"], ["extra"]),  # 1 for 15
             helper.make_node("Concat", ["zeros2", "zeros2", "zeros2", "extra"], ["pads"], axis=0),
             helper.make_node("Pad", ["x", "pads"], ["padded"]),
             helper.make_node("Conv", ["padded", "w"], ["conv"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["features"]),
             helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "same_pad", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                ["N", 3, 15, 15])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_inference_really_stops_here():
    """The premise: ONNX's own inference does not know the feature map's height and width."""
    model = same_padded_cnn()
    shape = TensorInfo(model).shapes.get("features")
    assert shape is None or None in shape[2:]


def test_the_default_layer_comes_from_onnx_runtime_shapes():
    view = open_classifier(same_padded_cnn())
    assert view.default_layer == "features"
    assert view.info.shape("features") == (None, 6, 8, 8)
    rows = {r.name: r for r in candidate_layers(same_padded_cnn())}
    assert rows["features"].default and rows["features"].flows and rows["features"].shape == (None, 6, 8, 8)


def test_gradients_at_the_default_layer():
    augmented = add_gradients(same_padded_cnn())
    x = np.random.default_rng(2).standard_normal((2, 3, 15, 15)).astype(np.float32)
    session = ort.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, acts, grads = session.run(["logits", "activations", "gradients"],
                                      {"input": x, "class_index": np.array([0, 2])})
    fc = numpy_helper.to_array(next(i for i in same_padded_cnn().graph.initializer if i.name == "fc"))
    expected = np.broadcast_to(fc[[0, 2]][:, :, None, None] / 64, acts.shape)  # ∂ mean-pool·fc / ∂ features
    np.testing.assert_allclose(grads, expected, rtol=1e-6, atol=1e-8)
