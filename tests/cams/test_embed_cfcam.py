"""Embedded CF-CAM (``onnxcam embed --cam cfcam``) against the numpy CF-CAM, on real activations.

resnet50 at ``layer4`` (seeded random weights, 2048 channels) and EfficientNet-Lite0's head (ImageNet weights,
1280 channels), the seven sample photographs, both modes (``onnxcam`` and ``authors``), in ONNX Runtime and in
OpenVINO (CPU, f32 precision hint). Asserted: the clustering graph gives numpy's (= scikit-learn's) partition
on every image's non-dominant channels, and ``cam_cfcam`` equals the numpy map within 1e-4.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
ort = pytest.importorskip("onnxruntime")

from onnxcam.cams.embed import embed_cams  # noqa: E402
from onnxcam.cams.methods.cfcam.clustering_graph import BIG, dbscan_labels_graph  # noqa: E402
from onnxcam.cams.methods.cfcam.method import cfcam_details  # noqa: E402
from onnxcam.core.graph_builder import GraphBuilder, set_ir_version  # noqa: E402
from onnxcam.core.model_io import load_model  # noqa: E402
from onnxcam.exporter import export_torch  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.runtime.preprocess import model_view  # noqa: E402

TOLERANCE = 1e-4
MODES = ("onnxcam", "authors")


def _photos() -> list[np.ndarray]:
    from sample_models.photos import photographs

    return [model_view(im, {"resize": 224, "crop": [224, 224]}, (224, 224)) for im in photographs()[0]]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, dict[str, onnx.ModelProto]]:
    """model name → mode → the onnxcam file with ``cam_cfcam`` embedded in that mode."""
    folder = tmp_path_factory.mktemp("embed_cfcam")
    torch.manual_seed(0)
    plain = {"resnet50/layer4": load_model(export_torch(torchvision.models.resnet50(weights=None).eval(),
                                                        folder / "resnet50.onnx", target_layer="layer4",
                                                        input_shape=(3, 224, 224)))}
    pytest.importorskip("efficientnet_lite_pytorch")
    from sample_models import efficientnet_lite0 as lite

    plain["efficientnet_lite0/head"] = load_model(export_torch(
        lite.load_model(), folder / "lite0.onnx", target_layer=lite.LAST_STAGE, input_shape=lite.INPUT_SHAPE,
        preprocessing=lite.PREPROCESSING))
    return {name: {mode: embed_cams(model, ["cfcam"], options={"cfcam": {"mode": mode}}) for mode in MODES}
            for name, model in plain.items()}


def _labels_model(z: int) -> onnx.ModelProto:
    """A graph [R, Z] float64 → the clustering graph's labels [R] (smallest core index, or BIG for noise)."""
    b = GraphBuilder("t", opset=17)
    out = dbscan_labels_graph(b, "rows")
    b.nodes.append(helper.make_node("Identity", [out], ["labels"]))
    graph = helper.make_graph(b.nodes, "clustering", [helper.make_tensor_value_info("rows", TensorProto.DOUBLE,
                                                                                     ["R", z])],
                              [helper.make_tensor_value_info("labels", TensorProto.FLOAT, ["R"])], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_ir_version(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def _numbered(labels: np.ndarray) -> np.ndarray:
    """Graph labels → scikit-learn's numbering: clusters 0, 1, … by ascending smallest index, −1 noise."""
    noise = labels >= BIG / 2
    roots = np.unique(labels[~noise])
    return np.where(noise, -1, np.searchsorted(roots, labels))


class OpenVINO:
    """A model compiled by OpenVINO's CPU plugin in f32, called like an ORT session."""

    def __init__(self, model: onnx.ModelProto) -> None:
        ov = pytest.importorskip("openvino")
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.compiled(feeds)
        return [out[self.compiled.output(n)] for n in names]


def _session(runtime: str, model: onnx.ModelProto):
    if runtime == "openvino":
        return OpenVINO(model)  # skips (reported) when openvino is not installed
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name", ["resnet50/layer4", "efficientnet_lite0/head"])
def test_embedded_cfcam_equals_numpy(files, name, runtime):
    photos = _photos()
    for mode in MODES:
        model = files[name][mode]
        session = _session(runtime, model)
        explainer = Explainer(model, providers="cpu")
        assert explainer.embedded_output("cfcam", {"mode": mode}) == "cam_cfcam"
        batch = explainer.preprocess(photos)[0]
        out = explainer.forward(batch)
        acts, grads = out["activations"], out["gradients"]
        reference = explainer.explain(photos, method="cfcam", mode=mode, embedded=False).cams
        feeds = {"input": batch, "class_index": np.full(len(batch), -1, dtype=np.int64)}
        (cams,) = session.run(["cam_cfcam"], feeds)
        assert cams.shape == reference.shape
        diff = np.abs(cams - reference).max()
        print(f"\n{name} {mode} {runtime}: max |cam_cfcam - numpy| = {diff:.2e}")
        assert diff <= TOLERANCE, (name, mode, runtime, diff)
        clustering = _session(runtime, _labels_model(acts.shape[2] * acts.shape[3]))
        for i in range(len(batch)):
            details = cfcam_details(acts[i], grads[i], mode=mode)
            rows = acts[i].reshape(len(acts[i]), -1)[details.rest].astype(np.float64)
            (got,) = clustering.run(["labels"], {"rows": rows})
            np.testing.assert_array_equal(_numbered(got), details.labels[details.rest])
            assert details.num_clusters >= 1
