"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations


class OnnxcamError(Exception):
    """An error caused by the user's input; the CLI prints its message alone, without a traceback."""


class UnsupportedOpError(OnnxcamError):
    """The gradient pass met an ONNX op that has no gradient rule."""


class ProviderError(OnnxcamError):
    """The requested ONNX Runtime execution provider is not available or did not start."""
