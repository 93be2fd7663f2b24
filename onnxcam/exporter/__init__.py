"""The exporter's public API, in one import: turn a classifier into an ONNX graph that also outputs a layer's
activations and their gradients, and optionally the finished maps.

- :func:`add_gradients` — any ONNX classifier (onnx only; :mod:`onnxcam.autodiff.gradients`), with ``cams=``
  embedding finished maps as well (:func:`embed_cams`, :mod:`onnxcam.cams.embed`);
- :func:`export_torch` — a PyTorch classifier (imports torch when called; :mod:`onnxcam.frontends.torch_export`);
- :func:`candidate_layers`, :func:`default_layer` — where a CAM can look (:mod:`onnxcam.classifier.view`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from onnxcam.autodiff import gradients
from onnxcam.autodiff.layers import LayerInfo, candidate_layers
from onnxcam.autodiff.rules import RULES
from onnxcam.cams.embed import embed_cams
from onnxcam.classifier.view import open_classifier
from onnxcam.frontends.torch_export import export_torch
from onnxcam.frontends.torch_parity import torch_gradients

__all__ = [
    "RULES", "LayerInfo", "add_gradients", "candidate_layers", "default_layer", "embed_cams", "export_torch",
    "torch_gradients",
]


def add_gradients(model: onnx.ModelProto, *, cams: Sequence[str] | None = None,
                  cam_options: Mapping[str, Mapping[str, Any]] | None = None, cam_dtype: str = "float32",
                  overlay: bool = False, **options: Any) -> onnx.ModelProto:
    """:func:`onnxcam.autodiff.gradients.add_gradients` (``options``: activations, logits, target, layer_names,
    layouts, input_size, input_layout), then, with ``cams``, :func:`embed_cams` of those methods (with
    ``cam_options``, ``cam_dtype`` and ``overlay``)."""
    augmented = gradients.add_gradients(model, **options)
    if not cams:
        return augmented
    return embed_cams(augmented, list(cams), options=cam_options, dtype=cam_dtype, overlay=overlay)


def default_layer(model: onnx.ModelProto, *, input_size: tuple[int, int] | None = None,
                  input_layout: str | None = None) -> str:
    """The tensor onnxcam targets by default in ``model``: on a CNN the map entering the pooling before the head,
    on a transformer the last block's output tokens (docs/design.md, "Default layer")."""
    return open_classifier(model, input_size=input_size, input_layout=input_layout).require_default_layer()
