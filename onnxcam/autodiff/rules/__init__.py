"""The gradient rules: one vector-Jacobian product per ONNX op type, in one module per op family (elementwise,
activations, reduce, shape, conv_pool, linear, resize, normalisation, no_gradient, quantized), each importing only
:mod:`onnxcam.autodiff.registry`.

Importing this package loads every module in this folder, which fills ``RULES``. Adding an op means adding one
function with ``@rule("OpType")`` to its family's module (or a new module here; nothing else to edit) and one test.
"""

from __future__ import annotations

import importlib
import pkgutil

from onnxcam.autodiff.registry import RULES, VJP, Grads, carries_gradient, reads_quantized, rule

#: The rule modules loaded, in load order (every module of this package).
MODULES = tuple(importlib.import_module(f"{__name__}.{m.name}") for m in sorted(pkgutil.iter_modules(__path__),
                                                                                    key=lambda m: m.name))

__all__ = ["MODULES", "RULES", "VJP", "Grads", "carries_gradient", "reads_quantized", "rule"]
