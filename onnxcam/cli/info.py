"""``onnxcam info``: what onnxcam will assume for a file — input, preprocessing, labels, output, layer."""

from __future__ import annotations

import json

from onnxcam.autodiff.gradients import default_layer, fix_model_input
from onnxcam.classifier.inputs import image_input
from onnxcam.classifier.scores import find_score
from onnxcam.core.contract import has_gradients, strip_gradients
from onnxcam.core.metadata import read_metadata
from onnxcam.core.model_io import load_model
from onnxcam.core.preprocessing import IMAGENET_PREPROCESSING
from onnxcam.core.tensor_info import TensorInfo

SCORE_NOTE = {
    "logits": "class scores (logits): explained as they are",
    "softmax": "softmax probabilities: onnxcam explains the softmax's input, the class score",
    "log_softmax": "log-softmax: onnxcam explains the log-softmax's input, the class score",
    "sigmoid": "sigmoid (multi-label) probabilities: onnxcam explains the pre-sigmoid score",
}


def describe(path: str, *, input_size: tuple[int, int] | None = None, input_layout: str | None = None) -> list[str]:
    """Lines describing ``path`` as onnxcam will read it (errors are the same one-liners ``explain`` gives)."""
    model = load_model(path)
    meta = read_metadata(model)
    plain = strip_gradients(model)
    raw = image_input(plain, None if has_gradients(model) else input_layout or meta.input_layout)
    fixed, source = fix_model_input(plain, meta, input_size, input_layout)
    info = TensorInfo(fixed)
    output = fixed.graph.output[0].name
    info.probe(fixed, [output])
    score = find_score(fixed, output, info)
    info.probe(fixed, [score.tensor])
    kind = meta.output_kind if score.kind == "logits" and meta.output_kind else score.kind
    classes = (info.shapes.get(score.tensor) or (None,))[-1]
    size = "x".join(str(d.dim_value) for d in fixed.graph.input[0].type.tensor_type.shape.dim[2:])
    how = "detected from its shape" if source.detected and not meta.input_layout else "recorded or given"
    declared = raw.describe() if not has_gradients(model) else source.describe()
    producer = " ".join(filter(None, [model.producer_name, model.producer_version]))
    lines = [
        f"model:         {path} (producer {producer or 'unknown'}, "
        f"opset {next((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), '?')})",
        f"input:         '{source.name}' {declared}: {source.layout} ({how}), image size {size}",
    ]
    if meta.preprocessing:
        lines.append(f"preprocessing: {json.dumps(meta.preprocessing)} (from the file)")
    else:
        lines.append(f"preprocessing: {json.dumps(IMAGENET_PREPROCESSING)} (assumed: ImageNet's; the file carries "
                     "none — record the model's own with `onnxcam annotate`)")
    if meta.labels:
        shown = ", ".join(meta.labels[:5]) + (", ..." if len(meta.labels) > 5 else "")
        lines.append(f"labels:        {len(meta.labels)} ({shown})")
    else:
        lines.append(f"labels:        none (classes shown by index, {classes} classes; add names with "
                     "`onnxcam annotate --labels FILE`)")
    lines.append(f"output:        '{score.output}' {SCORE_NOTE.get(kind, kind)}")
    explained = "probability" if meta.target == "probability" else "score"
    lines.append(f"target:        {meta.target} (gradient of the class {explained})")
    if meta.target_layers:
        lines.append(f"layer:         {', '.join(meta.target_layers)} (recorded)")
    else:
        lines.append(f"layer:         {default_layer(fixed, score.tensor, info)} (default: the last feature map "
                     "before the head)")
    lines.append("gradients:     " + ("in the file (an onnxcam graph)" if has_gradients(model)
                                      else "added in memory when explaining"))
    if meta.cams:
        shown = ", ".join(f"{e['method']} ({e['dtype']}{', overlay' if e.get('overlay') else ''})" for e in meta.cams)
        outputs = ", ".join(n for e in meta.cams for n in (e["output"], e.get("overlay")) if n)
        lines.append(f"embedded CAMs: {shown}: outputs {outputs}")
    else:
        lines.append("embedded CAMs: none (add the finished maps with `onnxcam embed MODEL --cam gradcam -o OUT`)")
    return lines
