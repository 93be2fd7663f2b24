"""The files edge boxes run, made from the real ImageNet EfficientNet-Lite0 with the tools people use
(``sample_models.edge_variants``: onnxslim, onnxconverter-common float16 both ways, ONNX Runtime's quantizer in
QDQ per tensor / per channel, QOperator and dynamic form), explained on the seven sample photographs.

Each variant: ``onnxcam explain`` runs on it; its Grad-CAM maps follow the float32 model's (Pearson, median over
the photographs, ≥ 0.95 for float files, ≥ 0.85 for int8); the logits onnxcam reports are the variant's own ONNX
Runtime logits (bit for bit, except float16: see ``test_float16_logits``); ``onnxcam embed --cam gradcam`` writes
a file that ONNX Runtime and OpenVINO run.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxcam.cli.main import main
from onnxcam.runtime import Explainer
from sample_models.edge_variants import KINDS, build, calibration_batches, plain_float32

INT8 = ("qdq_tensor", "qdq_channel", "qoperator", "dynamic")


@pytest.fixture(scope="module")
def variants(efficientnet, tmp_path_factory) -> dict[str, pathlib.Path]:
    folder = tmp_path_factory.mktemp("edge")
    _, source = efficientnet
    return {kind: build(kind, source, folder / f"{kind}.onnx") for kind in KINDS}


@pytest.fixture(scope="module")
def photos(efficientnet) -> np.ndarray:
    return np.concatenate(calibration_batches(plain_float32(efficientnet[1])))


@pytest.fixture(scope="module")
def reference(efficientnet, photos):
    return Explainer(efficientnet[1], providers="cpu").explain_batch(
        photos, None, np.full(len(photos), -1, np.int64), method="gradcam")


def _own_logits(path: pathlib.Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    feed = x.astype(np.float16) if inp.type == "tensor(float16)" else x
    return sess.run(None, {inp.name: feed})[0].astype(np.float32)


@pytest.mark.parametrize("kind", list(KINDS))
def test_variant_explains_like_the_float32_model(variants, photos, reference, kind: str) -> None:
    explanation = Explainer(variants[kind], providers="cpu").explain_batch(
        photos, None, reference.class_index, method="gradcam")
    pearson = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(explanation.cams, reference.cams)]
    floor = 0.85 if kind in INT8 else 0.95
    print(f"{kind}: Grad-CAM Pearson with float32, median {np.median(pearson):.3f}, min {np.min(pearson):.3f}")
    assert np.median(pearson) >= floor
    own = _own_logits(variants[kind], photos)
    assert (explanation.logits.argmax(1) == own.argmax(1)).all()
    if kind.startswith("fp16"):
        return  # test_float16_logits
    np.testing.assert_array_equal(explanation.logits, own)


@pytest.mark.parametrize("kind", ["fp16", "fp16_io"])
def test_float16_logits(variants, photos, kind: str) -> None:
    """float16 logits agree to float16 precision (2⁻⁷ of the largest logit, a few float16 steps), not bit for
    bit: ONNX Runtime's CPU provider runs most float16 ops in float32 and drops the float16 rounding between two
    of them unless another node reads the tensor in between; the gradient pass reads some, and its float32
    ``logits`` is a Cast that ONNX Runtime fuses away (docs/edge.md)."""
    explanation = Explainer(variants[kind], providers="cpu").explain_batch(
        photos, None, np.full(len(photos), -1, np.int64), method="gradcam")
    own = _own_logits(variants[kind], photos)
    bound = float(np.abs(own).max()) * 2.0**-7
    print(f"{kind}: largest logit difference {np.abs(explanation.logits - own).max():.3g}, bound {bound:.3g}")
    assert np.abs(explanation.logits - own).max() <= bound
    assert (explanation.logits.argmax(1) == own.argmax(1)).all()


def test_cli_explains_and_embeds_every_variant(variants, photos, tmp_path) -> None:
    import cv2
    import openvino as ov

    from sample_models.photos import photographs

    images = tmp_path / "photos"
    images.mkdir()
    for image, name in list(zip(*photographs()))[:2]:
        cv2.imwrite(str(images / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    core = ov.Core()
    for kind, path in variants.items():
        out = tmp_path / kind
        result = CliRunner().invoke(main, ["explain", str(path), str(images), "-o", str(out), "--method", "gradcam"])
        assert result.exit_code == 0, (kind, result.output)
        assert len(list(out.glob("*.npy"))) == 2
        embedded = tmp_path / f"{kind}.cam.onnx"
        result = CliRunner().invoke(main, ["embed", str(path), "--cam", "gradcam", "-o", str(embedded)])
        assert result.exit_code == 0, (kind, result.output)
        feeds = {"input": photos[:2], "class_index": np.array([-1, -1])}
        sess = ort.InferenceSession(str(embedded), providers=["CPUExecutionProvider"])
        cam = sess.run(["cam_gradcam"], feeds)[0]
        assert cam.shape == (2, 224, 224) and cam.dtype == np.float32 and np.isfinite(cam).all()
        if kind == "qoperator":  # OpenVINO does not read com.microsoft's QLinear ops, in the plain file either
            with pytest.raises(Exception, match="OpConversionFailure|not.*converted"):
                core.read_model(str(path))
            continue
        compiled = core.compile_model(str(embedded), "CPU")
        ov_cam = compiled(feeds)[compiled.output("cam_gradcam")]
        pearson = min(np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ov_cam, cam))
        print(f"{kind}: embedded Grad-CAM, OpenVINO vs ONNX Runtime Pearson {pearson:.3f}")
        assert pearson > (0.8 if kind in INT8 else 0.99)  # OpenVINO's int8 kernels round their own way


def test_variants_are_what_they_claim(variants) -> None:
    ops = {kind: {n.op_type for n in onnx.load(str(p)).graph.node} for kind, p in variants.items()}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops["qdq_tensor"] and "QLinearConv" in ops["qoperator"]
    assert "DynamicQuantizeLinear" in ops["dynamic"] and "ConvInteger" in ops["dynamic"]
    half = onnx.load(str(variants["fp16_io"])).graph.input[0].type.tensor_type.elem_type
    assert half == onnx.TensorProto.FLOAT16
