"""The classifier view: any ONNX image classifier read as one dataclass (image input, layout, size, class score,
candidate and default layers, preprocessing, labels), and the metadata written into such a file."""
