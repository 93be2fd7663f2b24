"""The default target layer (onnxcam/classifier/layers.py, docs/design.md §3 "Default layer").

CNNs: the feature map that enters the pooling over H and W (float32, float16, QDQ and QOperator int8 files).
Transformers (timm, torchvision, Hugging Face; random weights, tiny configurations, no network): the tokens that
leave the last block — the output of its last residual Add — never a tensor inside attention, with the reason
"last block output, …".
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxcam.classifier.view import ClassifierView, open_classifier
from onnxcam.core.graph_queries import image_dependents, producers

torch = pytest.importorskip("torch")
nn = torch.nn
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("USE_TF", "0")  # transformers: no TensorFlow import

ATTENTION_WORDS = ("attn", "attention", "Softmax")


class Logits(nn.Module):
    """A classifier whose output is a ModelOutput, a tuple or a tensor, as a module returning the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        out = out.logits if hasattr(out, "logits") else out
        return out[0] if isinstance(out, tuple) else out


def to_onnx(model: nn.Module, size: int | tuple[int, int], opset: int = 17) -> onnx.ModelProto:
    """``model`` (eval, random weights) exported by torch's TorchScript exporter at batch 1, dynamic batch."""
    h, w = (size, size) if isinstance(size, int) else size
    buffer = io.BytesIO()
    with torch.no_grad(), _no_mha_fastpath():
        torch.onnx.export(Logits(model.eval()), (torch.zeros(1, 3, h, w),), buffer, dynamo=False,
                          opset_version=opset, input_names=["pixels"], output_names=["scores"],
                          dynamic_axes={"pixels": {0: "N"}, "scores": {0: "N"}})
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _no_mha_fastpath():
    """nn.MultiheadAttention's fused fast path (torchvision's ViT) off: torch cannot export it."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def producer(view: ClassifierView) -> onnx.NodeProto:
    return producers(view.model.graph)[view.default_layer]


# --------------------------------------------------------------------------------------------------- CNNs

class TinyCNN(nn.Module):
    """conv → relu → conv → relu (the last stage, "features") → global average pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.pool(self.features(self.stem(x))).flatten(1))


def _cnn_pool_input(view: ClassifierView, pool_ops: tuple[str, ...]) -> str:
    """The tensor that enters the model's one spatial pooling node."""
    (node,) = [n for n in view.model.graph.node if n.op_type in pool_ops]
    return node.input[0]


def test_efficientnet_lite0_default_enters_global_average_pool(efficientnet):
    from onnxcam.core.contract import strip_gradients

    view = open_classifier(strip_gradients(onnx.load(efficientnet[1])))
    assert view.default_layer == _cnn_pool_input(view, ("GlobalAveragePool",))
    assert view.info.shape(view.default_layer) == (None, 1280, 7, 7)
    assert view.default_reason == "enters GlobalAveragePool"


@pytest.mark.parametrize(("name", "size", "shape"), [
    ("resnet18", 64, (None, 512, 2, 2)),
    ("mobilenet_v2", 64, (None, 1280, 2, 2)),
])
def test_torchvision_cnn_default_is_the_last_stage(name, size, shape):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    view = open_classifier(to_onnx(getattr(torchvision.models, name)(weights=None), size))
    assert view.default_layer == _cnn_pool_input(view, ("GlobalAveragePool",))
    assert view.info.shape(view.default_layer) == shape
    assert producer(view).op_type in ("Relu", "Clip")  # layer4's ReLU; features' ReLU6
    assert view.default_reason == "enters GlobalAveragePool"


#: Hugging Face CNNs and a hybrid (MobileViT pools a convolutional map): name: (config, model, config fields, size)
HF_CNNS = {
    "convnext": ("ConvNextConfig", "ConvNextForImageClassification",
                 {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2}, 32, (16, 4, 4), "Add"),
    "mobilevit": ("MobileViTConfig", "MobileViTForImageClassification",
                  {"image_size": 64, "hidden_sizes": [16, 16, 16], "neck_hidden_sizes": [8, 8, 8, 16, 16, 16, 32]},
                  64, (32, 2, 2), "Mul"),
    "poolformer": ("PoolFormerConfig", "PoolFormerForImageClassification",
                   {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1]}, 64, (16, 2, 2), "Add"),
}


@pytest.mark.parametrize("case", sorted(HF_CNNS))
def test_hugging_face_cnn_default_enters_the_pooling(case):
    config, cls, fields, size, shape, op = HF_CNNS[case]
    torch.manual_seed(0)
    view = open_classifier(to_onnx(_hf(config, cls, **fields), size))
    assert view.default_layer == _cnn_pool_input(view, ("ReduceMean",))
    assert view.info.shape(view.default_layer)[1:] == shape and producer(view).op_type == op
    assert view.default_reason == "enters ReduceMean"


class _Calibration:
    """A CalibrationDataReader of a few random images."""

    def __init__(self, name: str, size: int) -> None:
        rng = np.random.default_rng(0)
        self.batches = iter([{name: rng.standard_normal((1, 3, size, size)).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    onnx.save(to_onnx(TinyCNN(), 16, opset=17), path)
    return path


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_quantized_default_enters_the_pooling(tiny_cnn, tmp_path, fmt):
    quantization = pytest.importorskip("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, out = tmp_path / "pre.onnx", tmp_path / f"{fmt}.onnx"
    quant_pre_process(str(tiny_cnn), str(prepared), skip_symbolic_shape=True)
    quantization.quantize_static(str(prepared), str(out), _Calibration("pixels", 16),
                                 quant_format=getattr(quantization.QuantFormat, fmt))
    view = open_classifier(onnx.load(out))
    ops = {n.op_type for n in view.model.graph.node}
    pool = ("QLinearGlobalAveragePool", "GlobalAveragePool")
    assert view.default_layer == _cnn_pool_input(view, pool)
    assert view.info.shape(view.default_layer) == (None, 16, 8, 8)
    if fmt == "QDQ":
        assert "QuantizeLinear" in ops and producer(view).op_type == "DequantizeLinear"
        assert view.info.types[view.default_layer] == onnx.TensorProto.FLOAT
    else:
        assert {"QLinearConv", "QLinearGlobalAveragePool"} <= ops
        assert view.info.types[view.default_layer] in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)
    assert view.default_reason.startswith("enters ")


def test_float16_default_enters_the_pooling(tiny_cnn):
    float16 = pytest.importorskip("onnxconverter_common.float16")
    view = open_classifier(float16.convert_float_to_float16(onnx.load(tiny_cnn), keep_io_types=True))
    assert view.info.types[view.default_layer] == onnx.TensorProto.FLOAT16
    assert view.default_layer == _cnn_pool_input(view, ("GlobalAveragePool",))
    assert view.info.shape(view.default_layer) == (None, 16, 8, 8)
    assert view.default_reason.startswith("enters ")


# ------------------------------------------------------------------------------------------- transformers

def _timm(name: str, **kwargs):
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=5, **kwargs)


def _hf(config_name: str, model_name: str, **config):
    transformers = pytest.importorskip("transformers")
    return getattr(transformers, model_name)(getattr(transformers, config_name)(num_labels=5, **config))


VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
       "intermediate_size": 64}
TIMM_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}

#: name: (builder, image size, expected default shape without the batch, the reason, the scope of the block whose
#: output is the default: the last block, or the one before it where the class token alone is pooled)
TRANSFORMERS = {
    "timm vit": (lambda: _timm("vit_tiny_patch16_224", **TIMM_VIT), 32, (17, 32), "class token", "blocks.0/"),
    "timm deit distilled": (lambda: _timm("deit_tiny_distilled_patch16_224", **TIMM_VIT), 32, (18, 32),
                            "class and distillation tokens", "blocks.0/"),
    "timm vit avg": (lambda: _timm("vit_tiny_patch16_224", global_pool="avg", fc_norm=True, **TIMM_VIT), 32,
                     (17, 32), "tokens mean-pooled", "blocks.1/"),
    "timm vit map": (lambda: _timm("vit_tiny_patch16_224", global_pool="map", **TIMM_VIT), 32, (17, 32),
                     "tokens attention-pooled", "blocks.1/"),
    "timm beit": (lambda: _timm("beit_base_patch16_224", **TIMM_VIT), 32, (17, 32), "tokens mean-pooled",
                  "blocks.1/"),
    "timm convit": (lambda: _timm("convit_tiny", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                  local_up_to_layer=1), 32, (17, 64), "class token", "/model/Concat"),
    "timm eva": (lambda: _timm("eva02_tiny_patch14_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                               num_heads=2), 32, (17, 32), "tokens mean-pooled", "blocks.1/"),
    "timm swin": (lambda: _timm("swin_tiny_patch4_window7_224", img_size=32, embed_dim=16, depths=(1, 1),
                                num_heads=(1, 2), window_size=4), 32, (16, 32), "tokens mean-pooled", "layers.1/"),
    "torchvision vit": (lambda: pytest.importorskip("torchvision").models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5), 32,
        (17, 32), "class token", "encoder_layer_0/"),
    "torchvision swin": (lambda: pytest.importorskip("torchvision").models.swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4], num_classes=5), 32,
        (4, 4, 32), "tokens mean-pooled", "features.3/"),
    "hf vit": (lambda: _hf("ViTConfig", "ViTForImageClassification", **VIT), 32, (17, 32), "class token",
               "layer.0/"),
    "hf deit": (lambda: _hf("DeiTConfig", "DeiTForImageClassificationWithTeacher", **VIT), 32, (18, 32),
                "class and distillation tokens", "layer.0/"),
    "hf beit": (lambda: _hf("BeitConfig", "BeitForImageClassification", **VIT), 32, (17, 32),
                "tokens mean-pooled", "layer.1/"),
    "hf dinov2": (lambda: _hf("Dinov2Config", "Dinov2ForImageClassification", **VIT), 32, (17, 32),
                  "class token pooled and tokens mean-pooled", "layer.1/"),
    "hf data2vec": (lambda: _hf("Data2VecVisionConfig", "Data2VecVisionForImageClassification", **VIT), 32,
                    (17, 32), "tokens mean-pooled", "layer.1/"),
    "hf swinv2": (lambda: _hf("Swinv2Config", "Swinv2ForImageClassification", image_size=32, patch_size=4,
                              embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4), 32, (16, 32),
                  "tokens mean-pooled", "layers.1/"),
    "hf swin": (lambda: _hf("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=4, embed_dim=16,
                            depths=[1, 1], num_heads=[1, 2], window_size=4), 32, (16, 32), "tokens mean-pooled",
                "layers.1/"),
    "hf levit": (lambda: _hf("LevitConfig", "LevitForImageClassificationWithTeacher", image_size=128,
                             hidden_sizes=[16, 24, 32], num_attention_heads=[2, 2, 2], depths=[1, 1, 1],
                             key_dim=[8, 8, 8], mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2]), 128, (4, 32),
                 "tokens mean-pooled", "stages.2/"),
    "hf cvt": (lambda: _hf("CvtConfig", "CvtForImageClassification", embed_dim=[16, 32], num_heads=[1, 2],
                           depth=[1, 2], patch_sizes=[7, 3], patch_stride=[4, 2], patch_padding=[2, 1],
                           mlp_ratio=[2.0, 2.0], attention_drop_rate=[0.0, 0.0], drop_rate=[0.0, 0.0],
                           drop_path_rate=[0.0, 0.0], qkv_bias=[True, True], cls_token=[False, True],
                           qkv_projection_method=["dw_bn", "dw_bn"], kernel_qkv=[3, 3], padding_kv=[1, 1],
                           stride_kv=[2, 2], padding_q=[1, 1], stride_q=[1, 1]), 32, (17, 32), "class token",
               "stages.1/layers.0/"),
    "hf segformer": (lambda: _hf("SegformerConfig", "SegformerForImageClassification", num_encoder_blocks=2,
                                 depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                                 strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2]), 32, (16, 32),
                     "tokens mean-pooled", "block.1."),
}


#: Poolings of the class (and distillation) token alone: the default is the last block's input, since its output
#: tokens other than those do not reach the score (every gradient there is zero).
PICKED = ("class token", "class and distillation tokens")


def expected_start(pooled: str) -> str:
    return "last block input, " if pooled in PICKED else "last block output, "


@pytest.mark.parametrize("case", sorted(TRANSFORMERS))
def test_transformer_default_is_the_last_block_output(case):
    """The tokens that leave the last block (mean- or attention-pooled) or enter it (class token pooled)."""
    build, size, shape, pooled, scope = TRANSFORMERS[case]
    torch.manual_seed(0)
    view = open_classifier(to_onnx(build(), size))
    node = producer(view)
    print(case, view.default_layer, view.info.shape(view.default_layer), node.op_type, view.default_reason)
    assert view.default_reason.startswith(expected_start(pooled)) and pooled in view.default_reason
    assert view.info.shape(view.default_layer)[1:] == shape
    # a residual Add; ConViT adds its class token just before the last block (a Concat)
    joins = ("Add", "Concat") if pooled in PICKED else ("Add",)
    assert node.op_type in joins and all(i in image_dependents(view.model.graph) for i in node.input), node
    assert scope in node.name and not any(w.lower() in node.name.lower() for w in ATTENTION_WORDS), node.name


def _quantized(model: onnx.ModelProto, fmt: str, tmp_path: Path) -> onnx.ModelProto:
    quantization = pytest.importorskip("onnxruntime.quantization")
    onnx.save(model, tmp_path / "float.onnx")
    quantization.quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "int8.onnx"),
                                 _Calibration("pixels", 32), quant_format=getattr(quantization.QuantFormat, fmt))
    return onnx.load(tmp_path / "int8.onnx")


def _float16(model: onnx.ModelProto, tmp_path: Path) -> onnx.ModelProto:
    float16 = pytest.importorskip("onnxconverter_common.float16")
    return float16.convert_float_to_float16(model, keep_io_types=True)


#: case: (model, opset, how the file is made from the export, the op that makes the default)
VARIANTS = {
    "hf vit, opset 14 (decomposed LayerNorm)": ("hf vit", 14, None, "Add"),
    "timm swin, opset 14 (decomposed LayerNorm)": ("timm swin", 14, None, "Add"),
    "hf swin, float16": ("hf swin", 17, _float16, "Add"),
    "timm vit, int8 QDQ": ("timm vit", 17, lambda m, p: _quantized(m, "QDQ", p), "DequantizeLinear"),
    "timm vit, int8 QOperator": ("timm vit", 17, lambda m, p: _quantized(m, "QOperator", p), "QLinearAdd"),
}


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_transformer_default_in_deployed_files(case, tmp_path):
    """The same tokens in a file exported at an older opset, converted to float16 or quantized: the DQ output
    after the last residual Add's Q→DQ pair (QDQ), the QLinearAdd's uint8/int8 output (QOperator)."""
    name, opset, convert, op = VARIANTS[case]
    build, size, shape, pooled, scope = TRANSFORMERS[name]
    torch.manual_seed(0)
    model = to_onnx(build(), size, opset=opset)
    view = open_classifier(convert(model, tmp_path) if convert else model)
    node = producer(view)
    assert view.default_reason.startswith(expected_start(pooled)) and pooled in view.default_reason
    assert view.info.shape(view.default_layer)[1:] == shape
    assert node.op_type == op and scope in view.default_layer, (node.op_type, view.default_layer)
    residual = node if op != "DequantizeLinear" else producers(view.model.graph)[
        producers(view.model.graph)[node.input[0]].input[0]]  # DQ ← Q ← Add
    assert residual.op_type in ("Add", "QLinearAdd") and "attn" not in residual.name


# -------------------------------------------------------------------------------------------- the commands

def test_layers_and_info_say_why(tiny_cnn, tmp_path):
    from click.testing import CliRunner

    from onnxcam.cli.main import main

    build, size, *_ = TRANSFORMERS["timm vit"]
    torch.manual_seed(0)
    onnx.save(to_onnx(build(), size), tmp_path / "vit.onnx")
    picked = "last block input, class token pooled (the last block's other output tokens do not reach the score)"
    for path, reason in ((tiny_cnn, "enters GlobalAveragePool"), (tmp_path / "vit.onnx", picked)):
        view = open_classifier(onnx.load(path))
        listed = CliRunner().invoke(main, ["layers", str(path)])
        assert listed.exit_code == 0, listed.output
        (marked,) = [line for line in listed.output.splitlines()[1:-1] if line.startswith("* ")]
        assert marked.split()[1] == view.default_layer
        assert f"* default target layer: {reason}; pass another with --layer" in listed.output
        info = CliRunner().invoke(main, ["info", str(path)])
        assert info.exit_code == 0, info.output
        assert f"layer:         {view.default_layer} (default: {reason})" in info.output
