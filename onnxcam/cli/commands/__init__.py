"""The commands of ``onnxcam``, one module each; every module defines a click command named ``command``."""
