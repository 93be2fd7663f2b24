"""onnxcam: class activation maps from ONNX files. Layers, each importing only those below it:
core ← classifier ← autodiff ← cams ← runtime | frontends ← runs | evaluation ← cli | exporter | ray
(see docs/design.md)."""

from onnxcam.core.version import __version__

__all__ = ["__version__"]
