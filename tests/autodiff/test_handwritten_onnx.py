"""A classifier written directly with onnx.helper (no torch anywhere), at opsets 13, 17 and 21.

Its gradients are checked against central finite differences of a float64 numpy re-implementation of the
same head, and the pass must also work when ONNX shape inference gives up (shapes probed with ORT).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.core import tensor_info as graph_module
from onnxcam.core.errors import OnnxcamError, UnsupportedOpError
from onnxcam.exporter import add_gradients

RNG = np.random.default_rng(0)
W_CONV = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32)
SCALE = RNG.uniform(0.5, 1.5, (1, 6, 1, 1)).astype(np.float32)
W_FC = RNG.standard_normal((4, 6)).astype(np.float32)
B_FC = RNG.standard_normal(4).astype(np.float32)


def classifier(opset: int) -> onnx.ModelProto:
    """image → Conv → feat → Relu → Mul(scale) + feat → MaxPool 2×2 → ReduceMean(2,3) → Flatten → Gemm."""
    reduce_axes = {"axes": [2, 3]} if opset < 18 else {}
    reduce_inputs = ["pooled"] + (["axes"] if opset >= 18 else [])
    nodes = [
        helper.make_node("Conv", ["image", "w_conv"], ["feat"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["feat"], ["relu"], name="relu"),
        helper.make_node("Mul", ["relu", "scale"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "feat"], ["mixed"], name="residual"),
        helper.make_node("MaxPool", ["mixed"], ["pooled_map"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Identity", ["pooled_map"], ["pooled"], name="id"),
        helper.make_node("ReduceMean", reduce_inputs, ["mean"], keepdims=1, name="gap", **reduce_axes),
        helper.make_node("Flatten", ["mean"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w_fc", "b_fc"], ["scores"], transB=1, name="fc"),
    ]
    inits = [numpy_helper.from_array(W_CONV, "w_conv"), numpy_helper.from_array(SCALE, "scale"),
             numpy_helper.from_array(W_FC, "w_fc"), numpy_helper.from_array(B_FC, "b_fc"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, 8, 8])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 4])
    graph = helper.make_graph(nodes, "handwritten", [image], [scores], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hand")
    model.ir_version = 7 if opset < 15 else 8 if opset < 19 else 10
    return model


def head_numpy(feat: np.ndarray) -> np.ndarray:
    """The same head in float64 numpy: feat [C,8,8] → scores [4]."""
    mixed = np.maximum(feat, 0) * SCALE[0] + feat
    pooled = mixed.reshape(6, 4, 2, 4, 2).max(axis=(2, 4))
    return W_FC.astype(np.float64) @ pooled.mean(axis=(1, 2)) + B_FC


def finite_difference(feat: np.ndarray, cls: int, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(feat)
    for idx in np.ndindex(feat.shape):
        up, down = feat.copy(), feat.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (head_numpy(up)[cls] - head_numpy(down)[cls]) / (2 * eps)
    return grad


def run(model: onnx.ModelProto, x: np.ndarray, classes: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits", "activations", "gradients"], {"input": x, "class_index": classes})


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_gradients_match_finite_differences(opset):
    model = add_gradients(classifier(opset), activations="feat")
    assert [o.name for o in model.graph.output] == ["logits", "activations", "gradients"]
    for seed in (1, 2):  # two different inputs
        x = np.random.default_rng(seed).standard_normal((2, 3, 8, 8)).astype(np.float32)
        logits, feat, grad = run(model, x, np.array([-1, 2]))
        for i, cls in enumerate([int(logits[0].argmax()), 2]):
            expected = finite_difference(feat[i].astype(np.float64), cls)
            np.testing.assert_allclose(grad[i], expected, atol=1e-6 * np.abs(expected).max() + 1e-7, rtol=1e-4)


def test_shape_inference_failure_falls_back_to_probing(monkeypatch):
    def refuse(*args, **kwargs):
        raise onnx.shape_inference.InferenceError("shape inference is off in this test")

    monkeypatch.setattr(graph_module.onnx.shape_inference, "infer_shapes", refuse)
    model = add_gradients(classifier(17), activations="feat")
    x = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
    logits, feat, grad = run(model, x, np.array([0, 1, 3]))
    np.testing.assert_allclose(grad[1], finite_difference(feat[1].astype(np.float64), 1), atol=1e-6)


def test_dynamic_spatial_size_asks_for_input_size():
    model = classifier(17)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    with pytest.raises(OnnxcamError, match=r"'image' \[N,3,\?,\?\] has a dynamic image size; pass --input-size") as err:
        add_gradients(model, activations="feat")
    assert "re-export" not in str(err.value)
    fixed = add_gradients(model, activations="feat", input_size=(8, 8))
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    _, feat, grad = run(fixed, x, np.array([1]))
    np.testing.assert_allclose(grad[0], finite_difference(feat[0].astype(np.float64), 1), atol=1e-6)


def test_missing_rule_and_unreachable_layer_are_precise_errors():
    model = classifier(17)
    model.graph.node[1].op_type = "Hardmax"  # relu → hardmax: no rule
    with pytest.raises(UnsupportedOpError, match=r"no gradient rule for op Hardmax \(node 'relu'\).*pick a target"):
        add_gradients(model, activations="feat")
    side = classifier(17)
    side.graph.node.append(helper.make_node("Relu", ["feat"], ["dead_end"], name="unused"))
    with pytest.raises(OnnxcamError, match="layer 'dead_end' does not reach the logits; pick a layer before"):
        add_gradients(side, activations="dead_end")


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_opset9_upsample_keeps_its_sampling_through_the_opset_upgrade(mode):
    """onnx's converter turns Upsample-9 into a half-pixel Resize; the pass must keep the model's own function."""
    nodes = [helper.make_node("Conv", ["image", "w_conv"], ["feat"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Upsample", ["feat", "scales"], ["up"], mode=mode, name="up"),
             helper.make_node("GlobalAveragePool", ["up"], ["pool"], name="gap"),
             helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "w_fc", "b_fc"], ["scores"], transB=1, name="fc")]
    w_up = np.array([1, 1, 2, 1.5], np.float32)
    inits = [numpy_helper.from_array(W_CONV, "w_conv"), numpy_helper.from_array(w_up, "scales"),
             numpy_helper.from_array(W_FC, "w_fc"), numpy_helper.from_array(B_FC, "b_fc")]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 4])], inits)
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    old.ir_version = 4
    x = np.random.default_rng(9).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(old.SerializeToString(), providers=["CPUExecutionProvider"]).run(None,
                                                                                                   {"image": x})[0]
    logits, _, _ = run(add_gradients(old, activations="feat"), x, np.array([-1, 1]))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_recurrent_op_on_the_path_is_an_error_naming_the_node():
    """LSTM (like Loop, If and Scan) has no rule: the pass refuses and names it, never a silent zero."""
    hidden = 5
    nodes = [helper.make_node("Conv", ["image", "w_conv"], ["feat"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("GlobalAveragePool", ["feat"], ["pool"], name="gap"),
             helper.make_node("Reshape", ["pool", "seq_shape"], ["seq"], name="to_sequence"),
             helper.make_node("LSTM", ["seq", "w_lstm", "r_lstm"], ["y"], hidden_size=hidden, name="the_lstm"),
             helper.make_node("Reshape", ["y", "flat_shape"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "w_head"], ["scores"], transB=1, name="fc")]
    inits = [numpy_helper.from_array(W_CONV, "w_conv"),
             numpy_helper.from_array(np.array([-1, 1, 6], np.int64), "seq_shape"),
             numpy_helper.from_array(RNG.standard_normal((1, 4 * hidden, 6)).astype(np.float32), "w_lstm"),
             numpy_helper.from_array(RNG.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "r_lstm"),
             numpy_helper.from_array(np.array([-1, hidden], np.int64), "flat_shape"),
             numpy_helper.from_array(RNG.standard_normal((4, hidden)).astype(np.float32), "w_head")]
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(UnsupportedOpError, match=r"no gradient rule for op LSTM \(node 'the_lstm'\)"):
        add_gradients(model, activations="feat")
