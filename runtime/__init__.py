"""Run onnxcam graphs with ONNX Runtime and turn activations and gradients into CAMs (no torch)."""

from .errors import OnnxcamError
from .explainer import Explainer, Explanation, load_model
from .metadata import CamMetadata, read_metadata
from .methods import METHODS
from .render import overlay
from .stream import ImageResult
from .version import __version__

__all__ = ["METHODS", "CamMetadata", "Explainer", "Explanation", "ImageResult", "OnnxcamError", "__version__",
           "load_model", "overlay", "read_metadata"]
