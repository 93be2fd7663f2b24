"""Run onnxcam graphs with ONNX Runtime and turn activations and gradients into CAMs (no torch)."""

from onnxcam.cams import METHODS
from onnxcam.cams.render import overlay
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.metadata import CamMetadata, read_metadata
from onnxcam.core.model_io import load_model
from onnxcam.core.version import __version__
from onnxcam.runtime.explainer import Explainer
from onnxcam.runtime.results import Explanation, ImageResult

__all__ = ["METHODS", "CamMetadata", "Explainer", "Explanation", "ImageResult", "OnnxcamError", "__version__",
           "load_model", "overlay", "read_metadata"]
