"""Small helpers over an ONNX graph: emitting nodes, constants, tensor shapes and types."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import set_ir_version
from onnxcam.core.ort import onnxruntime, ort_message

__all__ = ["DynamicSizeError", "Shape", "TensorInfo", "check_runs"]

#: A static shape with ``None`` for a dynamic (batch) dimension.
Shape = tuple[int | None, ...]

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}






class DynamicSizeError(OnnxcamError):
    """The model's image input has a dynamic height or width, so spatial sizes cannot be learnt."""

    def __init__(self, dims: list) -> None:
        super().__init__(f"the image input has dynamic dimensions {dims}")
        self.dims = dims


class TensorInfo:
    """Element types, shapes and constant values of a model's tensors."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001 - shape inference is best effort; probing fills the gaps
            inferred = model
        g = inferred.graph
        self.types: dict[str, int] = {}
        self.shapes: dict[str, Shape | None] = {}
        for vi in itertools.chain(g.input, g.value_info, g.output):
            t = vi.type.tensor_type
            self.types[vi.name] = t.elem_type
            if t.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
            else:
                self.shapes[vi.name] = None
        self.model = model
        self.constants: dict[str, np.ndarray | None] = {}
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            self.constants[init.name] = arr
            self.types[init.name] = init.data_type
            self.shapes[init.name] = tuple(arr.shape)
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                arr = numpy_helper.to_array(node.attribute[0].t)
                self.constants[node.output[0]] = arr
                self.types[node.output[0]] = node.attribute[0].t.data_type
                self.shapes[node.output[0]] = tuple(arr.shape)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is the same for every input (weights, or shapes computed from the
        input's static dimensions): folded with ORT at batch sizes 1 and 2; ``None`` when it varies."""
        if not name:
            return None
        if name not in self.constants:
            first, second = self._evaluate(name, 1, 0.0), self._evaluate(name, 2, 1.0)
            same = first.shape == second.shape and np.array_equal(first, second)
            self.constants[name] = first if same else None
        return self.constants[name]

    def _evaluate(self, name: str, batch: int, fill: float) -> np.ndarray:
        ort = onnxruntime()

        probe = onnx.ModelProto()
        probe.CopyFrom(self.model)
        del probe.graph.output[:]
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
        set_ir_version(probe)
        with _runs_at_input_size(probe):
            sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            feeds = {}
            for inp in sess.get_inputs():
                dims = [d if isinstance(d, int) else batch for d in inp.shape]
                feeds[inp.name] = np.full(dims, fill, np.float32)
            return np.asarray(sess.run([name], feeds)[0])

    def shape(self, name: str) -> Shape:
        """Static shape of ``name`` (``None`` for the batch dimension); error when unknown."""
        s = self.shapes.get(name)
        if s is None:
            raise OnnxcamError(f"the shape of tensor '{name}' is unknown; export the model with static "
                               "spatial sizes (only the batch may be dynamic)")
        return s

    def is_float(self, name: str) -> bool | None:
        """Whether ``name`` holds floating-point values (``None`` when the type is unknown)."""
        t = self.types.get(name)
        return None if not t else t in FLOAT_TYPES

    def probe(self, model: onnx.ModelProto, names: Iterable[str]) -> None:
        """Learn missing shapes by running ONNX Runtime at batch sizes 1 and 2; dims that change are batch."""
        missing = [n for n in dict.fromkeys(names) if n not in self.constants and (
            (shape := self.shapes.get(n)) is None or None in shape[1:] or self.types.get(n) is None)]
        if not missing:
            return
        ort = onnxruntime()

        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        known = {o.name for o in probe.graph.output}
        for n in missing:
            if n not in known:
                probe.graph.output.append(helper.make_empty_tensor_value_info(n))
        set_ir_version(probe)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        with _runs_at_input_size(probe):
            sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds_by_batch = []
        for batch in (1, 2):
            feeds = {}
            for inp in sess.get_inputs():
                dims = [batch if i == 0 and not isinstance(d, int) else d for i, d in enumerate(inp.shape)]
                if any(not isinstance(d, int) for d in dims):
                    raise DynamicSizeError(inp.shape)
                feeds[inp.name] = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
            feeds_by_batch.append(feeds)
        with _runs_at_input_size(probe):
            r1, r2 = (dict(zip([o.name for o in sess.get_outputs()], sess.run(None, f))) for f in feeds_by_batch)
        for n in missing:
            a, b = np.asarray(r1[n]), np.asarray(r2[n])
            self.shapes[n] = tuple(None if x != y else x for x, y in zip(a.shape, b.shape))
            self.types[n] = helper.np_dtype_to_tensor_dtype(a.dtype)


def check_runs(model: onnx.ModelProto, output: str) -> None:
    """Run ``model`` once at batch 1 up to ``output``: a fixed input size the model cannot take fails here."""
    ort = onnxruntime()

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.append(helper.make_empty_tensor_value_info(output))
    set_ir_version(probe)
    with _runs_at_input_size(probe):
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
                 for i in sess.get_inputs()}
        sess.run(None, feeds)


@contextlib.contextmanager
def _runs_at_input_size(model: onnx.ModelProto) -> Iterator[None]:
    """ONNX Runtime failing to run the model on its declared input (a wrong --input-size, usually) → one line."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - ORT's own exception types
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        inp = model.graph.input[0]
        dims = "x".join(str(d.dim_value) if d.HasField("dim_value") else "N" for d in inp.type.tensor_type.shape.dim)
        raise OnnxcamError(f"the model does not run on an input of {dims} ({ort_message(exc)}); pass the image "
                           "size it was made for with --input-size HxW") from None
