"""The real ImageNet EfficientNet-Lite0 on real photographs shipped with scikit-image.

Boxes were drawn by hand on the 224×224 centre crop the model sees (x0, y0, x1, y1): the cat's face
(eyes to nose) in chelsea, and the cup with its crema (not the saucer or the spoon) in coffee.
"""

from __future__ import annotations

import numpy as np
import pytest

skimage_data = pytest.importorskip("skimage.data")

from onnxcam.runtime import Explainer  # noqa: E402

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
BOXES = {"chelsea": (30, 50, 210, 224), "coffee": (30, 0, 200, 125)}


@pytest.fixture(scope="module")
def explainer(efficientnet):
    return Explainer(efficientnet[1], providers="cpu")


@pytest.mark.parametrize("method", ["gradcam", "cfcam"])
def test_right_class_and_peak_in_box(explainer, method):
    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    result = explainer.explain(photos, method=method)
    assert result.class_index[0] in CAT_CLASSES, result.labels
    assert result.class_index[1] == ESPRESSO, result.labels
    assert result.labels[1] == "espresso"
    for cam, name in zip(result.cams, BOXES):
        y, x = np.unravel_index(cam.argmax(), cam.shape)
        x0, y0, x1, y1 = BOXES[name]
        assert x0 <= x < x1 and y0 <= y < y1, (name, method, x, y)
        # the map is not flat: the box holds clearly more of it than the rest of the picture
        inside = np.zeros(cam.shape, bool)
        inside[y0:y1, x0:x1] = True
        assert cam[inside].mean() > 1.2 * cam[~inside].mean(), name


def test_metadata_carries_everything_explain_needs(explainer):
    meta = explainer.metadata
    assert meta.input_size == [3, 224, 224] and len(meta.labels) == 1000
    assert meta.preprocessing["resize"] == 256 and meta.preprocessing["crop"] == [224, 224]
    assert meta.target_layers == ["head"] and meta.layout == "NCHW"
    assert meta.provenance["source_framework"].startswith("pytorch")
