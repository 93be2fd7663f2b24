"""Gradients through quantized and float16 graphs (issue 18 items 1 and 2; docs/edge.md).

* straight-through: on a hand-built QDQ graph the gradient at the quantized tensor's float input equals the float
  graph's gradient at the dequantised values, times [qmin < q < qmax] — zero where the range clips;
* the three forms ONNX Runtime's quantizer writes (QDQ per tensor / per channel, QOperator, dynamic) of a small
  CNN: the forward logits are the quantized file's own, bit for bit, and the gradient at the last feature map
  agrees with the float32 model's;
* float16: the same CNN converted with onnxconverter-common (float32 I/O kept, and not) gives float32 outputs whose
  gradient matches the float32 model's within float16 precision.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.exporter import add_gradients

RNG = np.random.default_rng(7)


def _graph(nodes: list[onnx.NodeProto], inits: list[np.ndarray | onnx.TensorProto], shape: list[int],
           classes: int) -> onnx.ModelProto:
    tensors = [t if isinstance(t, onnx.TensorProto) else t for t in inits]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], classes])],
                              tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _head(feature: str, channels: int, classes: int, w: np.ndarray) -> tuple[list[onnx.NodeProto], list]:
    """feature → x² → GlobalAveragePool → Flatten → Gemm (nonlinear, so the gradient depends on the values)."""
    nodes = [helper.make_node("Mul", [feature, feature], ["sq"]),
             helper.make_node("GlobalAveragePool", ["sq"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w_head"], ["logits"], transB=1)]
    return nodes, [numpy_helper.from_array(w, "w_head")]


def _gradients(model: onnx.ModelProto, layer: str, x: np.ndarray, cls: int) -> tuple[np.ndarray, ...]:
    aug = add_gradients(model, activations=layer)
    sess = ort.InferenceSession(aug.SerializeToString(), providers=["CPUExecutionProvider"])
    return tuple(sess.run(["logits", "activations", "gradients"],
                          {"input": x, "class_index": np.full(len(x), cls, np.int64)}))


def test_straight_through_equals_float_gradient_at_dequantised_values_and_zero_where_clipped() -> None:
    c, classes, s, z = 4, 3, np.float32(0.05), np.uint8(128)
    w_conv = RNG.standard_normal((c, 2, 3, 3)).astype(np.float32)
    w_head = RNG.standard_normal((classes, c)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w_conv"], ["u"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["u", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"])]
    head, head_inits = _head("d", c, classes, w_head)
    inits = [numpy_helper.from_array(w_conv, "w_conv"), numpy_helper.from_array(np.array(s), "s"),
             numpy_helper.from_array(np.array(z), "z"), *head_inits]
    qdq = _graph(nodes + head, inits, [2, 2, 6, 6], classes)
    x = (RNG.standard_normal((2, 2, 6, 6)) * 3).astype(np.float32)  # |u| up to ~30: well past the ±6.4 range
    _, deployed, grad_u = _gradients(qdq, "u", x, 1)
    probe = onnx.ModelProto()
    probe.CopyFrom(qdq)
    probe.graph.output.append(helper.make_tensor_value_info("u", TensorProto.FLOAT, None))
    u = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(["u"], {"input": x})[0]

    # the float head's gradient at the dequantised values d, by hand
    r = np.round(u / s) + np.float32(z)
    inside = (r > 0) & (r < 255)
    d = ((np.clip(r, 0, 255) - np.float32(z)) * s).astype(np.float32)
    np.testing.assert_allclose(deployed, d, atol=1e-6)  # the activations output is the value the model goes on with
    expected = 2 * d * w_head[1][None, :, None, None] / (6 * 6)  # ∂/∂d of mean(d²)·w
    assert 0.1 < inside.mean() < 0.9, "the test must clip some values and keep others"
    assert np.all(grad_u[~inside] == 0)
    np.testing.assert_allclose(grad_u[inside], expected[inside], rtol=1e-4, atol=1e-6)


def _small_cnn(tmp_path) -> tuple[str, np.ndarray]:
    """conv-relu-conv-relu-GAP-gemm with seeded weights, and 8 calibration inputs (the same every call)."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.4
    w2 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2
    wh = rng.standard_normal((5, 16)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["feat"]),
             helper.make_node("GlobalAveragePool", ["feat"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "wh", "bh"], ["logits"], transB=1)]
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (w1, "w1"), (np.full(8, 0.1, np.float32), "b1"), (w2, "w2"), (np.zeros(16, np.float32), "b2"),
        (wh, "wh"), (np.zeros(5, np.float32), "bh")]]
    model = _graph(nodes, inits, ["N", 3, 16, 16], 5)
    path = str(tmp_path / "cnn.onnx")
    onnx.save(model, path)
    return path, rng.standard_normal((8, 3, 16, 16)).astype(np.float32)


class _Reader:
    def __init__(self, x: np.ndarray) -> None:
        self.items = iter([{"input": x[i:i + 1]} for i in range(len(x))])

    def get_next(self) -> dict | None:
        return next(self.items, None)


def _quantize(path: str, kind: str, calibration: np.ndarray, out: str) -> str:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if kind == "dynamic":
        quantize_dynamic(path, out, weight_type=QuantType.QInt8)
    else:
        quantize_static(path, out, _Reader(calibration), per_channel=kind == "qdq_channel",
                        quant_format=QuantFormat.QOperator if kind == "qoperator" else QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


@pytest.mark.parametrize("kind", ["qdq_tensor", "qdq_channel", "qoperator", "dynamic"])
def test_quantized_forms_keep_their_logits_and_follow_the_float_gradient(tmp_path, kind: str) -> None:
    path, calibration = _small_cnn(tmp_path)
    quantized = _quantize(path, kind, calibration, str(tmp_path / f"{kind}.onnx"))
    model = onnx.load(quantized)
    ops = {n.op_type for n in model.graph.node}
    expected_ops = {"qoperator": "QLinearConv", "dynamic": "ConvInteger"}.get(kind, "QuantizeLinear")
    assert expected_ops in ops
    x = RNG.standard_normal((3, 3, 16, 16)).astype(np.float32)
    own = ort.InferenceSession(quantized, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    aug = add_gradients(model)
    layer = onnx.load_from_string(aug.SerializeToString())
    sess = ort.InferenceSession(layer.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, acts, grads = sess.run(["logits", "activations", "gradients"],
                                   {"input": x, "class_index": np.full(3, 2, np.int64)})
    np.testing.assert_array_equal(logits, own)  # the deployed model's forward pass, bit for bit
    assert acts.dtype == grads.dtype == np.float32 and acts.shape == (3, 16, 8, 8)
    _, ref_acts, ref_grads = _gradients(onnx.load(path), "feat", x, 2)
    for a, b in [(acts, ref_acts), (grads, ref_grads)]:
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9
    assert np.abs(grads).max() > 0


@pytest.mark.parametrize("conversion", ["float16, float32 I/O", "float16 everywhere", "mixed precision"])
def test_float16_gradients_are_float32_and_match_the_float32_model(tmp_path, conversion: str) -> None:
    from onnxconverter_common import auto_mixed_precision, float16

    path, _ = _small_cnn(tmp_path)
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    if conversion == "mixed precision":  # onnxconverter-common's search for the ops float16 can take
        half = auto_mixed_precision.auto_convert_mixed_precision(onnx.load(path), {"input": x}, rtol=0.01,
                                                                 atol=0.01, keep_io_types=True)
        assert any(n.op_type == "Cast" for n in half.graph.node)
    else:
        half = float16.convert_float_to_float16(onnx.load(path), keep_io_types=conversion != "float16 everywhere")
    logits, acts, grads = _gradients(half, "feat", x, 4)
    _, ref_acts, ref_grads = _gradients(onnx.load(path), "feat", x, 4)
    assert logits.dtype == acts.dtype == grads.dtype == np.float32
    np.testing.assert_allclose(acts, ref_acts, atol=2e-2 * np.abs(ref_acts).max())
    np.testing.assert_allclose(grads, ref_grads, atol=2e-2 * np.abs(ref_grads).max())


def _export(model, path: str, size: int) -> str:
    import torch

    torch.onnx.export(model.eval(), torch.randn(1, 3, size, size), path, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    return path


def _maps_follow(float_path: str, other: str, x: np.ndarray) -> float:
    """Median Pearson of the Grad-CAM maps of ``other`` with the float32 file's, after checking that ``other``'s
    logits are its own ONNX Runtime logits (bit for bit for int8, within float16 precision for float16)."""
    from onnxcam.runtime import Explainer

    ref = Explainer(float_path, providers="cpu").explain_batch(x, None, np.full(len(x), -1, np.int64), method="gradcam")
    got = Explainer(other, providers="cpu").explain_batch(x, None, ref.class_index, method="gradcam")
    sess = ort.InferenceSession(other, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    own = sess.run(None, {inp.name: x.astype(np.float16) if "float16" in inp.type else x})[0].astype(np.float32)
    if "float16" in str(onnx.load(other).graph.node):
        np.testing.assert_allclose(got.logits, own, atol=np.abs(own).max() * 2.0**-7)
    else:
        np.testing.assert_array_equal(got.logits, own)
    return float(np.median([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(got.cams, ref.cams)]))


@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_int8_qdq_of_resnet18_and_a_vit(tmp_path, name: str) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    if name == "resnet18":
        import torchvision

        net, size = torchvision.models.resnet18(num_classes=10), 64
    else:
        import timm

        net, size = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10, depth=4), 64
    path = _export(net, str(tmp_path / f"{name}.onnx"), size)
    calibration = RNG.standard_normal((8, 3, size, size)).astype(np.float32)
    quantized = _quantize(path, "qdq_tensor", calibration, str(tmp_path / f"{name}.qdq.onnx"))
    pearson = _maps_follow(path, quantized, RNG.standard_normal((3, 3, size, size)).astype(np.float32))
    print(f"{name} int8 QDQ: Grad-CAM Pearson with float32 {pearson:.3f}")
    assert pearson >= 0.85


def test_float16_swin(tmp_path) -> None:
    pytest.importorskip("torch")
    import timm
    from onnxconverter_common import float16

    net = timm.create_model("swin_tiny_patch4_window7_224", img_size=112, num_classes=10, depths=(1, 1, 2, 1),
                            window_size=7)
    path = _export(net, str(tmp_path / "swin.onnx"), 112)
    half = str(tmp_path / "swin.fp16.onnx")
    onnx.save(float16.convert_float_to_float16(onnx.load(path), keep_io_types=True), half)
    pearson = _maps_follow(path, half, RNG.standard_normal((2, 3, 112, 112)).astype(np.float32))
    print(f"swin float16: Grad-CAM Pearson with float32 {pearson:.3f}")
    assert pearson >= 0.95


@pytest.mark.parametrize("kind", ["qdq_tensor", "qoperator"])
def test_a_class_score_beyond_the_calibrated_range_still_has_a_gradient(tmp_path, kind: str) -> None:
    """Inputs 6× the calibration's push the predicted logit past the output quantizer's range (it saturates);
    the score's own quantisation passes the gradient straight through, so the map is not all zero."""
    path, calibration = _small_cnn(tmp_path)
    model = onnx.load(_quantize(path, kind, calibration, str(tmp_path / f"{kind}.onnx")))
    x = calibration[:2] * 6
    sess = ort.InferenceSession(add_gradients(model).SerializeToString(), providers=["CPUExecutionProvider"])
    logits, grads = sess.run(["logits", "gradients"], {"input": x, "class_index": np.full(2, -1, np.int64)})
    assert np.all(logits.max(1) == logits.max()), "the predicted logits must sit at the top of the output range"
    assert np.all(np.abs(grads).reshape(2, -1).max(1) > 0)
