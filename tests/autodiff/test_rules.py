"""Each gradient rule against torch.autograd, through tiny modules that put the op between layer and logits."""

from __future__ import annotations

import io
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")
nn = torch.nn

from onnxcam.core.errors import OnnxcamError, UnsupportedOpError  # noqa: E402
from onnxcam.exporter import add_gradients, export_torch  # noqa: E402
from onnxcam.frontends.torch_parity import check_parity  # noqa: E402


class Net(nn.Module):
    """stem (the target layer) → body (the ops under test) → global pool → linear head."""

    def __init__(self, body: nn.Module, channels: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh())
        self.body = body
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))


class Lambda(nn.Module):
    def __init__(self, fn, **params) -> None:
        super().__init__()
        self.fn = fn
        for k, v in params.items():
            self.register_parameter(k, nn.Parameter(v))

    def forward(self, x):
        return self.fn(self, x)

    def with_module(self, name: str, module: nn.Module) -> Lambda:
        self.add_module(name, module)
        return self


def g(*shape):
    return torch.randn(*shape)


BODIES = {
    "conv_strided_padded": lambda: nn.Conv2d(8, 8, 3, stride=2, padding=1),
    "conv_stride3_even_kernel": lambda: nn.Conv2d(8, 8, 4, stride=3, padding=(1, 2)),
    "conv_grouped": lambda: nn.Conv2d(8, 8, 3, padding=1, groups=4),
    "conv_depthwise_dilated": lambda: nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8),
    "conv_pointwise_bias": lambda: nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 1)),
    "relu_relu6": lambda: nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU6()),
    "clip_hardtanh": lambda: nn.Hardtanh(-0.3, 0.4),
    "batchnorm_unfused": lambda: Lambda(lambda m, x: m.bn(x * 2.0 + 1.0)).with_module("bn", nn.BatchNorm2d(8)),
    "sigmoid_hardsigmoid_hardswish": lambda: nn.Sequential(nn.Hardswish(), nn.Conv2d(8, 8, 1), nn.Hardsigmoid(),
                                                           nn.Conv2d(8, 8, 1), nn.Sigmoid()),
    "mul_div_sub_broadcast": lambda: Lambda(lambda m, x: (x * m.scale - m.shift) / (1.5 + x.sigmoid()) - 2 * x,
                                            scale=g(1, 8, 1, 1), shift=g(8, 1, 1)),
    "squeeze_excite": lambda: Lambda(lambda m, x: x * torch.sigmoid(m.fc(x.mean(dim=(2, 3), keepdim=True))),
                                     ).with_module("fc", nn.Conv2d(8, 8, 1)),
    "maxpool_overlapping_ceil": lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
    "maxpool_plain": lambda: nn.MaxPool2d(2),
    "avgpool_count_include_pad": lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True),
    "avgpool_exclude_pad_ceil": lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
    "concat_split_channels": lambda: Lambda(lambda m, x: m.c(torch.cat([x, x[:, :3] * 2, torch.relu(x)], 1)))
    .with_module("c", nn.Conv2d(19, 8, 1)),
    "reshape_matmul_tokens": lambda: Lambda(
        lambda m, x: (x.flatten(2).transpose(1, 2) @ m.w).transpose(1, 2).reshape(x.shape),
        w=g(8, 8)),
    "squeeze_unsqueeze_dropout": lambda: Lambda(lambda m, x: m.d(x.unsqueeze(1).squeeze(1)) + x).with_module(
        "d", nn.Dropout(0.5)),
    # second wave: ops of ConvNeXt, ViT/Swin, EfficientNet-V2 and friends
    "tanh_exp_sqrt_pow_neg": lambda: Lambda(lambda m, x: torch.tanh(x) * torch.exp(-x) + torch.sqrt(x * x + 1.0)
                                            + (x + 2.0).pow(3) * 0.01),
    "erf_gelu": lambda: nn.Sequential(nn.GELU(), nn.Conv2d(8, 8, 1), nn.GELU()),
    "leaky_prelu": lambda: nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 1), nn.PReLU(8, init=0.3)),
    "softmax_channels": lambda: Lambda(lambda m, x: torch.softmax(x * 3.0, dim=1) * x),
    "expand_where": lambda: Lambda(lambda m, x: torch.where(x > 0.1, x * 2.0, m.p.expand(x.shape[0], 8, 12, 12)) + x,
                                   p=g(1, 8, 1, 1)),
    "pad_gather_token": lambda: Lambda(lambda m, x: nn.functional.pad(x, (1, 2, 0, 1))[:, :, :12, :12]
                                       + x[:, 0:1].select(2, 3).unsqueeze(2)),
    "slice_steps_patch_merging": lambda: Lambda(lambda m, x: m.mix(torch.cat(
        [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, 3:7, 1:12:2, 1::2]], 1))
        + x[:, :, 2::3, 0:11:3].mean((2, 3), keepdim=True)).with_module("mix", nn.Conv2d(20, 8, 1)),
    "scatternd_slice_assignment": lambda: Lambda(_assign_rows),
    "split_chunks": lambda: Lambda(lambda m, x: torch.cat(list(reversed(torch.split(x, [3, 5], dim=1))), 1)),
    "layernorm_channels_last": lambda: Lambda(lambda m, x: m.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    .with_module("ln", nn.LayerNorm(8)),
    # a nonlinearity after the norm: the spatial mean of an instance-normalised map alone is constant
    "instancenorm_affine": lambda: nn.Sequential(nn.InstanceNorm2d(8, affine=True), nn.Tanh()),
}


def _assign_rows(m, x):
    y = x * 1.5
    y[:, 2:5, 3:7] = torch.sigmoid(x[:, 0:3, 1:5]) * 2.0  # index_put → ScatterND
    return y


def _net(name: str) -> nn.Module:
    torch.manual_seed(zlib.crc32(name.encode()) % 1000)  # str hash() changes from run to run
    net = Net(BODIES[name]()).eval()
    for module in net.modules():  # non-trivial normalisation parameters
        if isinstance(module, nn.LayerNorm | nn.InstanceNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("name", sorted(BODIES))
def test_rule_matches_torch_autograd(name, tmp_path):
    net = _net(name)
    path = export_torch(net, tmp_path / "m.onnx", target_layer="stem", input_shape=(3, 12, 12))
    model = onnx.load(path)
    ops = {n.op_type for n in model.graph.node}
    rng = np.random.default_rng(1)
    # two different inputs (a frozen gradient would match only one) at batch 1 and 3
    inputs = [rng.standard_normal((b, 3, 12, 12)).astype(np.float32) for b in (1, 3, 3)]
    parity = check_parity(net, model, "stem", inputs)
    assert parity.error <= 1e-4 and parity.flips == 0, (parity, ops)


def test_export_op_coverage():
    """The bodies above really produce the ops the first wave promises (guards against fused-away ops)."""
    seen = set()
    for name in BODIES:
        net = _net(name)
        buf = io.BytesIO()
        torch.onnx.export(net, (torch.zeros(1, 3, 12, 12),), buf, dynamo=False, opset_version=17)
        seen |= {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    wanted = {"Conv", "Relu", "Clip", "BatchNormalization", "Add", "Sub", "Mul", "Div", "ReduceMean", "Reshape",
              "Squeeze", "Unsqueeze", "Gemm", "MatMul", "MaxPool", "AveragePool", "Concat", "Sigmoid", "HardSigmoid",
              "HardSwish", "Transpose", "Tanh", "Exp", "Sqrt", "Pow", "Neg", "Erf", "LeakyRelu", "PRelu", "Softmax",
              "Expand", "Where", "Pad", "Gather", "Split", "LayerNormalization", "InstanceNormalization", "Slice",
              "ScatterND"}
    assert wanted - seen == set()


def _tiny_graph(op_on_path: str) -> onnx.ModelProto:
    """input → Conv → <op> → GlobalAveragePool → Flatten → Gemm → logits, written with onnx.helper."""
    rng = np.random.default_rng(0)
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["feat"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(op_on_path, ["feat"], ["act"], name="the_op"),
        helper.make_node("GlobalAveragePool", ["act"], ["pool"], name="gap"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc"], ["out"], name="fc"),
    ]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, 8, 8])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 2])
    graph = helper.make_graph(nodes, "tiny", [image], [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_missing_rule_names_op_and_node():
    with pytest.raises(UnsupportedOpError, match=r"no gradient rule for op Sin \(node 'the_op'\)"):
        add_gradients(_tiny_graph("Sin"), activations="feat")


def test_layer_after_logits_path_and_unknown_layer():
    model = _tiny_graph("Relu")
    with pytest.raises(OnnxcamError, match="unknown layer 'nope'"):
        add_gradients(model, activations="nope")
    with pytest.raises(OnnxcamError, match="does not reach the logits"):
        add_gradients(_side_branch(model), activations="side")


def _side_branch(model: onnx.ModelProto) -> onnx.ModelProto:
    model.graph.node.append(helper.make_node("Relu", ["feat"], ["side"], name="dead_end"))
    return model


def test_handwritten_graph_matches_numpy():
    """A graph written with onnx.helper (no torch): gradient of logit c w.r.t. the conv output, by hand."""
    import onnxruntime as ort

    model = add_gradients(_tiny_graph("Relu"), activations="feat")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    logits, act, grad = sess.run(["logits", "activations", "gradients"], {"input": x, "class_index": np.array([1, -1])})
    fc = onnx.numpy_helper.to_array(model.graph.initializer[1])
    chosen = np.array([1, logits[1].argmax()])
    # d logit_c / d feat = fc[:, c] / 64 where feat > 0 (ReLU), per channel
    expected = (fc[:, chosen].T[:, :, None, None] / 64.0) * (act > 0)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-8)
    assert {o.name for o in model.graph.output} == {"logits", "activations", "gradients"}
    assert [i.name for i in model.graph.input] == ["input", "class_index"]


def test_wrong_rule_is_caught_and_nothing_written(tmp_path, monkeypatch):
    """The parity check can fail: a ReLU rule that forgets its mask must be refused at export."""
    from onnxcam.autodiff import rules

    monkeypatch.setitem(rules.RULES, "Relu", lambda v: [v.g])
    net = _net("relu_relu6")
    target = tmp_path / "bad.onnx"
    with pytest.raises(OnnxcamError, match=r"gradient check failed: .* relative error of"):
        export_torch(net, target, target_layer="stem", input_shape=(3, 12, 12))
    assert list(tmp_path.iterdir()) == []


def test_probability_target(tmp_path):
    """target="probability": the gradient of softmax(logits)[c], checked against torch by export_torch."""
    net = _net("relu_relu6")
    path = export_torch(net, tmp_path / "p.onnx", target_layer="stem", input_shape=(3, 12, 12), target="probability")
    x = np.random.default_rng(4).standard_normal((2, 3, 12, 12)).astype(np.float32)
    parity = check_parity(net, onnx.load(path), "stem", [x], target="probability")
    assert parity.error <= 1e-4 and parity.images == 2
    logit_path = export_torch(net, tmp_path / "l.onnx", target_layer="stem", input_shape=(3, 12, 12))
    assert check_parity(net, onnx.load(logit_path), "stem", [x], target="probability").error > 1e-2
