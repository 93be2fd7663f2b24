"""The spatial gradient rules (onnxcam/autodiff/rules/: resize.py, conv_pool.py, linear.py's Einsum,
normalisation.py's GroupNormalization / LRN, and shape.py's layout ops, negative-step Slice and reflect / edge /
wrap Pad).

Ops torch emits are checked against torch.autograd through tiny exported modules (the exported graph is checked
to hold the op in the intended form). The others are written with onnx.helper — image → Conv → feat → op →
Flatten → Gemm — and checked against exact references: for a linear op, its Jacobian taken from ONNX
Runtime's own forward pass on basis vectors (f(eᵢ) − f(0), exact for a linear or affine op); for a nonlinear one,
torch.autograd in float64 on the same math (whose forward must match ORT's logits). Two inputs, batch 1 and 3.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
nn = torch.nn
F = nn.functional

from onnxcam.autodiff.rules import RULES, VJP  # noqa: E402
from onnxcam.autodiff.rules import resize as resize_rules  # noqa: E402
from onnxcam.core.errors import UnsupportedOpError  # noqa: E402
from onnxcam.core.graph_builder import GraphBuilder, set_ir_version  # noqa: E402
from onnxcam.core.tensor_info import TensorInfo  # noqa: E402
from onnxcam.exporter import add_gradients, export_torch  # noqa: E402
from onnxcam.frontends.torch_parity import check_parity, relative_error  # noqa: E402
from tests.autodiff.test_rules import Lambda  # noqa: E402

TOLERANCE = 1e-4


# --- torch modules, exported -------------------------------------------------------------------------------------


class Net(nn.Module):
    """stem (the target layer) → body (the op under test) → tanh → flatten → linear head: every output position
    of the body has its own weight (a spatial mean would hide a wrong map), and the tanh makes the gradient
    depend on the input."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh())
        self.body = body
        with torch.no_grad():
            size = body(self.stem(torch.zeros(1, 3, 12, 12))).numel()
        self.head = nn.Linear(size, 5)

    def forward(self, x):
        return self.head(torch.tanh(self.body(self.stem(x))).flatten(1))




def _op(op_type: str, **attrs):
    """Predicate: the graph has an ``op_type`` node with these attribute values."""

    def found(model: onnx.ModelProto) -> bool:
        for node in model.graph.node:
            values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            values = {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}
            if node.op_type == op_type and all(values.get(k) == v for k, v in attrs.items()):
                return True
        return False

    found.__doc__ = f"{op_type} {attrs}"
    return found


def _negative_slice(model: onnx.ModelProto) -> bool:
    """A Slice node with a negative constant step."""
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return any(n.op_type == "Slice" and len(n.input) > 4 and n.input[4] in consts and (consts[n.input[4]] < 0).any()
               for n in model.graph.node)


def _bilinear_tokens(m, x):
    t = x.flatten(2)
    return torch.einsum("bij,bjk->bik", t, t.transpose(1, 2)) * 0.1


TORCH_CASES = {
    "einsum_channel_mix": (lambda: Lambda(lambda m, x: torch.einsum("bchw,hkc->bkhw", x, m.w), w=torch.randn(12, 5, 8)),
                           _op("Einsum", equation="bchw,hkc->bkhw")),
    "einsum_bilinear_tokens": (lambda: Lambda(_bilinear_tokens), _op("Einsum", equation="bij,bjk->bik")),
    "einsum_permute_and_sum_only": (lambda: Lambda(lambda m, x: torch.einsum("nchw->nhwc", x)
                                                   * torch.einsum("nchw->nw", x)[:, None, :, None]),
                                    _op("Einsum", equation="nchw->nw")),
    "einsum_ellipsis": (lambda: Lambda(lambda m, x: torch.einsum("...ij,jk->...ik", x, m.w), w=torch.randn(12, 7)),
                        _op("Einsum", equation="...ij,jk->...ik")),
    "resize_nearest_x2": (lambda: nn.Upsample(scale_factor=2, mode="nearest"),
                          _op("Resize", mode="nearest", coordinate_transformation_mode="asymmetric",
                              nearest_mode="floor")),
    "resize_nearest_sizes": (lambda: Lambda(lambda m, x: F.interpolate(x, size=(7, 17), mode="nearest")),
                             _op("Resize", mode="nearest")),
    "resize_bilinear_half_pixel": (lambda: Lambda(lambda m, x: F.interpolate(x, scale_factor=1.5, mode="bilinear")),
                                   _op("Resize", mode="linear", coordinate_transformation_mode="half_pixel")),
    "resize_bilinear_align_corners": (
        lambda: Lambda(lambda m, x: F.interpolate(x, size=(5, 19), mode="bilinear", align_corners=True)),
        _op("Resize", mode="linear", coordinate_transformation_mode="align_corners")),
    "resize_bilinear_down": (lambda: Lambda(lambda m, x: F.interpolate(x, scale_factor=0.5, mode="bilinear")),
                             _op("Resize", mode="linear")),
    "resize_bicubic": (lambda: Lambda(lambda m, x: F.interpolate(x, size=(9, 16), mode="bicubic")),
                       _op("Resize", mode="cubic")),
    "conv_transpose_output_padding": (lambda: nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1),
                                      _op("ConvTranspose", output_padding=[1, 1])),
    "conv_transpose_grouped_dilated": (
        lambda: nn.ConvTranspose2d(8, 4, 3, stride=3, padding=2, output_padding=2, groups=2, dilation=2),
        _op("ConvTranspose", group=2, dilations=[2, 2])),
    "pixel_shuffle": (lambda: Lambda(lambda m, x: F.pixel_shuffle(x, 2)), _op("DepthToSpace", mode="CRD")),
    "flip_negative_steps": (lambda: Lambda(lambda m, x: torch.flip(x, [2, 3]) * 2.0 + torch.flip(x[:, :, 1:12:2], [1])
                                           .repeat(1, 1, 2, 1) - x),
                            _negative_slice),
    "pad_reflect": (lambda: Lambda(lambda m, x: F.pad(x, (1, 2, 3, 1), mode="reflect")), _op("Pad", mode="reflect")),
    "pad_replicate": (lambda: Lambda(lambda m, x: F.pad(x, (2, 1, 0, 4), mode="replicate")), _op("Pad", mode="edge")),
    "tile_repeat": (lambda: Lambda(lambda m, x: x.repeat(1, 2, 1, 3)), _op("Tile")),
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_torch_exported_op_matches_autograd(name, tmp_path):
    torch.manual_seed(sum(map(ord, name)))
    factory, exported_form = TORCH_CASES[name]
    net = Net(factory()).eval()
    path = export_torch(net, tmp_path / "m.onnx", target_layer="stem", input_shape=(3, 12, 12))
    model = onnx.load(path)
    assert exported_form(model), f"the export holds no {exported_form.__doc__}"
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((b, 3, 12, 12)).astype(np.float32) for b in (1, 3, 3)]
    parity = check_parity(net, model, "stem", inputs)
    assert parity.error <= TOLERANCE and parity.flips == 0, parity


def test_group_norm_from_dynamo_opset21(tmp_path):
    """torch's dynamo exporter writes nn.GroupNorm as GroupNormalization-21 (per-channel scale)."""
    torch.manual_seed(3)
    norm = nn.GroupNorm(4, 8)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.bias.data.uniform_(-0.5, 0.5)
    net = Net(norm).eval()
    path = export_torch(net, tmp_path / "gn.onnx", target_layer="stem", input_shape=(3, 12, 12),
                        exporter="dynamo", opset=21)
    model = onnx.load(path)
    assert _op("GroupNormalization", num_groups=4)(model)
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((b, 3, 12, 12)).astype(np.float32) for b in (1, 3)]
    parity = check_parity(net, model, "stem", inputs)
    assert parity.error <= TOLERANCE and parity.flips == 0, parity


# --- graphs written with onnx.helper -----------------------------------------------------------------------------


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    set_ir_version(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _graph_model(nodes, inits, inputs, outputs, opset: int) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    set_ir_version(model)
    return model


class Case:
    """image [B,3,H,W] → Conv → feat [B,C,H,W] → ``nodes`` (feat → act) → Flatten → Gemm → 3 scores."""

    def __init__(self, nodes, inits=(), opset: int = 17, channels: int = 4, hw: tuple[int, int] = (6, 7)) -> None:
        rng = np.random.default_rng(0)
        self.nodes, self.inits, self.opset, self.channels, self.hw = list(nodes), list(inits), opset, channels, hw
        feat = helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", channels, *hw])
        act = helper.make_tensor_value_info("act", TensorProto.FLOAT, None)
        self.op_model = _graph_model(self.nodes, self.inits, [feat], [act], opset)
        self.act_shape = _session(self.op_model).run(None, {"feat": np.zeros((1, channels, *hw), np.float32)})[0].shape
        self.fc = rng.standard_normal((3, math.prod(self.act_shape[1:]))).astype(np.float32)
        w = (rng.standard_normal((channels, 3, 3, 3)) * 0.5).astype(np.float32)
        body = [helper.make_node("Conv", ["image", "w_conv"], ["feat"], pads=[1, 1, 1, 1], name="conv"), *self.nodes,
                helper.make_node("Flatten", ["act"], ["flat"], name="flatten"),
                helper.make_node("Gemm", ["flat", "fc"], ["scores"], transB=1, name="fc")]
        image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, *hw])
        scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 3])
        weights = [numpy_helper.from_array(w, "w_conv"), numpy_helper.from_array(self.fc, "fc")]
        self.model = _graph_model(body, self.inits + weights, [image], [scores], opset)

    def jacobian(self) -> np.ndarray:
        """[C·H·W, act size]: row j = f(e_j) − f(0), ORT's forward on basis vectors (exact for a linear op)."""
        n = self.channels * math.prod(self.hw)
        basis = np.concatenate([np.eye(n, dtype=np.float32), np.zeros((1, n), np.float32)])
        out = _session(self.op_model).run(None, {"feat": basis.reshape(n + 1, self.channels, *self.hw)})[0]
        out = out.reshape(n + 1, -1).astype(np.float64)
        return out[:n] - out[n]


def _linear_reference(case: Case):
    jac = case.jacobian()

    def reference(feat: np.ndarray, chosen: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return (case.fc[chosen].astype(np.float64) @ jac.T).reshape(feat.shape)

    return reference


def _torch_reference(case: Case, fn):
    """∂ score / ∂ feat by torch.autograd in float64 of ``fn`` (the same math as the ONNX op)."""
    fc = torch.as_tensor(case.fc, dtype=torch.float64)

    def reference(feat: np.ndarray, chosen: np.ndarray, logits: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(feat, dtype=torch.float64).requires_grad_(True)
        scores = fn(x).flatten(1) @ fc.T
        assert relative_error(logits, scores.detach().numpy()) < 1e-4, "torch's math differs from ORT's forward"
        (grad,) = torch.autograd.grad(scores.gather(1, torch.as_tensor(chosen)[:, None]).sum(), x)
        return grad.numpy()

    return reference


def check_case(case: Case, reference=None) -> None:
    """The gradient graph's ∂ score / ∂ feat against ``reference`` (default: the linear Jacobian)."""
    reference = reference or _linear_reference(case)
    sess = _session(add_gradients(case.model, activations="feat"))
    for seed, batch in ((1, 1), (2, 3)):
        x = np.random.default_rng(seed).standard_normal((batch, 3, *case.hw)).astype(np.float32)
        classes = np.array([-1] if batch == 1 else [0, -1, 2])
        logits, feat, grad = sess.run(["logits", "activations", "gradients"], {"input": x, "class_index": classes})
        chosen = np.where(classes < 0, logits.argmax(1), classes)
        expected = reference(feat.astype(np.float64), chosen, logits)
        errors = [relative_error(grad[i], expected[i]) for i in range(batch)]
        assert max(errors) <= TOLERANCE, errors


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _floats(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def _resize(coord: str | None, mode: str, scales=None, sizes=None, opset: int = 19, **attrs) -> Case:
    """A Resize of feat [N, 4, 6, 7] by constant scales, or to sizes (H, W): a constant for the ``axes`` given,
    else Concat(Shape(feat)[:2], (H, W)) as torch writes it (it holds the batch size, so it does not fold)."""
    inits, ins, nodes = [_floats("roi", attrs.pop("roi", []))], ["feat", "roi"], []
    if scales is not None:
        inits.append(_floats("scales", scales))
        ins.append("scales")
    elif "axes" in attrs:
        inits.append(_ints("sizes", sizes))
        ins += ["", "sizes"]
    else:
        inits += [_ints("hw", sizes), _ints("zero", [0]), _ints("two", [2])]
        nodes = [helper.make_node("Shape", ["feat"], ["feat_shape"]),
                 helper.make_node("Slice", ["feat_shape", "zero", "two"], ["nc"]),
                 helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0)]
        ins += ["", "sizes"]
    if coord:
        attrs["coordinate_transformation_mode"] = coord
    node = helper.make_node("Resize", ins, ["act"], name="the_op", mode=mode, **attrs)
    return Case([*nodes, node], inits, opset=opset)


RESIZE_CASES = {
    "nearest_asymmetric_floor_x2x3": lambda: _resize("asymmetric", "nearest", [1, 1, 2, 3], nearest_mode="floor"),
    "nearest_half_pixel_prefer_floor_sizes": lambda: _resize("half_pixel", "nearest", sizes=[9, 5]),
    "nearest_half_pixel_prefer_ceil": lambda: _resize("half_pixel", "nearest", [1, 1, 1.5, 0.6],
                                                      nearest_mode="round_prefer_ceil"),
    "nearest_align_corners": lambda: _resize("align_corners", "nearest", sizes=[10, 11]),
    "nearest_asymmetric_ceil_down_up": lambda: _resize("asymmetric", "nearest", [1, 1, 0.5, 2.5], nearest_mode="ceil"),
    "nearest_tf_half_pixel_for_nn": lambda: _resize("tf_half_pixel_for_nn", "nearest", sizes=[12, 4],
                                                    nearest_mode="floor", opset=17),
    "nearest_pytorch_half_pixel_size1": lambda: _resize("pytorch_half_pixel", "nearest", sizes=[1, 9]),
    "nearest_default_modes": lambda: _resize(None, "nearest", [1, 1, 2.0, 1.5]),
    "nearest_axes_attribute": lambda: _resize("asymmetric", "nearest", [2.0], axes=[3], nearest_mode="floor"),
    "linear_half_pixel_x2": lambda: _resize("half_pixel", "linear", [1, 1, 2, 2]),
    "linear_pytorch_half_pixel": lambda: _resize("pytorch_half_pixel", "linear", sizes=[1, 13]),
    "linear_align_corners": lambda: _resize("align_corners", "linear", sizes=[11, 4]),
    "linear_asymmetric": lambda: _resize("asymmetric", "linear", [1, 1, 1.7, 0.5]),
    "linear_half_pixel_symmetric": lambda: _resize("half_pixel_symmetric", "linear", [1, 1, 1.5, 2.2]),
    "linear_tf_crop_and_resize": lambda: _resize("tf_crop_and_resize", "linear", sizes=[8, 9],
                                                 roi=[0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3], extrapolation_value=3.0),
    "linear_channels_and_height": lambda: _resize("half_pixel", "linear", [1, 2, 1.5, 1]),
    "linear_keep_aspect_not_larger": lambda: _resize("half_pixel", "linear", sizes=[9, 20], axes=[2, 3],
                                                     keep_aspect_ratio_policy="not_larger"),
    "cubic_half_pixel": lambda: _resize("half_pixel", "cubic", sizes=[9, 15]),
    "cubic_align_corners_exclude_outside": lambda: _resize("align_corners", "cubic", [1, 1, 2, 1.5],
                                                           cubic_coeff_a=-0.5, exclude_outside=1),
    "cubic_asymmetric_down": lambda: _resize("asymmetric", "cubic", [1, 1, 0.7, 1.3]),
}


@pytest.mark.parametrize("name", sorted(RESIZE_CASES))
def test_resize_matches_ort_forward(name):
    check_case(RESIZE_CASES[name]())


def test_upsample_opset9_converted_model():
    """An opset-9 Upsample (nearest, integer scales) through the whole pass (converted to Resize-17 on the way)."""
    node = helper.make_node("Upsample", ["feat", "scales"], ["act"], name="the_op", mode="nearest")
    check_case(Case([node], [_floats("scales", [1, 1, 2, 3])], opset=9))


def _rule_alone(node: onnx.NodeProto, inits: list, x: np.ndarray, g: np.ndarray, opset: int) -> np.ndarray:
    """Run the node's rule by itself: a graph of just its VJP nodes, fed x and the output gradient g."""
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x.shape[1:]])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    forward = _graph_model([node], inits, [x_info], [y_info], opset)
    info = TensorInfo(forward)
    info.probe(forward, ["y"])
    b = GraphBuilder()
    grads = RULES[node.op_type](VJP(node, ["g"], [True] + [False] * (len(node.input) - 1), b, info, opset))
    g_info = helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", *g.shape[1:]])
    backward = _graph_model(b.nodes, inits + b.initializers, [x_info, g_info],
                            [helper.make_tensor_value_info(grads[0], TensorProto.FLOAT, None)], max(opset, 17))
    return _session(backward).run(None, {"x": x, "g": g})[0]


@pytest.mark.parametrize("op, opset, mode, scales", [
    ("Upsample", 9, "nearest", [1, 1, 1.5, 2.5]),
    ("Upsample", 9, "linear", [1, 1, 2, 1.5]),
    ("Upsample", 7, "nearest", [1.0, 1.0, 2.0, 3.0]),
    ("Resize", 10, "nearest", [1, 1, 0.5, 1.7]),
    ("Resize", 10, "linear", [1, 1, 1.5, 0.6]),
])
def test_old_resize_forms_rule_is_the_transposed_jacobian(op, opset, mode, scales):
    """The Upsample / Resize-10 rule alone equals Jᵀ·g, J probed from ORT's own old-opset forward (the pass
    converts such models to opset 17 before any rule runs, so the rule is called directly)."""
    channels, hw = 2, (5, 6)
    if opset == 7:
        node, inits = helper.make_node("Upsample", ["x"], ["y"], mode=mode, scales=scales), []
    else:
        node, inits = helper.make_node(op, ["x", "scales"], ["y"], mode=mode), [_floats("scales", scales)]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, *hw])
    forward = _graph_model([node], inits, [x_info], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                           opset)
    n = channels * math.prod(hw)
    basis = np.concatenate([np.eye(n, dtype=np.float32), np.zeros((1, n), np.float32)]).reshape(n + 1, channels, *hw)
    y = _session(forward).run(None, {"x": basis})[0]
    jac_t = (y.reshape(n + 1, -1)[:n] - y.reshape(n + 1, -1)[n]).astype(np.float64)  # [in, out]
    g = np.random.default_rng(5).standard_normal((3, *y.shape[1:])).astype(np.float32)
    dx = _rule_alone(node, inits, basis[:3], g, opset)
    expected = (g.reshape(3, -1).astype(np.float64) @ jac_t.T).reshape(dx.shape)
    assert relative_error(dx, expected) <= TOLERANCE


LAYOUT_CASES = {
    "depth_to_space_dcr": lambda: Case([helper.make_node("DepthToSpace", ["feat"], ["act"], blocksize=2, mode="DCR")],
                                       channels=8),
    "depth_to_space_crd": lambda: Case([helper.make_node("DepthToSpace", ["feat"], ["act"], blocksize=2, mode="CRD")],
                                       channels=8),
    "space_to_depth": lambda: Case([helper.make_node("SpaceToDepth", ["feat"], ["act"], blocksize=2)], hw=(6, 8)),
    "tile": lambda: Case([helper.make_node("Tile", ["feat", "reps"], ["act"])], [_ints("reps", [1, 2, 3, 1])]),
    "pad_reflect": lambda: Case([helper.make_node("Pad", ["feat", "pads"], ["act"], mode="reflect")],
                                [_ints("pads", [0, 0, 1, 2, 0, 0, 2, 1])]),
    "pad_reflect_axes_input": lambda: Case([helper.make_node("Pad", ["feat", "pads", "", "axes"], ["act"],
                                                             mode="reflect")],
                                           [_ints("pads", [2, 3]), _ints("axes", [-1])], opset=18),
    "pad_edge_wider_than_axis": lambda: Case([helper.make_node("Pad", ["feat", "pads"], ["act"], mode="edge")],
                                             [_ints("pads", [0, 1, 3, 0, 0, 0, 1, 8])]),
    "pad_wrap": lambda: Case([helper.make_node("Pad", ["feat", "pads"], ["act"], mode="wrap")],
                             [_ints("pads", [0, 0, 2, 1, 0, 0, 1, 3])], opset=19),
    "conv_transpose_same_upper": lambda: _conv_transpose(strides=[2, 2], auto_pad="SAME_UPPER"),
    "conv_transpose_same_lower": lambda: _conv_transpose(strides=[2, 1], auto_pad="SAME_LOWER"),
    "conv_transpose_output_shape_bias": lambda: _conv_transpose(strides=[2, 2], output_shape=[12, 13], bias=True),
    "conv_transpose_dilated_output_padding": lambda: _conv_transpose(strides=[2, 3], dilations=[3, 2],
                                                                     output_padding=[1, 2], pads=[1, 0, 2, 1]),
    "einsum_ellipsis_weight": lambda: _einsum("...ij,jk->...ik", (7, 5)),
    "einsum_implicit_output": lambda: _einsum("bchw,wk", (7, 3)),
    "einsum_upper_case": lambda: _einsum("BCHW,CD->BDHW", (4, 3)),
    "einsum_broadcast_ellipsis": lambda: _einsum("...hw,...hw->...hw", (1, 1, 6, 7)),
}


def _conv_transpose(bias: bool = False, **attrs) -> Case:
    rng = np.random.default_rng(4)
    inits = [_floats("w_t", rng.standard_normal((4, 3, 3, 3)))] + ([_floats("b_t", rng.standard_normal(3))] if bias
                                                                    else [])
    ins = ["feat", "w_t"] + (["b_t"] if bias else [])
    return Case([helper.make_node("ConvTranspose", ins, ["act"], name="the_op", **attrs)], inits)


def _einsum(equation: str, weight_shape: tuple[int, ...]) -> Case:
    weight = _floats("w_e", np.random.default_rng(6).standard_normal(weight_shape))
    node = helper.make_node("Einsum", ["feat", "w_e"], ["act"], name="the_op", equation=equation)
    return Case([node], [weight], opset=17)


@pytest.mark.parametrize("name", sorted(LAYOUT_CASES))
def test_linear_op_matches_ort_forward(name):
    check_case(LAYOUT_CASES[name]())


SLICE_CASES = {
    "full_flip": ([-1], [-(2**63) + 1], [3], [-1]),
    "step_minus_two": ([5], [0], [2], [-2]),
    "clamped_start_step_minus_three": ([10], [-9], [3], [-3]),
    "two_axes_backwards": ([4, -2], [1, -100], [2, 1], [-1, -1]),
    "mixed_signs": ([0, 6], [6, -100], [2, 3], [2, -2]),
}


@pytest.mark.parametrize("name", sorted(SLICE_CASES))
def test_slice_negative_steps(name):
    starts, ends, axes, steps = SLICE_CASES[name]
    inits = [_ints("starts", starts), _ints("ends", ends), _ints("axes", axes), _ints("steps", steps)]
    node = helper.make_node("Slice", ["feat", "starts", "ends", "axes", "steps"], ["act"], name="the_op")
    check_case(Case([node], inits))


def _group_norm_math(scale: np.ndarray, bias: np.ndarray, groups: int, per_channel: bool, eps: float):
    def fn(x):
        n, c = x.shape[:2]
        grouped = x.reshape(n, groups, -1)
        mean = grouped.mean(-1, keepdim=True)
        var = ((grouped - mean) ** 2).mean(-1, keepdim=True)
        xhat = (grouped - mean) / torch.sqrt(var + eps)
        s, t = torch.as_tensor(scale, dtype=torch.float64), torch.as_tensor(bias, dtype=torch.float64)
        if per_channel:
            shape = [1, c] + [1] * (x.dim() - 2)
            return xhat.reshape(x.shape) * s.reshape(shape) + t.reshape(shape)
        return (xhat * s.reshape(1, groups, 1) + t.reshape(1, groups, 1)).reshape(x.shape)

    return fn


@pytest.mark.parametrize("groups", [4, 8])
def test_group_normalization_opset21(groups):
    rng = np.random.default_rng(groups)
    scale, bias = rng.uniform(0.5, 1.5, 8).astype(np.float32), rng.uniform(-0.5, 0.5, 8).astype(np.float32)
    node = helper.make_node("GroupNormalization", ["feat", "gn_scale", "gn_bias"], ["act"], num_groups=groups,
                            epsilon=1e-3)
    case = Case([node], [_floats("gn_scale", scale), _floats("gn_bias", bias)], opset=21, channels=8)
    check_case(case, _torch_reference(case, _group_norm_math(scale, bias, groups, True, 1e-3)))


@pytest.mark.parametrize("groups", [4, 2])
def test_group_normalization_opset18_rule(groups):
    """GroupNormalization-18 (scale and bias per group). onnx's checker refuses the deprecated op, so
    add_gradients cannot take such a model; the rule is checked alone, against torch on the same math."""
    rng = np.random.default_rng(groups)
    scale, bias = rng.uniform(0.5, 1.5, groups).astype(np.float32), rng.uniform(-0.5, 0.5, groups).astype(np.float32)
    inits = [_floats("gn_scale", scale), _floats("gn_bias", bias)]
    node = helper.make_node("GroupNormalization", ["x", "gn_scale", "gn_bias"], ["y"], num_groups=groups,
                            epsilon=1e-3)
    x = rng.standard_normal((3, 8, 5, 6)).astype(np.float32)
    g = rng.standard_normal((3, 8, 5, 6)).astype(np.float32)
    xt = torch.as_tensor(x, dtype=torch.float64).requires_grad_(True)
    y = _group_norm_math(scale, bias, groups, False, 1e-3)(xt)
    forward = _graph_model([node], inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 5, 6])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], 18)
    assert relative_error(_session(forward).run(None, {"x": x})[0], y.detach().numpy()) < 1e-5
    (expected,) = torch.autograd.grad(y, xt, torch.as_tensor(g, dtype=torch.float64))
    dx = _rule_alone(node, inits, x, g, 18)
    assert relative_error(dx, expected.numpy()) <= TOLERANCE


def _lrn_math(size: int, alpha: float, beta: float, bias: float):
    """ONNX LRN: window [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉] (written out: torch's local_response_norm centres
    even sizes the other way; ORT only runs odd sizes)."""
    lo = (size - 1) // 2

    def fn(x):
        sq = F.pad(x * x, (0, 0, 0, 0, lo, size - 1 - lo))
        window = sum(sq[:, i:i + x.shape[1]] for i in range(size))
        return x * (bias + alpha / size * window) ** -beta

    return fn


@pytest.mark.parametrize("size", [3, 5])
def test_lrn(size):
    node = helper.make_node("LRN", ["feat"], ["act"], size=size, alpha=0.8, beta=0.75, bias=1.5)
    case = Case([node], channels=8)
    check_case(case, _torch_reference(case, _lrn_math(size, 0.8, 0.75, 1.5)))


def test_einsum_bilinear_same_tensor_twice():
    node = helper.make_node("Einsum", ["feat", "feat"], ["act"], equation="bchw,bdhw->bcd")
    case = Case([node])
    check_case(case, _torch_reference(case, lambda x: torch.einsum("bchw,bdhw->bcd", x, x)))


# --- refusals and a rule that is wrong on purpose ----------------------------------------------------------------


@pytest.mark.parametrize("case, message", [
    (lambda: _resize("half_pixel", "linear", [1, 1, 0.5, 0.5], antialias=1),
     r"cannot differentiate Resize node 'the_op': Resize with antialias=1 has no rule yet"),
    (lambda: Case([helper.make_node("Einsum", ["feat"], ["act"], name="the_op", equation="bcii->bci")], hw=(6, 6)),
     r"cannot differentiate Einsum node 'the_op': operand 0 repeats a subscript"),
])
def test_unsupported_forms_name_the_node(case, message):
    with pytest.raises(UnsupportedOpError, match=message):
        add_gradients(case().model, activations="feat")


def test_wrong_resize_matrix_is_caught(monkeypatch):
    """The checks can fail: a Resize rule that ignores the coordinate mode (always asymmetric) is refused."""
    real = resize_rules.resize_matrix
    monkeypatch.setattr(resize_rules, "resize_matrix", lambda mode, coord, *args, **kw: real(mode, "asymmetric",
                                                                                              *args, **kw))
    with pytest.raises(AssertionError):
        check_case(RESIZE_CASES["linear_half_pixel_x2"]())
