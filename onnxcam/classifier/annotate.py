"""Writing onnxcam's metadata into an ONNX file that onnxcam did not make (``onnxcam annotate``).

Only ``metadata_props`` change: the graph and the weights are untouched. Every value is checked against the
model first (input size and layout, class count, layer), and the file is written atomically.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import onnx

from onnxcam.classifier.view import open_classifier
from onnxcam.core.contract import TARGETS
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.metadata import read_metadata, write_metadata
from onnxcam.core.model_io import output_file, write_model
from onnxcam.core.preprocessing import check_preprocessing


def annotate(model_path: str | os.PathLike, output: str | os.PathLike, *, input_size: tuple[int, int] | None = None,
             input_layout: str | None = None, preprocessing: dict[str, Any] | None = None,
             labels: list[str] | None = None, layer: str | None = None, target: str | None = None,
             provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write onnxcam metadata into a copy of ``model_path`` at ``output``; returns what was recorded.

    ``preprocessing`` keys override the file's (or ImageNet's, when it carries none); ``provenance`` entries
    (None values skipped) are added to the file's provenance (e.g. the Hugging Face processor's resample filter).
    """
    src, dst = pathlib.Path(model_path), pathlib.Path(output)
    if not src.is_file():
        raise OnnxcamError(f"model '{src}' does not exist; check the path")
    output_file(src, dst, "annotated copy")
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
    view = open_classifier(_checked_model(src, model, externals), input_size=input_size, input_layout=input_layout)
    num_classes = view.num_classes
    channels = view.input_size[0]
    meta.input_size = list(view.input_size)
    meta.input_layout = view.source.layout
    meta.output_kind = view.score.kind
    base = view.preprocessing
    base.update(preprocessing or {})
    meta.preprocessing = check_preprocessing(base, channels)
    if labels is not None:
        if num_classes is not None and len(labels) != num_classes:
            raise OnnxcamError(f"the labels file has {len(labels)} names but the model has {num_classes} classes; "
                               "give one name per class, in class order")
        meta.labels = labels
    if layer is not None:
        view.resolve_layer(layer)  # an unknown layer fails here, not at explain
        meta.target_layers, meta.target_tensors = [layer], []
    else:
        view.require_default_layer()  # a classifier with no feature map fails here, not at explain
    if target is not None:
        meta.target = target
    meta.provenance.setdefault("source_framework", model.producer_name or "onnx")
    meta.provenance["annotated_from"] = src.name
    meta.provenance.update({k: v for k, v in (provenance or {}).items() if v is not None})
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




