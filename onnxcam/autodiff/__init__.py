"""Reverse-mode differentiation of ONNX graphs: the rule registry, the rules (one module per op family) and the
pass that adds ``activations``/``gradients`` outputs to a classifier."""
