"""Embedded CAMs: each method's graph form against its numpy form, and ``onnxcam embed`` on the sample model.

A method with a graph form (``onnxcam/cams/methods/<method>.py``, ``@graph_form``) is checked here automatically:
on random tensors and on edge cases (all-zero activations, a constant map, channels that cancel), the raw
maps and the finished ``[N,H,W]`` maps of both forms agree.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from onnxcam.cams import METHODS, finalise, finalise_graph
from onnxcam.cams.embed import embed_cams, embeddable
from onnxcam.cams.render import overlay
from onnxcam.cli.main import main
from onnxcam.core.contract import strip_cams, strip_gradients
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import GraphBuilder, set_ir_version
from onnxcam.core.metadata import read_metadata
from onnxcam.runtime import Explainer
from onnxcam.runtime.session import create_session
from tests.conftest import SHAPES_MODEL

ort = pytest.importorskip("onnxruntime")
SAMPLES = sorted((SHAPES_MODEL.parent / "images").glob("*.png"))
EIGEN = {"eigencam", "eigengradcam"}


def run_graph_form(method: str, a: np.ndarray, g: np.ndarray, size: tuple[int, int], opset: int = 17,
                   **options) -> tuple[np.ndarray, np.ndarray]:
    """(raw maps, finished maps) of ``method``'s graph form on ``a``, ``g`` in ONNX Runtime."""
    spec = METHODS[method]
    b = GraphBuilder("t", opset=opset)
    raw = spec.graph(b, "A", "G", a.shape[1:], options)
    done = finalise_graph(b, raw, size, spec.normalise, a.shape[2:])
    b.nodes += [helper.make_node("Identity", [raw], ["raw"]), helper.make_node("Identity", [done], ["cam"])]
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph(b.nodes, "form", [helper.make_tensor_value_info(n, f, ["N", *a.shape[1:]]) for n in "AG"],
                              [helper.make_tensor_value_info(n, f, ["N", None, None]) for n in ("raw", "cam")],
                              b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    set_ir_version(model)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    raw_maps, maps = session.run(None, {"A": a, "G": g})
    return raw_maps, maps


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    out = []
    for shape in [(2, 512, 7, 7), (3, 16, 14, 14), (1, 64, 4, 6), (2, 8, 1, 1)]:
        a = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
        out.append((f"random{shape}", a, (rng.standard_normal(shape) * 1e-3).astype(np.float32)))
    a = np.maximum(rng.standard_normal((2, 32, 5, 5)), 0).astype(np.float32)
    out.append(("zero activations", np.zeros_like(a), rng.standard_normal(a.shape).astype(np.float32)))
    out.append(("zero gradients", a, np.zeros_like(a)))
    out.append(("constant map", np.ones_like(a), np.ones_like(a)))
    g = rng.standard_normal(a.shape).astype(np.float32)
    g[:, 1::2] = -g[:, ::2] * (1 + 1e-6)  # channel pairs that cancel to 1e-6 of their size
    out.append(("cancelling channels", np.repeat(a[:, ::2], 2, axis=1), g))
    return out


@pytest.mark.parametrize("method", embeddable())
@pytest.mark.parametrize(("case", "a", "g"), _cases(), ids=[c[0] for c in _cases()])
def test_graph_form_equals_numpy_form(method, case, a, g):
    spec = METHODS[method]
    raw, maps = run_graph_form(method, a, g, (40, 56))
    expected_raw = spec(a, g)
    expected = finalise(expected_raw, (40, 56), spec.normalise)
    assert raw.shape == expected_raw.shape and maps.shape == expected.shape == (len(a), 40, 56)
    assert np.isfinite(maps).all()
    scale = max(float(np.abs(expected_raw).max()), 1e-30)
    tolerance = 1e-4 if method in EIGEN else 1e-6  # float32 power iteration against float64 SVD
    assert np.abs(raw - expected_raw).max() <= tolerance * scale, case
    assert np.abs(maps - expected).max() <= (1e-4 if method in EIGEN else 1e-5), case


def test_graph_form_takes_the_method_options():
    rng = np.random.default_rng(1)
    a = np.maximum(rng.standard_normal((2, 16, 6, 6)), 0).astype(np.float32)
    g = (rng.standard_normal(a.shape) * 1e-3).astype(np.float32)
    raw, _ = run_graph_form("gradcampp", a, g, (12, 12), eps=0.0)
    np.testing.assert_allclose(raw, METHODS["gradcampp"](a, g, eps=0.0), rtol=1e-6, atol=1e-12)
    assert np.abs(raw - METHODS["gradcampp"](a, g)).max() > 1e-3 * np.abs(raw).max()  # eps matters here
    with pytest.raises(OnnxcamError, match="eps"):
        run_graph_form("gradcampp", a, g, (12, 12), eps=-1.0)


def test_graph_forms_at_opset_18_take_axes_as_inputs():
    rng = np.random.default_rng(2)
    a = np.maximum(rng.standard_normal((2, 16, 6, 6)), 0).astype(np.float32)
    g = rng.standard_normal(a.shape).astype(np.float32)
    for method in embeddable():
        _, maps = run_graph_form(method, a, g, (12, 12), opset=18)
        expected = finalise(METHODS[method](a, g), (12, 12), METHODS[method].normalise)
        assert np.abs(maps - expected).max() <= 1e-4, method


@pytest.fixture(scope="module")
def embedded() -> onnx.ModelProto:
    return embed_cams(onnx.load(SHAPES_MODEL), embeddable(), overlay=True)


def test_embedded_file_carries_every_map_and_overlay(embedded):
    methods = embeddable()
    outputs = {o.name: o for o in embedded.graph.output}
    for method in methods:
        cam, shown = outputs[f"cam_{method}"].type.tensor_type, outputs[f"overlay_{method}"].type.tensor_type
        assert cam.elem_type == onnx.TensorProto.FLOAT and shown.elem_type == onnx.TensorProto.UINT8
        assert [d.dim_value or d.dim_param for d in cam.shape.dim] == ["N", 64, 64]
        assert [d.dim_value or d.dim_param for d in shown.shape.dim] == ["N", 64, 64, 3]
    assert {n.domain for n in embedded.graph.node} <= {"", "ai.onnx"}  # standard ops only
    onnx.checker.check_model(embedded, full_check=True)
    meta = read_metadata(embedded)
    assert [e["method"] for e in meta.cams] == methods
    assert next(e for e in meta.cams if e["method"] == "gradcampp")["options"] == {"eps": 1e-6}
    assert all(e["overlay"] == f"overlay_{e['method']}" and e["colormap"] == "jet" for e in meta.cams)


def test_explainer_uses_the_embedded_map_and_it_equals_numpy(embedded):
    explainer = Explainer(embedded, providers="cpu")
    batch = explainer.preprocess(SAMPLES)[0]
    for class_index in (None, 2, [0, 1, 2, 3, 0, 1, 2, 3]):
        raw = explainer.forward(batch, class_index)
        for method in embeddable():
            from_graph = explainer.explain(SAMPLES, method=method, class_index=class_index)
            np.testing.assert_array_equal(from_graph.cams, raw[f"cam_{method}"])
            from_numpy = explainer.explain(SAMPLES, method=method, class_index=class_index, embedded=False)
            assert np.abs(from_graph.cams - from_numpy.cams).max() <= 1e-5, method
            np.testing.assert_array_equal(from_graph.class_index, from_numpy.class_index)
            if method == "gradcam":
                expected = np.stack([overlay(v, c) for v, c in zip(from_numpy.images, from_numpy.cams)])
                shown = raw["overlay_gradcam"].astype(int)
                assert np.abs(shown - expected).max() <= 3 and (shown != expected).mean() < 1e-3
    # other options than the embedded ones: the numpy path, with those options
    assert explainer.embedded_output("gradcampp", {"eps": 0.0}) is None
    other = explainer.explain(SAMPLES[:2], method="gradcampp", eps=0.0)
    np.testing.assert_array_equal(other.cams, explainer.explain(SAMPLES[:2], method="gradcampp", eps=0.0,
                                                                embedded=False).cams)


def test_uint8_maps_and_bgr_overlay():
    model = onnx.load(SHAPES_MODEL)
    meta = read_metadata(model)
    meta.preprocessing = {**meta.preprocessing, "channel_order": "BGR"}
    from onnxcam.core.metadata import write_metadata

    write_metadata(model, meta)
    levels = embed_cams(model, ["layercam"], dtype="uint8", overlay=True, alpha=0.3, colormap="viridis")
    explainer = Explainer(levels, providers="cpu")
    assert explainer.embedded_output("layercam") is None  # uint8 maps are not the float map
    result = explainer.explain(SAMPLES, method="layercam")
    raw = explainer.forward(explainer.preprocess(SAMPLES)[0])
    assert raw["cam_layercam"].dtype == np.uint8
    expected = np.uint8(np.clip(result.cams, 0, 1) * 255 + 0.5)
    assert np.abs(raw["cam_layercam"].astype(int) - expected).max() <= 1
    shown = np.stack([overlay(v, c, alpha=0.3, colormap="viridis") for v, c in zip(result.images, result.cams)])
    assert np.abs(raw["overlay_layercam"].astype(int) - shown).max() <= 3
    assert (raw["overlay_layercam"] != shown).mean() < 1e-3  # the image comes back in RGB, not BGR


def test_a_plain_classifier_is_augmented_and_embedding_again_replaces(embedded):
    plain = strip_gradients(onnx.load(SHAPES_MODEL))
    assert {o.name for o in plain.graph.output} == {"logits"}
    once = embed_cams(plain, ["gradcam"])
    assert [o.name for o in once.graph.output] == ["logits", "activations", "gradients", "cam_gradcam"]
    again = embed_cams(embedded, ["hirescam"])
    assert [o.name for o in again.graph.output] == ["logits", "activations", "gradients", "cam_hirescam"]
    assert [e["method"] for e in read_metadata(again).cams] == ["hirescam"]
    assert not any(n.name.startswith("onnxcam/cam") and "gradcam" in n.name for n in again.graph.node)
    fresh = embed_cams(plain, ["hirescam"])
    assert len(again.graph.node) == len(fresh.graph.node)  # nothing of the earlier methods is left
    assert len(again.graph.initializer) == len(fresh.graph.initializer)
    stripped = strip_cams(embedded)
    assert read_metadata(stripped).cams is None and "cam_gradcam" not in {o.name for o in stripped.graph.output}
    session = create_session(again.SerializeToString(), "cpu")
    batch = Explainer(again, providers="cpu").preprocess(SAMPLES[:1])[0]
    assert session.run(["cam_hirescam"], {"input": batch, "class_index": np.array([-1])})[0].shape == (1, 64, 64)


def test_a_dynamo_style_opset_18_file(tmp_path):
    converted = onnx.version_converter.convert_version(strip_gradients(onnx.load(SHAPES_MODEL)), 18)
    model = embed_cams(converted, ["gradcam", "normgrad", "eigencam"])
    assert next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx")) == 18
    explainer = Explainer(model, providers="cpu")
    for method in ("gradcam", "normgrad", "eigencam"):
        a = explainer.explain(SAMPLES, method=method).cams
        b = explainer.explain(SAMPLES, method=method, embedded=False).cams
        assert np.abs(a - b).max() <= 1e-5


def test_embed_refuses_what_it_cannot_embed():
    model = onnx.load(SHAPES_MODEL)
    for cams, match in ((["scorecam"], "cannot be embedded.*embeddable: cfcam, eigencam"), ([], "at least one"),
                        (["nosuch"], "unknown method")):
        with pytest.raises(OnnxcamError, match=match):
            embed_cams(model, cams)
    with pytest.raises(OnnxcamError, match="does not accept option 'foo'"):
        embed_cams(model, ["gradcampp"], options={"gradcampp": {"foo": 1}})
    with pytest.raises(OnnxcamError, match="not embedded"):
        embed_cams(model, ["gradcam"], options={"gradcampp": {"eps": 0}})
    with pytest.raises(OnnxcamError, match="cam-dtype"):
        embed_cams(model, ["gradcam"], dtype="float16")
    with pytest.raises(OnnxcamError, match="colormap"):
        embed_cams(model, ["gradcam"], overlay=True, colormap="nosuch")


def test_cli_embed(tmp_path):
    runner = CliRunner()
    out = tmp_path / "embedded.onnx"
    result = runner.invoke(main, ["embed", str(SHAPES_MODEL), "--cam", "gradcam,gradcampp", "--cam-options",
                                  "gradcampp.eps=0", "--overlay", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "cam_gradcam, overlay_gradcam, cam_gradcampp, overlay_gradcampp at 64x64" in result.output
    meta = read_metadata(onnx.load(out))
    assert [(e["method"], e["options"]) for e in meta.cams] == [("gradcam", {}), ("gradcampp", {"eps": 0})]
    info = runner.invoke(main, ["info", str(out)])
    assert "embedded CAMs: gradcam (float32, overlay), gradcampp (float32, overlay)" in info.output, info.output
    explain = runner.invoke(main, ["explain", str(out), str(SAMPLES[0]), "--method", "gradcam", "-o",
                                   str(tmp_path / "maps")])
    assert explain.exit_code == 0, explain.output
    written = np.load(tmp_path / "maps" / f"{SAMPLES[0].stem}.gradcam.npy")
    assert np.abs(written - Explainer(out).explain([SAMPLES[0]], method="gradcam", embedded=False).cams[0]).max() \
        <= 1e-5
    for args, message in (
        (["--cam", "scorecam"], "method 'scorecam' cannot be embedded"),
        (["--cam", "gradcam", "--cam-options", "eps=0"], "METHOD.OPTION=VALUE"),
        (["--cam", "gradcam", "--cam-options", "gradcampp.eps=0"], "which --cam does not embed"),
        (["--cam", "gradcam", "--layer", "nosuch"], "unknown layer 'nosuch'"),
    ):
        bad = runner.invoke(main, ["embed", str(SHAPES_MODEL), *args, "-o", str(tmp_path / "bad.onnx")])
        assert bad.exit_code == 1 and message in bad.output and "Traceback" not in bad.output, bad.output
        assert len(bad.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad.onnx").exists()
    same = runner.invoke(main, ["embed", str(out), "--cam", "gradcam", "-o", str(out)])
    assert same.exit_code == 1 and "is the input model" in same.output
    assert json.loads(json.dumps(read_metadata(onnx.load(out)).cams))  # the file is intact


def test_several_layers_are_fused_as_the_runtime_fuses_them():
    layers = ["/model/stem/stem.6/Relu_output_0", "onnxcam_target"]
    model = embed_cams(onnx.load(SHAPES_MODEL), ["gradcam", "layercam"], layer=layers)
    explainer = Explainer(model, providers="cpu")
    assert explainer.metadata.target_tensors == layers and explainer.embedded_output("gradcam") == "cam_gradcam"
    for method in ("gradcam", "layercam"):
        fused = explainer.explain(SAMPLES, method=method, class_index=1)
        expected = explainer.explain(SAMPLES, method=method, class_index=1, embedded=False)
        assert np.abs(fused.cams - expected.cams).max() <= 1e-5
        single = Explainer(SHAPES_MODEL, providers="cpu").explain(SAMPLES, method=method, class_index=1).cams
        assert np.abs(fused.cams - single).max() > 0.05  # the earlier layer really takes part
