"""The CAM methods, one module (or sub-package) each. Importing this package imports every module in it, and
each registers its method with :func:`onnxcam.cams.base.register`: adding a method is adding a module here."""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
