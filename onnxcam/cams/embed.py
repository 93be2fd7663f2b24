"""Embedding finished CAMs in the graph (docs/design.md §6): outputs ``cam_<method>`` and,
optionally, ``overlay_<method>``, built from standard ONNX ops by each method's graph form, so that any ONNX
runtime gets the map from the file alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx
from onnx import helper

from onnxcam.autodiff.gradients import add_gradients
from onnxcam.cams.base import METHODS, finalise_graph, get_method, with_defaults
from onnxcam.cams.render import overlay_graph, to_uint8_graph
from onnxcam.core.contract import PREFIX, has_gradients, strip_cams, target_output_names
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import GraphBuilder, set_ir_version
from onnxcam.core.graph_queries import opset_of
from onnxcam.core.layout import to_nchw_graph
from onnxcam.core.metadata import read_metadata, write_metadata
from onnxcam.core.preprocessing import IMAGENET_PREPROCESSING, check_preprocessing

DTYPES = ("float32", "uint8")


def embeddable() -> list[str]:
    """The methods that have a graph form."""
    return sorted(name for name, spec in METHODS.items() if spec.build is not None)


def check_cams(cams: Sequence[str]) -> list[str]:
    """``cams`` without repeats, each checked to be a method with a graph form; one-line errors otherwise."""
    names = list(dict.fromkeys(cams))
    if not names:
        raise OnnxcamError(f"name at least one method to embed; embeddable: {', '.join(embeddable())}")
    for name in names:
        if get_method(name).build is None:
            raise OnnxcamError(f"method '{name}' cannot be embedded in the graph (it has no graph form); "
                               f"embeddable: {', '.join(embeddable())}")
    return names


def embed_cams(
    model: onnx.ModelProto,
    cams: Sequence[str],
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: str = "float32",
    overlay: bool = False,
    alpha: float = 0.5,
    colormap: str = "jet",
    layer: str | list[str] | None = None,
    input_size: tuple[int, int] | None = None,
    input_layout: str | None = None,
) -> onnx.ModelProto:
    """``model`` (any ONNX classifier, or an onnxcam graph) with the CAMs of ``cams`` as outputs.

    Each method m adds ``cam_<m>``: ``[N,H,W]`` at the input resolution, upsampled and scaled to [0, 1] as
    ``methods.finalise`` does (``dtype="uint8"``: ⌊255·m + 0.5⌋), for the class ``class_index`` selects (−1:
    predicted); ``overlay`` adds ``overlay_<m>``, ``[N,H,W,3]`` uint8, the input de-normalised with the
    metadata's preprocessing and blended with ``colormap`` at opacity ``alpha``. ``options`` maps a method to
    its options. Several target layers: each layer's map is scaled, the maps averaged and divided by their
    maximum. A plain classifier gets its gradients first (``add_gradients`` with ``layer``, ``input_size``,
    ``input_layout``); CAMs already embedded are replaced.
    """
    names = check_cams(cams)
    if dtype not in DTYPES:
        raise OnnxcamError(f"--cam-dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    unknown = sorted(set(options or {}) - set(names))
    if unknown:
        raise OnnxcamError(f"options given for {', '.join(unknown)}, which is not embedded; embed it with --cam")
    resolved = {name: METHODS[name].resolve((options or {}).get(name)) for name in names}
    recorded = {name: with_defaults(METHODS[name], (options or {}).get(name)) for name in names}
    meta = read_metadata(model)
    if has_gradients(model) and layer is None and input_size is None and input_layout is None:
        model = strip_cams(model)
    else:  # a plain classifier, or a new layer or input: the gradient pass first
        model = add_gradients(model, activations=layer if layer is not None else (meta.target_layers or None),
                              target=meta.target, input_size=input_size, input_layout=input_layout)
    meta = read_metadata(model)
    outputs = {o.name: o for o in model.graph.output}
    pairs = target_output_names(len(meta.target_tensors))
    layouts = meta.layouts or [{"layout": "NCHW"}] * len(pairs)
    if meta.input_size is None:
        raise OnnxcamError("the model records no input size; re-export it with a static image size")
    channels, height, width = meta.input_size
    preprocessing = check_preprocessing(dict(meta.preprocessing or IMAGENET_PREPROCESSING), channels)

    b = GraphBuilder(PREFIX, opset=opset_of(model))
    # per target layer: activations and gradients as [N,C,h,w], and (C, h, w); shared by the methods
    tensors: list[tuple[str, str, tuple[int, int, int]]] = []
    for (a_name, g_name), layout in zip(pairs, layouts):
        shape = tuple(d.dim_value for d in outputs[a_name].type.tensor_type.shape.dim[1:])
        if not shape or 0 in shape:
            raise OnnxcamError(f"the shape of '{a_name}' is not static; re-export the model with a static image size")
        a, nchw = to_nchw_graph(b, a_name, layout, shape)
        g, _ = to_nchw_graph(b, g_name, layout, shape)
        tensors.append((a, g, nchw))
    new_outputs, entries = [], []
    for name in names:
        spec = METHODS[name]
        maps = [finalise_graph(b, spec.graph(b, a, g, nchw, resolved[name]), (height, width), spec.normalise,
                               nchw[1:]) for a, g, nchw in tensors]
        cam = maps[0] if len(maps) == 1 else _fuse_graph(b, maps)
        out = cam if dtype == "float32" else to_uint8_graph(b, cam)
        b.nodes.append(helper.make_node("Identity", [out], [f"cam_{name}"], name=f"{PREFIX}/cam_{name}"))
        elem = onnx.TensorProto.FLOAT if dtype == "float32" else onnx.TensorProto.UINT8
        new_outputs.append(helper.make_tensor_value_info(f"cam_{name}", elem, ["N", height, width]))
        entry: dict[str, Any] = {"method": name, "options": recorded[name], "output": f"cam_{name}", "dtype": dtype,
                                 "overlay": None}
        if overlay:
            shown = overlay_graph(b, "input", cam, preprocessing, alpha, colormap)
            b.nodes.append(helper.make_node("Identity", [shown], [f"overlay_{name}"], name=f"{PREFIX}/overlay_{name}"))
            new_outputs.append(helper.make_tensor_value_info(f"overlay_{name}", onnx.TensorProto.UINT8,
                                                             ["N", height, width, 3]))
            entry.update(overlay=f"overlay_{name}", alpha=alpha, colormap=colormap, preprocessing=preprocessing)
        entries.append(entry)
    b.add_to(model)
    model.graph.output.extend(new_outputs)
    meta.cams = entries
    write_metadata(model, meta)
    set_ir_version(model)
    onnx.checker.check_model(model, full_check=False)
    return model


def _fuse_graph(b: GraphBuilder, maps: list[str]) -> str:
    """Several layers' [0, 1] maps → their mean divided by its maximum, per image (as the runtime's ``_fuse``)."""
    mean = b.op("Div", b.op("Sum", *maps), b.const(float(len(maps))))
    peak = b.reduce("ReduceMax", mean, [1, 2])
    positive = b.op("Greater", peak, b.const(0.0))
    return b.op("Where", positive, b.op("Div", mean, b.op("Where", positive, peak, b.const(1.0))), mean)




__all__ = ["check_cams", "embed_cams", "embeddable", "strip_cams"]
