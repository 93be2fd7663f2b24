"""Checking an exported onnxcam file against torch autograd: the reference gradients and the parity check that
``export_torch`` runs before it writes anything (rounding flips at ReLU kinks set aside: :mod:`.kinks`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxcam.core.contract import target_output_names
from onnxcam.core.metadata import read_metadata
from onnxcam.core.ort import onnxruntime
from onnxcam.frontends.kinks import near_kink
from onnxcam.frontends.torch_capture import capturing, final_activation, layer_names_of, require_torch

PARITY_TOLERANCE = 1e-4


def torch_gradients(model: Any, layers: str | Sequence[str], x: np.ndarray, class_index: np.ndarray | None = None,
                    target: str = "logit", dtype: Any = None, output_kind: str | None = None,
                    ) -> dict[str, np.ndarray]:
    """Reference: logits, activations and ∂score/∂activations from ``torch.autograd.grad``, keyed like the
    exported graph's outputs. ``class_index`` −1 (or None) picks the predicted class, as the graph does.
    ``output_kind`` softmax/log_softmax/sigmoid: the score is the input of the model's final activation.

    A single image is run as a batch of two copies: at batch 1 torch's CPU autograd returns wrong gradients
    for some models (Hugging Face CvT before its last stage: relative error 1.2, where finite differences agree
    with ONNX Runtime and with torch at batch 2)."""
    torch = require_torch()
    if len(x) == 1:  # torch's CPU autograd is wrong on some batch-1 inputs: run the image twice, keep one
        pair = torch_gradients(model, layers, np.concatenate([x, x]),
                               None if class_index is None else np.concatenate([class_index, class_index]),
                               target, dtype, output_kind)
        return {key: value[:1] for key, value in pair.items()}
    dtype = dtype or torch.float32
    names = layer_names_of(layers)
    score_module = final_activation(model) if output_kind not in (None, "logits") else None
    wrapped = capturing(model, names, score_module).to(dtype)
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
    scale: float = 1.0  #: the largest |logit| torch computed (float32 underflow shows as a tiny scale)


def check_parity(model: Any, onnx_model: onnx.ModelProto, layers: str | Sequence[str], inputs: list[np.ndarray],
                 target: str = "logit", tolerance: float = PARITY_TOLERANCE) -> Parity:
    """ORT (BASIC optimisation) against torch autograd, image by image, over the batches in ``inputs``.

    Torch differentiates the class ONNX Runtime predicted (class_index −1). An image over ``tolerance``
    against float32 torch is compared again with float64 torch (torch itself
    flips the odd ReLU mask in float32). One still over it is set aside as a rounding flip only when ONNX
    Runtime's forward pass holds a value within float32 rounding of a kink between the layer and the
    logits (:func:`near_kink`); otherwise it counts, and the error shows.
    """
    torch = require_torch()
    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs() if not o.name.startswith(("cam_", "overlay_"))]
    kind = read_metadata(onnx_model).output_kind
    worst, images, flips, scale = 0.0, 0, 0, 0.0
    for x in inputs:
        got = dict(zip(names, sess.run(names, {"input": x, "class_index": np.full(len(x), -1, np.int64)})))
        # torch explains the class ORT picked: with random weights the top two logits can tie within rounding
        ci = got["logits"].argmax(axis=1)
        errors = np.zeros(len(x))
        for dtype in (torch.float32, torch.float64):
            ref = torch_gradients(model, layers, x, ci, target, dtype=dtype, output_kind=kind)
            errors = np.array([max(relative_error(got[k][i], ref[k][i]) for k in names) for i in range(len(x))])
            scale = max(scale, float(np.abs(ref["logits"]).max()))
            if errors.max() <= tolerance:
                break
        flipped = (errors > tolerance) & near_kink(onnx_model, x) if errors.max() > tolerance else errors < 0
        flips += int(flipped.sum())
        images += int((~flipped).sum())
        worst = max(worst, float(errors[~flipped].max(initial=0.0)))
    return Parity(worst, images, flips, scale)
