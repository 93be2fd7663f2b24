"""Classifiers with a dynamic image size: torch's exporter with ``dynamic_axes`` on H and W, and a PaddlePaddle
model converted by paddle2onnx (``sample_models/paddle``, weights in Constant nodes, ends in Softmax).

Both explain with ``--input-size`` / ``input_size=(H, W)``, and after ``onnxcam annotate`` with no flag. Gradient
parity against the source framework, relative error max|ort − ref| / max|ref| ≤ 1e-4 per image, at the default
layer and an earlier one, two different inputs, batch 1 and batch 3: live ``torch.autograd.grad`` for torch, and
``paddle.grad`` from the committed reference file for Paddle (no paddle needed; ``python -m
sample_models.paddle_classifier`` rebuilds both files where paddle and paddle2onnx are installed).
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxcam.cli.main import main
from onnxcam.core.errors import OnnxcamError
from onnxcam.exporter import add_gradients, candidate_layers
from onnxcam.frontends.torch_parity import relative_error
from onnxcam.runtime import Explainer
from tests.conftest import ROOT

TOLERANCE = 1e-4
TORCH_SIZE = (96, 96)
#: The torchscript exporter's names for the outputs of resnet18's layer4 (the default) and layer3.
TORCH_LAYERS = {"layer4": "/layer4/layer4.1/relu_1/Relu_output_0", "layer3": "/layer3/layer3.1/relu_1/Relu_output_0"}
PADDLE_MODEL = ROOT / "sample_models" / "paddle" / "mobilenet_v3_small_x0_5.onnx"
PADDLE_REFERENCE = ROOT / "sample_models" / "paddle" / "mobilenet_v3_small_x0_5_reference.npz"
PADDLE_SIZE = (160, 160)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def bad(out, *args) -> str:
    """Run a command that must fail: one ``Error:`` line, exit code ≠ 0, and ``out`` never created."""
    result = run(*args)
    message = result.output.strip()
    assert result.exit_code != 0, message
    assert len(message.splitlines()) == 1 and message.startswith("Error: "), message
    assert "Traceback" not in message and not out.exists(), message
    return message


def size_flag(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def worst(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest per-image relative error of a batch."""
    return max(relative_error(a, e) for a, e in zip(actual, expected))


# ---------------------------------------------------------------- torch: dynamic_axes on N, H and W


@pytest.fixture(scope="module")
def torch_dynamic(tmp_path_factory):
    """(resnet18 with seeded random weights, its plain ONNX export with symbolic N, H and W)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = tmp_path_factory.mktemp("dynamic") / "resnet18_dynamic.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 3, *TORCH_SIZE),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}})
    dims = [d.dim_param or d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    return model, path


def torch_inputs() -> list[np.ndarray]:
    """Two different inputs, each at batch 1 and batch 3."""
    batches = []
    for seed in (1, 2):
        x = np.random.default_rng(seed).standard_normal((3, 3, *TORCH_SIZE)).astype(np.float32)
        batches += [x[:1], x]
    return batches


def torch_errors(model, explainer: Explainer, module: str) -> list[dict[str, float]]:
    """Per batch of :func:`torch_inputs`: relative errors of logits, activations and gradients vs torch."""
    from onnxcam.frontends.torch_parity import torch_gradients

    errors = []
    for x in torch_inputs():
        out = explainer.forward(x)
        ref = torch_gradients(model, module, x, out["logits"].argmax(axis=1))
        errors.append({key: worst(out[key], ref[key]) for key in ("logits", "activations", "gradients")})
    return errors


@pytest.mark.parametrize("module", ["layer4", "layer3"])
def test_torch_dynamic_explainer_matches_autograd(torch_dynamic, module):
    model, path = torch_dynamic
    layer = None if module == "layer4" else TORCH_LAYERS[module]  # layer4 is the default
    explainer = Explainer(path, providers="cpu", input_size=TORCH_SIZE, layer=layer)
    assert explainer.input_shape == (3, *TORCH_SIZE)
    errors = torch_errors(model, explainer, module)
    assert max(max(e.values()) for e in errors) <= TOLERANCE, errors


def test_torch_dynamic_add_gradients_at_two_layers(torch_dynamic):
    from onnxcam.frontends.torch_parity import check_parity

    model, path = torch_dynamic
    proto = onnx.load(path)
    with pytest.raises(OnnxcamError):
        add_gradients(proto)  # H and W are symbolic: the gradient pass needs a size
    augmented = add_gradients(proto, activations=list(TORCH_LAYERS.values()), input_size=TORCH_SIZE)
    dims = [d.dim_param or d.dim_value for d in augmented.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, *TORCH_SIZE]
    parity = check_parity(model, augmented, list(TORCH_LAYERS), torch_inputs())
    assert parity.error <= TOLERANCE and parity.flips == 0 and parity.images == 8, parity


def _explain_with_flag_then_annotated(model, image, tmp_path, size):
    """The maps of `explain --input-size`, and of `explain` on the `annotate --input-size` file, with no flag."""
    flag = size_flag(size)
    result = run("explain", model, image, "--input-size", flag, "--method", "gradcam", "-o", tmp_path / "flag")
    assert result.exit_code == 0, result.output
    message = bad(tmp_path / "none", "explain", model, image, "--method", "gradcam", "-o", tmp_path / "none")
    assert "--input-size" in message and "re-export" not in message.lower(), message

    annotated = tmp_path / "annotated.onnx"
    result = run("annotate", model, "-o", annotated, "--input-size", flag)
    assert result.exit_code == 0, result.output
    before, after = onnx.load(model), onnx.load(annotated)
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in before.graph.node]  # metadata only
    result = run("explain", annotated, image, "--method", "gradcam", "-o", tmp_path / "annotated")
    assert result.exit_code == 0, result.output

    stem = image.stem
    maps = [np.load(tmp_path / run_name / f"{stem}.gradcam.npy") for run_name in ("flag", "annotated")]
    manifests = [json.loads((tmp_path / run_name / "summary.json").read_text())["settings"]
                 for run_name in ("flag", "annotated")]
    assert maps[0].shape == size
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-6)
    assert manifests[0]["input_size"] == manifests[1]["input_size"] == [3, *size]
    assert manifests[0]["layer"] == manifests[1]["layer"]
    return manifests[0]


def test_torch_dynamic_cli_input_size_then_annotate(torch_dynamic, images, tmp_path):
    _, path = torch_dynamic
    _explain_with_flag_then_annotated(path, images[0], tmp_path, TORCH_SIZE)


# ---------------------------------------------------------------- PaddlePaddle through paddle2onnx


@pytest.fixture(scope="module")
def paddle_reference() -> dict[str, np.ndarray]:
    with np.load(PADDLE_REFERENCE) as data:
        return {key: data[key] for key in data.files}


def paddle_batches(ref: dict[str, np.ndarray]):
    """(input set k, batch b, float32 input) for two input sets at batch 1 and batch 3."""
    for k in range(2):
        for b in (1, 3):
            pixels = ref["pixels"][k, :b]
            yield k, b, pixels.astype(np.float32) * ref["input_scale"] + ref["input_offset"]


def test_paddle_file_is_a_dynamic_size_constant_weight_softmax_classifier(paddle_reference):
    proto = onnx.load(PADDLE_MODEL)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3 and not any(d.HasField("dim_value") for d in (dims[0], dims[2], dims[3]))
    assert len(proto.graph.initializer) == 0 and sum(n.op_type == "Constant" for n in proto.graph.node) > 100
    assert proto.graph.node[-1].op_type == "Softmax"
    assert {"Conv", "BatchNormalization", "HardSwish", "HardSigmoid", "GlobalAveragePool", "MatMul"} <= {
        n.op_type for n in proto.graph.node}
    assert list(paddle_reference["layers"]) == ["lastconv", "blocks.7"]


@pytest.mark.parametrize("index", [0, 1])
def test_paddle_explainer_matches_paddle_grad(paddle_reference, index):
    """Default layer (Paddle's lastconv) and blocks.7; the logits are the Softmax's input, as Paddle's."""
    name = str(paddle_reference["onnx_names"][index])
    explainer = Explainer(PADDLE_MODEL, providers="cpu", input_size=PADDLE_SIZE, layer=None if index == 0 else name)
    assert explainer.input_shape == (3, *PADDLE_SIZE)
    errors = {}
    for k, b, x in paddle_batches(paddle_reference):
        out = explainer.forward(x)
        np.testing.assert_array_equal(out["logits"].argmax(axis=1), paddle_reference[f"classes_{k}_b{b}"])
        errors[k, b] = {
            "logits": worst(out["logits"], paddle_reference[f"logits_{k}_b{b}"]),
            "activations": worst(out["activations"], paddle_reference[f"activations_{index}_{k}"][:b]),
            "gradients": worst(out["gradients"], paddle_reference[f"gradients_{index}_{k}_b{b}"]),
        }
    assert max(max(e.values()) for e in errors.values()) <= TOLERANCE, errors


def test_paddle_add_gradients_at_two_layers(paddle_reference):
    names = [str(n) for n in paddle_reference["onnx_names"]]
    proto = onnx.load(PADDLE_MODEL)
    with pytest.raises(OnnxcamError):
        add_gradients(proto)
    augmented = add_gradients(proto, activations=names, input_size=PADDLE_SIZE)
    meta = {p.key: json.loads(p.value) for p in augmented.metadata_props if p.key.startswith("onnxcam.")}
    assert meta["onnxcam.output_kind"] == "softmax"
    session = ort.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
    for k, b, x in paddle_batches(paddle_reference):
        out = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {"input": x, "class_index": np.full(b, -1, np.int64)})))
        assert worst(out["logits"], paddle_reference[f"logits_{k}_b{b}"]) <= TOLERANCE
        for i in range(len(names)):
            assert out[f"activations_{i}"].shape == paddle_reference[f"activations_{i}_{k}"][:b].shape
            error = worst(out[f"gradients_{i}"], paddle_reference[f"gradients_{i}_{k}_b{b}"])
            assert error <= TOLERANCE, (i, k, b, error)


def test_paddle_cli_input_size_then_annotate(paddle_reference, images, tmp_path):
    manifest = _explain_with_flag_then_annotated(PADDLE_MODEL, images[1], tmp_path, PADDLE_SIZE)
    assert manifest["layer"] == str(paddle_reference["onnx_names"][0])


@pytest.mark.skipif(importlib.util.find_spec("paddle") is None or importlib.util.find_spec("paddle2onnx") is None,
                    reason="needs paddlepaddle and paddle2onnx (a separate environment: they pin onnx<=1.17)")
def test_paddle_builder_reproduces_the_committed_files(paddle_reference, tmp_path):
    subprocess.run([sys.executable, "-m", "sample_models.paddle_classifier", "-o", str(tmp_path)], cwd=ROOT,
                   check=True, capture_output=True)
    with np.load(tmp_path / PADDLE_REFERENCE.name) as rebuilt:
        assert sorted(rebuilt.files) == sorted(paddle_reference)
        for key, value in paddle_reference.items():
            if value.dtype.kind in "iuU":
                np.testing.assert_array_equal(rebuilt[key], value, err_msg=key)
            else:
                np.testing.assert_allclose(rebuilt[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


# ---------------------------------------------------------------- layers on graphs whose weights are Constant nodes


def input_dependent(proto: onnx.ModelProto) -> set[str]:
    """Every tensor computed from the graph's first input (nodes are in topological order)."""
    reached = {proto.graph.input[0].name}
    for node in proto.graph.node:
        if any(name in reached for name in node.input):
            reached.update(node.output)
    return reached


def listed_layers(*args) -> list[tuple[bool, str, str]]:
    """(default?, tensor name, shape) per row of `onnxcam layers`."""
    result = run("layers", *args)
    assert result.exit_code == 0, result.output
    rows = [re.match(r"([* ]) (\S+) .*?\s(N(?:x\d+)+)\s", line + " ") for line in result.output.splitlines()]
    return [(m[1] == "*", m[2], m[3]) for m in rows if m]


def test_paddle_layers_lists_no_weight_tensor(paddle_reference):
    proto = onnx.load(PADDLE_MODEL)
    dependent = input_dependent(proto)
    weights = {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    assert any(n.op_type == "Reshape" and n.output[0] not in dependent for n in proto.graph.node)  # weight-only ops

    rows = listed_layers(PADDLE_MODEL, "--input-size", size_flag(PADDLE_SIZE))
    assert len(rows) > 20 and all(name in dependent and name not in weights for _, name, _ in rows)
    defaults = [(name, shape) for is_default, name, shape in rows if is_default]
    assert defaults == [(str(paddle_reference["onnx_names"][0]), "Nx288x5x5")]  # Paddle's lastconv

    infos = candidate_layers(proto, input_size=PADDLE_SIZE)
    assert [r.name for r in infos] == [name for _, name, _ in rows]
    assert all(r.flows for r in infos)
    assert [r.shape for r in infos if r.default] == [(None, 288, 5, 5)]


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32), name))


def constant_weight_classifier() -> onnx.ModelProto:
    """A small CNN with every weight in a Constant node, and a learned position bias ``[1, 8, 16, 16]`` computed
    from weights only (Constant -> Mul) and added to the first feature map: a 4-D float tensor on the path to
    the logits that depends on no image."""
    rng = np.random.default_rng(0)
    nodes = [
        _constant("w1", rng.standard_normal((8, 3, 3, 3)) * 0.3),
        _constant("position", rng.standard_normal((1, 8, 16, 16))),
        _constant("position_scale", np.array(0.1)),
        helper.make_node("Mul", ["position", "position_scale"], ["position_bias"]),
        _constant("w2", rng.standard_normal((16, 8, 3, 3)) * 0.2),
        _constant("w3", rng.standard_normal((16, 4)) * 0.3),
        _constant("b3", rng.standard_normal(4) * 0.1),
        helper.make_node("Conv", ["image", "w1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["conv1", "position_bias"], ["biased"]),
        helper.make_node("Relu", ["biased"], ["relu1"]),
        helper.make_node("Conv", ["relu1", "w2"], ["conv2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv2"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w3"], ["scores"]),
        helper.make_node("Add", ["scores", "b3"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "constant_weights",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_constant_weight_graph_lists_no_weight_tensor(tmp_path, images):
    path = tmp_path / "constant_weights.onnx"
    onnx.save(constant_weight_classifier(), path)
    rows = listed_layers(path)
    names = [name for _, name, _ in rows]
    assert set(names) <= {"conv1", "biased", "relu1", "conv2", "features"} and "conv1" in names, names
    assert [(name, shape) for is_default, name, shape in rows if is_default] == [("features", "Nx16x8x8")]
    result = run("explain", path, images[0], "--method", "gradcam", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- bad sizes


@pytest.fixture(scope="module")
def fixed_head_model(tmp_path_factory):
    """A CNN whose Flatten feeds a Linear layer sized for 32x32, exported with dynamic H and W anyway: it runs at
    32x32 only."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 3)).eval()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}})
    path = tmp_path_factory.mktemp("fixed") / "fixed_head.onnx"
    path.write_bytes(buffer.getvalue())
    return path


def test_fixed_head_model_runs_at_its_own_size(fixed_head_model, images, tmp_path):
    result = run("explain", fixed_head_model, images[0], "--input-size", "32x32", "--method", "gradcam",
                 "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("flag", ["0x96", "abc", "96x-4"])
def test_malformed_input_sizes(flag, images, tmp_path):
    out = tmp_path / "never"
    for args in (("explain", PADDLE_MODEL, images[0]), ("annotate", PADDLE_MODEL), ("layers", PADDLE_MODEL)):
        message = bad(out, *args, "--input-size", flag, *(("-o", out) if args[0] != "layers" else ()))
        assert "--input-size" in message or "input size" in message, message


def test_size_the_model_cannot_run(fixed_head_model, images, tmp_path):
    """The Flatten + Linear head fits 32x32 only; at 1x1 MobileNetV3 has no feature map larger than 1x1."""
    out = tmp_path / "never"
    assert "48x48" in bad(out, "explain", fixed_head_model, images[0], "--input-size", "48x48", "-o", out)
    bad(out, "explain", PADDLE_MODEL, images[0], "--input-size", "1x1", "-o", out)
    bad(out, "annotate", PADDLE_MODEL, "--input-size", "1x1", "-o", out)


def test_annotate_refuses_a_size_the_model_cannot_run(fixed_head_model, tmp_path):
    """An annotated file must explain with no flag, so annotate checks the size it records."""
    out = tmp_path / "never.onnx"
    assert "48x48" in bad(out, "annotate", fixed_head_model, "--input-size", "48x48", "-o", out)
