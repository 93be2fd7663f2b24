"""CAM methods: numpy in, numpy out. Importing this package registers every method in METHODS."""

# importing a method module registers it
from . import (  # noqa: F401
    ablationcam,
    base,
    cfcam,
    eigencam,
    gradcam,
    gradcampp,
    hirescam,
    layercam,
    normgrad,
    scorecam,
    smoothgradcampp,
    xgradcam,
)
from .base import (
    METHODS,
    CAMMethod,
    check_options,
    finalise,
    finalise_graph,
    get_method,
    graph_form,
    register,
    with_defaults,
)

__all__ = ["CAMMethod", "METHODS", "register", "graph_form", "get_method", "check_options", "finalise",
           "finalise_graph", "with_defaults"]
