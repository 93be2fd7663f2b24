"""Gradient parity, ONNX Runtime (BASIC) against torch.autograd.grad, on real architectures.

Two different inputs at batch 1 and at batch 3 (an export that froze the gradient would match only one),
relative error max|ort − torch| / max|torch| ≤ 1e-4 on logits, activations and gradients. Where the float32
torch reference is over the tolerance, ``check_parity`` compares against float64 torch instead: in float32,
torch itself flips a ReLU6 mask on mobilenet_v2 (its float32 gradients are 1.8e-4 away from float64 on one
input here, while ORT's are 8e-7 away).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from onnxcam.exporter import export_torch  # noqa: E402
from onnxcam.frontends.torch_parity import check_parity, torch_gradients  # noqa: E402

TOLERANCE = 1e-4


def _inputs(size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, size, size)).astype(np.float32) for batch in (1, 1, 3, 3)]


@pytest.mark.parametrize(("name", "layer", "size"), [
    ("resnet18", "layer4", 128),
    ("resnet18", "layer3", 128),
    ("mobilenet_v2", "features.14", 128),
])
def test_torchvision_parity(name, layer, size, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    path = export_torch(model, tmp_path / f"{name}.onnx", target_layer=layer, input_shape=(3, size, size))
    proto = onnx.load(path)
    parity = check_parity(model, proto, layer, _inputs(size, seed=7))
    assert parity.error <= TOLERANCE and parity.flips == 0, parity
    # the two inputs really differ (activations; gradients too where the layer is not right before the
    # GAP + linear head, whose gradient depends on the class only), so matching both means nothing was frozen
    a, b = (torch_gradients(model, layer, x) for x in _inputs(size, seed=7)[:2])
    keys = ["activations"] if layer == "layer4" else ["activations", "gradients"]
    for key in keys:
        assert np.abs(a[key] - b[key]).max() > 0.1 * np.abs(a[key]).max(), key


def test_efficientnet_lite0_parity(efficientnet):
    model, path = efficientnet
    proto = onnx.load(path)
    rng = np.random.default_rng(11)
    inputs = [rng.uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32) for batch in (1, 1, 3)]
    parity = check_parity(model, proto, "head", inputs)
    assert parity.error <= TOLERANCE and parity.flips == 0, parity
