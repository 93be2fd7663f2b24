"""CAM methods: the method contract and registry (``base``), the methods (``methods/``, one module each, numpy
form and graph form side by side), rendering, and the embedder that writes finished maps into a file."""

from onnxcam.cams import methods as _methods  # noqa: F401  (registers every method)
from onnxcam.cams.base import (
    METHODS,
    CAMContext,
    CAMMethod,
    ModelAccess,
    NoOptions,
    Options,
    check_options,
    finalise,
    finalise_graph,
    get_method,
    graph_form,
    register,
    with_defaults,
)

__all__ = ["CAMContext", "CAMMethod", "METHODS", "ModelAccess", "NoOptions", "Options", "register", "graph_form",
           "get_method", "check_options", "finalise", "finalise_graph", "with_defaults"]
