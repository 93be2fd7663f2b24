"""Token and channels-last target layers: layout metadata, and CAMs with the input's aspect.

Tiny models whose logit depends on one patch only, on a non-square input (a 4 × 8 grid): the gradient
must sit on exactly that patch, and on images that are black outside it the CAM must peak there. A transposed
or mis-ordered grid, or a class token left in, moves both.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from onnxcam.core.errors import OnnxcamError  # noqa: E402
from onnxcam.core.layout import infer_layout, to_nchw  # noqa: E402
from onnxcam.exporter import export_torch  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402

H, W, PATCH = 32, 64, 8  # a 4 × 8 patch grid
ROW, COL = 1, 6  # the only patch the logit reads


class TinyViT(nn.Module):
    """Patch embedding, a class token, a per-token block (no mixing), and a head that reads one patch token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, PATCH, stride=PATCH, bias=False)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.block = nn.Sequential(nn.Linear(16, 16, bias=False), nn.ReLU())  # zero stays zero
        self.head = nn.Linear(16, 3, bias=False)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = self.block(torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1))
        return self.head(tokens[:, 1 + ROW * (W // PATCH) + COL])


class TinySwin(nn.Module):
    """Channels-last grid (no class token), as Swin's stages give; the head reads one grid cell."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 48, PATCH, stride=PATCH, bias=False)
        self.block = nn.Sequential(nn.Linear(48, 48, bias=False), nn.ReLU())
        self.head = nn.Linear(48, 3, bias=False)

    def forward(self, x):
        return self.head(self.block(self.embed(x).permute(0, 2, 3, 1))[:, ROW, COL])


@pytest.mark.parametrize(("model_cls", "expected"), [
    (TinyViT, {"layout": "NTC", "grid": [4, 8], "prefix_tokens": 1}),
    (TinySwin, {"layout": "NHWC", "grid": [4, 8]}),
])
def test_cam_lights_the_one_patch_the_logit_reads(model_cls, expected, tmp_path):
    torch.manual_seed(0)
    path = export_torch(model_cls().eval(), tmp_path / "m.onnx", target_layer="block", input_shape=(3, H, W))
    explainer = Explainer(path, providers="cpu")
    assert explainer.metadata.layouts == [expected]
    rng = np.random.default_rng(0)
    # the gradient reaches the one patch only, whatever the image
    noisy = rng.integers(0, 255, (3, H, W, 3), dtype=np.uint8)
    grads = to_nchw(explainer.forward(explainer.preprocess(list(noisy))[0])["gradients"], expected)
    energy = np.abs(grads).sum(axis=1)
    assert energy.shape == (3, 4, 8)
    assert (energy[:, ROW, COL] > 0).all() and energy.sum() == energy[:, ROW, COL].sum()
    # on images dark outside that patch, the CAM peaks inside it
    patch = np.zeros((3, H, W, 3), np.uint8)
    patch[:, ROW * PATCH:(ROW + 1) * PATCH, COL * PATCH:(COL + 1) * PATCH] = noisy[:, :PATCH, :PATCH]
    explainer.preprocessing = {"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]}  # black stays 0
    # CF-CAM with softmax weights (all positive): with its default linear weights, dropping noise channels can
    # leave a negative sum at the one lit patch, a property of the method that this layout test is not about
    for method, options in (("gradcam", {}), ("cfcam", {"weighting": "softmax"})):
        cams = explainer.explain(list(patch), method=method, **options).cams
        assert cams.shape == (3, H, W)
        for cam in cams:
            y, x = np.unravel_index(cam.argmax(), cam.shape)
            assert ROW * PATCH <= y < (ROW + 1) * PATCH and COL * PATCH <= x < (COL + 1) * PATCH, (method, y, x)


def test_infer_layout():
    assert infer_layout((None, 768, 7, 7), (224, 224)) == {"layout": "NCHW", "grid": [7, 7]}
    assert infer_layout((None, 7, 7, 768), (224, 224)) == {"layout": "NHWC", "grid": [7, 7]}
    assert infer_layout((None, 197, 768), (224, 224)) == {"layout": "NTC", "grid": [14, 14], "prefix_tokens": 1}
    assert infer_layout((None, 198, 768), (224, 224))["prefix_tokens"] == 2  # DeiT: class + distillation
    assert infer_layout((None, 49, 96), (112, 112)) == {"layout": "NTC", "grid": [7, 7], "prefix_tokens": 0}
    with pytest.raises(OnnxcamError, match="patch grid"):
        infer_layout((None, 5, 8), (64, 48))


def test_to_nchw_orders_tokens_row_major():
    tokens = np.arange(1 * 7 * 2).reshape(1, 7, 2)  # class token + a 2×3 grid, 2 channels
    out = to_nchw(tokens, {"layout": "NTC", "grid": [2, 3], "prefix_tokens": 1})
    np.testing.assert_array_equal(out[0, 0], [[2, 4, 6], [8, 10, 12]])
    np.testing.assert_array_equal(to_nchw(np.zeros((1, 2, 3, 5)), {"layout": "NHWC"}).shape, (1, 5, 2, 3))
