"""``onnxcam layers``: the candidate target layers of a model, whether gradients reach each, and the default."""

from __future__ import annotations

import click

from onnxcam.autodiff.layers import candidate_layers
from onnxcam.cli.options import input_options, input_size
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.metadata import read_metadata
from onnxcam.core.model_io import load_model


@click.command("layers")
@click.argument("model", type=str)
@input_options
def command(model: str, input_size_text: str | None, input_layout: str | None) -> None:
    """List MODEL's candidate target layers (feature maps and token tensors computed from the image that feed
    the logits), whether gradients reach each one, and the default (*)."""
    proto = load_model(model)
    meta = read_metadata(proto)
    rows = candidate_layers(proto, input_size=input_size(input_size_text), input_layout=input_layout)
    if not rows:
        raise OnnxcamError("found no feature map or token tensor before the logits; is this an image classifier?")
    width = max(len(r.name) for r in rows)
    click.echo(f"{'':2}{'tensor':<{width}}  {'op':<20} {'shape':<16} gradient")
    for r in rows:
        mark = "*" if r.default else " "
        shape = "x".join("N" if d is None else str(d) for d in r.shape)
        flow = "yes" if r.flows else f"no: {r.blocker}"
        note = f"  <- exported target ({', '.join(meta.target_layers)})" if r.target else ""
        click.echo(f"{mark} {r.name:<{width}}  {r.op:<20} {shape:<16} {flow}{note}")
    default = next((r for r in rows if r.default), None)
    if default is not None:
        click.echo(f"* default target layer: {default.reason}; pass another with --layer")
    else:
        click.echo("no default target layer (no pooled feature map or token tensor); pass one with --layer")
