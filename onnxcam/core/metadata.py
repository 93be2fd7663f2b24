"""The metadata an onnxcam graph carries in ONNX ``metadata_props`` (docs/design.md §2).

Every field is stored as JSON under the key ``onnxcam.<field>`` so that any ONNX tool can read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import onnx

FORMAT_VERSION = 1
KEY_PREFIX = "onnxcam."



@dataclass
class CamMetadata:
    """What ``onnxcam explain`` needs to run on the file alone.

    ``target_layers`` are the names a user gave (a torch module name or a tensor name);
    ``target_tensors`` the ONNX tensors they resolved to, in the order of the ``activations_i`` outputs;
    ``layouts`` one dict per target (``layout`` NCHW/NHWC/NTC, ``grid``, ``prefix_tokens``, see
    :mod:`onnxcam.core.layout`) and ``layout`` the first one's kind.
    ``preprocessing``: ``x = (pixel·scale − mean) / std`` after an optional short-side ``resize`` and centre
    ``crop`` (``[H, W]``); with neither, the image is resized straight to the input size.
    ``input_size`` is ``[C, H, W]`` of the graph's NCHW ``input``; ``input_layout`` the layout of the source
    model's own image input (NCHW, or NHWC behind onnxcam's Transpose adapter; None: detect it).
    ``output_kind``: what the source model outputs (``logits``, ``softmax``, ``log_softmax``, ``sigmoid``);
    ``logits`` is always the class score, and probabilities are computed from it accordingly.
    ``cams``: the CAMs embedded in the graph (``onnxcam embed``), one dict per method: ``method``, ``options``
    (all of them, defaults included), ``output`` (``cam_<method>``), ``dtype`` (float32 or uint8), ``overlay``
    (``overlay_<method>`` or None), ``alpha``, ``colormap``, and the ``preprocessing`` the overlay undoes.
    """

    target_layers: list[str] = field(default_factory=list)
    target_tensors: list[str] = field(default_factory=list)
    layout: str = "NCHW"
    layouts: list[dict[str, Any]] = field(default_factory=list)
    input_size: list[int] | None = None
    preprocessing: dict[str, Any] | None = None
    labels: list[str] | None = None
    target: str = "logit"
    input_layout: str | None = None
    output_kind: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    cams: list[dict[str, Any]] | None = None
    format_version: int = FORMAT_VERSION


def read_metadata(model: onnx.ModelProto) -> CamMetadata:
    """Read the ``onnxcam.*`` keys of ``model``; missing keys keep their defaults."""
    props = {p.key: p.value for p in model.metadata_props}
    values = {}
    for f in fields(CamMetadata):
        raw = props.get(KEY_PREFIX + f.name)
        if raw is not None:
            values[f.name] = json.loads(raw)
    return CamMetadata(**values)


def write_metadata(model: onnx.ModelProto, meta: CamMetadata) -> None:
    """Replace the ``onnxcam.*`` keys of ``model`` with ``meta``; other keys are kept."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(KEY_PREFIX)]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    for name, value in asdict(meta).items():
        if value is not None:
            model.metadata_props.add(key=KEY_PREFIX + name, value=json.dumps(value))






def class_probabilities(logits: np.ndarray, kind: str | None) -> np.ndarray:
    """Class probabilities from class scores: sigmoid for multi-label (``sigmoid``) heads, else a softmax
    over classes (never applied twice: ``logits`` is always the score before the model's own softmax)."""
    z = np.asarray(logits)
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-z))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
