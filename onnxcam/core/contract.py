"""The names the onnxcam contract gives to what it adds to a classifier (docs/design.md §2), and undoing it:
the gradient pass's outputs, the adapter nodes that stay, the embedded CAMs."""

from __future__ import annotations

import onnx
from onnx import helper

from onnxcam.core.metadata import CamMetadata, read_metadata, write_metadata

#: Nodes named with this prefix adapt the model to onnxcam's contract; ``strip_gradients`` keeps them.
ADAPTER = "onnxcam/adapter/"


def target_output_names(count: int) -> list[tuple[str, str]]:
    """The (activations, gradients) output names for ``count`` target layers: suffixed ``_i`` when several."""
    if count == 1:
        return [("activations", "gradients")]
    return [(f"activations_{i}", f"gradients_{i}") for i in range(count)]


def has_gradients(model: onnx.ModelProto) -> bool:
    """True when ``model`` already follows the onnxcam contract (outputs ``logits`` and ``gradients``)."""
    names = {o.name for o in model.graph.output}
    return "logits" in names and ("gradients" in names or "gradients_0" in names)


TARGETS = ("logit", "probability")


def strip_gradients(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without a previous gradient pass: the plain classifier, ready to re-target."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if not any(n.name.startswith("onnxcam/") for n in g.node):
        return out
    meta: CamMetadata = read_metadata(out)
    kept = [n for n in g.node if not n.name.startswith("onnxcam/") or n.name.startswith(ADAPTER)]
    del g.node[:]
    g.node.extend(kept)
    used = {i for n in kept for i in n.input}
    inits = [i for i in g.initializer if not i.name.startswith("onnxcam/") or i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    inputs = [i for i in g.input if i.name != "class_index"]
    del g.input[:]
    g.input.extend(inputs)
    source = meta.provenance.get("logits_tensor")
    logits_vi = helper.make_tensor_value_info(source or "logits", onnx.TensorProto.FLOAT, None)
    del g.output[:]
    g.output.append(logits_vi)
    return out


PREFIX = "onnxcam/cam"


def strip_cams(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without embedded CAMs (nodes, constants, outputs and metadata)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    kept = [n for n in g.node if not n.name.startswith(PREFIX + "/")]
    if len(kept) != len(g.node):
        del g.node[:]
        g.node.extend(kept)
        inits = [i for i in g.initializer if not i.name.startswith(PREFIX + "/")]
        del g.initializer[:]
        g.initializer.extend(inits)
        outs = [o for o in g.output if not o.name.startswith(("cam_", "overlay_"))]
        del g.output[:]
        g.output.extend(outs)
    meta = read_metadata(out)
    if meta.cams:
        meta.cams = None
        write_metadata(out, meta)
    return out
