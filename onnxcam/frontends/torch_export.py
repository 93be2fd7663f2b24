"""PyTorch front door: export a classifier, add the gradient pass, check it against torch autograd
(:mod:`onnxcam.frontends.torch_parity`) and only then write the file.

torch is imported inside the functions only (:func:`onnxcam.frontends.torch_capture.require_torch`), so this
module loads where torch is absent.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx

from onnxcam.autodiff.gradients import add_gradients
from onnxcam.cams.embed import embed_cams
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.metadata import CamMetadata, write_metadata
from onnxcam.core.model_io import write_model
from onnxcam.core.preprocessing import IMAGENET_PREPROCESSING
from onnxcam.core.version import __version__
from onnxcam.frontends.torch_capture import capturing, layer_names_of, require_torch
from onnxcam.frontends.torch_parity import PARITY_TOLERANCE, check_parity

DEFAULT_OPSET = 17
DEFAULT_DYNAMO_OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
#: Class scores below this are float32 underflow (the smallest normal float32 is 1.2e-38), not a model's scores.
UNDERFLOW = 1e-30


def _export(wrapped: Any, targets: list[str], input_shape: tuple[int, int, int], opset: int | None,
            exporter: str) -> onnx.ModelProto:
    """``wrapped`` (returning logits and the layers' outputs, named ``targets``) as ONNX, batch axis dynamic.

    Under ``torch.no_grad()`` (:func:`_exporting`), so that a tensor a model computes from its parameters in
    its forward pass and keeps (LeViT's attention-bias cache) does not require grad. A cache filled with
    gradients on by an earlier forward pass is refused by torch's tracer as a constant that requires grad: the
    export is tried once more after ``model.train().eval()`` (LeViT drops its cache on a mode change), then that
    is a one-line error naming the fixes."""
    for attempt in range(2):
        try:
            with _exporting():
                return _export_graph(wrapped, targets, input_shape, opset, exporter)
        except Exception as exc:  # noqa: BLE001 - torch's exporters raise many types
            ours = _onnxcam_cause(exc)
            if ours is not None:  # raised inside the model's forward; the dynamo exporter wraps it
                raise ours from None
            if "Cannot insert a Tensor that requires grad as a constant" not in str(exc):
                if exporter == "torchscript" and _in_torch_onnx(exc):
                    raise OnnxcamError(f"torch's TorchScript exporter cannot export this model ({type(exc).__name__}: "
                                       f"{_first_line(exc)}); use exporter='dynamo' (onnxcam export --exporter "
                                       "dynamo)") from None
                raise
            if attempt == 0:
                wrapped.train().eval()
                continue
    raise OnnxcamError("the model keeps a tensor computed from its parameters with gradients on (a cache filled "
                       "by an earlier forward pass, e.g. LeViT's attention biases); reload the model, run earlier "
                       "forward passes under torch.no_grad(), or use exporter='dynamo'")


@contextlib.contextmanager
def _exporting() -> Iterator[None]:
    """``torch.no_grad()`` with ``nn.MultiheadAttention``'s fused fast path off (restored afterwards): with
    autograd off that path runs ``aten::_native_multi_head_attention``, which the TorchScript exporter cannot
    export (torchvision's ViT)."""
    torch = require_torch()
    mha = getattr(torch.backends, "mha", None)
    fastpath = mha.get_fastpath_enabled() if mha is not None else None
    try:
        if mha is not None:
            mha.set_fastpath_enabled(False)
        with torch.no_grad():
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(fastpath)


def _in_torch_onnx(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside ``torch.onnx`` (its symbolic functions), not in the model."""
    tb = exc.__traceback__
    last = ""
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return type(exc).__module__.startswith("torch.onnx") or f"{os.sep}torch{os.sep}onnx{os.sep}" in last


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def _onnxcam_cause(exc: BaseException | None) -> OnnxcamError | None:
    """The :class:`OnnxcamError` in ``exc``'s chain of causes, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OnnxcamError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _export_graph(wrapped: Any, targets: list[str], input_shape: tuple[int, int, int], opset: int | None,
                  exporter: str) -> onnx.ModelProto:
    torch = require_torch()
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

    ``model`` may return its class scores as a tensor, a tuple/list (first element), a dict (``logits``) or a
    Hugging Face ``ModelOutput`` (:func:`~onnxcam.frontends.torch_capture.score_tensor`); a ``target_layer`` that
    returns a tuple/list/dict (a Swin stage's ``(hidden, attention)``) is taken at its first tensor.

    Exports on CPU with a dynamic batch axis (``exporter``: torch's "torchscript" exporter, opset 17 by default,
    or the "dynamo" one, opset 18 by default), runs :func:`add_gradients`,
    writes metadata (``layouts`` overrides the inferred NCHW/NHWC/token layout), then checks ORT against
    ``torch.autograd.grad`` on two random inputs; above a relative error of 1e-4 it raises and writes
    nothing. ``cams`` embeds those methods' finished maps (``cam_<method>``, and ``overlay_<method>`` with
    ``overlay``; see ``embed.embed_cams``). Returns the path of the single self-contained file.
    """
    torch = require_torch()
    path = pathlib.Path(path)
    if labels is not None and len(labels) == 0:
        labels = None
    model = model.eval().cpu()
    if exporter not in EXPORTERS:
        raise OnnxcamError(f"unknown exporter '{exporter}'; use one of {', '.join(EXPORTERS)}")
    layer_names = layer_names_of(target_layer)
    targets = [f"onnxcam_target_{i}" for i in range(len(layer_names))]
    metadata = CamMetadata(
        input_size=list(input_shape),
        preprocessing=dict(preprocessing or IMAGENET_PREPROCESSING),
        labels=list(labels) if labels is not None else None,
        provenance={"exporter": f"onnxcam {__version__}", "source_framework": f"pytorch {torch.__version__}",
                    "torch_exporter": exporter, "model_class": type(model).__name__},
    )
    for barrier in (False, True):
        exported = _export(capturing(model, layer_names, barrier=barrier), targets, input_shape, opset, exporter)
        exported.producer_name = "pytorch"
        exported.producer_version = torch.__version__
        write_metadata(exported, metadata)
        try:
            result = add_gradients(exported, activations=targets, logits="logits", target=target,
                                   layer_names=layer_names, layouts=layouts)
            break
        except OnnxcamError as exc:
            # torch's exporter fuses a Transpose before the layer's output with one after it (SegFormer's encoder
            # output, permuted back by the head), so the logits no longer read the layer: export again with the
            # layer's output kept apart (an added zero)
            if barrier or "does not reach the logits" not in str(exc):
                raise
    if cams:
        result = embed_cams(result, list(cams), overlay=overlay)
    num_classes = result.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    if labels is not None and len(labels) != num_classes:
        raise OnnxcamError(f"{len(labels)} labels given for a model with {num_classes} classes")
    rng = np.random.default_rng(0)
    probes = [rng.standard_normal((2, *input_shape)).astype(np.float32) for _ in range(2)]
    parity = check_parity(model, result, layer_names, probes, target)
    if parity.error > PARITY_TOLERANCE and parity.scale < UNDERFLOW:
        raise OnnxcamError(f"gradient check impossible: the model's class scores are {parity.scale:.1e}, below "
                           "float32's normal range (random weights from a small initialisation, e.g. Hugging Face's "
                           "default std 0.02, shrink the activations to subnormal numbers that torch and ONNX "
                           "Runtime round differently); load trained weights; nothing was written")
    if parity.error > PARITY_TOLERANCE:
        raise OnnxcamError(f"gradient check failed: ONNX Runtime differs from torch.autograd by a relative error "
                           f"of {parity.error:.2e} (> {PARITY_TOLERANCE:g}); nothing was written")
    if parity.images < 2:
        raise OnnxcamError(f"gradient check inconclusive: {parity.flips} of 4 probe images hold values within float32 "
                           "rounding of a ReLU kink; nothing was written")
    write_model(result, path)
    return path
