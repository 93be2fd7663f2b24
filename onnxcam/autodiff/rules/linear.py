"""Gradient rules for the linear-algebra ops: Gemm, MatMul and Einsum. A constant square weight read transposed
by the backward node is given its own copy (``VJP.weight_read_transposed``, for OpenVINO; see ``conv_pool``).
"""

from __future__ import annotations

import string
from collections import Counter

from onnxcam.autodiff.registry import VJP, Grads, rule


@rule("Gemm")
def gemm(v: VJP) -> Grads:
    """Y = α·A'·B' + β·C: dA' = α·g·B'ᵀ, dB' = α·A'ᵀ·g, dC = unbroadcast(β·g)."""
    b, a = v.b, v.attrs
    alpha, beta, ta, tb = a.get("alpha", 1.0), a.get("beta", 1.0), a.get("transA", 0), a.get("transB", 0)
    ins = list(v.node.input)
    grads: Grads = [None] * len(ins)
    if v.needs[0]:
        da = b.op("Gemm", v.g, v.weight_read_transposed(ins[1]), alpha=alpha, transB=1 - tb)
        grads[0] = b.op("Transpose", da) if ta else da
    if v.needs[1]:
        db = b.op("Gemm", v.weight_read_transposed(ins[0]), v.g, alpha=alpha, transA=1 - ta)
        grads[1] = b.op("Transpose", db) if tb else db
    if len(ins) > 2 and v.needs[2]:
        grads[2] = v.unbroadcast(b.op("Mul", v.g, b.const(beta)), ins[2])
    return grads


@rule("MatMul")
def matmul(v: VJP) -> Grads:
    """dA = unbroadcast(g·Bᵀ), dB = unbroadcast(Aᵀ·g) (transposing the last two axes)."""
    b, (a, c) = v.b, v.node.input
    ranks = len(v.shape(a)), len(v.shape(c))
    if min(ranks) < 2:
        raise v.fail("MatMul with a 1-D operand is not supported")

    def t(name: str, rank: int) -> str:
        return b.op("Transpose", name, perm=[*range(rank - 2), rank - 1, rank - 2])

    return [v.unbroadcast(b.op("MatMul", v.g, t(v.weight_read_transposed(c), ranks[1])), a) if v.needs[0] else None,
            v.unbroadcast(b.op("MatMul", t(v.weight_read_transposed(a), ranks[0]), v.g), c) if v.needs[1] else None]


def _einsum_subscripts(v: VJP) -> tuple[list[str], str]:
    """Each operand's subscripts and the output's, with "..." spelled out as fresh letters (right-aligned)."""
    equation = v.attrs["equation"].replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(v.node.input):
        raise v.fail(f"equation '{equation}' does not match the {len(v.node.input)} operands")
    fresh = [c for c in string.ascii_letters if c not in equation]
    spans = [len(v.shape(name)) - len(t.replace("...", "")) for t, name in zip(terms, v.node.input)]
    width = max([n for t, n in zip(terms, spans) if "..." in t], default=0)
    ellipsis = "".join(fresh[:width])
    subs = [t.replace("...", ellipsis[width - n:]) for t, n in zip(terms, spans)]
    if arrow:
        return subs, rhs.replace("...", ellipsis)
    counts = Counter("".join(t.replace("...", "") for t in terms))
    return subs, ellipsis + "".join(sorted(c for c, n in counts.items() if n == 1))


@rule("Einsum")
def einsum(v: VJP) -> Grads:
    """d operand_i = Einsum(g, other operands → subscripts of operand i); its letters that appear nowhere else
    (summed over inside operand i alone) are put back by Unsqueeze + Expand, and axes it broadcast (size 1
    against a larger size elsewhere) are summed."""
    b, ins = v.b, list(v.node.input)
    subs, out = _einsum_subscripts(v)
    size: dict[str, int | None] = {}
    for letters, name in [*zip(subs, ins), (out, v.y)]:
        for c, n in zip(letters, v.shape(name)):
            if size.get(c, 1) == 1:
                size[c] = n
    grads: Grads = []
    for i, (letters, name) in enumerate(zip(subs, ins)):
        if not v.needs[i]:
            grads.append(None)
            continue
        if len(set(letters)) != len(letters):
            raise v.fail(f"operand {i} repeats a subscript in '{v.attrs['equation']}' (a diagonal)")
        others = [j for j in range(len(ins)) if j != i]
        present = set(out).union(*(subs[j] for j in others))
        kept = "".join(c for c in letters if c in present)
        equation = ",".join([out] + [subs[j] for j in others]) + "->" + kept
        grad = b.op("Einsum", v.g, *[v.weight_read_transposed(ins[j]) for j in others], equation=equation)
        missing = [p for p, c in enumerate(letters) if c not in present]
        if missing:
            grad = b.op("Expand", b.op("Unsqueeze", grad, b.ints(missing)), b.op("Shape", name))
        shape = v.shape(name)
        spread = [p for p, c in enumerate(letters) if c in present and shape[p] == 1 and size.get(c) != 1]
        if spread:
            grad = b.op("ReduceSum", grad, b.ints(spread), keepdims=1)
        grads.append(grad)
    return grads

