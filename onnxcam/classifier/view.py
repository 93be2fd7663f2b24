"""``open_classifier``: any ONNX image classifier read as one view — the only place that decides its image input,
layout and size, its class score, its candidate and default layers, its preprocessing and labels
(docs/design.md §3). The gradient pass, ``annotate``, ``info`` and ``layers`` all start from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import helper

from onnxcam.classifier.inputs import ImageInput, fix_model_input, image_input
from onnxcam.classifier.layers import Candidate, candidates, default_layer, feeding, is_map_type
from onnxcam.classifier.scores import Score, find_score, flatten_score
from onnxcam.classifier.torch_names import module_tensor
from onnxcam.core.contract import ADAPTER, has_gradients, strip_gradients
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_queries import (
    opset_of,
    producers,
    rename_everywhere,
    resolve_tensor,
)
from onnxcam.core.metadata import CamMetadata, read_metadata
from onnxcam.core.preprocessing import IMAGENET_PREPROCESSING
from onnxcam.core.tensor_info import DynamicSizeError, TensorInfo, check_runs

#: The oldest opset a graph is taken at when it cannot be converted up to 17.
MIN_OPSET = 13


@dataclass
class ClassifierView:
    """A classifier as onnxcam reads it.

    ``model``: the plain classifier (any earlier gradient pass undone) with its image input as ``input``
    float32 ``[N,C,H,W]`` of static H and W (a Transpose adapter in front of a channels-last model) and its
    class score as an ``[N,K]`` tensor; ``metadata``: what the file records; ``source``: the file's own image
    input (name, dims as fixed, layout, whether the layout was detected, whether the size was fixed);
    ``declared``: that input as the file declares it (dims before fixing; ``source`` for an onnxcam graph);
    ``info``: shapes and types of ``model``'s tensors; ``score``: the class score (``tensor``), what the model
    outputs (``kind``: logits, softmax, log_softmax, sigmoid) and its own output (``output``); ``candidates``:
    the tensors a CAM can target; ``default_layer``: the default among them (None when there is no feature map),
    and ``default_reason`` why ("enters GlobalAveragePool", "last block output, class token pooled"; the rule is
    :mod:`onnxcam.classifier.layers`).
    """

    model: onnx.ModelProto
    metadata: CamMetadata
    source: ImageInput
    declared: ImageInput
    info: TensorInfo
    score: Score
    candidates: list[Candidate] = field(default_factory=list)
    default_layer: str | None = None
    default_reason: str = ""

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of ``input``."""
        dims = self.model.graph.input[0].type.tensor_type.shape.dim
        return dims[1].dim_value, dims[2].dim_value, dims[3].dim_value

    @property
    def num_classes(self) -> int | None:
        """K, the classes of the score (None when even ONNX Runtime cannot say)."""
        shape = self.info.shapes.get(self.score.tensor)
        return shape[-1] if shape else None

    @property
    def output_kind(self) -> str:
        """What the model outputs: the recorded kind when the graph shows plain logits, else the graph's."""
        recorded = self.metadata.output_kind
        return recorded if self.score.kind == "logits" and recorded else self.score.kind

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The file's preprocessing, or ImageNet's when it records none (:attr:`preprocessing_source`)."""
        return dict(self.metadata.preprocessing or IMAGENET_PREPROCESSING)

    @property
    def preprocessing_source(self) -> str:
        """"file" or "assumed (ImageNet)"."""
        return "file" if self.metadata.preprocessing else "assumed (ImageNet)"

    @property
    def labels(self) -> list[str] | None:
        """Class names, when the file records them."""
        return self.metadata.labels

    def require_default_layer(self) -> str:
        """:attr:`default_layer`, or a one-line error asking for ``--layer``."""
        if self.default_layer is None:
            raise OnnxcamError("found no pooled feature map or token tensor before the logits; "
                               "name the target layer with --layer")
        return self.default_layer

    def resolve_layer(self, name: str) -> str:
        """The tensor that layer ``name`` names: a tensor, the image input, or a torch module name (TorchScript
        exports), followed back through Identity nodes."""
        graph = self.model.graph
        known = producers(graph).keys() | {i.name for i in graph.input}
        tensor: str | None = "input" if name == self.source.name else name
        tensor = tensor if tensor in known else module_tensor(graph, name)
        if tensor is None:
            raise OnnxcamError(f"unknown layer '{name}'; run `onnxcam layers MODEL` to list the candidates")
        return resolve_tensor(graph, tensor)

    def probe(self, names: list[str]) -> None:
        """Learn the shapes of ``names`` with ONNX Runtime where shape inference left them open; a dynamic image
        size is reported at the first node whose output size it leaves open."""
        try:
            self.info.probe(self.model, names)
        except DynamicSizeError as exc:
            raise _dynamic_size_error(self.model, self.info, names, exc) from None


def open_classifier(model: onnx.ModelProto, *, input_size: tuple[int, int] | None = None,
                    input_layout: str | None = None, logits: str | None = None,
                    min_opset: int | None = None) -> ClassifierView:
    """The :class:`ClassifierView` of ``model`` (any ONNX classifier, or an onnxcam graph).

    ``input_size`` = (H, W) fixes a dynamic image size (else the recorded size); ``input_layout`` (NCHW/NHWC)
    overrides the detected layout; ``logits`` names the output to explain (default: the first); ``min_opset``
    converts an older graph up to opset 17 first (the gradient pass needs 16).
    """
    meta = read_metadata(model)
    plain = strip_gradients(model)
    if min_opset is not None:
        plain = _at_least_opset(plain, min_opset)
    fixed, source = fix_model_input(plain, meta, input_size, input_layout)
    declared = source if has_gradients(model) else image_input(plain, input_layout or meta.input_layout)
    graph = fixed.graph
    output = logits or graph.output[0].name
    if output not in {o.name for o in graph.output} and output not in producers(graph):
        raise OnnxcamError(f"tensor '{output}' (logits) is not in the model")
    if output == "input":
        raise OnnxcamError("the logits tensor is the model input")
    if source.resized:
        check_runs(fixed, output)
    info = TensorInfo(fixed)
    view = ClassifierView(fixed, meta, source, declared, info, Score(output, "logits", output))
    view.probe([output])
    score = find_score(fixed, output, info)
    view.probe([score.tensor])
    view.score = flatten_score(fixed, score, info)
    if view.score.tensor != "logits" and "logits" in producers(graph):  # the model's own output is named 'logits'
        rename_everywhere(graph, "logits", f"{ADAPTER}model_output")
        view.info = TensorInfo(fixed)
    feeds = feeding(fixed, view.score.tensor)
    view.probe(_open_shapes(fixed, view.info, feeds))
    view.candidates = candidates(fixed, view.info, feeds)
    chosen = default_layer(fixed, view.info, feeds, view.score.tensor, view.candidates)
    if chosen is not None:
        view.default_layer, view.default_reason = chosen.name, chosen.reason
    return view


def _open_shapes(model: onnx.ModelProto, info: TensorInfo, feeds: set[str]) -> list[str]:
    """The float and 8-bit integer tensors of ``feeds`` (those on the image's path to the score) whose size ONNX's
    shape inference left open (a Pad or a Resize whose sizes a graph computes at run time from Shape, as
    TensorFlow-style "same" padding does; the com.microsoft ops of a quantized graph): one ONNX Runtime run at the
    model's own input size learns them (:meth:`ClassifierView.probe`)."""
    return [out for node in model.graph.node for out in node.output
            if out in feeds and is_map_type(info, out) is not False
            and ((shape := info.shapes.get(out)) is None or None in shape[1:])]


def _dynamic_size_error(model: onnx.ModelProto, info: TensorInfo, names: list[str], exc: Exception) -> OnnxcamError:
    made_by = producers(model.graph)
    open_sizes = [t for t in names if info.shapes.get(t) is None or None in (info.shapes[t] or ())[1:]]
    node = next((made_by[t] for t in open_sizes if t in made_by), None)
    where = f"{node.op_type} node '{node.name}'" if node is not None else f"tensor '{open_sizes[0]}'"
    return OnnxcamError(f"{where} has a dynamic spatial size ({exc}); pass the image size with --input-size HxW "
                        "(Explainer(input_size=(H, W))), or record it with `onnxcam annotate --input-size`")



def _at_least_opset(model: onnx.ModelProto, minimum: int) -> onnx.ModelProto:
    """``model`` converted to opset 17 when it is below ``minimum`` (the gradient pass's ScatterElements with
    ``reduction="add"`` needs 16); kept as it is when the conversion fails at opset >= 13."""
    opset = opset_of(model)
    if opset >= minimum:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, 17)
    except Exception as exc:  # noqa: BLE001
        if opset < MIN_OPSET:
            raise OnnxcamError(f"the model uses opset {opset} and could not be converted to opset 17 ({exc}); "
                               "re-export it with opset >= 13") from None
        return model
    # Below opset 11 every Resize comes from an Upsample or a Resize-10, which sample at out/scale (asymmetric,
    # floor); onnx's converter gives them Resize-11's half-pixel default, another function: keep the old one.
    for node in converted.graph.node if opset < 11 else []:
        if node.op_type == "Resize":
            kept = [a for a in node.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                                   helper.make_attribute("nearest_mode", "floor")])
    return converted
