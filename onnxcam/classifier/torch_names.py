"""Mapping a torch module name (``layer3``, ``features.14``) to the ONNX tensor it produced.

torch's TorchScript exporter names nodes after the module scope they come from, e.g.
``/model/features/features.14/conv/conv.2/Conv``: one path component per module, where a numbered child of
a container is written with its parent's component in front (``features.14``, ``conv.2``). The module's
output is the output of the last node inside that scope. Graphs from other exporters carry no such names.
"""

from __future__ import annotations

import onnx

#: The exporter's wrapper keeps the user's model under this attribute name.
WRAPPER_SCOPE = "/model"


def scope_of(module: str) -> str:
    """``features.14.conv.0`` → ``/model/features/features.14/conv/conv.0/``."""
    parts: list[str] = []
    for name in module.split("."):
        parts.append(f"{parts[-1]}.{name}" if parts and name.isdigit() else name)
    return f"{WRAPPER_SCOPE}/{'/'.join(parts)}/"


def module_tensor(graph: onnx.GraphProto, module: str) -> str | None:
    """The tensor the module named ``module`` outputs, or None when no node carries that scope."""
    prefix = scope_of(module)
    inside = [node for node in graph.node if node.name.startswith(prefix)]
    return inside[-1].output[0] if inside else None
