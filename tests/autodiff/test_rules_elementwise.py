"""Gradient rules for elementwise ops and reductions that other exporters emit, against torch.autograd.

Ops torch's exporter writes are tested through tiny torch modules (``export_torch`` + ``check_parity``, as in
``test_rules.py``), after checking the exported graph really holds them. The others (n-ary Sum/Mean/Max/Min,
ReduceSumSquare, Mish, ThresholdedRelu, noop reductions, ties, zero-gradient-only paths) are graphs written with
onnx.helper, differentiated w.r.t. their input and compared with torch autograd of the same math in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
nn = torch.nn
F = nn.functional

from onnxcam.exporter import add_gradients, export_torch  # noqa: E402
from onnxcam.frontends.torch_parity import check_parity, relative_error  # noqa: E402

TOLERANCE = 1e-4


# --- torch modules through export_torch --------------------------------------------------------------------


class Net(nn.Module):
    """stem (the target layer) → body (the ops under test) → spatial mean → linear head."""

    def __init__(self, body: Callable, params: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh())
        self.fn = body
        for name, value in (params or {}).items():
            self.register_parameter(name, nn.Parameter(value))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.fn(self, self.stem(x)).mean(dim=(2, 3)))


def _column(t):
    """[N, C] or [N, C, H] → broadcastable against [N, C, H, W]."""
    while t.dim() < 4:
        t = t.unsqueeze(-1)
    return t


@dataclass
class TorchCase:
    body: Callable
    ops: set[str]
    params: dict[str, Callable] = field(default_factory=dict)


TORCH_CASES = {
    "reciprocal_abs_log": TorchCase(lambda m, x: torch.reciprocal(x.abs() + 0.5) + torch.log(x.abs() + 0.3) * x,
                                    {"Reciprocal", "Abs", "Log"}),
    "min_max_broadcast": TorchCase(lambda m, x: torch.minimum(x, x[:, :1] * 0.5)
                                   + torch.maximum(x * 2.0, m.p) * torch.maximum(x, x.mean(dim=1, keepdim=True)),
                                   {"Min", "Max"}, {"p": lambda: torch.randn(8, 1, 1) * 0.5}),
    "reduce_max_min": TorchCase(lambda m, x: x * x.amax(dim=1, keepdim=True) + x.amin(dim=(2, 3), keepdim=True)
                                + _column(x.amax(dim=3)) * x.amin(dim=(1, 3))[:, None, :, None],
                                {"ReduceMax", "ReduceMin"}),
    "reduce_l2": TorchCase(lambda m, x: x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
                           + _column(torch.norm(x, dim=(2, 3))), {"ReduceL2"}),
    "reduce_logsumexp": TorchCase(lambda m, x: torch.logsumexp(x * 2.0, dim=1, keepdim=True) * x
                                  + _column(torch.logsumexp(x, dim=(2, 3))), {"ReduceLogSumExp"}),
    "softplus": TorchCase(lambda m, x: F.softplus(x * 3.0) * x, {"Softplus"}),
    "elu_selu_celu": TorchCase(lambda m, x: F.elu(x * 2.0, 0.7) + F.selu(x * 2.0) * x + F.celu(x * 2.0, 0.6),
                               {"Elu", "Selu", "Celu"}),
    "sign_floor_ceil_round": TorchCase(lambda m, x: x * torch.floor(x * 3.0) + torch.round(x * 2.0) * x
                                       + torch.sign(x) * x + torch.ceil(x * 2.0), {"Sign", "Floor", "Ceil", "Round"}),
    "gelu_tanh": TorchCase(lambda m, x: F.gelu(x * 2.0, approximate="tanh") * x, {"Gelu"}),
}
REDUCTIONS = {"ReduceMax", "ReduceMin", "ReduceL2", "ReduceLogSumExp"}
TORCH_PARAMS = [(name, opset) for name, case in TORCH_CASES.items()
                for opset in ((17, 18) if case.ops & REDUCTIONS else (20,) if name == "gelu_tanh" else (17,))]


def _torch_net(name: str) -> nn.Module:
    torch.manual_seed(sum(map(ord, name)))
    case = TORCH_CASES[name]
    return Net(case.body, {k: make() for k, make in case.params.items()}).eval()


@pytest.mark.parametrize(("name", "opset"), TORCH_PARAMS, ids=[f"{n}-opset{o}" for n, o in TORCH_PARAMS])
def test_exported_rule_matches_torch_autograd(name, opset, tmp_path):
    net = _torch_net(name)
    path = export_torch(net, tmp_path / "m.onnx", target_layer="stem", input_shape=(3, 6, 6), opset=opset)
    model = onnx.load(path)
    nodes = [n for n in model.graph.node if not n.name.startswith("onnxcam/")]
    assert TORCH_CASES[name].ops <= {n.op_type for n in nodes}
    for node in nodes:  # the axes are an attribute before opset 18 and an input from then on
        if node.op_type in REDUCTIONS:
            has_attr = any(a.name == "axes" for a in node.attribute)
            assert (has_attr, len(node.input)) == ((True, 1) if opset < 18 else (False, 2)), node
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((b, 3, 6, 6)).astype(np.float32) for b in (1, 3)]
    parity = check_parity(net, model, "stem", inputs)
    assert parity.error <= TOLERANCE and parity.flips == 0 and parity.images == 4, parity


# --- graphs written with onnx.helper ----------------------------------------------------------------------

SHAPE = (3, 4, 4)
CLASSES = 3


@dataclass
class Case:
    """``nodes`` map the input "x" to "act"; ``torch_fn`` is the same math in torch."""

    nodes: list[onnx.NodeProto]
    torch_fn: Callable
    opset: int = 17
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    integer: bool = False  # also feed integer-valued inputs: ties for Max/Min, kinks of Abs/Elu/… hit exactly


def node(op: str, inputs: list[str], output: str = "act", **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], **attrs)


def _axes(axes: list[int] | None) -> np.ndarray:
    return np.array(axes, np.int64)


C4 = np.array([0.3, -0.2, 0.1, 0.5], np.float32)


def _t(a: np.ndarray):
    return torch.as_tensor(a, dtype=torch.float64)


def _stacked(ts, reduce):
    """n-ary Max/Min as torch.amax/amin over the broadcast, stacked inputs (ties split evenly)."""
    return reduce(torch.stack(torch.broadcast_tensors(*ts)), 0)


def _reduce_cases(op: str, torch_reduce: Callable) -> dict[str, Case]:
    """One op in its opset-17 (axes attribute) and opset-18 (axes input) forms, keepdims 0/1, noop."""

    def f(axes, keep):
        return lambda x: torch_reduce(x, axes, keep)

    return {
        f"{op}-opset17-axis1-keep": Case([node(op, ["x"], "r", axes=[1], keepdims=1), node("Mul", ["x", "r"])],
                                         lambda x: x * f([1], True)(x), 17, integer=True),
        f"{op}-opset17-axes23-nokeep": Case([node(op, ["x"], "r", axes=[2, 3], keepdims=0),
                                             node("Unsqueeze", ["r", "ax23"], "u"), node("Add", ["x", "u"])],
                                            lambda x: x + f([2, 3], False)(x)[:, :, None, None], 17,
                                            {"ax23": _axes([2, 3])}, integer=True),
        f"{op}-opset17-all-nokeep": Case([node(op, ["x"], "r", keepdims=0), node("Mul", ["x", "r"])],
                                         lambda x: x * f([0, 1, 2, 3], False)(x), 17),
        f"{op}-opset18-last-nokeep": Case([node(op, ["x", "axes"], "act", keepdims=0)],
                                          f([-1], False), 18, {"axes": _axes([-1])}, integer=True),
        f"{op}-opset18-axes13-keep": Case([node(op, ["x", "axes"], "r", keepdims=1), node("Mul", ["x", "r"])],
                                          lambda x: x * f([1, 3], True)(x), 18, {"axes": _axes([1, 3])},
                                          integer=True),
        f"{op}-opset18-default-all": Case([node(op, ["x"], "r"), node("Mul", ["x", "r"])],
                                          lambda x: x * f([0, 1, 2, 3], True)(x), 18),
        f"{op}-opset18-noop-empty-axes": Case([node(op, ["x", "none"], "act", noop_with_empty_axes=1)],
                                              lambda x: torch_reduce(x, [], True), 18,
                                              {"none": _axes([])}, integer=True),
    }


def _l2(x, axes, keep):
    return x.abs() if not axes else torch.linalg.vector_norm(x, dim=axes, keepdim=keep)


def _amax(x, axes, keep):
    return x if not axes else x.amax(dim=axes, keepdim=keep)


def _amin(x, axes, keep):
    return x if not axes else x.amin(dim=axes, keepdim=keep)


def _sum_square(x, axes, keep):
    return x * x if not axes else (x * x).sum(dim=axes, keepdim=keep)


def _logsumexp(x, axes, keep):
    return x if not axes else torch.logsumexp(x, dim=axes, keepdim=keep)


SLICE = [node("Slice", ["x", "s0", "s1", "s3"], "col")]  # x[:, :, :, 0:1] → broadcast along the last axis
SLICE_CONSTS = {"s0": _axes([0]), "s1": _axes([1]), "s3": _axes([3])}
LOW_RANK = [node("ReduceSum", ["x", "ax01"], "plane", keepdims=0)]  # [4, 4], broadcast over batch and channels


def _nary(op: str, torch_fn: Callable) -> Case:
    return Case(SLICE + LOW_RANK + [node("Mul", ["x", "minus_half"], "xm"),
                                    node(op, ["x", "col", "plane", "xm", "c4"])],
                lambda x: torch_fn([x, x[:, :, :, 0:1], x.sum(dim=(0, 1)), x * -0.5, _t(C4)]), 17,
                {**SLICE_CONSTS, "ax01": _axes([0, 1]), "c4": C4, "minus_half": np.array(-0.5, np.float32)},
                integer=True)


HANDWRITTEN: dict[str, Case] = {
    "Sum-nary-broadcast": _nary("Sum", lambda ts: ts[0] + ts[1] + ts[2] + ts[3] + ts[4]),
    "Mean-nary-broadcast": _nary("Mean", lambda ts: (ts[0] + ts[1] + ts[2] + ts[3] + ts[4]) / 5),
    "Max-nary-broadcast": _nary("Max", lambda ts: _stacked(ts, torch.amax)),
    "Min-nary-broadcast": _nary("Min", lambda ts: _stacked(ts, torch.amin)),
    # three-way ties at x = 0 (x, 2x, −x) and two-way ties at x = 1 (x, 1): the gradient splits evenly
    "Max-ties": Case([node("Mul", ["x", "two"], "x2"), node("Neg", ["x"], "xn"), node("Max", ["x", "x2", "xn", "one"])],
                     lambda x: _stacked([x, 2 * x, -x, _t(np.ones(1))], torch.amax), 17,
                     {"two": np.array(2.0, np.float32), "one": np.ones(1, np.float32)}, integer=True),
    "Min-ties-same-input-twice": Case([node("Min", ["x", "x", "one"])],
                                      lambda x: _stacked([x, x, _t(np.ones(1))], torch.amin), 17,
                                      {"one": np.ones(1, np.float32)}, integer=True),
    "Max-single-input": Case([node("Max", ["x"])], lambda x: x, 17),
    **_reduce_cases("ReduceL2", _l2),
    **_reduce_cases("ReduceMax", _amax),
    **_reduce_cases("ReduceMin", _amin),
    **_reduce_cases("ReduceSumSquare", _sum_square),
    **_reduce_cases("ReduceLogSumExp", _logsumexp),
    "Reciprocal": Case([node("Abs", ["x"], "a"), node("Add", ["a", "half"], "p"), node("Reciprocal", ["p"])],
                       lambda x: 1 / (x.abs() + 0.5), 17, {"half": np.array(0.5, np.float32)}, integer=True),
    "Log": Case([node("Mul", ["x", "x"], "sq"), node("Add", ["sq", "half"], "p"), node("Log", ["p"])],
                lambda x: torch.log(x * x + 0.5), 17, {"half": np.array(0.5, np.float32)}),
    "Abs": Case([node("Abs", ["x"], "a"), node("Mul", ["a", "x"])], lambda x: x.abs() * x, 17, integer=True),
    "Softplus": Case([node("Softplus", ["x"])], F.softplus, 17),
    "Mish": Case([node("Mish", ["x"])], F.mish, 18, integer=True),
    "Elu-alpha": Case([node("Elu", ["x"], alpha=0.7)], lambda x: F.elu(x, 0.7), 17, integer=True),
    "Selu-default": Case([node("Selu", ["x"])], F.selu, 17, integer=True),
    "Selu-custom": Case([node("Selu", ["x"], alpha=1.3, gamma=0.8)],
                        lambda x: 0.8 * torch.where(x > 0, x, 1.3 * (torch.exp(x) - 1)), 17),
    "Celu-alpha": Case([node("Celu", ["x"], alpha=0.6)], lambda x: F.celu(x, 0.6), 17, integer=True),
    "ThresholdedRelu-default": Case([node("ThresholdedRelu", ["x"])],
                                    lambda x: torch.where(x > 1.0, x, torch.zeros_like(x)), 17, integer=True),
    "ThresholdedRelu-alpha": Case([node("ThresholdedRelu", ["x"], alpha=-0.3)],
                                  lambda x: torch.where(x > -0.3, x, torch.zeros_like(x)), 17),
    "Gelu-tanh": Case([node("Gelu", ["x"], approximate="tanh")], lambda x: F.gelu(x, approximate="tanh"), 20),
    "Gelu-exact": Case([node("Gelu", ["x"])], F.gelu, 20),
    "Sign-Floor-Ceil-Round-mixed": Case(
        [node("Sign", ["x"], "s"), node("Floor", ["x"], "f"), node("Ceil", ["x"], "c"), node("Round", ["x"], "r"),
         node("Sum", ["s", "f", "c", "r"], "z"), node("Mul", ["z", "x"])],
        lambda x: (torch.sign(x) + torch.floor(x) + torch.ceil(x) + torch.round(x)) * x, 17),
}


def _act_width(case: Case) -> int:
    return int(np.prod(case.torch_fn(torch.zeros(1, *SHAPE, dtype=torch.float64)).shape[1:]))


def _model(case: Case) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """x → case.nodes → act → Flatten → Gemm → scores, with seeded weights."""
    rng = np.random.default_rng(7)
    width = _act_width(case)
    w = rng.standard_normal((CLASSES, width)).astype(np.float32)
    bias = rng.standard_normal(CLASSES).astype(np.float32)
    nodes = [*case.nodes, node("Flatten", ["act"], "flat"), node("Gemm", ["flat", "w", "bias"], "scores", transB=1)]
    consts = {**case.consts, "w": w, "bias": bias}
    graph = helper.make_graph(nodes, "elementwise", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                    ["B", *SHAPE])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", CLASSES])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8 if case.opset < 19 else 10
    return model, w, bias


def _inputs(case: Case) -> list[np.ndarray]:
    """Two different inputs at batch 1 and 3; integer-valued ones as well where ties and kinks matter."""
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((b, *SHAPE)).astype(np.float32) for b in (1, 3)]
    if case.integer:
        xs.append(np.round(rng.standard_normal((3, *SHAPE)) * 1.5).astype(np.float32))
    return xs


def _torch_reference(case: Case, w: np.ndarray, bias: np.ndarray, x: np.ndarray, classes: np.ndarray):
    xt = _t(x).requires_grad_(True)
    logits = case.torch_fn(xt).flatten(1) @ _t(w).T + _t(bias)
    score = logits.gather(1, torch.as_tensor(classes)[:, None]).sum()
    (grad,) = torch.autograd.grad(score, xt)
    return logits.detach().numpy(), grad.numpy()


def _errors(case: Case, gradient_model: onnx.ModelProto, w: np.ndarray, bias: np.ndarray) -> tuple[float, float]:
    """(largest relative logit error, largest relative gradient error) over :func:`_inputs`."""
    sess = ort.InferenceSession(gradient_model.SerializeToString(), providers=["CPUExecutionProvider"])
    worst_logits, worst_grad = 0.0, 0.0
    for x in _inputs(case):
        logits, grad = sess.run(["logits", "gradients"], {"input": x, "class_index": np.full(len(x), -1, np.int64)})
        ref_logits, ref_grad = _torch_reference(case, w, bias, x, logits.argmax(axis=1))
        worst_logits = max(worst_logits, relative_error(logits, ref_logits))
        worst_grad = max(worst_grad, relative_error(grad, ref_grad))
    return worst_logits, worst_grad


@pytest.mark.parametrize("name", list(HANDWRITTEN))
def test_handwritten_rule_matches_torch_autograd(name):
    case = HANDWRITTEN[name]
    model, w, bias = _model(case)
    ops = {n.op_type for n in case.nodes}
    gradient_model = add_gradients(model, activations="x")
    logit_error, grad_error = _errors(case, gradient_model, w, bias)
    assert logit_error <= TOLERANCE, f"the torch reference is not the same math ({logit_error:.2e}; {ops})"
    assert grad_error <= TOLERANCE, f"relative gradient error {grad_error:.2e} ({ops})"


@pytest.mark.parametrize("op", ["Sign", "Floor", "Ceil", "Round"])
def test_only_path_through_piecewise_constant_op_gives_zero_gradient(op):
    case = Case([node("Mul", ["x", "three"], "x3"), node(op, ["x3"])], lambda x: torch.zeros_like(x), 17,
                {"three": np.array(3.0, np.float32)})
    model, _, _ = _model(case)
    gradient_model = add_gradients(model, activations="x")
    sess = ort.InferenceSession(gradient_model.SerializeToString(), providers=["CPUExecutionProvider"])
    for x in _inputs(case):
        (grad,) = sess.run(["gradients"], {"input": x, "class_index": np.full(len(x), -1, np.int64)})
        assert grad.shape == x.shape and grad.dtype == np.float32
        assert not np.any(grad), grad


def _first_wins_reduce_max(v):
    """A wrong tie rule: every tied position gets the whole gradient."""
    from onnxcam.autodiff.rules.reduce import kept, reduce_axes

    axes = reduce_axes(v, 18)
    hit = v.b.op("Equal", v.x, kept(v, v.y, axes))
    return [v.mask(hit, kept(v, v.g, axes)), None]


BROKEN = {
    "ReduceMax-opset18-axes13-keep": ("ReduceMax", _first_wins_reduce_max),
    "Max-ties": ("Max", lambda v: [v.unbroadcast(v.mask(v.b.op("Equal", x, v.y), v.g), x) if n else None
                                   for x, n in zip(v.node.input, v.needs)]),
    "Elu-alpha": ("Elu", lambda v: [v.mask(v.b.op("Greater", v.x, v.zero()), v.g)]),
    "Gelu-tanh": ("Gelu", lambda v: [v.b.op("Mul", v.g, v.b.op("Sigmoid", v.b.op("Mul", v.x, v.b.const(1.702))))]),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_rule_is_caught(name, monkeypatch):
    """The comparison can fail: a subtly wrong rule (tie handling, a missing branch, another approximation)."""
    from onnxcam.autodiff import rules

    op, wrong = BROKEN[name]
    monkeypatch.setitem(rules.RULES, op, wrong)
    case = HANDWRITTEN[name]
    model, w, bias = _model(case)
    _, grad_error = _errors(case, add_gradients(model, activations="x"), w, bias)
    assert grad_error > 100 * TOLERANCE
