"""Explainer: providers, inputs in every form, raw outputs, and CAMs equal to the formula on those outputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from onnxcam.cams import finalise
from onnxcam.core.errors import OnnxcamError, ProviderError
from onnxcam.runtime import Explainer, overlay
from onnxcam.runtime.preprocess import load_image, model_view, normalise
from tests.conftest import has_cuda


@pytest.fixture(scope="module")
def explainer(tiny_model):
    return Explainer(tiny_model, providers="cpu")


def test_cpu_provider_and_metadata(explainer):
    assert explainer.providers == ["CPUExecutionProvider"]
    assert explainer.input_shape == (3, 32, 32) and explainer.num_classes == 3
    assert explainer.labels == ["circle", "square", "triangle"] and explainer.layer == "features"


@pytest.mark.skipif(has_cuda(), reason="this machine has CUDA")
def test_cuda_request_without_cuda_is_an_error(tiny_model):
    with pytest.raises(ProviderError, match="CUDA was requested"):
        Explainer(tiny_model, providers="cuda")
    assert Explainer(tiny_model, providers="auto").providers == ["CPUExecutionProvider"]


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda(), reason="needs ONNX Runtime's CUDA provider and a GPU")
def test_cuda_really_runs(tiny_model, images):
    explainer = Explainer(tiny_model, providers="cuda")
    assert explainer.session.get_providers()[0] == "CUDAExecutionProvider"
    gpu = explainer.explain(images, method="gradcam")
    cpu = Explainer(tiny_model, providers="cpu").explain(images, method="gradcam")
    np.testing.assert_allclose(gpu.cams, cpu.cams, atol=1e-3)


def test_paths_arrays_and_batches_agree(explainer, images):
    by_path = explainer.explain(images, method="gradcam")
    arrays = [load_image(p) for p in images]
    by_array = explainer.explain(arrays, method="gradcam")
    batch, views = explainer.preprocess(images)
    by_batch = explainer.explain(batch, method="gradcam")
    np.testing.assert_array_equal(by_path.cams, by_array.cams)
    np.testing.assert_array_equal(by_path.cams, by_batch.cams)
    assert by_batch.images is None and by_path.images.shape == (2, 32, 32, 3)
    assert by_path.cams.shape == (2, 32, 32) and by_path.cams.dtype == np.float32
    assert by_path.providers == ["CPUExecutionProvider"] and by_path.method == "gradcam"
    np.testing.assert_allclose(by_path.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert by_path.labels == [explainer.labels[i] for i in by_path.class_index]


def test_gradcam_equals_formula_on_raw_outputs(explainer, images):
    batch, _ = explainer.preprocess(images)
    for class_index in (None, 2):
        out = explainer.forward(batch, class_index)
        expected_class = out["logits"].argmax(1) if class_index is None else np.array([2, 2])
        result = explainer.explain(batch, method="gradcam", class_index=class_index)
        np.testing.assert_array_equal(result.class_index, expected_class)
        w = out["gradients"].mean(axis=(2, 3))
        raw = np.maximum(np.einsum("nc,nchw->nhw", w, out["activations"]), 0)
        np.testing.assert_allclose(result.cams, finalise(raw, (32, 32), "minmax"), atol=1e-6)


def test_class_index_changes_the_gradient(explainer, images):
    batch, _ = explainer.preprocess(images)
    g0, g1 = (explainer.forward(batch, c)["gradients"] for c in (0, 1))
    assert np.abs(g0 - g1).max() > 1e-3 * np.abs(g0).max()
    with pytest.raises(OnnxcamError, match="out of range"):
        explainer.forward(batch, 7)


def test_preprocessing_resize_then_centre_crop():
    image = np.zeros((300, 400, 3), np.uint8)
    image[:, 200:] = 255  # right half white
    spec = {"resize": 256, "crop": [224, 224], "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3}
    view = model_view(image, spec, (224, 224))
    resized = cv2.resize(image, (341, 256), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(view, resized[16:240, 58:282])
    x = normalise(view[None], spec)
    assert x.shape == (1, 3, 224, 224) and x.min() == -1.0 and x.max() == 1.0


def test_overlay():
    image = np.full((8, 8, 3), 100, np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0
    np.testing.assert_array_equal(overlay(image, cam, alpha=0.0), image)
    hot = overlay(image, np.ones((8, 8), np.float32), alpha=1.0)
    np.testing.assert_array_equal(hot[0, 0], [128, 0, 0])  # jet at 1.0 is dark red
    assert overlay(image, cam).shape == (8, 8, 3)
    with pytest.raises(OnnxcamError, match="unknown colormap"):
        overlay(image, cam, colormap="nope")
