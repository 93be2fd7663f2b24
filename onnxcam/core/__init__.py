"""The ONNX contract: errors, metadata, layouts, the graph builder and graph queries, model I/O. Imports no
other onnxcam package."""
