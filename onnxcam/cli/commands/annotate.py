"""``onnxcam annotate``: record onnxcam's metadata in a copy of a model that onnxcam did not make."""

from __future__ import annotations

import json
from typing import Any

import click

from onnxcam.classifier.annotate import annotate
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
def command(model: str, output: str, input_size_text: str | None, input_layout: str | None, labels_file: str | None,
            layer: str | None, target: str | None, **overrides: Any) -> None:
    """Write onnxcam's metadata (input size and layout, preprocessing, labels, layer, target) into a copy of
    MODEL, so that `onnxcam explain OUTPUT image.jpg` needs no flags. The graph and weights are untouched."""
    labels = read_labels(labels_file) if labels_file else None
    recorded = annotate(model, output, input_size=input_size(input_size_text), input_layout=input_layout,
                        preprocessing=preprocessing(**overrides), labels=labels, layer=layer, target=target)
    size = "x".join(map(str, recorded["input_size"][1:]))
    click.echo(f"wrote {output}: input {recorded['input_layout']} {size}, output {recorded['output_kind']}, "
               f"target {recorded['target']}, {recorded['labels'] or 'no'} labels, preprocessing "
               f"{json.dumps(recorded['preprocessing'])}")
