"""Ops whose outputs carry no gradient: shapes, sizes, indices, comparisons, logic, and constants made from
shapes. Each is an ordinary row of ``RULES``, registered with ``carries_gradient=False``: the gradient pass does
not follow dependency through them when it looks for the path from the target layer to the logits, and should a
node be differentiated anyway, none of its inputs gets a gradient.

Ops with a zero derivative whose outputs still depend on the target layer (Sign, Floor, Ceil, Round) are not
here: they have rules that return explicit zeros (``elementwise.piecewise_constant``).
"""

from __future__ import annotations

from onnxcam.autodiff.registry import VJP, Grads, rule


@rule("Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not",
      "And", "Or", "Xor", "NonZero", "ConstantOfShape", "Range", "IsNaN", "IsInf", "Constant", "EyeLike",
      carries_gradient=False)
def no_gradient(v: VJP) -> Grads:
    """No input gets a gradient: the outputs are integers, booleans or values that do not vary with the inputs'
    values."""
    return [None] * len(v.node.input)
