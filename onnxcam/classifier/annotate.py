"""Writing onnxcam's metadata into an ONNX file that onnxcam did not make (``onnxcam annotate``).

Only ``metadata_props`` change: the graph and the weights are untouched. Every value is checked against the
model first (input size and layout, class count, layer), and the file is written atomically.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import onnx

from onnxcam.autodiff.gradients import default_layer, fix_model_input
from onnxcam.classifier.scores import find_score
from onnxcam.classifier.torch_names import module_tensor
from onnxcam.core.contract import TARGETS, strip_gradients
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_queries import producers
from onnxcam.core.metadata import read_metadata, write_metadata
from onnxcam.core.model_io import write_model
from onnxcam.core.preprocessing import IMAGENET_PREPROCESSING, check_preprocessing
from onnxcam.core.tensor_info import TensorInfo, check_runs


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a text file (one per line) or JSON (a list, or ``{"0": "cat", ...}``)."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise OnnxcamError(f"labels file '{p}' does not exist; check the path")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OnnxcamError(f"labels file '{p}' is not UTF-8 text; give one class name per line or JSON") from None
    if p.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OnnxcamError(f"labels file '{p}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict):
            try:
                index = {int(k): str(v) for k, v in data.items()}
            except ValueError:
                raise OnnxcamError(f"labels file '{p}': JSON keys must be class indices such as \"0\"") from None
            if sorted(index) != list(range(len(index))):
                raise OnnxcamError(f"labels file '{p}': JSON keys must be the indices 0..{len(index) - 1}, each once")
            return [index[i] for i in range(len(index))]
        if isinstance(data, list) and all(isinstance(v, str) for v in data):
            return list(data)
        raise OnnxcamError(f"labels file '{p}': JSON must be a list of names or an {{index: name}} object")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise OnnxcamError(f"labels file '{p}' is empty; give one class name per line")
    return names


def annotate(model_path: str | os.PathLike, output: str | os.PathLike, *, input_size: tuple[int, int] | None = None,
             input_layout: str | None = None, preprocessing: dict[str, Any] | None = None,
             labels: list[str] | None = None, layer: str | None = None, target: str | None = None,
             ) -> dict[str, Any]:
    """Write onnxcam metadata into a copy of ``model_path`` at ``output``; returns what was recorded.

    ``preprocessing`` keys override the file's (or ImageNet's, when it carries none).
    """
    src, dst = pathlib.Path(model_path), pathlib.Path(output)
    if not src.is_file():
        raise OnnxcamError(f"model '{src}' does not exist; check the path")
    if dst.exists() and dst.resolve() == src.resolve():
        raise OnnxcamError(f"the output '{dst}' is the input model; write the annotated copy to another path with -o")
    if dst.is_dir():
        raise OnnxcamError(f"the output '{dst}' is a folder; give a file path such as {dst / src.name}")
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf raises several types
        raise OnnxcamError(f"'{src}' is not an ONNX model; pass a .onnx file") from None
    if not model.graph.node:
        raise OnnxcamError(f"'{src}' is not an ONNX model; pass a .onnx file")
    externals = sorted({e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                        for e in t.external_data if e.key == "location"})
    meta = read_metadata(model)
    if target is not None and target not in TARGETS:
        raise OnnxcamError(f"unknown --target '{target}'; use one of {', '.join(TARGETS)}")
    checked = _checked_model(src, model, externals)
    fixed, source = fix_model_input(strip_gradients(checked), meta, input_size, input_layout)
    if source.resized:
        check_runs(fixed, fixed.graph.output[0].name)
    info = TensorInfo(fixed)
    info.probe(fixed, [fixed.graph.output[0].name])
    score = find_score(fixed, fixed.graph.output[0].name, info)
    info.probe(fixed, [score.tensor])
    num_classes = (info.shapes.get(score.tensor) or (None,))[-1]
    channels = fixed.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    meta.input_size = [channels, *[d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim[2:]]]
    meta.input_layout = source.layout
    meta.output_kind = score.kind
    base = dict(meta.preprocessing or IMAGENET_PREPROCESSING)
    base.update(preprocessing or {})
    meta.preprocessing = check_preprocessing(base, channels)
    if labels is not None:
        if num_classes is not None and len(labels) != num_classes:
            raise OnnxcamError(f"the labels file has {len(labels)} names but the model has {num_classes} classes; "
                               "give one name per class, in class order")
        meta.labels = labels
    if layer is not None:
        known = producers(fixed.graph).keys() | {source.name}
        if layer not in known and module_tensor(fixed.graph, layer) is None:
            raise OnnxcamError(f"unknown layer '{layer}'; run `onnxcam layers MODEL` to list the candidates")
        meta.target_layers, meta.target_tensors = [layer], []
    else:
        default_layer(fixed, score.tensor, info)  # a classifier with no feature map fails here, not at explain
    if target is not None:
        meta.target = target
    meta.provenance.setdefault("source_framework", model.producer_name or "onnx")
    meta.provenance["annotated_from"] = src.name
    write_metadata(model, meta)
    write_model(model, dst, externals=externals, source_folder=src.parent)
    return {"input_size": meta.input_size, "input_layout": meta.input_layout, "output_kind": meta.output_kind,
            "preprocessing": meta.preprocessing, "labels": len(meta.labels or []), "target": meta.target,
            "layer": layer}


def _checked_model(src: pathlib.Path, model: onnx.ModelProto, externals: list[str]) -> onnx.ModelProto:
    """The model with its weights loaded (for the checks only; the written file keeps them as they are)."""
    if not externals:
        return model
    full = onnx.ModelProto()
    full.CopyFrom(model)
    missing = [e for e in externals if not (src.parent / e).is_file()]
    if missing:
        raise OnnxcamError(f"the model's external data file '{missing[0]}' is missing next to '{src}'")
    onnx.load_external_data_for_model(full, str(src.parent))
    return full




