"""Models and target layers that return more than a tensor (issue 18): tuples, dicts, Hugging Face-style output
objects, target modules returning ``(hidden, attention)``, and a LeViT-style cache of a tensor computed from
parameters. Each is exported with ``export_torch`` (which checks two random batches itself) and checked once
more on fresh inputs at batch 1 and 3 against ``torch_gradients``."""

from __future__ import annotations

import io
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxcam.core.errors import OnnxcamError  # noqa: E402
from onnxcam.core.ort import onnxruntime  # noqa: E402
from onnxcam.frontends.torch_capture import score_tensor  # noqa: E402
from onnxcam.frontends.torch_export import export_torch  # noqa: E402
from onnxcam.frontends.torch_parity import check_parity, relative_error, torch_gradients  # noqa: E402

nn = torch.nn
SHAPE = (3, 32, 32)
TOLERANCE = 1e-4


@dataclass
class Out:
    """A Hugging Face-style output object: not a dict, class scores under ``.logits``."""

    logits: Any
    pooled: Any = None


class Backbone(nn.Module):
    """conv → tanh → conv → tanh (smooth: no ReLU kink for random inputs to sit on)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh())
        self.features = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.Tanh())
        self.fc = nn.Linear(8, 4)

    def pooled_logits(self, x: Any) -> tuple[Any, Any]:
        pooled = self.features(self.stem(x)).mean((2, 3))
        return pooled, self.fc(pooled)


class TupleNet(Backbone):
    def forward(self, x: Any) -> Any:
        pooled, logits = self.pooled_logits(x)
        return logits, pooled


class DictNet(Backbone):
    def forward(self, x: Any) -> Any:
        pooled, logits = self.pooled_logits(x)
        return {"pooled": pooled, "logits": logits}  # logits not first: found by key


class ObjectNet(Backbone):
    def forward(self, x: Any) -> Any:
        pooled, logits = self.pooled_logits(x)
        return Out(logits=logits, pooled=pooled)


class HFNet(Backbone):
    def forward(self, x: Any) -> Any:
        from transformers.modeling_outputs import ImageClassifierOutput

        _, logits = self.pooled_logits(x)
        return ImageClassifierOutput(logits=logits)


class HFBlockNet(nn.Module):
    """A target module returning a Hugging Face ``BaseModelOutput``, read by attribute downstream."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.Tanh())
        self.block = nn.Conv2d(6, 8, 3, padding=1)
        self.block.register_forward_hook(self.as_model_output)
        self.fc = nn.Linear(8, 4)

    @staticmethod
    def as_model_output(_module: Any, _inputs: Any, output: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(last_hidden_state=torch.tanh(output), attentions=(output.sigmoid(),))

    def forward(self, x: Any) -> Any:
        out = self.block(self.stem(x))
        hidden = out.last_hidden_state.mul_(2.0)
        return self.fc(hidden.mean((2, 3)) + out.attentions[0].mean((2, 3)))


class AttentionBlock(nn.Module):
    """Returns ``(hidden, attention)`` (Swin/PVT/CvT-stage style), or the same as a dict."""

    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 8, 3, padding=1)
        self.as_dict = as_dict

    def forward(self, x: Any) -> Any:
        hidden = torch.tanh(self.conv(x))
        attention = torch.softmax(hidden.flatten(2), -1)
        return OrderedDict(hidden=hidden, attention=attention) if self.as_dict else (hidden, attention)


class BlockNet(nn.Module):
    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.Tanh())
        self.block = AttentionBlock(as_dict)
        self.fc = nn.Linear(8, 4)
        self.as_dict = as_dict

    def forward(self, x: Any) -> Any:
        out = self.block(self.stem(x))
        hidden, attention = (out["hidden"], out["attention"]) if self.as_dict else out
        hidden.mul_(2.0)  # in place: must not touch the captured activation
        return self.fc(hidden.mean((2, 3)) + attention.amax(-1))


class CachedBiasNet(Backbone):
    """LeViT's pattern: a tensor computed from a parameter in the first eval-mode forward pass, then kept."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.cache: dict[str, Any] = {}

    def forward(self, x: Any) -> Any:
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.bias * 2
        pooled = (self.features(self.stem(x)) + self.cache[key]).mean((2, 3))
        return self.fc(pooled)


class StringNet(Backbone):
    def forward(self, x: Any) -> Any:
        self.pooled_logits(x)
        return "logits"


def _build(cls: type, *args: Any) -> Any:
    torch.manual_seed(0)
    return cls(*args).eval()


def _fresh_inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(123)
    return [rng.standard_normal((batch, *SHAPE)).astype(np.float32) for batch in (1, 3)]


def _export_and_check(model: Any, layer: str, tmp_path: Any, exporter: str = "torchscript") -> onnx.ModelProto:
    """``export_torch`` (its own 2-batch parity check), then ORT on fresh inputs against ``torch_gradients``."""
    path = export_torch(model, tmp_path / "model.onnx", target_layer=layer, input_shape=SHAPE, exporter=exporter)
    proto = onnx.load(path)
    ort = onnxruntime()
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for x in _fresh_inputs():
        got = dict(zip(["logits", "activations", "gradients"],
                       sess.run(["logits", "activations", "gradients"],
                                {"input": x, "class_index": np.full(len(x), -1, np.int64)})))
        ref = torch_gradients(model, layer, x, got["logits"].argmax(axis=1))
        for key in ("logits", "activations", "gradients"):
            assert got[key].shape == ref[key].shape, key
            assert relative_error(got[key], ref[key]) <= TOLERANCE, key
        with torch.no_grad():
            logits = score_tensor(model(torch.as_tensor(x))).numpy()
        assert relative_error(got["logits"], logits) <= TOLERANCE
    parity = check_parity(model, proto, layer, _fresh_inputs())
    assert parity.error <= TOLERANCE and parity.flips == 0, parity
    return proto


@pytest.mark.parametrize("cls", [TupleNet, DictNet, ObjectNet], ids=["tuple", "dict", "object"])
def test_model_outputs_beyond_a_tensor(cls, tmp_path):
    _export_and_check(_build(cls), "features", tmp_path)


def test_hugging_face_model_output(tmp_path):
    pytest.importorskip("transformers")
    _export_and_check(_build(HFNet), "features", tmp_path)
    model = _build(HFBlockNet)
    _export_and_check(model, "block", tmp_path)
    x = torch.as_tensor(_fresh_inputs()[0])
    with torch.no_grad():
        hidden = model.block(model.stem(x)).last_hidden_state
    np.testing.assert_allclose(torch_gradients(model, "block", x.numpy())["activations"], hidden.double().numpy(),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_target_layer_returning_hidden_and_attention(as_dict, exporter, tmp_path):
    model = _build(BlockNet, as_dict)
    proto = _export_and_check(model, "block", tmp_path, exporter)
    x = _fresh_inputs()[1]
    ref = torch_gradients(model, "block", x)
    with torch.no_grad():
        hidden = model.block(model.stem(torch.as_tensor(x)))
        hidden = hidden["hidden"] if as_dict else hidden[0]
    # the activation is the hidden state before the model's in-place ×2 (the logits, compared with the eager model
    # above, show the head got the clone and the rest of the structure)
    np.testing.assert_allclose(ref["activations"], hidden.double().numpy(), rtol=1e-6, atol=1e-6)
    assert [d.dim_value for d in proto.graph.output[1].type.tensor_type.shape.dim[1:]] == [8, 16, 16]


def _plain_export(model: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *SHAPE),), io.BytesIO(), dynamo=False, opset_version=17)


def test_parameter_cache_filled_during_export_exports_again(tmp_path):
    # a plain export with autograd on fills the cache with a tensor that requires grad; torch's tracer then
    # refuses it as a constant (what LeViT hit). export_torch exports under torch.no_grad(): the cache it fills
    # needs no grad, so exporting the same model again (after its parity check ran with autograd) works
    plain = _build(CachedBiasNet)
    _plain_export(plain)
    with pytest.raises(RuntimeError, match="Cannot insert a Tensor that requires grad as a constant"):
        _plain_export(plain)
    model = _build(CachedBiasNet)
    _export_and_check(model, "features", tmp_path)
    assert not model.cache["cpu"].requires_grad
    _export_and_check(model, "stem", tmp_path)
    _export_and_check(model, "stem", tmp_path, "dynamo")


def test_parameter_cache_filled_with_grad_is_a_one_line_error(tmp_path):
    model = _build(CachedBiasNet)
    model(torch.zeros(1, *SHAPE))  # an earlier forward pass with gradients on fills the cache
    with pytest.raises(OnnxcamError, match="torch.no_grad") as info:
        export_torch(model, tmp_path / "model.onnx", target_layer="features", input_shape=SHAPE)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "model.onnx").exists()
    _export_and_check(model, "features", tmp_path, "dynamo")  # the fix the message names


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_output_without_a_tensor_is_a_one_line_error(exporter, tmp_path):
    with pytest.raises(OnnxcamError, match="returns str") as info:
        export_torch(_build(StringNet), tmp_path / "model.onnx", target_layer="features", input_shape=SHAPE,
                     exporter=exporter)
    assert "\n" not in str(info.value) and "logits" in str(info.value)
    assert not (tmp_path / "model.onnx").exists()


def test_target_layer_without_a_tensor_is_a_one_line_error(tmp_path):
    model = _build(TupleNet)
    model.features.register_forward_hook(lambda _m, _i, _o: ("no", "tensor"))
    with pytest.raises(OnnxcamError, match="layer 'features' returns tuple holding no tensor") as info:
        export_torch(model, tmp_path / "model.onnx", target_layer="features", input_shape=SHAPE)
    assert "\n" not in str(info.value)


def test_score_tensor():
    t = torch.ones(2, 3)
    assert score_tensor(t) is t
    assert score_tensor((t, 1)) is t
    assert score_tensor([(t,), None]) is t
    assert score_tensor({"pooled": torch.zeros(2), "logits": t}) is t
    assert score_tensor({"n": 3, "scores": t, "other": torch.zeros(1)}) is t
    assert score_tensor(OrderedDict(logits=None, scores=t)) is t
    assert score_tensor(Out(logits=t)) is t
    for bad in ("logits", (), (None, t), {"n": 3}, Out(logits=None), 3.0):
        with pytest.raises(OnnxcamError, match=f"returns {type(bad).__name__} holding no class-score tensor"):
            score_tensor(bad)
