"""Hugging Face front door: a local ``save_pretrained`` folder loaded as an image classifier, its last stage
chosen as the default target layer, its preprocessing and labels read from the folder, then
:func:`~onnxcam.frontends.torch_export.export_torch`.

transformers and torch are imported inside the functions only. The preprocessor-config reader itself
(no engine needed) is :func:`onnxcam.classifier.hf_preprocessor.read_hf_preprocessor`.

The default layer (:func:`default_stage`) is one generic rule: walk the base model's children in the order the
forward pass runs them (a ``ModuleList`` stands for its items), drop the final norm / pooler / dropout, and take
the last one whose output (its first tensor) is a feature map or token tensor that reaches the logits; where that
output does not reach them (CvT hands the head its class token only) or the child itself ends in a norm
(SegFormer's encoder), descend into that child and apply the same rule. That is the encoder for ViT, Swin,
ResNet, ConvNeXt, EfficientNet…, ``conv_1x1_exp`` for MobileViT, ``conv_1x1`` for MobileNetV2, the last layer
of MobileNetV1, the last block of SegFormer's last stage and of CvT's last stage.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Any

from onnxcam.classifier.hf_preprocessor import read_hf_preprocessor
from onnxcam.core.errors import OnnxcamError
from onnxcam.frontends.torch_capture import hidden_tensor, require_torch, score_tensor
from onnxcam.frontends.torch_export import export_torch

#: Children of a base model that are the final norm, pooling or dropout (never the default target), by name.
_HEAD_NAMES = ("norm", "layernorm", "layer_norm", "fc_norm", "final_layernorm", "pooler", "pool", "dropout")
#: ... and by the end of their class name.
_HEAD_CLASSES = ("norm", "pooler", "pool1d", "pool2d", "dropout", "identity", "normactivation")


@dataclass
class HfModel:
    """A Hugging Face classifier loaded from a folder, with what the export needs."""

    model: Any
    input_shape: tuple[int, int, int]
    preprocessing: dict[str, Any] | None
    labels: list[str] | None
    model_type: str


def require_transformers() -> Any:
    """transformers, told not to load TensorFlow or Flax (onnxcam needs its PyTorch models only)."""
    os.environ.setdefault("USE_TF", "0")
    os.environ.setdefault("USE_FLAX", "0")
    try:
        import transformers
    except ImportError:
        raise OnnxcamError("--hf needs transformers; run `pip install transformers`") from None
    return transformers


def load_hf_classifier(folder: str | os.PathLike, input_size: int | None = None) -> HfModel:
    """The image classifier saved in ``folder`` (``config.json`` + weights; local files only, no network).

    ``input_size`` (square) overrides the config's ``image_size``; the preprocessing comes from the folder's
    ``preprocessor_config.json`` when there, the labels from ``config.id2label`` (None when they are the
    ``LABEL_<i>`` placeholders)."""
    path = pathlib.Path(folder)
    if not path.is_dir():
        raise OnnxcamError(f"'{path}' is not a folder; pass a Hugging Face model folder (save_pretrained output)")
    if not (path / "config.json").is_file():
        raise OnnxcamError(f"'{path}' has no config.json; pass a folder written by save_pretrained")
    require_torch()
    transformers = require_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises several types
        raise OnnxcamError(f"cannot read '{path / 'config.json'}': {_first_line(exc)}") from None
    known = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    if config.model_type not in known:
        raise OnnxcamError(f"'{path}' holds a {config.model_type!r} model, not an image classifier that "
                           "transformers' AutoModelForImageClassification loads")
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise OnnxcamError(f"cannot load the model in '{path}': {_first_line(exc)}") from None
    preprocessor = path / "preprocessor_config.json"
    preprocessing, size = (read_hf_preprocessor(preprocessor) if preprocessor.is_file() else (None, None))
    side = input_size or size or _config_size(config)
    channels = int(getattr(config, "num_channels", 3) or 3)
    return HfModel(model.eval(), (channels, side, side), preprocessing, hf_labels(config), str(config.model_type))


def _config_size(config: Any) -> int:
    size = getattr(config, "image_size", None) or 224
    return int(size[0] if isinstance(size, list | tuple) else size)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def hf_labels(config: Any) -> list[str] | None:
    """``config.id2label`` in class order; None when absent or only ``LABEL_<i>`` placeholders."""
    id2label = getattr(config, "id2label", None) or {}
    num = int(getattr(config, "num_labels", len(id2label)))
    labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(num)]
    if not labels or all(label == f"LABEL_{i}" for i, label in enumerate(labels)):
        return None
    return labels


def default_stage(model: Any, input_shape: tuple[int, int, int]) -> str:
    """The dotted name of the module whose output is the last hidden state before the final norm/pooling
    (the rule in the module docstring), found from one forward and one backward pass on a random input."""
    torch = require_torch()
    base_name = getattr(model, "base_model_prefix", "")
    base = getattr(model, base_name, None) if base_name else None
    if not isinstance(base, torch.nn.Module):
        base_name, base = "", model
    outputs: dict[str, Any] = {}
    order: list[str] = []
    handles = []

    def hook_for(name: str) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            hidden, _where = hidden_tensor(output)
            if hidden is not None and hidden.requires_grad and name not in outputs:
                outputs[name] = hidden
                order.append(name)

        return hook

    prefix = f"{base_name}." if base_name else ""
    for name, module in base.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(prefix + name)))
    try:
        with torch.enable_grad():
            x = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0))
            score = score_tensor(model(x)).sum()
            grads = dict(zip(order, torch.autograd.grad(score, [outputs[n] for n in order], allow_unused=True)))
    finally:
        for handle in handles:
            handle.remove()
    executed = set(order)

    def reach(name: str) -> str:
        """"map" when its output is a map/tokens with more than one position reaching the logits, "token" when one
        position alone does (the class token a class-token-pooled model's last block hands on), else "none"."""
        grad = grads.get(name)
        if outputs[name].ndim not in (3, 4) or grad is None:
            return "none"
        moving = grad[0].abs().sum(0 if grad.ndim == 4 else 1) > 0  # per position: [H, W] or [T]
        if moving.sum() > 1 or (moving.numel() == 1 and moving.all()):
            return "map"
        return "token" if moving.any() else "none"

    def is_head(name: str, child: Any) -> bool:
        return name.rsplit(".", 1)[-1] in _HEAD_NAMES or type(child).__name__.lower().endswith(_HEAD_CLASSES)

    def pick(parent: Any, parent_name: str) -> str | None:
        children = _ordered_children(parent, parent_name, executed, order)
        for name, child in reversed(children):
            if is_head(name, child):
                continue
            inner = _ordered_children(child, name, executed, order)
            state = reach(name)
            if state == "map" and not (inner and is_head(*inner[-1])):
                return name
            if state == "token" and not (len(inner) > 1 and type(inner[-1][1]) is type(inner[-2][1])):
                continue  # a block that hands on its class token only: the block before it
            found = pick(child, name)  # reaches nothing, ends in a norm, or a run of blocks ending in one
            if found is not None:
                return found
            if state == "map":
                return name
        return None

    found = pick(base, base_name)
    if found is None:
        raise OnnxcamError(f"found no stage of {type(model).__name__} whose output reaches the logits; pass --layer")
    return found


def _ordered_children(parent: Any, parent_name: str, executed: set[str], order: list[str]) -> list[tuple[str, Any]]:
    """``parent``'s children that ran, in the order they ran; a container that never runs itself (a
    ``ModuleList``) stands for its own children."""
    out: list[tuple[str, Any]] = []
    prefix = f"{parent_name}." if parent_name else ""
    for name, child in parent.named_children():
        full = prefix + name
        if full in executed:
            out.append((full, child))
        elif len(list(child.children())):
            out.extend(_ordered_children(child, full, executed, order))
    return sorted(out, key=lambda item: order.index(item[0]))


def export_hf(folder: str | os.PathLike, output: str | os.PathLike, *, layer: str | None = None,
              input_size: int | None = None, **options: Any) -> tuple[pathlib.Path, str]:
    """Export the classifier in ``folder`` with :func:`export_torch` at ``layer`` (default
    :func:`default_stage`), the folder's preprocessing and labels; returns the file's path and the layer."""
    loaded = load_hf_classifier(folder, input_size)
    target = layer or default_stage(loaded.model, loaded.input_shape)
    options.setdefault("preprocessing", loaded.preprocessing)
    options.setdefault("labels", loaded.labels)
    path = export_torch(loaded.model, output, target_layer=target, input_shape=loaded.input_shape, **options)
    return path, target

