"""``onnxcam info``: what onnxcam will assume for a file — input, preprocessing, labels, output, layer (the
classifier view, :func:`onnxcam.classifier.view.open_classifier`)."""

from __future__ import annotations

import json

import click

from onnxcam.classifier.view import open_classifier
from onnxcam.cli.options import input_options, input_size
from onnxcam.core.contract import has_gradients
from onnxcam.core.model_io import load_model

SCORE_NOTE = {
    "logits": "class scores (logits): explained as they are",
    "softmax": "softmax probabilities: onnxcam explains the softmax's input, the class score",
    "log_softmax": "log-softmax: onnxcam explains the log-softmax's input, the class score",
    "sigmoid": "sigmoid (multi-label) probabilities: onnxcam explains the pre-sigmoid score",
}


def describe(path: str, *, input_size: tuple[int, int] | None = None, input_layout: str | None = None) -> list[str]:
    """Lines describing ``path`` as onnxcam will read it (errors are the same one-liners ``explain`` gives)."""
    model = load_model(path)
    view = open_classifier(model, input_size=input_size, input_layout=input_layout)
    meta, source, score = view.metadata, view.source, view.score
    kind = view.output_kind
    size = "x".join(map(str, view.input_size[1:]))
    how = "detected from its shape" if source.detected and not meta.input_layout else "recorded or given"
    declared = view.declared.describe()
    producer = " ".join(filter(None, [model.producer_name, model.producer_version]))
    lines = [
        f"model:         {path} (producer {producer or 'unknown'}, "
        f"opset {next((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), '?')})",
        f"input:         '{source.name}' {declared}: {source.layout} ({how}), image size {size}",
    ]
    if view.preprocessing_source == "file":
        lines.append(f"preprocessing: {json.dumps(view.preprocessing)} (from the file)")
    else:
        lines.append(f"preprocessing: {json.dumps(view.preprocessing)} (assumed: ImageNet's; the file carries "
                     "none — record the model's own with `onnxcam annotate`)")
    if meta.labels:
        shown = ", ".join(meta.labels[:5]) + (", ..." if len(meta.labels) > 5 else "")
        lines.append(f"labels:        {len(meta.labels)} ({shown})")
    else:
        lines.append(f"labels:        none (classes shown by index, {view.num_classes} classes; add names with "
                     "`onnxcam annotate --labels FILE`)")
    lines.append(f"output:        '{score.output}' {SCORE_NOTE.get(kind, kind)}")
    explained = "probability" if meta.target == "probability" else "score"
    lines.append(f"target:        {meta.target} (gradient of the class {explained})")
    if meta.target_layers:
        lines.append(f"layer:         {', '.join(meta.target_layers)} (recorded)")
    else:
        lines.append(f"layer:         {view.require_default_layer()} (default: {view.default_reason})")
    lines.append("gradients:     " + ("in the file (an onnxcam graph)" if has_gradients(model)
                                      else "added in memory when explaining"))
    if meta.cams:
        shown = ", ".join(f"{e['method']} ({e['dtype']}{', overlay' if e.get('overlay') else ''})" for e in meta.cams)
        outputs = ", ".join(n for e in meta.cams for n in (e["output"], e.get("overlay")) if n)
        lines.append(f"embedded CAMs: {shown}: outputs {outputs}")
    else:
        lines.append("embedded CAMs: none (add the finished maps with `onnxcam embed MODEL --cam gradcam -o OUT`)")
    return lines


@click.command("info")
@click.argument("model", type=str)
@input_options
def command(model: str, input_size_text: str | None, input_layout: str | None) -> None:
    """Show what onnxcam will assume for MODEL: input layout and size, preprocessing, labels, output kind,
    target and default layer."""
    for line in describe(model, input_size=input_size(input_size_text), input_layout=input_layout):
        click.echo(line)
