"""Running a PyTorch classifier so that it also returns chosen layers' outputs (forward hooks), and the model's
final Softmax/Sigmoid module: what the exporter and the parity harness both need. torch is imported inside the
functions only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from onnxcam.core.errors import OnnxcamError


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


def capturing(model: Any, layer_names: Sequence[str], score_module: Any = None) -> Any:
    """A module returning ``(logits, *layer outputs)``; hooks hand downstream a clone (in-place safe).
    With ``score_module`` (the model's final Softmax/Sigmoid), ``logits`` is that module's input."""
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
