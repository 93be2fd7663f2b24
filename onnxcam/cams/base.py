"""The method contract, the registry of CAM methods, and the post-processing they share (upsampling, scaling).

A method is one module in ``methods/`` (docs/design.md §5). It declares its options once, as a frozen
dataclass with typed fields and defaults (validated in ``__post_init__``), and registers
``compute(ctx: CAMContext, options) -> raw maps [N,h,w]`` float32 (already ReLU'd, feature resolution) with
:func:`register`, saying what it needs: ``uses_gradients`` (whether ``ctx.gradients`` matter),
``uses_model`` (extra passes through the model, through ``ctx.model``), its ``normalise`` rule for
:func:`finalise`, and the pytorch-grad-cam 1.5.7 class it matches (``reference``). Next to it, its graph
form ``build(b, activations, gradients, shape, options) -> name`` (registered with :func:`graph_form`)
emits ONNX nodes with a :class:`~onnxcam.core.graph_builder.GraphBuilder` that compute the same raw maps
``[N,h,w]`` from the ``[N,C,h,w]`` tensors named ``activations``/``gradients`` (``shape`` = (C, h, w));
:func:`finalise_graph` is :func:`finalise`'s. ``onnxcam embed`` puts them into the file (docs/design.md §6).
Adding a method is adding one module; ``methods/__init__.py`` imports every module in its folder.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from numbers import Real
from typing import Any, Literal, Protocol, TypeVar, Union, get_args, get_origin, get_type_hints

import cv2
import numpy as np
import onnx

from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import GraphBuilder

Normalise = Literal["minmax", "max"]
NORMALISERS: tuple[str, ...] = ("minmax", "max")

#: A map whose spread (max − min) is at most this fraction of its magnitude is constant (scaled to zeros).
FLAT = 1e-5


class ModelAccess(Protocol):
    """The way back into the model for methods with extra passes (``uses_model=True``), for one target layer.

    ``scores(batch, class_index)``: the explained score (the logit) of each image of a preprocessed batch;
    ``gradients_at(batch, class_index)``: the layer's ``(activations, gradients)`` ``[M,C,h,w]`` for another
    batch; ``head(activations, class_index)``: the scores computed from ``[M,C,h,w]`` activations by the part
    of the model after the layer only; ``batch_size``: the most images (or activation sets) one call should
    send to the runtime at a time.
    """

    @property
    def batch_size(self) -> int: ...

    def scores(self, batch: np.ndarray, class_index: np.ndarray) -> np.ndarray: ...

    def gradients_at(self, batch: np.ndarray, class_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def head(self, activations: np.ndarray, class_index: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class CAMContext:
    """What every method gets: one target layer's tensors for a batch, and (when attached) the model.

    ``activations``/``gradients``: ``[N,C,h,w]`` float32 (already converted from token or channels-last
    layouts); ``batch``: the preprocessed ``[N,C,H,W]`` input; ``class_index``: ``[N]`` int64, the explained
    class of each image (never −1); ``model``: :class:`ModelAccess` for methods with extra passes, None when
    the maps are computed from tensors alone (then a ``uses_model`` method raises a one-line OnnxcamError).
    """

    activations: np.ndarray
    gradients: np.ndarray
    batch: np.ndarray | None = None
    class_index: np.ndarray | None = None
    model: ModelAccess | None = None

    def require_model(self, method: str) -> tuple[ModelAccess, np.ndarray, np.ndarray]:
        """(model, batch, class indices) for a method with extra passes; a one-line OnnxcamError without them."""
        if self.model is None or self.batch is None or self.class_index is None:
            raise OnnxcamError(f"method '{method}' needs the model for its extra passes; run it through an "
                               "Explainer (Explainer.explain)")
        return self.model, self.batch, self.class_index


@dataclass(frozen=True)
class Options:
    """A convenient base for options dataclasses (frozen, one typed field with a default per option); any
    frozen dataclass will do.

    :meth:`canonical` is what two option sets are compared by (an embedded map is reused when the file's
    options and the requested ones are canonically equal); the options themselves unless a method resolves
    them further (CF-CAM: its ``mode`` and its None defaults).
    """

    def canonical(self) -> object:
        """The value that decides whether two option sets give the same maps."""
        return self


@dataclass(frozen=True)
class NoOptions(Options):
    """The options of a method that takes none."""


ComputeFn = TypeVar("ComputeFn", bound=Callable[..., np.ndarray])
BuildFn = TypeVar("BuildFn", bound=Callable[..., str])
#: What the registry resolves into a method's options: a mapping of option names to values, an options
#: object (an instance of the method's options dataclass), or None (all defaults). Typed Any: a dataclass
#: instance has no static type of its own.
OptionsInput = Any


def canonical(options: Any) -> object:
    """``options.canonical()`` for :class:`Options`, else the options object itself."""
    return options.canonical() if isinstance(options, Options) else options


def is_options_object(value: Any) -> bool:
    """Whether ``value`` is an options object (a dataclass instance) rather than a mapping of options."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


@dataclass(frozen=True)
class CAMMethod:
    """A registered CAM method (see the module doc for the contract).

    ``compute(ctx, options)`` returns the raw, already ReLU'd maps ``[N,h,w]`` (float32, feature
    resolution); ``options`` is the method's options dataclass (frozen, e.g. derived from :class:`Options`);
    ``uses_gradients``: whether the maps depend on ``ctx.gradients``; ``uses_model``: whether the method
    makes extra passes through ``ctx.model``; ``normalise``: how :func:`finalise` scales the upsampled map;
    ``reference``: the pytorch-grad-cam 1.5.7 class it matches (None: none does); ``build``: the graph form,
    ``build(b, activations, gradients, shape, options) -> name``, or None.
    """

    name: str
    compute: Callable[[CAMContext, Any], np.ndarray]
    options: type
    uses_gradients: bool
    uses_model: bool
    normalise: Normalise
    reference: str | None
    description: str
    build: Callable[[GraphBuilder, str, str, tuple[int, int, int], Any], str] | None = None

    @property
    def option_names(self) -> tuple[str, ...]:
        """The names of the options, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self.options))

    def resolve(self, options: OptionsInput = None) -> Any:
        """``options`` (a mapping of option names to values, an options object, or None) as this method's
        options object: unknown names, values of the wrong type and invalid values raise one-line errors."""
        if isinstance(options, self.options):
            return options
        if is_options_object(options):
            raise OnnxcamError(f"method {self.name!r} takes {self.options.__name__}, got {type(options).__name__}")
        given = dict(options or {})
        check_options(self, given)
        try:
            resolved = self.options(**given)
        except OnnxcamError:
            raise
        except (TypeError, ValueError):
            self._check_types(given)
            raise
        self._check_types(given)
        return resolved

    def _check_types(self, given: Mapping[str, Any]) -> None:
        hints = get_type_hints(self.options)
        for key, value in given.items():
            if not _matches(value, hints[key]):
                raise OnnxcamError(f"method {self.name!r} option {key!r} must be {_describe(hints[key])}, "
                                   f"got {value!r}")

    def same_options(self, a: OptionsInput, b: OptionsInput) -> bool:
        """Whether two option sets give the same maps (``{}`` and the defaults spelled out do)."""
        return canonical(self.resolve(a)) == canonical(self.resolve(b))

    def run(self, ctx: CAMContext, options: OptionsInput = None) -> np.ndarray:
        """The raw maps ``[N,h,w]`` for ``ctx`` with ``options`` resolved; a ``uses_model`` method needs
        ``ctx.model``."""
        resolved = self.resolve(options)
        if self.uses_model:
            ctx.require_model(self.name)
        return self.compute(ctx, resolved)

    def __call__(self, activations: np.ndarray, gradients: np.ndarray, **options: Any) -> np.ndarray:
        """The raw maps from ``[N,C,h,w]`` activations and gradients alone (no model: a method with extra
        passes raises a one-line OnnxcamError)."""
        return self.run(CAMContext(activations, gradients), options)

    def graph(self, b: GraphBuilder, activations: str, gradients: str, shape: tuple[int, int, int],
              options: OptionsInput = None) -> str:
        """The graph form's raw maps ``[N,h,w]`` (the name of the tensor), with ``options`` resolved."""
        if self.build is None:
            raise OnnxcamError(f"method '{self.name}' cannot be embedded in the graph (it has no graph form)")
        return self.build(b, activations, gradients, shape, self.resolve(options))


METHODS: dict[str, CAMMethod] = {}


def register(
    name: str,
    *,
    options: type = NoOptions,
    uses_gradients: bool,
    uses_model: bool = False,
    normalise: Normalise = "minmax",
    reference: str | None = None,
    description: str = "",
) -> Callable[[ComputeFn], ComputeFn]:
    """Decorator: register ``compute(ctx, options) -> raw maps`` under ``name`` in :data:`METHODS` (see
    :class:`CAMMethod` for the fields); returns the function unchanged."""
    if normalise not in NORMALISERS:
        raise ValueError(f"normalise must be one of {NORMALISERS}, got {normalise!r}")
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise ValueError(f"options of {name!r} must be a dataclass type, got {options!r}")

    def decorator(compute: ComputeFn) -> ComputeFn:
        if name in METHODS:
            raise ValueError(f"CAM method {name!r} is already registered")
        METHODS[name] = CAMMethod(name=name, compute=compute, options=options, uses_gradients=uses_gradients,
                                  uses_model=uses_model, normalise=normalise, reference=reference,
                                  description=description)
        return compute

    return decorator


def graph_form(name: str) -> Callable[[BuildFn], BuildFn]:
    """Decorator: register ``build(b, activations, gradients, shape, options) -> raw map name`` as the graph
    form of the already registered method ``name`` (same options object, same raw maps as its ``compute``)."""

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
    """Raise OnnxcamError if ``options`` holds a name that ``method`` does not accept."""
    accepted_names = method.option_names
    unknown = [key for key in options if key not in accepted_names]
    if unknown:
        accepted = ", ".join(accepted_names) if accepted_names else "none"
        names = ", ".join(repr(key) for key in unknown)
        word = "option" if len(unknown) == 1 else "options"
        raise OnnxcamError(f"method {method.name!r} does not accept {word} {names}; accepted options: {accepted}")


def with_defaults(method: CAMMethod, options: OptionsInput = None) -> dict[str, Any]:
    """``options`` checked against ``method``, as JSON-able values with the defaults filled in (what
    ``onnxcam embed`` records): the options with a default other than None, then the given ones in their
    order; options left at None (meaning "the method's default", as CF-CAM's) are left out."""
    resolved = method.resolve(options)
    given = [f.name for f in dataclasses.fields(options)] if is_options_object(options) else list(options or {})
    names = [f.name for f in dataclasses.fields(resolved) if f.default is not None]
    names += [key for key in given if key not in names]
    values = {key: getattr(resolved, key) for key in names}
    return {key: value for key, value in values.items() if value is not None}


def check_batch_size(method: str, batch_size: object) -> None:
    """A one-line OnnxcamError unless a ``batch_size`` option is None or a whole number >= 1."""
    if batch_size is None:
        return
    if isinstance(batch_size, bool | np.bool_) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise OnnxcamError(f"{method} option batch_size must be a whole number >= 1, got {batch_size!r}")


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the type ``hint`` of an option field: a float field takes any real number but
    a bool, an int field whole numbers but bools, a bool field only bools; other types are left to the
    options' own ``__post_init__``."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return any(_matches(value, arg) for arg in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool | np.bool_)
    if isinstance(value, bool | np.bool_):
        return hint is Any
    if hint is int:
        return isinstance(value, int | np.integer)
    if hint is float:
        return isinstance(value, Real)
    if hint is str:
        return isinstance(value, str)
    return True


def _describe(hint: Any) -> str:
    """A field type in words, for the one-line errors."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return " or ".join(_describe(arg) for arg in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "null"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


#: The one-line error for activations or gradients with NaN or infinite values.
NOT_FINITE = "activations or gradients contain NaN or infinite values; check the model"


def check_pair(activations: np.ndarray, gradients: np.ndarray, *, finite: bool = True,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Check that activations and gradients are finite ``[N,C,h,w]`` arrays of one shape; return them.
    ``finite=False`` leaves the finiteness to the caller (a method whose float64 result is finite exactly
    when its inputs are checks the small result instead, and raises :data:`NOT_FINITE`)."""
    a = np.asarray(activations)
    g = np.asarray(gradients)
    if a.ndim != 4 or a.shape != g.shape:
        raise OnnxcamError(
            f"activations and gradients must both be [N,C,h,w] arrays of the same shape, got {a.shape} and {g.shape}"
        )
    if finite and not (np.isfinite(a).all() and np.isfinite(g).all()):
        raise OnnxcamError(NOT_FINITE)
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
        up = out[i]  # resized straight into the output, scaled in place in float32: one pass less than float64
        cv2.resize(np.ascontiguousarray(cam), (width, height), dst=up, interpolation=cv2.INTER_LINEAR)
        lo, hi = up.min(), up.max()
        if normalise == "minmax":
            if float(hi) - float(lo) > FLAT * max(abs(float(hi)), abs(float(lo))):
                np.subtract(up, lo, out=up)  # the max pixel becomes hi − lo exactly as the divisor: 1.0 exactly
                np.divide(up, hi - lo, out=up)
            else:
                up.fill(0.0)
        elif hi > 0:
            np.divide(up, hi, out=up)
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


def finalise_graph(b: GraphBuilder, maps: str, size: tuple[int, int], normalise: str,
                   shape: tuple[int, int]) -> str:
    """:func:`finalise` as ONNX nodes: raw maps ``[N,h,w]`` (``shape`` = (h, w)) → ``[N,H,W]`` in [0, 1].

    Bilinear upsampling with half-pixel centres, clamped at the border (as OpenCV and ONNX Runtime's Resize),
    to ``size``, then per map: ``"minmax"``: (m − min) / (max − min), 0 where the map is constant
    (spread ≤ FLAT·magnitude); ``"max"``: m / max where max > 0.

    The upsampling is two MatMuls against constant interpolation matrices and the scaling is done on the small
    maps before it (upsampling is linear and its weights sum to one, so scaling commutes with it): the min and
    max of the upsampled map come from the few output rows and columns where a piecewise-bilinear map can reach
    them (:func:`interpolation`), and no full-size element-wise pass is left; about 6× cheaper than Resize +
    min–max on the full map.
    """
    return _finalise_small(b, maps, (int(size[0]), int(size[1])), normalise, (int(shape[0]), int(shape[1])))


#: The upsampling matrices of :func:`finalise_graph` are scaled by 1 − 2⁻²¹ (4.8e-7) so that rounding in the
#: two float32 MatMuls (a few ulp) cannot lift a scaled map above 1.0.
UNDERSHOOT = 1.0 - 2.0 ** -21


def interpolation(src: int, dst: int) -> tuple[np.ndarray, list[int]]:
    """Bilinear half-pixel interpolation from ``src`` to ``dst`` samples as a ``[dst, src]`` float32 matrix
    (source coordinate x = (X + 0.5)·src/dst − 0.5, clamped to [0, src − 1], as OpenCV's INTER_LINEAR and ONNX
    Runtime's Resize), and the output positions where the interpolated function can reach its min or max:
    between two source samples it is linear in X, so over the outputs that fall between the same two
    samples its extremes are at the first and the last of them."""
    matrix = np.zeros((dst, src), np.float64)
    cell = np.zeros(dst, np.int64)
    for out in range(dst):
        x = min(max((out + 0.5) * src / dst - 0.5, 0.0), src - 1.0)
        i = min(int(np.floor(x)), max(src - 2, 0))
        frac = x - i
        matrix[out, i] += 1.0 - frac
        if frac:
            matrix[out, i + 1] += frac
        cell[out] = i
    ends = {0, dst - 1} | {k for out in range(1, dst) if cell[out] != cell[out - 1] for k in (out - 1, out)}
    return matrix.astype(np.float32), sorted(ends)


def _finalise_small(b: GraphBuilder, maps: str, size: tuple[int, int], normalise: str,
                    shape: tuple[int, int]) -> str:
    """:func:`finalise_graph` for maps of a known ``shape``: scaled at ``shape``, then upsampled by MatMuls."""
    rows, row_ends = interpolation(shape[0], size[0])
    cols, col_ends = interpolation(shape[1], size[1])
    # the upsampled map at the rows and columns where it can reach its extremes: [N, r, c], a few hundred values
    ends = b.op("MatMul", b.op("MatMul", b.const(rows[row_ends]), maps), b.const(cols[col_ends].T))
    scaled = _scale_graph(b, maps, ends, normalise)
    up = b.op("MatMul", b.const(rows * np.float32(UNDERSHOOT)), b.op("MatMul", scaled, b.const(cols.T)))
    return up


def _scale_graph(b: GraphBuilder, maps: str, extremes: str, normalise: str) -> str:
    """``maps`` ``[N,·,·]`` scaled per map as :func:`finalise` does, with the min and max taken over
    ``extremes`` ``[N,·,·]`` (the maps themselves, or the values where their upsampled form is extreme)."""
    hi = b.reduce("ReduceMax", extremes, [1, 2])
    if normalise == "minmax":
        lo = b.reduce("ReduceMin", extremes, [1, 2])
        spread = b.op("Sub", hi, lo)
        magnitude = b.reduce("ReduceMax", b.op("Abs", extremes), [1, 2])  # max(|hi|, |lo|)
        positive = b.op("Greater", spread, b.op("Mul", magnitude, b.const(FLAT)))
        # a constant map is divided by +inf: all zeros (m − lo is finite), one Where fewer
        return b.op("Div", b.op("Sub", maps, lo), b.op("Where", positive, spread, b.const(np.inf)))
    positive = b.op("Greater", hi, b.const(0.0))
    return b.op("Div", maps, b.op("Where", positive, hi, b.const(1.0)))
