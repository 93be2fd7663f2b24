"""The VJP registry: the ``RULES`` table (ONNX op type → vector-Jacobian product), the :class:`VJP` a rule
receives, the ``@rule`` decorator that fills the table, and the helpers several op families share.

A rule receives a :class:`VJP` (the node, its output gradients, a builder for new nodes and the tensor
shapes) and returns one gradient tensor name per node input (``None`` where no gradient is needed).
The rules themselves live in ``onnxcam.autodiff.rules`` (one module per op family, each importing only this
module); importing that package loads them all. This module imports no rule module, so a rule module can
import it without cycles.

Ops whose outputs carry no gradient at all (shapes, indices, comparisons) are ordinary rows registered with
``@rule(..., carries_gradient=False)``: the pass does not follow dependency through them
(:func:`carries_gradient`). Ops with a zero derivative that still carry dependency (Sign, Floor, …) are
ordinary rules that return zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxcam.core.errors import UnsupportedOpError
from onnxcam.core.graph_builder import GraphBuilder
from onnxcam.core.graph_queries import attributes
from onnxcam.core.tensor_info import Shape, TensorInfo

Grads = list[str | None]
Rule = Callable[["VJP"], Grads]


def _as_is(name: str) -> str:
    return name

#: Slice end meaning "past the start" for a negative step, whatever the axis length.
BEFORE_START = -(2**62)


@dataclass
class VJP:
    """Everything a rule needs: ``g`` is the gradient of output 0, ``needs[i]`` whether input i wants one.

    ``node`` reads and writes float32 tensors (the pass gives each rule the float32 views of a float16 or
    quantized node's tensors, :mod:`onnxcam.autodiff.precision`), except for the rules of quantized ops, which
    get the node as it is and read their tensors through ``views`` (name → its float32 view). ``unclipped``: the
    node quantizes the class score itself, so a quantized op's rule leaves out its clipping mask."""

    node: onnx.NodeProto
    grads: Grads
    needs: list[bool]
    b: GraphBuilder
    info: TensorInfo
    opset: int
    views: Callable[[str], str] = field(default=_as_is)
    unclipped: bool = False

    @property
    def x(self) -> str:
        return self.node.input[0]

    @property
    def y(self) -> str:
        return self.node.output[0]

    @property
    def g(self) -> str:
        g = self.grads[0]
        if g is None:
            raise self.fail("its first output carries no gradient")
        return g

    @property
    def attrs(self) -> dict[str, Any]:
        return attributes(self.node)

    def shape(self, name: str) -> Shape:
        return self.info.shape(name)

    def dim(self, name: str, axis: int) -> int:
        """The size of ``name`` along ``axis``; an error when it is dynamic."""
        size = self.shape(name)[axis]
        if size is None:
            raise self.fail(f"axis {axis} of '{name}' has a dynamic size; export with a fixed input size")
        return size

    def static_shape(self, name: str) -> tuple[int, ...]:
        """Shape of ``name``, all but the batch axis static (an error otherwise); a dynamic batch reads as -1,
        what Reshape takes for it."""
        shape = self.shape(name)
        if None in shape[1:]:
            raise self.fail("the tensor sizes are dynamic; export with a fixed input size")
        return tuple(-1 if d is None else d for d in shape)

    def fixed_shape(self, name: str) -> tuple[int, ...] | None:
        """Shape of ``name`` when every size (the batch's too) is static, else ``None``."""
        shape = self.shape(name)
        return None if None in shape else tuple(d for d in shape if d is not None)

    def reshape_dims(self, shape: list[int | None]) -> list[int]:
        """``shape`` for a Reshape: the one dynamic (batch) size as -1."""
        if shape.count(None) > 1:
            raise self.fail("more than one dynamic dimension; export with a fixed input size")
        return [-1 if d is None else int(d) for d in shape]

    def float_type(self, name: str) -> int:
        """Element type of ``name`` (float32 when unknown)."""
        return self.info.types.get(name) or onnx.TensorProto.FLOAT

    def fail(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"cannot differentiate {self.node.op_type} node '{self.node.name}': {why}")

    def only_first_input(self) -> None:
        """Rules for ops whose other inputs are weights: refuse if a weight depends on the target layer."""
        if any(self.needs[1:]):
            raise self.fail("a weight input depends on the target layer; pick a layer after it")

    def pad_grads(self, grads: Grads) -> Grads:
        """``grads`` followed by ``None`` for the node's remaining (non-differentiable) inputs, e.g. the axes."""
        return grads + [None] * (len(self.node.input) - len(grads))

    # small graph-building conveniences used by many rules
    def zero(self) -> str:
        return self.b.const(0.0)

    def mask(self, cond: str, grad: str) -> str:
        """``Where(cond, grad, 0)``."""
        return self.b.op("Where", cond, grad, self.zero())

    def zeros_like(self, ref: str) -> str:
        """float32 zeros of ``ref``'s run-time shape (ConstantOfShape's default value)."""
        return self.b.op("ConstantOfShape", self.b.op("Shape", ref))

    def like(self, grad: str, ref: str) -> str:
        """``Reshape(grad, Shape(ref))``."""
        return self.b.op("Reshape", grad, self.b.op("Shape", ref))

    def unbroadcast(self, grad: str, operand: str) -> str:
        """Sum ``grad`` (shaped like the node's output) over the axes ``operand`` was broadcast along."""
        out, src = self.shape(self.y), self.shape(operand)
        if out == src:
            return grad
        lead = len(out) - len(src)
        axes = [i for i in range(len(out)) if i < lead or (src[i - lead] == 1 and out[i] != 1)]
        if axes:
            grad = self.b.op("ReduceSum", grad, self.b.ints(axes), keepdims=1)
        return self.like(grad, operand)

    def reverse(self, t: str, axes: list[int]) -> str:
        """``t`` reversed along ``axes`` (Slice with step −1)."""
        n, b = len(axes), self.b
        return b.op("Slice", t, b.ints([-1] * n), b.ints([BEFORE_START] * n), b.ints(axes), b.ints([-1] * n))

    def own_copy(self, weight: str) -> str:
        """A bit-identical copy of ``weight`` (reversed twice along axis 0) that OpenVINO folds into a constant of
        its own. A backward node that reads a forward node's square weight transposed must not read the same
        constant: OpenVINO's CPU plugin caches reordered weights by buffer, not by how they are read
        (design.md §4)."""
        return self.b.memo((weight, "copy"), lambda: self.reverse(self.reverse(weight, [0]), [0]))

    def weight_read_transposed(self, name: str) -> str:
        """``name`` for a backward MatMul/Gemm/Einsum: its own copy when it is a constant whose last two axes are
        equal (a square Linear weight), else itself."""
        shape = self.info.shapes.get(name)
        if self.info.constants.get(name) is None or not shape or len(shape) < 2:
            return name
        rows, cols = shape[-2], shape[-1]
        return self.own_copy(name) if rows is not None and cols == rows > 1 else name


#: op type → its rule. A plain dict: ``RULES[op](vjp)``, ``op in RULES``, ``monkeypatch.setitem(RULES, op, f)``.
RULES: dict[str, Rule] = {}

#: The functions registered with ``carries_gradient=False`` (a row carries no gradient while it holds one).
_NO_GRADIENT: set[Rule] = set()
#: The functions registered with ``quantized=True``: they get the node as it is, not its float32 view.
_QUANTIZED: set[Rule] = set()


def rule(*op_types: str, carries_gradient: bool = True, quantized: bool = False) -> Callable[[Rule], Rule]:
    """Register a VJP function for ``op_types``. ``carries_gradient=False`` marks ops whose outputs carry no
    gradient (the function returns ``[None] * len(inputs)``); the pass does not follow dependency through them.
    ``quantized=True`` marks rules that read the node's integer tensors themselves (through ``VJP.views``).
    An op registered twice by different functions is an error (two rule modules claiming the same op)."""

    def register(fn: Rule) -> Rule:
        for op in op_types:
            old = RULES.get(op)
            if old is not None and _where(old) != _where(fn):  # the same function again: a module reloaded
                raise ValueError(f"op {op} already has a rule ({_where(old)}); {_where(fn)} registers another")
        for op in op_types:
            RULES[op] = fn
        if not carries_gradient:
            _NO_GRADIENT.add(fn)
        if quantized:
            _QUANTIZED.add(fn)
        return fn

    return register


def _where(fn: Rule) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def carries_gradient(op_type: str) -> bool:
    """False for ops registered with ``carries_gradient=False`` (shapes, indices, comparisons); True for every
    other op, including ops with no rule. Only meaningful once the rules are loaded: import it from
    ``onnxcam.autodiff.rules``, whose import loads them."""
    fn = RULES.get(op_type)
    return fn is None or fn not in _NO_GRADIENT


def reads_quantized(op_type: str) -> bool:
    """Whether ``op_type``'s rule takes the node with its quantized tensors as they are (``quantized=True``)."""
    fn = RULES.get(op_type)
    return fn is not None and fn in _QUANTIZED
