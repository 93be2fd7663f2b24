"""Emitting ONNX nodes: the one builder that the gradient pass, the CAM methods' graph forms and the overlay
share (docs/design.md, "The ONNX contract").

Only onnx and numpy: the runtime uses it to build graph forms without the exporter.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: IR version ONNX Runtime 1.17+ accepts for every opset onnxcam writes (onnx 1.23 writes 14 by default).
MAX_IR_VERSION = 10
#: Reduce ops whose ``axes`` became an input at opset 18 (ReduceSum's did at 13).
AXES_INPUT_FROM = {"ReduceSum": 13}


def set_ir_version(model: onnx.ModelProto) -> None:
    """Lower the IR version to one ONNX Runtime accepts, never below what the opsets need."""
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(needed, min(model.ir_version, MAX_IR_VERSION))


class GraphBuilder:
    """Collects new nodes and initializers; every name it makes starts with ``prefix``.

    ``opset`` is the default-domain opset of the model the nodes go into (it decides the form of Reduce ops).
    """

    def __init__(self, prefix: str = "onnxcam/grad", opset: int = 17, parent: GraphBuilder | None = None) -> None:
        self.prefix = prefix
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        if parent is None:
            self.initializers: list[onnx.TensorProto] = []
            self._count: Iterator[int] = itertools.count()
            self._consts: dict[tuple[Any, ...], str] = {}
            self._memo: dict[tuple[Any, ...], str] = {}
        else:  # a body graph: names, constants and memo shared with the parent (see :meth:`subgraph`)
            self.initializers, self._count, self._consts, self._memo = parent.shared()

    def name(self, hint: str) -> str:
        """A fresh tensor or node name."""
        return f"{self.prefix}/{hint}_{next(self._count)}"

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        """Emit ``op_type(inputs, **attrs)``; returns the name of its one output."""
        return self.ops(op_type, *inputs, outputs=1, **attrs)[0]

    def ops(self, op_type: str, *inputs: str, outputs: int, **attrs: Any) -> list[str]:
        """Emit ``op_type(inputs, **attrs)`` with ``outputs`` outputs (TopK, Split, …); returns their names."""
        node_name = self.name(op_type)
        outs = [f"{node_name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs

    def const(self, value: float | Sequence | np.ndarray, dtype: type = np.float32) -> str:
        """A constant tensor (an initializer), shared between identical values."""
        arr: np.ndarray = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.name("const")
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant (shapes, axes, starts, ends)."""
        return self.const(list(values), np.int64)

    def sum(self, names: Sequence[str]) -> str:
        """Σ names (fan-out accumulation)."""
        return names[0] if len(names) == 1 else self.op("Sum", *names)

    def memo(self, key: tuple, make: Callable[[], str]) -> str:
        """``make()``'s tensor, made once per ``key`` (tensors derived from a weight, shared by its users)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True, opset: int | None = None,
               ) -> str:
        """``op_type`` (ReduceSum, ReduceMean, ReduceMax, ReduceL2, …) over ``axes``, with ``axes`` as an
        attribute or an input as the opset (``opset``, default this builder's) wants."""
        if (opset or self.opset) >= AXES_INPUT_FROM.get(op_type, 18):
            return self.op(op_type, x, self.ints(list(axes)), keepdims=int(keepdims))
        return self.op(op_type, x, axes=list(axes), keepdims=int(keepdims))

    def shared(self) -> tuple[list[onnx.TensorProto], Iterator[int], dict[tuple[Any, ...], str],
                              dict[tuple[Any, ...], str]]:
        """What a body builder shares with this one: initializers, name counter, constants, memo."""
        return self.initializers, self._count, self._consts, self._memo

    def subgraph(self) -> GraphBuilder:
        """A builder for a Loop or If body: a node list of its own; names, constants and memo shared with this
        builder (its constants are the main graph's initializers, which a body sees as outer-scope values)."""
        return GraphBuilder(self.prefix, self.opset, parent=self)

    def graph(self, name: str, inputs: Sequence[onnx.ValueInfoProto], outputs: Sequence[onnx.ValueInfoProto],
              ) -> onnx.GraphProto:
        """This builder's nodes as a body graph (for Loop's and If's graph attributes)."""
        return helper.make_graph(self.nodes, self.name(name), list(inputs), list(outputs))

    def add_to(self, model: onnx.ModelProto) -> None:
        """Append the collected nodes and initializers to ``model``'s graph."""
        model.graph.node.extend(self.nodes)
        model.graph.initializer.extend(self.initializers)
