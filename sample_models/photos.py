"""Real photographs that ship inside PyPI packages (scikit-image, scikit-learn): nothing is downloaded."""

from __future__ import annotations

import numpy as np


def photographs() -> tuple[list[np.ndarray], list[str]]:
    """Seven RGB uint8 photographs and their names: five from scikit-image, two from scikit-learn."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    named = {"chelsea": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut(),
             "rocket": data.rocket(), "motorcycle": data.stereo_motorcycle()[0]}
    for name, image in zip(("china", "flower"), load_sample_images().images):
        named[name] = image
    return list(named.values()), list(named)
