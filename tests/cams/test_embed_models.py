"""Embedded CAMs on real architectures: ``cam_<method>`` from ONNX Runtime against the Python runtime's maps.

resnet18 at ``layer4`` and ``layer3``, EfficientNet-Lite0's head (ImageNet weights, real photographs), a ViT
token layer (class token dropped) and a Swin channels-last stage; every embeddable method; batch 1 and 4; the
predicted class and a given class. The numpy path is the reference (``embedded=False``); ``Explainer`` on the
same file must take the embedded map and give the same result.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from onnxcam.cams.embed import embed_cams, embeddable  # noqa: E402
from onnxcam.core.model_io import load_model  # noqa: E402
from onnxcam.exporter import add_gradients, export_torch  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.runtime.preprocess import model_view  # noqa: E402

METHODS = embeddable()
EIGEN = {"eigencam", "eigengradcam"}
TOLERANCE = 1e-4


def _photos(size: int, count: int = 4) -> list[np.ndarray]:
    from sample_models.photos import photographs

    images, _ = photographs()
    return [model_view(im, {"resize": size, "crop": [size, size]}, (size, size)) for im in images[:count]]


def _swin() -> torch.nn.Module:
    return torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=10)


def _vit() -> torch.nn.Module:
    """A two-layer ViT; torchvision starts its head at zero (no gradient at all), so it gets random weights."""
    net = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2,
                                               hidden_dim=64, mlp_dim=128, num_classes=10)
    torch.nn.init.normal_(net.heads.head.weight, std=0.5)
    return net


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """name → (onnxcam graph with every method embedded, images, a class index to explain)."""
    folder = tmp_path_factory.mktemp("embedded")
    out = {}
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = export_torch(resnet, folder / "resnet18.onnx", target_layer="layer4", input_shape=(3, 160, 160),
                        cams=METHODS, overlay=True)
    plain = load_model(path)
    out["resnet18/layer4"] = (plain, _photos(160), 3)
    out["resnet18/layer3"] = (add_gradients(plain, activations="layer3", cams=METHODS), _photos(160), 3)
    torch.manual_seed(0)
    path = export_torch(_vit().eval(), folder / "vit.onnx", target_layer="encoder.layers.encoder_layer_0",
                        input_shape=(3, 64, 64))
    out["vit/encoder_layer_0"] = (embed_cams(load_model(path), METHODS), _photos(64), 7)
    torch.manual_seed(0)
    path = export_torch(_swin().eval(), folder / "swin.onnx", target_layer="features.3", input_shape=(3, 64, 64))
    out["swin/features.3"] = (embed_cams(load_model(path), METHODS), _photos(64), 7)
    lite = pytest.importorskip("sample_models.efficientnet_lite0")
    pytest.importorskip("efficientnet_lite_pytorch")
    path = export_torch(lite.load_model(), folder / "lite0.onnx", target_layer=lite.LAST_STAGE,
                        input_shape=lite.INPUT_SHAPE, preprocessing=lite.PREPROCESSING)
    out["efficientnet_lite0/head"] = (embed_cams(load_model(path), METHODS), _photos(224), 281)
    return out


def _agreement(graph: np.ndarray, numpy: np.ndarray) -> tuple[float, float]:
    """Max abs difference and the smallest per-map Pearson correlation."""
    flat_g, flat_n = graph.reshape(len(graph), -1), numpy.reshape(len(numpy), -1)
    pearson = min(1.0 if np.ptp(a) == np.ptp(b) == 0 else float(np.corrcoef(a, b)[0, 1])
                  for a, b in zip(flat_g, flat_n))
    return float(np.abs(graph - numpy).max()), pearson


@pytest.mark.parametrize("name", ["resnet18/layer4", "resnet18/layer3", "efficientnet_lite0/head",
                                  "vit/encoder_layer_0", "swin/features.3"])
def test_embedded_maps_equal_the_runtime(models, name):
    proto, images, given = models[name]
    explainer = Explainer(proto, providers="cpu")
    worst = {}
    for batch in (images[:1], images):
        for class_index in (None, given):
            forward = explainer.forward(explainer.preprocess(batch)[0], class_index)
            for method in METHODS:
                reference = explainer.explain(batch, method=method, class_index=class_index, embedded=False)
                embedded = explainer.explain(batch, method=method, class_index=class_index)
                assert explainer.embedded_output(method) == f"cam_{method}"
                np.testing.assert_array_equal(embedded.cams, forward[f"cam_{method}"])  # taken from the graph
                diff, pearson = _agreement(embedded.cams, reference.cams)
                worst[method] = max(worst.get(method, (0.0, 1.0)), (diff, pearson), key=lambda t: t[0])
                if method in EIGEN:
                    assert diff <= TOLERANCE or pearson >= 0.999, (method, diff, pearson)
                else:
                    assert diff <= TOLERANCE, (method, diff)
                assert embedded.cams.shape == (len(batch), *explainer.input_shape[1:])
                assert np.ptp(reference.cams.reshape(len(batch), -1), axis=1).max() > 0.5  # not a blank map
                np.testing.assert_array_equal(embedded.class_index, reference.class_index)
    print(f"\n{name}: " + ", ".join(f"{m} {d:.1e} (r={p:.6f})" for m, (d, p) in worst.items()))


def test_embedded_overlay_is_the_runtime_overlay(models):
    from onnxcam.cams.render import overlay

    proto, images, _ = models["resnet18/layer4"]
    explainer = Explainer(proto, providers="cpu")
    result = explainer.explain(images, method="gradcam")
    shown = explainer.forward(explainer.preprocess(images)[0])["overlay_gradcam"]
    expected = np.stack([overlay(view, cam) for view, cam in zip(result.images, result.cams)])
    assert shown.dtype == np.uint8 and shown.shape == expected.shape
    differs = shown != expected
    assert np.abs(shown.astype(int) - expected).max() <= 3 and differs.mean() < 1e-3
