"""``onnxcam annotate``: record onnxcam's metadata in a copy of a model that onnxcam did not make."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import click

from onnxcam.classifier.annotate import annotate
from onnxcam.classifier.hf_preprocessor import read_hf_preprocessing
from onnxcam.classifier.labels import read_labels
from onnxcam.cli.options import input_options, input_size, preprocessing, preprocessing_options


@click.command("annotate")
@click.argument("model", type=str)
@click.option("-o", "--output", required=True, help="Path of the annotated .onnx file to write.")
@input_options
@preprocessing_options
@click.option("--labels", "labels_file", default=None, help="Class names: a text file (one per line) or JSON.")
@click.option("--layer", default=None, help="Default target layer (a tensor name from `onnxcam layers`).")
@click.option("--target", type=click.Choice(["logit", "probability"]), default=None,
              help="Explain the class score (logit, default) or its probability.")
@click.option("--hf-preprocessor", "hf_preprocessor", default=None, metavar="PATH",
              help="Read the preprocessing (and, for a dynamic input, the size) from a Hugging Face "
                   "preprocessor_config.json or its folder; the other options override it.")
def command(model: str, output: str, input_size_text: str | None, input_layout: str | None, labels_file: str | None,
            layer: str | None, target: str | None, hf_preprocessor: str | None, **overrides: Any) -> None:
    """Write onnxcam's metadata (input size and layout, preprocessing, labels, layer, target) into a copy of
    MODEL, so that `onnxcam explain OUTPUT image.jpg` needs no flags. The graph and weights are untouched."""
    labels = read_labels(labels_file) if labels_file else None
    size = input_size(input_size_text)
    spec = preprocessing(**overrides)
    provenance: dict[str, Any] | None = None
    if hf_preprocessor is not None:
        hf = read_hf_preprocessing(hf_preprocessor)
        spec = {**hf.spec, **spec}
        size = size or hf.input_size
        provenance = {"hf_preprocessor": pathlib.Path(hf_preprocessor).name, "hf_resample": hf.resample}
    recorded = annotate(model, output, input_size=size, input_layout=input_layout, preprocessing=spec,
                        labels=labels, layer=layer, target=target, provenance=provenance)
    shown = "x".join(map(str, recorded["input_size"][1:]))
    click.echo(f"wrote {output}: input {recorded['input_layout']} {shown}, output {recorded['output_kind']}, "
               f"target {recorded['target']}, {recorded['labels'] or 'no'} labels, preprocessing "
               f"{json.dumps(recorded['preprocessing'])}")
