"""``onnxcam evaluate``: compare CAM methods on a model and images, with a table, a CSV and a figure."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import click
import numpy as np

from onnxcam.cams import get_method
from onnxcam.cli.options import explainer_input, input_options, preprocessing_options
from onnxcam.cli.output import OutputWriter
from onnxcam.core.errors import OnnxcamError
from onnxcam.evaluation.evaluate import evaluate
from onnxcam.evaluation.figures import evaluation_figure
from onnxcam.runtime.explainer import Explainer
from onnxcam.runtime.preprocess import load_image


@click.command("evaluate")
@click.argument("model", type=str)
@click.argument("images", nargs=-1, required=True, type=str)
@click.option("--method", "methods", default="gradcam,cfcam", show_default=True,
              help="Comma-separated CAM methods to compare.")
@click.option("--boxes", "boxes_file", default=None,
              help="JSON with a box (x0, y0, x1, y1 in model-input pixels) per image, for pointing game and energy.")
@click.option("-o", "--output", default="onnxcam-eval", show_default=True, help="Folder for table, CSV and figure.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--layer", "layers", multiple=True, help="Target layer (repeat to fuse several).")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(2), help="Deletion/insertion steps.")
@click.option("--no-road", is_flag=True, help="Skip ROAD (its imputation is the slowest metric).")
@input_options
@preprocessing_options
def command(model: str, images: tuple[str, ...], methods: str, boxes_file: str | None, output: str, device: str,
            layers: tuple[str, ...], steps: int, no_road: bool, **input_and_preprocessing: Any) -> None:
    """Compare CAM methods on MODEL and IMAGEs: deletion/insertion AUC, Average Drop, Increase in Confidence,
    ROAD, gradient-noise robustness, pointing game and energy in box (with --boxes), and time per image.
    Writes evaluation.md, evaluation.csv and evaluation.png (overlays and curves) into the output folder."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        get_method(name)
    for path in images:
        load_image(path)
    boxes = read_boxes(boxes_file, images) if boxes_file else None
    explainer = Explainer(model, providers=device, layer=list(layers) or None,
                          **explainer_input(input_and_preprocessing))
    writer = OutputWriter(pathlib.Path(output))
    result = evaluate(explainer, list(images), names, boxes=boxes, steps=steps, road=not no_road,
                      progress=lambda name: click.echo(f"evaluating {name} on {len(images)} images ...", err=True))
    markdown = result.markdown()
    click.echo(markdown)
    writer.add_bytes("evaluation.csv", result.csv().encode())
    writer.add_bytes("evaluation.md", (markdown + "\n").encode())
    writer.add("evaluation.png", evaluation_figure(result))
    writer.commit()
    click.echo(f"wrote evaluation.md, evaluation.csv and evaluation.png to {writer.folder}", err=True)


def read_boxes(path: str, images: tuple[str, ...]) -> np.ndarray:
    """Boxes from JSON: ``{"images": [{"file": name, "box": [x0, y0, x1, y1]}, ...]}`` or ``{name: box}``."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise OnnxcamError(f"boxes file '{p}' does not exist; check the path")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OnnxcamError(f"boxes file '{p}' is not JSON; give {{\"image name\": [x0, y0, x1, y1], ...}}") from None
    if isinstance(data, dict) and "images" in data:
        data = {entry["file"]: entry["box"] for entry in data["images"]}
    boxes = []
    for image in images:
        name = pathlib.Path(image).name
        if name not in data:
            raise OnnxcamError(f"boxes file '{p}' has no box for '{name}'; add one or leave out --boxes")
        boxes.append(data[name])
    return np.asarray(boxes, dtype=np.int64)
