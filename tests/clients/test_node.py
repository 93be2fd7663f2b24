"""The Node.js example (examples/node/explain.mjs, onnxruntime-node) reads the map an embedded onnxcam file
computes, and it equals the Python runtime's.

Skips when node/npm are missing or the npm install of examples/node (``ONNXRUNTIME_NODE_INSTALL=skip npm ci``,
run here when node_modules are absent) fails.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "examples" / "node"
SCRIPT = NODE_DIR / "explain.mjs"
SHAPES_MODEL = ROOT / "sample_models" / "shapes_cnn.onnx"
IMAGES = [ROOT / "sample_models" / "images" / name for name in ("circle_1.png", "cross_2.png")]
MARKERS = ("onnxruntime-node/dist/index.js", "pngjs/package.json", "jpeg-js/package.json")


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if not exe or not shutil.which("npm"):
        pytest.skip("node/npm are not on PATH")
    if not all((NODE_DIR / "node_modules" / m).exists() for m in MARKERS):
        env = dict(os.environ, ONNXRUNTIME_NODE_INSTALL="skip")
        try:
            done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, env=env,
                                  capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            pytest.skip("`npm ci` in examples/node timed out")
        if done.returncode != 0 or not all((NODE_DIR / "node_modules" / m).exists() for m in MARKERS):
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            pytest.skip(f"`ONNXRUNTIME_NODE_INSTALL=skip npm ci` in examples/node failed: {tail[0]}")
    return exe


def _embed(out: pathlib.Path, *args: str) -> pathlib.Path:
    pytest.importorskip("onnxcam.cams.embed", reason="onnxcam embed is not available")
    cmd = [sys.executable, "-m", "onnxcam.cli", "embed", str(SHAPES_MODEL), *args, "-o", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> pathlib.Path:
    return _embed(tmp_path_factory.mktemp("node") / "shapes.cam.onnx", "--cam", "gradcam", "--overlay")


def _explain(node: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(SCRIPT), *map(str, args)], cwd=NODE_DIR, capture_output=True, text=True,
                          timeout=120)


def _printed_class(stdout: str) -> int:
    match = re.search(r"\(class (\d+)\)|^class (\d+)", stdout)
    assert match, f"no class in the output: {stdout!r}"
    return int(match.group(1) or match.group(2))


def test_node_map_and_overlay_equal_python(node, embedded, tmp_path):
    import onnxruntime as ort

    from onnxcam.runtime import Explainer

    python = Explainer(SHAPES_MODEL, providers="cpu")
    session = ort.InferenceSession(str(embedded), providers=["CPUExecutionProvider"])
    for image in IMAGES:
        png, map_file = tmp_path / f"{image.stem}.overlay.png", tmp_path / f"{image.stem}.map.json"
        done = _explain(node, embedded, image, png, "--method", "gradcam", "--map", map_file)
        assert done.returncode == 0, done.stderr
        expected = python.explain([image], method="gradcam", embedded=False)
        assert _printed_class(done.stdout) == int(expected.class_index[0])
        assert expected.labels[0] in done.stdout
        dumped = json.loads(map_file.read_text())
        assert dumped["class_index"] == int(expected.class_index[0])
        assert abs(dumped["probability"] - float(expected.scores[0])) < 1e-5
        got = np.asarray(dumped["map"], np.float32).reshape(dumped["height"], dumped["width"])
        diff = float(np.abs(got - expected.cams[0]).max())
        print(f"node {image.name}: class {dumped['class_index']} ({dumped['label']}), "
              f"max |node − python| = {diff:.3g}")
        assert diff <= 1e-5
        batch, _ = python.preprocess([image])
        (overlay,) = session.run(["overlay_gradcam"], {"input": batch, "class_index": np.array([-1], np.int64)})
        written = cv2.cvtColor(cv2.imread(str(png), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(written, overlay[0])


def test_node_uint8_map_without_overlay(node, tmp_path):
    """A uint8 cam and no overlay output: the map is read as levels/255 and the PNG is colourised in JS."""
    from onnxcam.cams.render import overlay
    from onnxcam.runtime import Explainer

    model = _embed(tmp_path / "shapes.u8.onnx", "--cam", "layercam", "--cam-dtype", "uint8")
    image = IMAGES[1]
    png, map_file = tmp_path / "u8.png", tmp_path / "u8.bin"
    done = _explain(node, model, image, png, "--map", map_file, "--class", "square")
    assert done.returncode == 0, done.stderr
    assert "square (class 1)" in done.stdout and "colourised" in done.stdout
    expected = Explainer(SHAPES_MODEL, providers="cpu").explain([image], method="layercam", class_index=1,
                                                                embedded=False)
    got = np.fromfile(map_file, "<f4").reshape(expected.cams[0].shape)
    assert np.abs(got - expected.cams[0]).max() <= 0.5 / 255 + 1e-6
    written = cv2.cvtColor(cv2.imread(str(png), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    reference = overlay(expected.images[0], expected.cams[0])
    assert np.abs(written.astype(int) - reference).max() <= 3  # JS jet vs OpenCV's jet table


@pytest.mark.parametrize("case", ["no_cam", "not_onnx", "missing", "unknown_method"])
def test_node_bad_input_one_line_error(node, embedded, tmp_path, case):
    model, extra = {"no_cam": (SHAPES_MODEL, []), "not_onnx": (IMAGES[0], []),
                     "missing": (tmp_path / "nope.onnx", []),
                     "unknown_method": (embedded, ["--method", "nosuchcam"])}[case]
    done = _explain(node, model, IMAGES[0], tmp_path / "out.png", *extra)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "out.png").exists()
    expected = {"no_cam": "onnxcam embed MODEL --cam gradcam -o OUT", "not_onnx": "is not an ONNX file",
                "missing": "does not exist", "unknown_method": "unknown method 'nosuchcam'"}[case]
    assert expected in lines[0]
