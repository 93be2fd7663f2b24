"""CAM methods: numpy in, numpy out. Importing this package registers every method in METHODS."""

from . import base, cfcam, gradcam  # noqa: F401  (importing a method module registers it)
from .base import METHODS, CAMMethod, check_options, finalise, get_method, register

__all__ = ["CAMMethod", "METHODS", "register", "get_method", "check_options", "finalise"]
