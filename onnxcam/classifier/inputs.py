"""The image input of a classifier from any framework: its layout, fixing a dynamic size, the NCHW adapter.

onnxcam graphs always take ``input`` float32 ``[N,C,H,W]``. A channels-last model (tf2onnx, tflite2onnx,
Keras: ``[N,H,W,C]``) gets a ``Transpose`` in front of its own input; a model with symbolic or unknown
height and width gets them fixed to the size the user gives. Both are recorded in the metadata
(``input_layout``, ``input_size``), so the next run needs no flag.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from onnxcam.core.contract import ADAPTER
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_queries import data_inputs, rename_everywhere
from onnxcam.core.metadata import CamMetadata

INPUT_LAYOUTS = ("NCHW", "NHWC")
CHANNELS = (1, 3)

Dim = int | None


#: Image input types onnxcam feeds through a Cast from float32.
CAST_INPUTS = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


@dataclass(frozen=True)
class ImageInput:
    """The model's image input as found: ``name``, ``dims`` in the file's own order (None = unknown or
    symbolic), the ``layout`` it was read in and whether that was ``detected`` or given."""

    name: str
    dims: tuple[Dim, ...]
    layout: str
    detected: bool
    resized: bool = False  # the file's H/W were dynamic and have been fixed

    @property
    def channels(self) -> Dim:
        return self.dims[1] if self.layout == "NCHW" else self.dims[3]

    @property
    def size(self) -> tuple[Dim, Dim]:
        """(H, W) as the file declares them."""
        return (self.dims[2], self.dims[3]) if self.layout == "NCHW" else (self.dims[1], self.dims[2])

    def describe(self) -> str:
        return "[" + ",".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(self.dims)) + "]"


def parse_size(text: str) -> tuple[int, int]:
    """``"224x224"`` (or ``"224"``) → (224, 224), with a one-line error naming the expected form."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise OnnxcamError(f"input size '{text}' is not HxW with positive whole numbers; "
                           "pass e.g. --input-size 224x224")
    return values[0], values[1]




def image_input(model: onnx.ModelProto, layout: str | None = None) -> ImageInput:
    """The model's one image input and its layout: ``layout`` when given (checked against the shape), else
    NHWC when the last axis is 1 or 3 and axis 1 is not, else NCHW."""
    inputs = data_inputs(model.graph)
    if len(inputs) != 1:
        raise OnnxcamError(f"expected a classifier with one image input, found {len(inputs)} inputs "
                           f"({', '.join(i.name for i in inputs)})")
    vi = inputs[0]
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in vi.type.tensor_type.shape.dim)
    if len(dims) != 4:
        raise OnnxcamError(f"the input '{vi.name}' has rank {len(dims)}; onnxcam explains image classifiers with "
                           "an input [N,C,H,W] or [N,H,W,C]")
    if vi.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, 0, *CAST_INPUTS):
        type_name = onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)
        raise OnnxcamError(f"the input '{vi.name}' is {type_name}; onnxcam explains models with a floating-point "
                           "image input (float32, float16, bfloat16 or float64)")
    shown = ImageInput(vi.name, dims, "NCHW", True).describe()
    if layout is None:
        nhwc = dims[3] in CHANNELS and dims[1] not in CHANNELS
        return ImageInput(vi.name, dims, "NHWC" if nhwc else "NCHW", True)
    layout = layout.upper()
    if layout not in INPUT_LAYOUTS:
        raise OnnxcamError(f"unknown input layout '{layout}'; use NCHW or NHWC")
    found = ImageInput(vi.name, dims, layout, False)
    other_axis = 3 if layout == "NCHW" else 1
    if (found.channels is not None and found.channels not in CHANNELS) or (
            found.channels is None and dims[other_axis] in CHANNELS):
        other = "NHWC" if layout == "NCHW" else "NCHW"
        raise OnnxcamError(f"--input-layout {layout} contradicts the model's input '{vi.name}' {shown}, whose "
                           f"channels are on the {'last' if layout == 'NCHW' else 'second'} axis; leave the option "
                           f"out or pass {other}")
    return found


def fix_input(model: onnx.ModelProto, *, input_size: tuple[int, int] | None = None, layout: str | None = None,
              recorded_size: tuple[int, int] | None = None) -> tuple[onnx.ModelProto, ImageInput]:
    """A copy of ``model`` whose image input is ``input`` float32 ``[N,C,H,W]`` with a static H and W.

    ``input_size`` fixes a symbolic or unknown H/W (and must agree with a static one); without it the
    ``recorded_size`` from the metadata is used. A channels-last input gets a Transpose adapter.
    """
    found = image_input(model, layout)
    size = list(found.size)
    if input_size is not None:
        for declared, wanted in zip(found.size, input_size):
            if declared is not None and declared != wanted:
                fixed = "x".join(str(d) for d in found.size)
                raise OnnxcamError(f"--input-size {input_size[0]}x{input_size[1]} contradicts the model, whose input "
                                   f"'{found.name}' {found.describe()} is fixed at {fixed}; leave --input-size out")
        size = list(input_size)
    elif None in size and recorded_size is not None:
        size = [d if d is not None else r for d, r in zip(size, recorded_size)]
    if None in size:
        raise OnnxcamError(f"the model's input '{found.name}' {found.describe()} has a dynamic image size; pass "
                           "--input-size HxW (Explainer(input_size=(H, W))), or record it once with "
                           "`onnxcam annotate MODEL --input-size HxW -o OUT`")
    channels = found.channels or 3
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    _cast_input(graph, found.name)
    vi = next(i for i in graph.input if i.name == found.name)
    position = list(graph.input).index(vi)
    if list(found.size) != size:  # the file's own intermediate shapes were for another (symbolic) size
        del graph.value_info[:]
    source_dims = (None, channels, *size) if found.layout == "NCHW" else (None, *size, channels)
    if found.layout == "NCHW":
        rename_everywhere(graph, found.name, "input")
        graph.input[position].CopyFrom(helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                     ["N", channels, *size]))
    else:
        internal = found.name if found.name != "input" else f"{ADAPTER}image"
        rename_everywhere(graph, found.name, internal)
        if found.name != "input":
            rename_everywhere(graph, "input", f"{ADAPTER}renamed_input")
        graph.input.remove(graph.input[position])
        graph.input.insert(position, helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                   ["N", channels, *size]))
        graph.node.insert(0, helper.make_node("Transpose", ["input"], [internal], perm=[0, 2, 3, 1],
                                              name=f"{ADAPTER}input_layout"))
    return out, ImageInput(found.name, source_dims, found.layout, found.detected, list(found.size) != size)


def _cast_input(graph: onnx.GraphProto, name: str) -> None:
    """A float16 / bfloat16 / float64 image input ``name`` becomes float32, with a Cast adapter to what the model
    reads (exact for images: preprocessed pixels fit float16's range)."""
    vi = next(i for i in graph.input if i.name == name)
    dtype = vi.type.tensor_type.elem_type
    if dtype not in CAST_INPUTS:
        return
    internal = f"{ADAPTER}image_{onnx.TensorProto.DataType.Name(dtype).lower()}"
    as_float = onnx.ValueInfoProto()
    as_float.CopyFrom(vi)
    as_float.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    position = list(graph.input).index(vi)
    rename_everywhere(graph, name, internal)
    graph.input.remove(graph.input[position])
    graph.input.insert(position, as_float)
    graph.node.insert(0, helper.make_node("Cast", [name], [internal], to=dtype, name=f"{ADAPTER}input_type"))


def fix_model_input(model: onnx.ModelProto, meta: CamMetadata, input_size: tuple[int, int] | None,
               input_layout: str | None) -> tuple[onnx.ModelProto, ImageInput]:
    """``fix_input`` with what the metadata records: its input size, and its layout unless the graph already
    carries onnxcam's NCHW adapter (an augmented file: then the source layout is the recorded one)."""
    recorded = (meta.input_size[1], meta.input_size[2]) if meta.input_size and len(meta.input_size) == 3 else None
    adapted = any(n.name.startswith(ADAPTER + "input_layout") for n in model.graph.node)
    if adapted:
        if input_layout and input_layout.upper() != (meta.input_layout or "NHWC"):
            raise OnnxcamError(f"--input-layout {input_layout} contradicts the file, whose model was recorded as "
                               f"{meta.input_layout or 'NHWC'}; leave the option out")
        fixed, found = fix_input(model, input_size=input_size, layout="NCHW", recorded_size=recorded)
        return fixed, ImageInput(meta.provenance.get("input_tensor", found.name), found.dims, "NHWC",
                                 found.detected, found.resized)
    layout = input_layout or meta.input_layout
    return fix_input(model, input_size=input_size, layout=layout, recorded_size=recorded)
