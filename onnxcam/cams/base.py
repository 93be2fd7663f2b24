"""Registry of CAM methods and the post-processing they share (upsampling, scaling to [0, 1]).

A method is a function ``compute(activations [N,C,h,w], gradients [N,C,h,w], **options) -> maps [N,h,w]``
that returns ReLU'd maps at feature resolution (methods that need extra passes through the model register
with ``uses_model=True`` and receive a ``context.CAMContext`` instead); :func:`finalise` upsamples them to
the input size and scales each one to [0, 1]. Adding a method means one module that decorates its compute function with
:func:`register`, plus one import line in ``methods/__init__.py``.

A method can also have a graph form, registered with :func:`graph_form` next to its numpy function:
``build(b, activations, gradients, shape, **options) -> name`` emits ONNX nodes with a
:class:`~onnxcam.core.graph_builder.GraphBuilder` that compute the same raw maps ``[N,h,w]`` from the
``[N,C,h,w]`` tensors named ``activations``/``gradients`` (``shape`` = (C, h, w)); :func:`finalise_graph` is
:func:`finalise`'s. ``onnxcam embed`` puts them into the file (docs/design.md §6).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import cv2
import numpy as np
import onnx

from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import GraphBuilder

Normalise = Literal["minmax", "max"]
NORMALISERS: tuple[str, ...] = ("minmax", "max")

#: A map whose spread (max − min) is at most this fraction of its magnitude is constant (scaled to zeros).
FLAT = 1e-5

ComputeFn = TypeVar("ComputeFn", bound=Callable[..., np.ndarray])
BuildFn = TypeVar("BuildFn", bound=Callable[..., str])


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
    build: Callable[..., str] | None = None


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


def graph_form(name: str) -> Callable[[BuildFn], BuildFn]:
    """Decorator: register ``build(b, activations, gradients, shape, **options) -> raw map name`` as the graph
    form of the already registered method ``name`` (same options, same raw maps as its ``compute``)."""

    def decorator(build: BuildFn) -> BuildFn:
        METHODS[name] = replace(METHODS[name], build=build)
        return build

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


def with_defaults(method: CAMMethod, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``options`` checked against ``method``, with the defaults of its ``compute`` filled in."""
    given = dict(options or {})
    check_options(method, given)
    defaults = {name: p.default for name, p in inspect.signature(method.compute).parameters.items()
                if name in method.options and p.default is not inspect.Parameter.empty}
    return {**defaults, **given}


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
    Scaling, per map m: ``"minmax"``: (m − min m) / (max m − min m), all zeros when the map is constant,
    i.e. max − min ≤ :data:`FLAT`·max(|max|, |min|) (upsampling a constant map leaves rounding noise of a few
    ulp, which min–max scaling would blow up to [0, 1]); ``"max"``: m / max m when max m > 0, unchanged
    otherwise. Returns float32 ``[N,H,W]``.
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
            out[i] = (up - lo) / (hi - lo) if hi - lo > FLAT * max(abs(hi), abs(lo)) else 0.0
        else:
            out[i] = up / hi if hi > 0 else up
    return out


def weighted_sum_graph(b: GraphBuilder, weights: str, activations: str) -> str:
    """ReLU(Σ_c w_c·A_c) as ONNX nodes: ``weights`` ``[N,C,1,1]`` (or ``[N,C,h,w]``), activations ``[N,C,h,w]``
    → float32 ``[N,h,w]``; the last step of every channel-weighted method's graph form."""
    summed = b.op("Relu", b.reduce("ReduceSum", b.op("Mul", weights, activations), [1], keepdims=False))
    return b.op("Cast", summed, to=onnx.TensorProto.FLOAT)


def as_float64(b: GraphBuilder, *tensors: str) -> list[str]:
    """``tensors`` cast to float64. The numpy forms sum channels in float64 too: a map whose channel terms
    cancel (Σ|G·A| ≫ |Σ G·A|, as in weakly trained layers) loses its digits in float32 sums, 1e-3 after scaling."""
    return [b.op("Cast", t, to=onnx.TensorProto.DOUBLE) for t in tensors]


def finalise_graph(b: GraphBuilder, maps: str, size: tuple[int, int], normalise: str) -> str:
    """:func:`finalise` as ONNX nodes: raw maps ``[N,h,w]`` → ``[N,H,W]`` in [0, 1].

    Resize (linear, half-pixel centres; ONNX Runtime clamps at the border as OpenCV does) to ``size``,
    then per map: ``"minmax"``: (m − min) / (max − min), 0 where the map is constant (spread ≤ FLAT·magnitude);
    ``"max"``: m / max where max > 0.
    """
    height, width = int(size[0]), int(size[1])
    batch = b.op("Shape", maps, start=0, end=1)
    sizes = b.op("Concat", batch, b.ints([1, height, width]), axis=0)
    up = b.op("Resize", b.op("Unsqueeze", maps, b.ints([1])), "", "", sizes, mode="linear",
              coordinate_transformation_mode="half_pixel")
    up = b.op("Squeeze", up, b.ints([1]))  # [N, H, W]
    hi = b.reduce("ReduceMax", up, [1, 2])
    zero = b.const(0.0)
    if normalise == "minmax":
        lo = b.reduce("ReduceMin", up, [1, 2])
        spread = b.op("Sub", hi, lo)
        magnitude = b.op("Max", b.op("Abs", hi), b.op("Abs", lo))
        positive = b.op("Greater", spread, b.op("Mul", magnitude, b.const(FLAT)))
        scaled = b.op("Div", b.op("Sub", up, lo), b.op("Where", positive, spread, b.const(1.0)))
        return b.op("Where", positive, scaled, zero)
    positive = b.op("Greater", hi, zero)
    return b.op("Where", positive, b.op("Div", up, b.op("Where", positive, hi, b.const(1.0))), up)
