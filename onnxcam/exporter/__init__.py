"""Turn a classifier into an ONNX graph that also outputs a layer's activations and their gradients.

``add_gradients`` needs only onnx; ``export_torch`` imports torch when called.
"""

from onnxcam.autodiff.gradients import add_gradients, default_layer
from onnxcam.autodiff.rules import RULES
from onnxcam.classifier.layers import LayerInfo, candidate_layers
from onnxcam.frontends.torch_export import export_torch, torch_gradients

__all__ = [
    "RULES", "LayerInfo", "add_gradients", "candidate_layers", "default_layer", "export_torch", "torch_gradients",
]
