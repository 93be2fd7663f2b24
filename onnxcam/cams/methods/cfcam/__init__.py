"""CF-CAM (Cluster Filter CAM): the method (``method``), its channel clustering (``clustering``: DBSCAN's
partition, exactly) and the clustering's graph form (``clustering_graph``)."""

from onnxcam.cams.methods.cfcam.method import CFCAMOptions, cfcam, cfcam_details, resolve_options

__all__ = ["CFCAMOptions", "cfcam", "cfcam_details", "resolve_options"]
