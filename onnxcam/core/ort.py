"""ONNX Runtime itself: importing it with an error that says how to install it, and its error messages."""

from __future__ import annotations

from typing import Any

from onnxcam.core.errors import OnnxcamError


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an error that says how to install it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxcamError("ONNX Runtime is not installed; run `pip install onnxcam[cpu]` "
                           "(or onnxcam[gpu] on a machine with an NVIDIA GPU)") from None
    ort.set_default_logger_severity(3)  # errors only: e.g. paddle2onnx files make ORT warn about unused Constants
    return ort


def ort_message(exc: BaseException) -> str:
    """The useful first line of an ONNX Runtime error, without its ``[ONNXRuntimeError] : 2 : ...`` prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rsplit(" : ", 1)[-1].strip()
