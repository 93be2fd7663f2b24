"""Methods with extra passes through the model: Score-CAM and Ablation-CAM, by hand and against
pytorch-grad-cam 1.5.7; and several classes per image in one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from onnxcam.cams import METHODS, CAMContext
from onnxcam.core.errors import OnnxcamError

A = np.array([[[[1.0, 0.0], [0.0, 3.0]], [[2.0, 2.0], [0.0, 0.0]]]], np.float32)  # [1, 2, 2, 2]
X = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)  # a one-channel 2×2 "image"


@dataclass
class HandModel:
    """ModelAccess from plain functions (a hand-made model)."""

    score_fn: Any = None
    gradients_fn: Any = None
    head_fn: Any = None
    batch_size: int = 1

    def scores(self, batch, class_index):
        return self.score_fn(batch, class_index)

    def gradients_at(self, batch, class_index):
        return self.gradients_fn(batch, class_index)

    def head(self, activations, class_index):
        return self.head_fn(activations, class_index)


def context(scores=None, head=None) -> CAMContext:
    return CAMContext(A, np.zeros_like(A), X, np.array([0]), HandModel(scores, None, head, batch_size=1))


@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "smoothgradcampp"])
def test_methods_with_extra_passes_need_the_model(name):
    spec = METHODS[name]
    assert spec.uses_model
    with pytest.raises(OnnxcamError, match=f"^method '{name}' needs the model for its extra passes"):
        spec(A, np.zeros_like(A))
    with pytest.raises(OnnxcamError, match="needs the model"):
        spec.run(CAMContext(A, np.zeros_like(A), X, np.array([0])))


def test_batch_size_option_is_checked():
    for name in ("scorecam", "ablationcam"):
        with pytest.raises(OnnxcamError, match=f"{name} option batch_size must be a whole number >= 1, got 0"):
            METHODS[name].resolve({"batch_size": 0})
        with pytest.raises(OnnxcamError, match="batch_size"):
            METHODS[name].resolve({"batch_size": 2.5})
    with pytest.raises(OnnxcamError, match="samples must be a whole number >= 1"):
        METHODS["smoothgradcampp"].resolve({"samples": 0})
    with pytest.raises(OnnxcamError, match="'seed' must be a whole number, got 1.5"):
        METHODS["smoothgradcampp"].resolve({"seed": 1.5})


def test_scorecam_by_hand():
    calls = []

    def total(batch, cls):  # score = sum of the masked image
        calls.append(len(batch))
        return batch.sum(axis=(1, 2, 3))

    # masks (same size, so no upsampling): minmax(A_0) = [[1/3, 0], [0, 1]], minmax(A_1) = [[1, 1], [0, 0]]
    s0 = 1 / 3 * 1 + 4 * 1.0  # 4.3333
    s1 = 1 + 2  # 3
    w0, w1 = np.exp(s0) / (np.exp(s0) + np.exp(s1)), np.exp(s1) / (np.exp(s0) + np.exp(s1))
    expected = np.maximum(w0 * A[0, 0] + w1 * A[0, 1], 0)
    got = METHODS["scorecam"].run(context(scores=total))
    np.testing.assert_allclose(got[0], expected, rtol=1e-4)
    assert calls == [1, 1]  # batch_size=1: one masked image per pass


def test_scorecam_scores_constant_channels_once_with_the_zero_image():
    dead = np.concatenate([A, np.zeros_like(A), np.full_like(A, 2.0)], axis=1)  # channels 2, 3 zero; 4, 5 constant
    seen = []

    def total(batch, cls):  # score = sum of the masked image + 0.5
        seen.append(batch.copy())
        return batch.sum(axis=(1, 2, 3)) + 0.5

    ctx = CAMContext(dead, np.zeros_like(dead), X, np.array([0]), HandModel(total, batch_size=8))
    got = METHODS["scorecam"].run(ctx)
    assert [len(b) for b in seen] == [1, 2] and not seen[0].any()  # the zero image once, then the 2 live masks
    s = np.array([1 / 3 + 4, 3, 0, 0, 0, 0]) + 0.5  # constant channels: all-zero mask, score of the zero image
    w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    np.testing.assert_allclose(got[0], np.maximum(np.tensordot(w, dead[0], axes=1), 0), rtol=1e-5)


def test_ablationcam_by_hand():
    def head(acts, cls):  # score = 2·Σ A_0 + Σ A_1 + 1
        return 2 * acts[:, 0].sum(axis=(1, 2)) + acts[:, 1].sum(axis=(1, 2)) + 1

    y = 2 * 4 + 4 + 1  # 13
    w0, w1 = (y - (4 + 1)) / y, (y - (8 + 1)) / y  # channel 0 zeroed → 5, channel 1 zeroed → 9
    expected = np.maximum(w0 * A[0, 0] + w1 * A[0, 1], 0)
    np.testing.assert_allclose(METHODS["ablationcam"].run(context(head=head))[0], expected, rtol=1e-6)


def test_smoothgradcampp_averages_gradcampp_weights_over_noisy_passes():
    """Hand-made model: the gradients at x + noise are A·(1 + mean(noise)), so the weights are checkable."""
    from onnxcam.cams.methods.gradcampp import gradcampp_weights

    seen = []

    def gradients_at(batch, cls):
        seen.append(batch.copy())
        shift = (batch - X).mean(axis=(1, 2, 3))[:, None, None, None]
        return np.repeat(A, len(batch), axis=0), np.repeat(A, len(batch), axis=0) * (1 + shift) * 0.01

    ctx = CAMContext(A, np.zeros_like(A), X, np.array([0]), HandModel(gradients_fn=gradients_at, batch_size=2))
    got = METHODS["smoothgradcampp"].run(ctx, {"samples": 3, "sigma": 0.5, "seed": 1})
    noisy = np.concatenate(seen)
    assert len(noisy) == 3 and [len(b) for b in seen] == [2, 1]  # batched, 3 samples in all
    assert abs(float((noisy - X).std()) - 0.5) < 0.3 and not np.allclose(noisy[0], noisy[1])
    shifts = (noisy - X).mean(axis=(1, 2, 3))
    weights = np.mean([gradcampp_weights(A, A * (1 + s) * 0.01)[0] for s in shifts], axis=0)
    expected = np.maximum(np.tensordot(weights, A[0], axes=1), 0)
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)


torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
grad_cam = pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    from onnxcam.exporter import export_torch
    from onnxcam.runtime import Explainer

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    path = export_torch(model, tmp_path_factory.mktemp("r") / "r18.onnx", target_layer="layer4",
                        input_shape=(3, 64, 64))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    return model, Explainer(path, providers="cpu", batch_size=64), x


@pytest.mark.parametrize(("ours", "theirs"), [("scorecam", "ScoreCAM"), ("ablationcam", "AblationCAM")])
def test_matches_pytorch_grad_cam(resnet, ours, theirs):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, explainer, x = resnet
    classes = [3, 7]
    cam = getattr(grad_cam, theirs)(model=model, target_layers=[model.layer4])
    cam.batch_size = 64
    reference = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(c) for c in classes])
    got = explainer.explain(x, method=ours, class_index=classes).cams
    for a, b in zip(got, reference):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999


def test_several_classes_per_image_equal_single_calls(resnet):
    _, explainer, x = resnet
    classes = np.array([[1, 5, 9], [3, 3, 0]])
    for method in ("gradcam", "cfcam", "scorecam"):
        many = explainer.explain(x, method=method, class_index=classes)
        assert many.cams.shape == (2, 3, 64, 64) and many.class_index.tolist() == classes.tolist()
        for k in range(3):
            single = explainer.explain(x, method=method, class_index=classes[:, k])
            np.testing.assert_allclose(many.cams[:, k], single.cams, atol=1e-5)
