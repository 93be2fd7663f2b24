"""Registry of CAM methods and the post-processing they share (upsampling, scaling to [0, 1]).

A method is a function ``compute(activations [N,C,h,w], gradients [N,C,h,w], **options) -> maps [N,h,w]``
that returns ReLU'd maps at feature resolution (methods that need extra passes through the model register
with ``uses_model=True`` and receive a ``context.CAMContext`` instead); :func:`finalise` upsamples them to
the input size and scales each one to [0, 1]. Adding a method means one module that decorates its compute function with
:func:`register`, plus one import line in ``methods/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import cv2
import numpy as np

from ..errors import OnnxcamError

Normalise = Literal["minmax", "max"]
NORMALISERS: tuple[str, ...] = ("minmax", "max")

ComputeFn = TypeVar("ComputeFn", bound=Callable[..., np.ndarray])


@dataclass(frozen=True)
class CAMMethod:
    """A registered CAM method.

    ``compute(activations, gradients, **options)`` takes float32 ``[N,C,h,w]`` arrays and returns the raw,
    already ReLU'd maps ``[N,h,w]`` (float32, feature resolution); ``normalise`` says how :func:`finalise`
    scales the upsampled map; ``options`` are the keyword names ``compute`` accepts.
    """

    name: str
    compute: Callable[..., np.ndarray]
    normalise: Normalise
    options: tuple[str, ...]
    description: str
    uses_model: bool = False


METHODS: dict[str, CAMMethod] = {}


def register(
    name: str,
    *,
    normalise: Normalise = "minmax",
    options: tuple[str, ...] = (),
    description: str = "",
    uses_model: bool = False,
) -> Callable[[ComputeFn], ComputeFn]:
    """Decorator: register a compute function under ``name`` in :data:`METHODS`; returns it unchanged."""
    if normalise not in NORMALISERS:
        raise ValueError(f"normalise must be one of {NORMALISERS}, got {normalise!r}")

    def decorator(compute: ComputeFn) -> ComputeFn:
        if name in METHODS:
            raise ValueError(f"CAM method {name!r} is already registered")
        METHODS[name] = CAMMethod(
            name=name,
            compute=compute,
            normalise=normalise,
            options=tuple(options),
            description=description,
            uses_model=uses_model,
        )
        return compute

    return decorator


def get_method(name: str) -> CAMMethod:
    """The registered method called ``name``; an unknown name raises OnnxcamError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise OnnxcamError(f"unknown method {name!r}; choose one of: {known}") from None


def check_options(method: CAMMethod, options: Mapping[str, Any]) -> None:
    """Raise OnnxcamError if ``options`` holds a name that ``method.compute`` does not accept."""
    unknown = [key for key in options if key not in method.options]
    if unknown:
        accepted = ", ".join(method.options) if method.options else "none"
        names = ", ".join(repr(key) for key in unknown)
        word = "option" if len(unknown) == 1 else "options"
        raise OnnxcamError(f"method {method.name!r} does not accept {word} {names}; accepted options: {accepted}")


def check_pair(activations: np.ndarray, gradients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check that activations and gradients are finite ``[N,C,h,w]`` arrays of one shape; return them."""
    a = np.asarray(activations)
    g = np.asarray(gradients)
    if a.ndim != 4 or a.shape != g.shape:
        raise OnnxcamError(
            f"activations and gradients must both be [N,C,h,w] arrays of the same shape, got {a.shape} and {g.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(g).all()):
        raise OnnxcamError("activations or gradients contain NaN or infinite values; check the model")
    return a, g


def finalise(maps: np.ndarray, size: tuple[int, int], normalise: str) -> np.ndarray:
    """Upsample each ``[h,w]`` map to ``size = (H, W)`` and scale it to [0, 1].

    Upsampling is bilinear with half-pixel centres (``cv2.resize``, INTER_LINEAR: source coordinate
    x = (X + 0.5)·w/W − 0.5, clamped at the border), as torch's ``interpolate(align_corners=False)``.
    Scaling, per map m: ``"minmax"``: (m − min m) / (max m − min m), all zeros when max = min;
    ``"max"``: m / max m when max m > 0, unchanged otherwise. Returns float32 ``[N,H,W]``.
    """
    if normalise not in NORMALISERS:
        raise ValueError(f"normalise must be one of {NORMALISERS}, got {normalise!r}")
    arr = np.asarray(maps, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"maps must be [N,h,w], got shape {arr.shape}")
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be two positive integers (H, W), got {size!r}")
    out = np.empty((arr.shape[0], height, width), dtype=np.float32)
    for i, cam in enumerate(arr):
        up = cv2.resize(np.ascontiguousarray(cam), (width, height), interpolation=cv2.INTER_LINEAR)
        up = up.astype(np.float64)
        hi = up.max()
        if normalise == "minmax":
            lo = up.min()
            out[i] = (up - lo) / (hi - lo) if hi > lo else 0.0
        else:
            out[i] = up / hi if hi > 0 else up
    return out
