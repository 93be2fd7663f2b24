"""Files onnxcam did not write: channels-last inputs, dynamic sizes, softmax/sigmoid outputs, Constant-node
weights, and the one-line errors for each way of getting them wrong."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxcam.cli.main import main
from onnxcam.exporter import add_gradients, candidate_layers
from onnxcam.runtime import Explainer, OnnxcamError, read_metadata
from onnxcam.runtime.session import run

RNG = np.random.default_rng(7)
W_CONV = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32)
W_FC = RNG.standard_normal((4, 6)).astype(np.float32)
B_FC = RNG.standard_normal(4).astype(np.float32)


def classifier(*, layout: str = "NCHW", size: tuple = (8, 8), head: str | None = None,
               constant_weights: bool = False) -> onnx.ModelProto:
    """image → [Transpose] → Conv → Relu ('feat') → GlobalAveragePool → Flatten → Gemm → [head op].

    ``layout="NHWC"``: the input is ``[N,H,W,3]`` and the graph transposes it, as tf2onnx files do;
    ``constant_weights``: the conv weight comes from a Constant node, as in paddle2onnx files."""
    h, w = size
    nodes, image = [], "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2], name="to_nchw"))
        image = "image_nchw"
    inits = [numpy_helper.from_array(W_FC, "w_fc"), numpy_helper.from_array(B_FC, "b_fc")]
    if constant_weights:
        nodes.append(helper.make_node("Constant", [], ["w_conv"], value=numpy_helper.from_array(W_CONV), name="c"))
        nodes.append(helper.make_node("Identity", ["w_conv"], ["w_conv_copy"], name="weight_copy"))
        weight = "w_conv_copy"
    else:
        inits.append(numpy_helper.from_array(W_CONV, "w_conv"))
        weight = "w_conv"
    nodes += [
        helper.make_node("Conv", [image, weight], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["feat"], name="relu"),
        helper.make_node("GlobalAveragePool", ["feat"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w_fc", "b_fc"], ["scores"], transB=1, name="fc"),
    ]
    out = "scores"
    if head in ("Softmax", "LogSoftmax"):
        nodes.append(helper.make_node(head, ["scores"], ["probs"], axis=-1, name="head"))
        nodes.append(helper.make_node("Identity", ["probs"], ["output"], name="out"))
        out = "output"
    elif head == "Sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["scores"], ["output"], name="head"))
        out = "output"
    dims = ["N", 3, h, w] if layout == "NCHW" else ["N", h, w, 3]
    graph = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hand")
    model.ir_version = 8
    return model


def numpy_gradient(x_nchw: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """feat and ∂ score_cls / ∂ feat for one image, by hand: the head is linear after feat."""
    probe = onnx.ModelProto()
    probe.CopyFrom(classifier())
    probe.graph.output.append(helper.make_tensor_value_info("feat", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feat = sess.run(["feat"], {"image": x_nchw[None]})[0][0]
    grad = np.broadcast_to(W_FC[cls][:, None, None] / (feat.shape[1] * feat.shape[2]), feat.shape)
    return feat, grad


def outputs(model: onnx.ModelProto, x: np.ndarray, classes) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = sess.run(None, {"input": x, "class_index": np.asarray(classes, np.int64)})
    return dict(zip([o.name for o in sess.get_outputs()], values))


@pytest.mark.parametrize("seed", [1, 2])
def test_channels_last_input_gets_an_nchw_adapter_and_the_same_gradients(seed):
    model = add_gradients(classifier(layout="NHWC"))
    meta = read_metadata(model)
    assert meta.input_layout == "NHWC" and meta.input_size == [3, 8, 8] and meta.target_tensors == ["feat"]
    assert [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["N", 3, 8, 8]
    x = np.random.default_rng(seed).standard_normal((3, 3, 8, 8)).astype(np.float32)
    out = outputs(model, x, [-1, 2, 0])
    for i, cls in enumerate([int(out["logits"][0].argmax()), 2, 0]):
        feat, grad = numpy_gradient(x[i], cls)
        np.testing.assert_allclose(out["activations"][i], feat, atol=1e-5)
        np.testing.assert_allclose(out["gradients"][i], grad, atol=1e-7)


def test_layout_is_detected_overridable_and_checked():
    nhwc = classifier(layout="NHWC")
    assert read_metadata(add_gradients(classifier())).input_layout == "NCHW"
    with pytest.raises(OnnxcamError, match=r"--input-layout NCHW contradicts the model's input 'image' "
                                           r"\[N,8,8,3\].*pass NHWC"):
        add_gradients(nhwc, input_layout="NCHW")
    with pytest.raises(OnnxcamError, match=r"--input-layout NHWC contradicts .*\[N,3,8,8\].*pass NCHW"):
        add_gradients(classifier(), input_layout="NHWC")
    with pytest.raises(OnnxcamError, match="unknown input layout 'NWHC'"):
        add_gradients(nhwc, input_layout="NWHC")


def test_dynamic_size_is_fixed_by_input_size_and_recorded():
    dynamic = classifier(layout="NHWC", size=("H", "W"))
    with pytest.raises(OnnxcamError, match=r"\[N,\?,\?,3\] has a dynamic image size; pass --input-size") as err:
        add_gradients(dynamic)
    assert "re-export" not in str(err.value)
    model = add_gradients(dynamic, input_size=(12, 10))
    assert read_metadata(model).input_size == [3, 12, 10]
    x = np.random.default_rng(3).standard_normal((1, 3, 12, 10)).astype(np.float32)
    out = outputs(model, x, [1])
    assert out["gradients"].shape == (1, 6, 12, 10)
    np.testing.assert_allclose(out["gradients"][0, :, 0, 0], W_FC[1] / 120, rtol=1e-6)
    again = add_gradients(model)  # an augmented file re-targets with no flag: the size is recorded
    assert read_metadata(again).input_size == [3, 12, 10]
    with pytest.raises(OnnxcamError, match=r"--input-size 16x16 contradicts the model.*fixed at 8x8"):
        add_gradients(classifier(), input_size=(16, 16))


@pytest.mark.parametrize("head", ["Softmax", "LogSoftmax"])
def test_softmax_output_is_explained_by_its_class_score(head, tmp_path):
    plain, wrapped = Explainer(classifier(), providers="cpu"), Explainer(classifier(head=head), providers="cpu")
    assert wrapped.metadata.output_kind == head.lower().replace("logsoftmax", "log_softmax")
    images = list(np.random.default_rng(4).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8))
    for method in ("gradcam", "layercam"):
        a, b = plain.explain(images, method=method), wrapped.explain(images, method=method)
        np.testing.assert_allclose(b.cams, a.cams, atol=1e-6)
        np.testing.assert_allclose(b.logits, a.logits, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b.probabilities.sum(axis=1), 1, rtol=1e-6)  # softmax applied once
        np.testing.assert_allclose(b.probabilities, a.probabilities, rtol=1e-5)
    # --target probability keeps the probability: the same gradient as a plain model's probability target
    batch = plain.preprocess(images)[0]
    p_plain = outputs(add_gradients(classifier(), target="probability"), batch, [-1, 1, 2])
    p_wrapped = outputs(add_gradients(classifier(head=head), target="probability"), batch, [-1, 1, 2])
    np.testing.assert_allclose(p_wrapped["gradients"], p_plain["gradients"], atol=1e-7)
    assert np.abs(p_plain["gradients"] - outputs(add_gradients(classifier()), batch, [-1, 1, 2])["gradients"]).max() > 0


def test_sigmoid_head_explains_the_pre_sigmoid_score():
    plain, multi = Explainer(classifier(), providers="cpu"), Explainer(classifier(head="Sigmoid"), providers="cpu")
    assert multi.metadata.output_kind == "sigmoid"
    images = list(np.random.default_rng(5).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    a, b = plain.explain(images, method="gradcam", class_index=3), multi.explain(images, method="gradcam",
                                                                               class_index=3)
    np.testing.assert_allclose(b.cams, a.cams, atol=1e-6)
    np.testing.assert_allclose(b.probabilities, 1 / (1 + np.exp(-a.logits)), rtol=1e-5)
    batch = plain.preprocess(images)[0]
    z = outputs(add_gradients(classifier()), batch, [3, 3])
    p = outputs(add_gradients(classifier(head="Sigmoid"), target="probability"), batch, [3, 3])
    s = 1 / (1 + np.exp(-z["logits"][:, 3]))
    np.testing.assert_allclose(p["gradients"], z["gradients"] * (s * (1 - s))[:, None, None, None], rtol=1e-5,
                               atol=1e-9)


def test_layers_from_constant_node_weights_are_never_candidates():
    model = classifier(constant_weights=True)
    rows = candidate_layers(model)
    names = [r.name for r in rows]
    assert "w_conv" not in names and "w_conv_copy" not in names, names  # 6x3x3x3: a weight, 4-D
    assert [r.name for r in rows if r.default] == ["feat"]
    assert read_metadata(add_gradients(model)).target_tensors == ["feat"]


def test_runtime_rejections_are_one_line_errors():
    explainer = Explainer(classifier(), providers="cpu")
    with pytest.raises(OnnxcamError, match=r"ONNX Runtime rejected the input .*'input' float32 \[N,3,8,8\]"):
        run(explainer.session, {"input": np.zeros((1, 8, 8, 3), np.float32), "class_index": np.zeros(1, np.int64)})
    with pytest.raises(OnnxcamError, match=r"does not run on an input of Nx3x5x5 .*--input-size"):
        bad = classifier(size=("H", "W"))
        reshape = helper.make_node("Reshape", ["feat", "fixed"], ["feat_fixed"], name="fixed_reshape")
        bad.graph.initializer.append(numpy_helper.from_array(np.array([-1, 6, 8, 8], np.int64), "fixed"))
        bad.graph.node.insert(2, reshape)
        bad.graph.node[3].input[0] = "feat_fixed"
        add_gradients(bad, input_size=(5, 5))


# ---- the CLI: annotate, info, explain on a foreign file, and every way of getting it wrong ----

@pytest.fixture()
def foreign(tmp_path, images):
    """A channels-last, dynamic-size, softmax-terminated file (what tf2onnx writes), saved to disk."""
    path = tmp_path / "foreign.onnx"
    onnx.save(classifier(layout="NHWC", size=("H", "W"), head="Softmax"), path)
    return path


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_annotate_then_explain_needs_no_flags(foreign, images, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("disc\nsquare\nstar\nnoise\n")
    annotated = tmp_path / "annotated.onnx"
    r = cli("annotate", foreign, "-o", annotated, "--input-size", "16x16", "--mean", "0.5,0.5,0.5",
            "--std", "0.25,0.25,0.25", "--labels", labels)
    assert r.exit_code == 0, r.output
    original = onnx.load(foreign)
    written = onnx.load(annotated)
    assert written.graph == original.graph  # graph and weights untouched
    meta = read_metadata(written)
    assert meta.input_size == [3, 16, 16] and meta.input_layout == "NHWC" and meta.output_kind == "softmax"
    assert meta.labels == ["disc", "square", "star", "noise"] and meta.preprocessing["mean"] == [0.5, 0.5, 0.5]
    info = cli("info", annotated)
    assert info.exit_code == 0, info.output
    assert "NHWC" in info.output and "16x16" in info.output and "(from the file)" in info.output
    assert "softmax" in info.output and "4 (disc, square, star, noise)" in info.output

    flagged, plain = tmp_path / "flagged", tmp_path / "plain"
    r1 = cli("explain", foreign, *images, "--method", "gradcam", "--input-size", "16x16", "--mean", "0.5,0.5,0.5",
             "--std", "0.25,0.25,0.25", "-o", flagged)
    r2 = cli("explain", annotated, *images, "--method", "gradcam", "-o", plain)
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    for image in images:
        a = np.load(flagged / f"{image.stem}.gradcam.npy")
        np.testing.assert_array_equal(a, np.load(plain / f"{image.stem}.gradcam.npy"))
        assert a.shape == (16, 16)
    manifest = json.loads((plain / "summary.json").read_text())["settings"]
    assert manifest["preprocessing"]["std"] == [0.25, 0.25, 0.25] and manifest["preprocessing_source"] == "file"
    assert manifest["input_layout"] == "NHWC"
    flagged_manifest = json.loads((flagged / "summary.json").read_text())["settings"]
    assert flagged_manifest["preprocessing_source"] == "assumed (ImageNet), overridden"


def test_annotate_keeps_external_data_working(tmp_path, images):
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save(classifier(), folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.data", size_threshold=0)
    out = tmp_path / "elsewhere" / "annotated.onnx"
    r = cli("annotate", folder / "model.onnx", "-o", out, "--scale", "0.5")
    assert r.exit_code == 0, r.output
    assert (out.parent / "model.data").read_bytes() == (folder / "model.data").read_bytes()
    assert read_metadata(onnx.load(out, load_external_data=False)).preprocessing["scale"] == 0.5
    r = cli("explain", out, images[0], "--method", "gradcam", "-o", tmp_path / "ext-out")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args, message", [
    (["explain", "{fixed}", "{image}", "--input-size", "16x16"], "--input-size 16x16 contradicts the model"),
    (["explain", "{fixed}", "{image}", "--input-size", "0x8"], "is not HxW with positive whole numbers"),
    (["explain", "{foreign}", "{image}", "--input-size", "16x16", "--input-layout", "NCHW"],
     "--input-layout NCHW contradicts"),
    (["explain", "{foreign}", "{image}"], "dynamic image size; pass --input-size"),
    (["explain", "{foreign}", "{image}", "--input-size", "16x16", "--mean", "0.5,0.5"], "--mean needs 3 numbers"),
    (["explain", "{foreign}", "{image}", "--input-size", "16x16", "--std", "a,b,c"], "--std needs comma-separated"),
    (["annotate", "{foreign}", "-o", "{out_model}", "--input-size", "16x16", "--labels", "{labels3}"],
     "the labels file has 3 names but the model has 4 classes"),
    (["annotate", "{foreign}", "-o", "{foreign}", "--input-size", "16x16"], "is the input model"),
    (["annotate", "{foreign}", "-o", "{out_model}", "--input-size", "16x16", "--layer", "nope"], "unknown layer"),
    (["layers", "{foreign}", "--input-size", "x"], "is not HxW"),
    (["info", "{foreign}"], "pass --input-size"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, foreign, images, tmp_path):
    fixed = tmp_path / "fixed.onnx"
    onnx.save(classifier(), fixed)
    labels3 = tmp_path / "three.txt"
    labels3.write_text("a\nb\nc\n")
    out_model = tmp_path / "out.onnx"
    values = {"fixed": fixed, "foreign": foreign, "image": images[0], "labels3": labels3, "out_model": out_model}
    argv = [a.format(**{k: str(v) for k, v in values.items()}) for a in args]
    out_dir = tmp_path / "result"
    if argv[0] == "explain":
        argv += ["-o", str(out_dir)]
    before = onnx.load(foreign).SerializeToString()
    r = cli(*argv)
    assert r.exit_code != 0
    assert r.output.startswith("Error: ") and message in r.output and r.output.count("\n") == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert not out_dir.exists() and not out_model.exists()
    assert onnx.load(foreign).SerializeToString() == before
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("final", ["Softmax", "Sigmoid"])
def test_torch_model_ending_in_softmax_exports_with_the_same_maps(final, tmp_path, images):
    torch = pytest.importorskip("torch")
    from onnxcam.exporter import export_torch
    from tests.conftest import tiny_net

    net = tiny_net()
    wrapped = torch.nn.Sequential(net, torch.nn.Softmax(dim=1) if final == "Softmax" else torch.nn.Sigmoid())
    plain_path = export_torch(net, tmp_path / "plain.onnx", target_layer="features", input_shape=(3, 32, 32))
    wrapped_path = export_torch(wrapped, tmp_path / "wrapped.onnx", target_layer="0.features",
                                input_shape=(3, 32, 32))  # the parity check runs on the pre-activation score
    a = Explainer(plain_path, providers="cpu").explain(images, method="gradcam")
    b = Explainer(wrapped_path, providers="cpu").explain(images, method="gradcam")
    assert read_metadata(onnx.load(wrapped_path)).output_kind == final.lower()
    np.testing.assert_allclose(b.cams, a.cams, atol=1e-6)
    np.testing.assert_allclose(b.logits, a.logits, atol=1e-6)


def test_every_command_takes_a_channels_last_dynamic_file(foreign, images, tmp_path):
    flags = ["--input-size", "16x16"]
    r = cli("evaluate", foreign, *images, "--method", "gradcam,scorecam,ablationcam", "--steps", "4", "--no-road",
            "-o", tmp_path / "eval", *flags)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "eval" / "evaluation.csv").read_text().count("\n") >= 3
    r = cli("bench", foreign, "--batch", "2", "--method", "gradcam", "--warmup", "0", "--repeats", "1", *flags)
    assert r.exit_code == 0 and "gradcam" in r.output, r.output
    r = cli("layers", foreign, *flags)
    listed = [line[2:].split()[0] for line in r.output.splitlines()[1:-1]]
    assert r.exit_code == 0 and listed == ["image_nchw", "conv", "feat"] and "* feat" in r.output, r.output
