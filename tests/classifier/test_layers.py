"""Target layers anywhere: several at once, torch module names on exported files, and `onnxcam layers`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxcam.classifier.torch_names import scope_of
from onnxcam.cli.main import main
from onnxcam.core.errors import OnnxcamError
from onnxcam.exporter import candidate_layers, export_torch
from onnxcam.frontends.torch_parity import torch_gradients
from onnxcam.runtime import Explainer

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    path = export_torch(model, tmp_path_factory.mktemp("r") / "r18.onnx", target_layer=["layer3", "layer4"],
                        input_shape=(3, 64, 64))
    return model, path


def test_several_layers_give_suffixed_outputs(resnet):
    model, path = resnet
    proto = onnx.load(path)
    assert [o.name for o in proto.graph.output] == ["logits", "activations_0", "gradients_0", "activations_1",
                                                    "gradients_1"]
    explainer = Explainer(path, providers="cpu")
    assert explainer.metadata.target_layers == ["layer3", "layer4"]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    out = explainer.forward(x)
    ref = torch_gradients(model, ["layer3", "layer4"], x)
    assert out["activations_0"].shape == (2, 256, 4, 4) and out["gradients_1"].shape == (2, 512, 2, 2)
    for key in ("gradients_0", "gradients_1"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-4 * np.abs(ref[key]).max())
    # the fused map averages the two layers' normalised maps and rescales the average to a maximum of 1
    both = explainer.explain(x, method="gradcam").cams
    singles = [Explainer(path, providers="cpu", layer=name).explain(x, method="gradcam").cams
               for name in ("layer3", "layer4")]
    mean = (singles[0] + singles[1]) / 2
    np.testing.assert_allclose(both, mean / mean.max(axis=(1, 2), keepdims=True), atol=1e-5)


def test_module_name_retargets_an_exported_file(resnet):
    model, path = resnet
    explainer = Explainer(path, providers="cpu", layer="layer2")
    assert explainer.metadata.target_layers == ["layer2"]
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(explainer.forward(x)["gradients"], torch_gradients(model, "layer2", x)["gradients"],
                               atol=1e-4 * np.abs(torch_gradients(model, "layer2", x)["gradients"]).max())
    with pytest.raises(OnnxcamError, match="unknown layer 'layer9'"):
        Explainer(path, providers="cpu", layer="layer9")


def test_scope_names():
    assert scope_of("layer3") == "/model/layer3/"
    assert scope_of("features.14.conv.0.0") == "/model/features/features.14/conv/conv.0/conv.0.0/"
    assert scope_of("trunk_output.block3") == "/model/trunk_output/block3/"


def test_candidates_flag_default_flow_and_targets(resnet):
    _, path = resnet
    rows = candidate_layers(onnx.load(path))
    assert sum(r.default for r in rows) == 1 and all(r.flows for r in rows)
    assert sum(r.target for r in rows) == 2
    assert [r.shape for r in rows if r.default] == [(None, 512, 2, 2)]
    result = CliRunner().invoke(main, ["layers", str(path)])
    assert result.exit_code == 0, result.output
    assert "gradient" in result.output.splitlines()[0] and "exported target (layer3, layer4)" in result.output


def test_candidates_say_where_gradients_cannot_flow(tmp_path):
    from tests.autodiff.test_rules import _tiny_graph

    rows = {r.name: r for r in candidate_layers(_tiny_graph("Sin"))}
    assert rows["feat"].flows is False and "Sin" in rows["feat"].blocker
    assert rows["act"].flows is True
