"""Explain a data set on a Ray cluster with Ray Data (``pip install 'onnxcam[ray]'``): the public face of
:mod:`onnxcam.runs.ray_engine`. Ray itself is imported only when a run starts."""

from onnxcam.runs.ray_engine import check_available, explain_dataset, explain_sources

__all__ = ["check_available", "explain_dataset", "explain_sources"]
