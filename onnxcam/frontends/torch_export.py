"""PyTorch front door: export a classifier, add the gradient pass, check it against torch autograd.

torch is imported inside the functions only, so ``onnxcam.exporter`` loads where torch is absent.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxcam.autodiff.gradients import add_gradients
from onnxcam.core.contract import target_output_names
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.metadata import CamMetadata, read_metadata, write_metadata
from onnxcam.core.preprocessing import IMAGENET_PREPROCESSING
from onnxcam.core.version import __version__

DEFAULT_OPSET = 17
DEFAULT_DYNAMO_OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
PARITY_TOLERANCE = 1e-4


def _require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise OnnxcamError("exporting from PyTorch needs torch; run `pip install onnxcam[export]`") from None
    return torch


def _layer(model: Any, name: str) -> Any:
    try:
        return model.get_submodule(name)
    except AttributeError:
        tops = ", ".join(n for n, _ in model.named_children())
        raise OnnxcamError(f"unknown layer '{name}' in {type(model).__name__}; use a dotted module name such as "
                           f"one of: {tops}") from None


def _capturing(model: Any, layer_names: Sequence[str], score_module: Any = None) -> Any:
    """A module returning ``(logits, *layer outputs)``; hooks hand downstream a clone (in-place safe).
    With ``score_module`` (the model's final Softmax/Sigmoid), ``logits`` is that module's input."""
    torch = _require_torch()
    layers = [_layer(model, name) for name in layer_names]

    class Capture(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            store: dict[str, list] = {name: [] for name in layer_names}

            def hook_for(name: str) -> Any:
                def hook(_module: Any, _inputs: Any, output: Any) -> Any:
                    if not isinstance(output, torch.Tensor):
                        raise OnnxcamError(f"layer '{name}' returns {type(output).__name__}, not a tensor")
                    store[name].append(output)
                    return output.clone()

                return hook

            handles = [layer.register_forward_hook(hook_for(name)) for name, layer in zip(layer_names, layers)]
            scores: list = []
            if score_module is not None:
                handles.append(score_module.register_forward_hook(lambda _m, inputs, _out: scores.append(inputs[0])))
            try:
                logits = self.model(x)
                if scores:
                    logits = scores[-1].reshape(len(x), -1)
            finally:
                for handle in handles:
                    handle.remove()
            for name, outputs in store.items():
                if len(outputs) != 1:
                    raise OnnxcamError(f"layer '{name}' runs {len(outputs)} times in the forward pass; pick a "
                                       "module that runs exactly once")
            return (logits, *(store[name][0] for name in layer_names))

    return Capture().eval()


def _names(layers: str | Sequence[str]) -> list[str]:
    return [layers] if isinstance(layers, str) else list(layers)


def final_activation(model: Any) -> Any:
    """The model's last Softmax / LogSoftmax / Sigmoid module (what onnxcam skips to reach the class score)."""
    torch = _require_torch()
    kinds = (torch.nn.Softmax, torch.nn.LogSoftmax, torch.nn.Sigmoid)
    found = [m for m in model.modules() if isinstance(m, kinds)]
    if not found:
        raise OnnxcamError("the exported graph ends in a softmax or sigmoid that is not an nn.Softmax/nn.Sigmoid "
                           "module; export the model without its final activation")
    return found[-1]


def torch_gradients(model: Any, layers: str | Sequence[str], x: np.ndarray, class_index: np.ndarray | None = None,
                    target: str = "logit", dtype: Any = None, output_kind: str | None = None,
                    ) -> dict[str, np.ndarray]:
    """Reference: logits, activations and ∂score/∂activations from ``torch.autograd.grad``, keyed like the
    exported graph's outputs. ``class_index`` −1 (or None) picks the predicted class, as the graph does.
    ``output_kind`` softmax/log_softmax/sigmoid: the score is the input of the model's final activation."""
    torch = _require_torch()
    dtype = dtype or torch.float32
    names = _names(layers)
    score_module = final_activation(model) if output_kind not in (None, "logits") else None
    wrapped = _capturing(model, names, score_module).to(dtype)
    xt = torch.as_tensor(x, dtype=dtype)
    with torch.enable_grad():
        logits, *acts = wrapped(xt)
        ci = torch.as_tensor(np.full(len(x), -1) if class_index is None else class_index, dtype=torch.long)
        ci = torch.where(ci < 0, logits.argmax(1), ci)
        if target == "probability":
            scores = torch.sigmoid(logits) if output_kind == "sigmoid" else torch.softmax(logits, 1)
        else:
            scores = logits
        score = scores.gather(1, ci[:, None]).sum()
        grads = torch.autograd.grad(score, acts)
    model.float()
    out = {"logits": logits.detach().double().numpy()}
    for (a_name, g_name), act, grad in zip(target_output_names(len(names)), acts, grads):
        out[a_name] = act.detach().double().numpy()
        out[g_name] = grad.detach().double().numpy()
    return out


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual − expected| / max |expected|."""
    scale = float(np.abs(expected).max())
    return float(np.abs(np.asarray(actual, np.float64) - expected).max() / (scale if scale > 0 else 1.0))


@dataclass
class Parity:
    """Result of :func:`check_parity`: the largest relative error over the images that count, how many
    images were compared, and how many were set aside as rounding flips (see below)."""

    error: float
    images: int
    flips: int


def check_parity(model: Any, onnx_model: onnx.ModelProto, layers: str | Sequence[str], inputs: list[np.ndarray],
                 target: str = "logit", tolerance: float = PARITY_TOLERANCE) -> Parity:
    """ORT (BASIC optimisation) against torch autograd, image by image, over the batches in ``inputs``.

    Torch differentiates the class ONNX Runtime predicted (class_index −1). An image over ``tolerance``
    against float32 torch is compared again with float64 torch (torch itself
    flips the odd ReLU mask in float32). One still over it is set aside as a rounding flip only when ONNX
    Runtime's forward pass holds a value within float32 rounding of a kink between the layer and the
    logits (:func:`near_kink`); otherwise it counts, and the error shows.
    """
    import onnxruntime as ort

    from onnxcam.frontends.kinks import near_kink

    torch = _require_torch()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs() if not o.name.startswith(("cam_", "overlay_"))]
    kind = read_metadata(onnx_model).output_kind
    worst, images, flips = 0.0, 0, 0
    for x in inputs:
        got = dict(zip(names, sess.run(names, {"input": x, "class_index": np.full(len(x), -1, np.int64)})))
        # torch explains the class ORT picked: with random weights the top two logits can tie within rounding
        ci = got["logits"].argmax(axis=1)
        errors = np.zeros(len(x))
        for dtype in (torch.float32, torch.float64):
            ref = torch_gradients(model, layers, x, ci, target, dtype=dtype, output_kind=kind)
            errors = np.array([max(relative_error(got[k][i], ref[k][i]) for k in names) for i in range(len(x))])
            if errors.max() <= tolerance:
                break
        flipped = (errors > tolerance) & near_kink(onnx_model, x) if errors.max() > tolerance else errors < 0
        flips += int(flipped.sum())
        images += int((~flipped).sum())
        worst = max(worst, float(errors[~flipped].max(initial=0.0)))
    return Parity(worst, images, flips)


def _export(wrapped: Any, targets: list[str], input_shape: tuple[int, int, int], opset: int | None,
            exporter: str) -> onnx.ModelProto:
    """``wrapped`` (returning logits and the layers' outputs, named ``targets``) as ONNX, batch axis dynamic."""
    torch = _require_torch()
    names = {"input_names": ["input"], "output_names": ["logits", *targets]}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("N", min=1, max=4096)
            program = torch.onnx.export(wrapped, (torch.zeros(2, *input_shape),), dynamo=True, verbose=False,
                                        opset_version=opset or DEFAULT_DYNAMO_OPSET, dynamic_shapes=({0: batch},),
                                        **names)
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(wrapped, (torch.zeros(1, *input_shape),), buffer, dynamo=False,
                          opset_version=opset or DEFAULT_OPSET, do_constant_folding=True,
                          dynamic_axes={name: {0: "N"} for name in ["input", "logits", *targets]}, **names)
        return onnx.load_from_string(buffer.getvalue())


def export_torch(
    model: Any,
    path: str | os.PathLike,
    *,
    target_layer: str | Sequence[str],
    input_shape: tuple[int, int, int] = (3, 224, 224),
    preprocessing: dict | None = None,
    labels: list[str] | None = None,
    opset: int | None = None,
    target: str = "logit",
    layouts: list[dict] | None = None,
    exporter: str = "torchscript",
    cams: Sequence[str] | None = None,
    overlay: bool = False,
) -> pathlib.Path:
    """Export ``model`` to ``path`` as an onnxcam graph (docs/design.md §2) with gradients at ``target_layer``.

    Exports on CPU with a dynamic batch axis (``exporter``: torch's "torchscript" exporter, opset 17 by default,
    or the "dynamo" one, opset 18 by default), runs :func:`add_gradients`,
    writes metadata (``layouts`` overrides the inferred NCHW/NHWC/token layout), then checks ORT against
    ``torch.autograd.grad`` on two random inputs; above a relative error of 1e-4 it raises and writes
    nothing. ``cams`` embeds those methods' finished maps (``cam_<method>``, and ``overlay_<method>`` with
    ``overlay``; see ``embed.embed_cams``). Returns the path of the single self-contained file.
    """
    torch = _require_torch()
    path = pathlib.Path(path)
    if labels is not None and len(labels) == 0:
        labels = None
    model = model.eval().cpu()
    if exporter not in EXPORTERS:
        raise OnnxcamError(f"unknown exporter '{exporter}'; use one of {', '.join(EXPORTERS)}")
    layer_names = _names(target_layer)
    targets = [f"onnxcam_target_{i}" for i in range(len(layer_names))]
    exported = _export(_capturing(model, layer_names), targets, input_shape, opset, exporter)
    exported.producer_name = "pytorch"
    exported.producer_version = torch.__version__
    write_metadata(exported, CamMetadata(
        input_size=list(input_shape),
        preprocessing=dict(preprocessing or IMAGENET_PREPROCESSING),
        labels=list(labels) if labels is not None else None,
        provenance={"exporter": f"onnxcam {__version__}", "source_framework": f"pytorch {torch.__version__}",
                    "torch_exporter": exporter, "model_class": type(model).__name__},
    ))
    result = add_gradients(exported, activations=targets, logits="logits", target=target,
                           layer_names=layer_names, layouts=layouts, cams=list(cams or []), overlay=overlay)
    num_classes = result.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    if labels is not None and len(labels) != num_classes:
        raise OnnxcamError(f"{len(labels)} labels given for a model with {num_classes} classes")
    rng = np.random.default_rng(0)
    probes = [rng.standard_normal((2, *input_shape)).astype(np.float32) for _ in range(2)]
    parity = check_parity(model, result, layer_names, probes, target)
    if parity.error > PARITY_TOLERANCE:
        raise OnnxcamError(f"gradient check failed: ONNX Runtime differs from torch.autograd by a relative error "
                           f"of {parity.error:.2e} (> {PARITY_TOLERANCE:g}); nothing was written")
    if parity.images < 2:
        raise OnnxcamError(f"gradient check inconclusive: {parity.flips} of 4 probe images hold values within float32 "
                           "rounding of a ReLU kink; nothing was written")
    from onnxcam.core.model_io import write_model

    write_model(result, path)
    return path
