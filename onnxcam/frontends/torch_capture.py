"""Running a PyTorch classifier so that it also returns chosen layers' outputs (forward hooks), and the model's
final Softmax/Sigmoid module: what the exporter and the parity harness both need. torch is imported inside the
functions only.

Models and layers need not return a bare tensor: a model's class scores are found by :func:`score_tensor`
(tuple/list, dict, Hugging Face ``ModelOutput``), a target layer's output by :func:`hidden_tensor` (the first
tensor of a tuple/list/dict, e.g. the hidden state of a Swin stage's ``(hidden, attention)``)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from onnxcam.core.errors import OnnxcamError

OUTPUT_FIX = ("return the logits as a tensor, a tuple/list with them first, a dict with key 'logits', or an object "
              "with a .logits tensor")


def require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise OnnxcamError("exporting from PyTorch needs torch; run `pip install onnxcam[export]`") from None
    return torch


def module_of(model: Any, name: str) -> Any:
    try:
        return model.get_submodule(name)
    except AttributeError:
        tops = ", ".join(n for n, _ in model.named_children())
        raise OnnxcamError(f"unknown layer '{name}' in {type(model).__name__}; use a dotted module name such as "
                           f"one of: {tops}") from None


def score_tensor(output: Any) -> Any:
    """The class-score tensor in a model's ``output``: the tensor itself, a tuple/list's first element, a dict's
    ``logits`` entry (else its first tensor value; a Hugging Face ``ModelOutput`` is such a dict), or an object's
    ``.logits`` tensor. Raises a one-line :class:`OnnxcamError` when none fits."""
    found = _scores_in(output, require_torch())
    if found is None:
        raise OnnxcamError(f"the model returns {type(output).__name__} holding no class-score tensor; {OUTPUT_FIX}")
    return found


def _scores_in(output: Any, torch: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        found = output.get("logits")
        if isinstance(found, torch.Tensor):
            return found
        return next((v for v in output.values() if isinstance(v, torch.Tensor)), None)
    if isinstance(output, tuple | list):
        return _scores_in(output[0], torch) if output else None
    found = getattr(output, "logits", None)
    return found if isinstance(found, torch.Tensor) else None


def hidden_tensor(output: Any) -> tuple[Any, Any]:
    """A layer's ``output`` as ``(its first tensor, where)``: ``where`` is None for a tensor, the index in a
    tuple/list, the key in a dict (Hugging Face ``ModelOutput`` included); ``(None, None)`` when it holds none."""
    torch = require_torch()
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, tuple | list):
        items: Any = enumerate(output)
    elif isinstance(output, Mapping):
        items = output.items()
    else:
        return None, None
    return next(((v, where) for where, v in items if isinstance(v, torch.Tensor)), (None, None))


def replace_hidden(output: Any, where: Any, tensor: Any) -> Any:
    """``output`` with its entry ``where`` (from :func:`hidden_tensor`) replaced by ``tensor``; the rest of the
    structure, and its type, kept (a tuple or list is rebuilt, a dict shallow-copied)."""
    if where is None:
        return tensor
    if isinstance(output, tuple | list):
        items = [tensor if i == where else v for i, v in enumerate(output)]
        if isinstance(output, tuple) and hasattr(output, "_fields"):  # a namedtuple
            return type(output)(*items)
        return type(output)(items)
    replaced = copy.copy(output) if isinstance(output, MutableMapping) else dict(output)
    replaced[where] = tensor
    return replaced


def capturing(model: Any, layer_names: Sequence[str], score_module: Any = None, barrier: bool = False) -> Any:
    """A module returning ``(logits, *layer outputs)``; hooks hand downstream a clone (in-place safe), with
    ``barrier`` the clone plus zero (an op torch's exporter keeps, so that it cannot fuse the ops either side).
    ``logits`` is :func:`score_tensor` of the model's output, or with ``score_module`` (the model's final
    Softmax/Sigmoid) that module's input. A layer returning a tuple/list/dict is taken at its first tensor
    (:func:`hidden_tensor`); downstream gets the same structure with the clone in that place."""
    torch = require_torch()
    layers = [module_of(model, name) for name in layer_names]

    class Capture(torch.nn.Module):  # type: ignore[name-defined]  # torch is imported at run time
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            store: dict[str, list] = {name: [] for name in layer_names}

            def hook_for(name: str) -> Any:
                def hook(_module: Any, _inputs: Any, output: Any) -> Any:
                    hidden, where = hidden_tensor(output)
                    if hidden is None:
                        raise OnnxcamError(f"layer '{name}' returns {type(output).__name__} holding no tensor; pick "
                                           "a module that outputs the feature map (a tensor, or a tuple/dict with it)")
                    store[name].append(hidden)
                    return replace_hidden(output, where, hidden.clone() + 0.0 if barrier else hidden.clone())

                return hook

            handles = [layer.register_forward_hook(hook_for(name)) for name, layer in zip(layer_names, layers)]
            scores: list = []
            if score_module is not None:
                handles.append(score_module.register_forward_hook(lambda _m, inputs, _out: scores.append(inputs[0])))
            try:
                output = self.model(x)
                logits = scores[-1].reshape(len(x), -1) if scores else score_tensor(output)
            finally:
                for handle in handles:
                    handle.remove()
            for name, outputs in store.items():
                if len(outputs) != 1:
                    raise OnnxcamError(f"layer '{name}' runs {len(outputs)} times in the forward pass; pick a "
                                       "module that runs exactly once")
            return (logits, *(store[name][0] for name in layer_names))

    return Capture().eval()


def layer_names_of(layers: str | Sequence[str]) -> list[str]:
    return [layers] if isinstance(layers, str) else list(layers)


def final_activation(model: Any) -> Any:
    """The model's last Softmax / LogSoftmax / Sigmoid module (what onnxcam skips to reach the class score)."""
    torch = require_torch()
    kinds = (torch.nn.Softmax, torch.nn.LogSoftmax, torch.nn.Sigmoid)
    found = [m for m in model.modules() if isinstance(m, kinds)]
    if not found:
        raise OnnxcamError("the exported graph ends in a softmax or sigmoid that is not an nn.Softmax/nn.Sigmoid "
                           "module; export the model without its final activation")
    return found[-1]
