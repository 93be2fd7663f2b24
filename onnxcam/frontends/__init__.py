"""Front ends that turn a framework model into an onnxcam file: PyTorch (torch is imported inside them only)
and its parity harness against torch autograd."""
