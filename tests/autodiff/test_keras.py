"""Keras applications converted by tf2onnx (opset 17, NHWC input, softmax head): gradient parity with
``tf.GradientTape``, ``onnxcam annotate`` then ``explain`` on a photograph, and ``onnxcam info``.

MobileNetV2, ResNet50, EfficientNetB0 and ConvNeXtTiny (``weights=None``, 10 classes, 224x224) are built and
converted by ``sample_models.keras_classifiers`` in two subprocesses started once per session: TensorFlow is never
imported into the pytest process (it is heavy, and it crashes a process that also imports paddle). Tests of an
architecture run as soon as its files are there, while the others are still being built.

Gradients are of the pre-softmax class score at the last feature map (onnxcam's default layer) and at an earlier
stage, for the predicted class and a given one, on two different inputs at batch 1 and batch 3. Through ReLU/ReLU6
layers the reference takes each ReLU's derivative on ONNX Runtime's side of the kink: the two float32 forward
passes put a few values within ~1e-5 of a kink on different sides (see ``keras_classifiers.references``);
the test checks that those elements are few and that they all are that close to a kink. ConvNeXtTiny also
has a feature map that the graph holds in both layouts (NCHW and NHWC): both give the same gradients and CAM.

``ONNXCAM_KERAS_DIR=DIR`` builds into DIR, and reuses what is already there, instead of a fresh folder (empty it
after changing the builder).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("tensorflow", "tf2onnx", "skimage")),
    reason="needs tensorflow, tf2onnx and scikit-image (the 'frameworks' and 'samples' extras)")

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: What each builder subprocess builds, in order; tests run in the order the files become ready.
WORKERS = (("MobileNetV2", "ResNet50"), ("EfficientNetB0", "ConvNeXtTiny"))
ORDER = ["MobileNetV2", "EfficientNetB0", "ResNet50", "ConvNeXtTiny"]
BUILD_TIMEOUT_S = 1200
TOLERANCE = 1e-4


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@dataclass
class KerasCase:
    arch: str
    onnx: pathlib.Path
    preprocessing: dict
    meta: dict
    ref: dict[str, np.ndarray]

    def names(self, stage: str) -> set[str]:
        """The ONNX tensor of the ``stage`` layer and its bitwise copies."""
        layer = self.meta["layers"][stage]
        return {layer["onnx_name"], *(alias["onnx_name"] for alias in layer["aliases"])}


class Builds:
    """The builder subprocesses, started once; ``get(arch)`` waits for that architecture's files."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
        self.procs = []
        for i, archs in enumerate(WORKERS):
            archs = tuple(a for a in archs if not (folder / f"{a}_reference.npz").exists())
            if not archs:
                continue
            log = open(folder / f"builder{i}.log", "wb")  # noqa: SIM115 - closed in close()
            command = [sys.executable, "-m", "sample_models.keras_classifiers", "-o", str(folder)]
            for arch in archs:
                command += ["--arch", arch]
            self.procs.append((archs, subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                                       stderr=subprocess.STDOUT), log))
        self.cases: dict[str, KerasCase] = {}

    def get(self, arch: str) -> KerasCase:
        from sample_models.keras_classifiers import load_reference

        if arch not in self.cases:
            npz = self.folder / f"{arch}_reference.npz"
            deadline = time.monotonic() + BUILD_TIMEOUT_S
            while not npz.exists():
                _, proc, log = next(p for p in self.procs if arch in p[0])
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = pathlib.Path(log.name).read_text(errors="replace")[-3000:]
                    pytest.fail(f"building {arch} failed (exit {proc.poll()}):\n{tail}")
                time.sleep(1)
            meta, ref = load_reference(npz)
            spec = json.loads((self.folder / f"{arch}_preprocessing.json").read_text())
            self.cases[arch] = KerasCase(arch, self.folder / f"{arch}.onnx", spec, meta, ref)
        return self.cases[arch]

    def close(self) -> None:
        for _, proc, log in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


@pytest.fixture(scope="session")
def keras_builds(tmp_path_factory):
    """Files built into a fresh folder, or into (and reused from) ``$ONNXCAM_KERAS_DIR`` when it is set."""
    cache = os.environ.get("ONNXCAM_KERAS_DIR")
    if cache:
        pathlib.Path(cache).mkdir(parents=True, exist_ok=True)
    builds = Builds(pathlib.Path(cache) if cache else tmp_path_factory.mktemp("keras"))
    yield builds
    builds.close()


@pytest.fixture(scope="module", params=ORDER)
def case(request, keras_builds) -> KerasCase:
    return keras_builds.get(request.param)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[pathlib.Path, np.ndarray]:
    """scikit-image's Chelsea (the batch-1 input of the references) as a JPEG file, and as an RGB array."""
    import cv2

    from sample_models.photos import photographs

    pictures = dict(zip(*reversed(photographs())))
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(pictures["chelsea"], cv2.COLOR_RGB2BGR))
    return path, pictures["chelsea"]


def run(*args):
    from click.testing import CliRunner

    from onnxcam.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_reference_files(case):
    """The builder's record: the tensors it matched, that the conversion is faithful, and the kink flips."""
    assert "tensorflow" not in sys.modules  # TensorFlow runs in the builder subprocesses only
    meta = case.meta
    assert meta["input_layout"] == "NHWC" and meta["opset"] == 17
    for stage, layer in meta["layers"].items():
        assert layer["onnx_layout"] in ("NCHW", "NHWC") and layer["match_error"] <= 1e-3, (stage, layer)
        # the matched tensor is the only one with these values (bitwise copies aside)
        assert layer["next_best_error"] is None or layer["next_best_error"] > 100 * layer["match_error"], layer
    assert meta["keras_path_probabilities_rel_error"] <= 1e-5
    assert max(meta["onnx_vs_keras_probabilities_rel_error"].values()) <= 1e-4
    for b, kinks in meta["kinks"].items():
        # TensorFlow and ONNX Runtime disagree on the side of a ReLU kink only for values within rounding of it
        assert kinks["elements_on_other_side"] <= 200 and kinks["max_relative_distance"] <= 1e-4, (b, kinks)
        if kinks["elements_on_other_side"] == 0:
            for kind in ("predicted", "given"):
                np.testing.assert_array_equal(case.ref[f"earlier_grad_{kind}{b}"], case.ref[f"earlier_gradk_{kind}{b}"])


@pytest.mark.parametrize("stage", ["last", "earlier"])
def test_gradients_match_the_tape(case, stage):
    """add_gradients at the default layer (None) and at the earlier stage against tf.GradientTape: ≤ 1e-4."""
    import onnx
    import onnxruntime as ort

    from onnxcam.core.metadata import read_metadata
    from onnxcam.exporter import add_gradients

    layer = case.meta["layers"][stage]
    augmented = add_gradients(onnx.load(case.onnx), activations=None if stage == "last" else layer["onnx_name"])
    meta = read_metadata(augmented)
    assert meta.input_layout == "NHWC" and meta.output_kind == "softmax" and meta.target == "logit"
    if stage == "last":  # onnxcam's default layer is the feature map the global average pool reads
        assert meta.target_tensors[0] in case.names("last"), (meta.target_tensors, layer)
    layout = meta.layouts[0]["layout"]
    assert layout in ("NCHW", "NHWC")
    if meta.target_tensors[0] == layer["onnx_name"]:
        assert layout == layer["onnx_layout"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # as the reference's kinks
    session = ort.InferenceSession(augmented.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 224, 224]  # NCHW in front of the NHWC model

    def same_layout(x: np.ndarray) -> np.ndarray:
        return x if layout == "NHWC" else x.transpose(0, 3, 1, 2)

    errors = {}
    for b in (1, 3):
        x = np.ascontiguousarray(case.ref[f"x{b}"].transpose(0, 3, 1, 2))
        for kind in ("predicted", "given"):
            index = np.full(b, -1, np.int64) if kind == "predicted" else case.ref[f"given{b}"]
            out = dict(zip([o.name for o in session.get_outputs()],
                           session.run(None, {"input": x, "class_index": index})))
            np.testing.assert_array_equal(out["logits"].argmax(axis=1), case.ref[f"predicted{b}"])
            assert rel_error(out["logits"], case.ref[f"logits{b}"]) <= 1e-3  # pre-softmax scores
            assert rel_error(out["activations"], same_layout(case.ref[f"{stage}_act{b}"])) <= 1e-3
            errors[b, kind] = rel_error(out["gradients"], same_layout(case.ref[f"{stage}_gradk_{kind}{b}"]))
    assert max(errors.values()) <= TOLERANCE, errors


def test_annotate_then_explain_a_photograph(case, photo, tmp_path):
    """`onnxcam annotate` with the model's preprocessing, then `explain FILE photo.jpg` needs no flag."""
    import cv2
    import onnx

    from onnxcam.core.metadata import read_metadata
    from onnxcam.runtime import Explainer

    spec = case.preprocessing
    annotated = tmp_path / f"{case.arch}.onnx"
    result = run("annotate", case.onnx, "-o", annotated, "--resize", spec["resize"], "--crop", spec["crop"][0],
                 "--scale", repr(spec["scale"]), "--mean", ",".join(map(repr, spec["mean"])),
                 "--std", ",".join(map(repr, spec["std"])), "--channel-order", spec["channel_order"].lower())
    assert result.exit_code == 0, result.output

    # the recorded preprocessing turns the photograph into the very tensor the Keras references were fed
    recorded = read_metadata(onnx.load(annotated)).preprocessing
    for key, value in spec.items():
        assert recorded[key] == value if isinstance(value, str) else np.allclose(recorded[key], value), recorded
    explainer = Explainer(annotated, providers="cpu")
    batch, views = explainer.preprocess([photo[1]])
    np.testing.assert_array_equal(views, case.ref["views1"])
    np.testing.assert_allclose(batch, case.ref["x1"].transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)

    info = run("info", annotated)
    assert info.exit_code == 0 and "NHWC" in info.output and "assumed" not in info.output.lower(), info.output

    for method in ("gradcam", "cfcam"):
        out = tmp_path / method
        result = run("explain", annotated, photo[0], "--method", method, "-o", out)
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", f"photo.{method}.npy", f"photo.{method}.png",
                                                         "summary.json"]
        cam = np.load(out / f"photo.{method}.npy")
        assert cam.shape == (224, 224) and cam.dtype == np.float32 and cam.min() >= 0 and cam.max() <= 1
        assert np.isfinite(cam).all() and cam.max() == pytest.approx(1)
        picture = cv2.imread(str(out / f"photo.{method}.png"))
        # the overlay of the 224x224 view the model saw, enlarged by a whole factor for viewing
        assert picture is not None and picture.shape[2] == 3 and picture.std() > 0
        assert picture.shape[0] == picture.shape[1] and picture.shape[0] % 224 == 0, picture.shape
        settings = json.loads((out / "summary.json").read_text())["settings"]
        assert settings["method"] == method and settings["layer"] in case.names("last"), settings
        [record] = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert 0 < record["probability"] <= 1 and record["class_index"] == record["top_class_index"]


def test_info_shows_the_nhwc_input(case):
    result = run("info", case.onnx)
    assert result.exit_code == 0, result.output
    lines = {line.split(":", 1)[0].strip(): line for line in result.output.splitlines() if ":" in line}
    assert "NHWC" in lines["input"] and "[N,224,224,3]" in lines["input"], result.output
    assert "softmax" in lines["output"], result.output
    assert any(name in lines["layer"] for name in case.names("last")), result.output


def test_a_feature_map_in_both_layouts(keras_builds):
    """ConvNeXt's LayerNorm output is in the graph in NCHW and, transposed for the pointwise Dense, in NHWC:
    the gradients at either match the tape, and the runtime's layout handling gives the same CAM from both."""
    import onnx

    from onnxcam.core.metadata import read_metadata
    from onnxcam.exporter import add_gradients
    from onnxcam.runtime import Explainer

    case = keras_builds.get("ConvNeXtTiny")
    layer = case.meta["layers"]["layernorm"]
    nhwc = [alias["onnx_name"] for alias in layer["aliases"] if alias["onnx_layout"] == "NHWC"]
    assert layer["onnx_layout"] == "NCHW" and nhwc, layer
    x = np.ascontiguousarray(case.ref["x3"].transpose(0, 3, 1, 2))
    cams = {}
    for layout, name in (("NCHW", layer["onnx_name"]), ("NHWC", nhwc[0])):
        augmented = add_gradients(onnx.load(case.onnx), activations=name)
        assert read_metadata(augmented).layouts[0]["layout"] == layout
        explainer = Explainer(augmented, providers="cpu")
        out = explainer.forward(x, case.ref["given3"])
        reference = case.ref["layernorm_gradk_given3"]  # NHWC, as Keras has it
        if layout == "NCHW":
            reference = reference.transpose(0, 3, 1, 2)
        assert out["gradients"].shape == reference.shape
        assert rel_error(out["gradients"], reference) <= TOLERANCE
        cams[layout] = explainer.explain(x, method="gradcam").cams
    assert cams["NHWC"].shape == (3, 224, 224)
    np.testing.assert_allclose(cams["NHWC"], cams["NCHW"], atol=1e-5)
