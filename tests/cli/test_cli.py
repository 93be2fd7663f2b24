"""The onnxcam command: results on good input, one-line errors and no output files on bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from onnxcam.cli.main import main
from tests.conftest import TINY_LABELS, has_cuda


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def records(folder):
    """manifest.jsonl's records, in order."""
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_explain_writes_overlays_maps_and_manifest(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    result = run("explain", tiny_model, *images, "-o", out, "--method", "gradcam")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["disc.gradcam.npy", "disc.gradcam.png", "manifest.jsonl", "noise.gradcam.npy",
                     "noise.gradcam.png", "summary.json"]
    cam = np.load(out / "disc.gradcam.npy")
    assert cam.shape == (32, 32) and cam.dtype == np.float32 and cam.min() >= 0 and cam.max() == pytest.approx(1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and (summary["images"], summary["explained"], summary["failed"]) == (2, 2, 0)
    settings = summary["settings"]
    assert settings["method"] == "gradcam" and settings["providers"][0] == "CPUExecutionProvider"
    assert settings["layer"] == "features" and settings["input_size"] == [3, 32, 32]
    assert settings["model_sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    first, second = records(out)
    assert first["image"] == "disc.png" and second["image"] == "noise.png"
    assert first["class_name"] in TINY_LABELS and 0 < first["probability"] <= 1
    assert first["class_index"] == first["top_class_index"] and first["ms"] > 0
    assert first["files"] == {"overlay": "disc.gradcam.png", "npy": "disc.gradcam.npy"}
    # one line per image naming the top class, then a summary
    lines = result.output.strip().splitlines()
    assert len(lines) == 3 and any(name in lines[0] for name in TINY_LABELS)


def test_explain_class_by_name_and_index(tiny_model, images, tmp_path):
    for spec, expected in (("square", 1), ("2", 2)):
        out = tmp_path / spec
        result = run("explain", tiny_model, images[0], "-o", out, "--class", spec, "--method", "cfcam")
        assert result.exit_code == 0, result.output
        [record] = records(out)
        assert record["class_index"] == expected and record["class_name"] == TINY_LABELS[expected]


def test_explain_with_one_thread_gives_the_same_map(tiny_model, images, tmp_path):
    for threads in ("0", "1"):
        result = run("explain", tiny_model, images[0], "-o", tmp_path / threads, "--threads", threads,
                     "--method", "gradcam")
        assert result.exit_code == 0, result.output
    one, default = (np.load(tmp_path / t / "disc.gradcam.npy") for t in ("1", "0"))
    np.testing.assert_allclose(one, default, atol=1e-5)
    bad = run("explain", tiny_model, images[0], "-o", tmp_path / "bad", "--threads", "-2")
    assert bad.exit_code == 2 and not (tmp_path / "bad").exists()


def test_explain_plain_onnx_classifier(tiny_model, images, tmp_path):
    """A classifier without gradient outputs is augmented in memory."""
    import onnx

    from onnxcam.core.contract import strip_gradients

    plain = tmp_path / "plain.onnx"
    onnx.save(strip_gradients(onnx.load(tiny_model)), plain)
    result = run("explain", plain, images[1], "-o", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "noise.cfcam.png").is_file()


def _bad(tmp_path, *args):
    out = tmp_path / "never"
    result = run(*args, "-o", out)
    assert result.exit_code != 0
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and message.startswith("Error: "), message
    assert "Traceback" not in message
    assert not out.exists()
    return message


def test_bad_inputs_give_one_line_errors_and_no_files(tiny_model, images, tmp_path):
    empty_folder = tmp_path / "no-images"
    empty_folder.mkdir()
    (empty_folder / "notes.txt").write_text("not an image")
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"\x00\x01garbage" * 10)
    cases = {
        "does not exist": ("explain", tiny_model, tmp_path / "missing.jpg"),
        "not an ONNX model": ("explain", not_onnx, images[0]),
        "model '": ("explain", tmp_path / "nope.onnx", images[0]),
        "unknown method 'gradkam'": ("explain", tiny_model, images[0], "--method", "gradkam"),
        "class index 3 is out of range": ("explain", tiny_model, images[0], "--class", "3"),
        "unknown class name 'zebra'": ("explain", tiny_model, images[0], "--class", "zebra"),
        "unknown layer 'layer9'": ("explain", tiny_model, images[0], "--layer", "layer9"),
        "unknown --format 'pdf'": ("explain", tiny_model, images[0], "--format", "overlay,pdf"),
        "found no image in": ("explain", tiny_model, empty_folder),
        "matches no image file": ("explain", tiny_model, tmp_path / "*.jpeg"),
        "list file": ("explain", tiny_model, "--list", tmp_path / "missing.txt"),
        "give images to explain": ("explain", tiny_model),
        "add --engine ray": ("explain", tiny_model, images[0], "--address", "auto"),
    }
    if not has_cuda():
        cases["CUDA was requested"] = ("explain", tiny_model, images[0], "--device", "cuda")
    for expected, args in cases.items():
        assert expected in _bad(tmp_path, *args), expected


def test_errors_from_a_real_process(tiny_model, tmp_path):
    """Exit code and stderr as a shell sees them: one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "onnxcam.cli", "explain", str(tiny_model), str(tmp_path / "x.jpg"),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"Error: image '{tmp_path / 'x.jpg'}' does not exist; check the path"]
    assert not (tmp_path / "out").exists()


def test_layers_lists_candidates_and_marks_default(tiny_model):
    result = run("layers", tiny_model)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "Nx" in line]
    assert sum(line.startswith("*") for line in rows) == 1
    assert any("Nx16x16x16" in line and "exported target (features)" in line for line in rows)
    assert any("Conv" in line and "Nx8x32x32" in line for line in rows)


def test_export_torchvision_then_explain(tmp_path, images):
    pytest.importorskip("torchvision")
    path = tmp_path / "r18.onnx"
    result = run("export", "--torchvision", "resnet18", "--layer", "layer4", "--input-size", "64", "-o", path)
    assert result.exit_code == 0, result.output
    assert "gradients checked" in result.output
    result = run("explain", path, images[0], "-o", tmp_path / "out", "--method", "gradcam")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "out" / "disc.gradcam.npy").shape == (64, 64)


def test_export_bad_inputs(tmp_path):
    pytest.importorskip("torchvision")
    out = tmp_path / "m.onnx"
    for expected, args in {
        "unknown torchvision classifier 'resnet19'": ("--torchvision", "resnet19", "--layer", "layer4"),
        "unknown layer 'layer9'": ("--torchvision", "resnet18", "--layer", "layer9", "--input-size", "32"),
        "give exactly one of": ("--layer", "layer4"),
        "weights file": ("--torchvision", "resnet18", "--layer", "layer4", "--weights", tmp_path / "w.pt"),
    }.items():
        result = run("export", *args, "-o", out)
        assert result.exit_code != 0 and expected in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1
        assert not out.exists()


def test_evaluate_writes_table_csv_and_figure(tmp_path):
    from tests.conftest import SHAPES_MODEL

    images = sorted((SHAPES_MODEL.parent / "images").glob("*.png"))[:3]
    out = tmp_path / "eval"
    result = run("evaluate", SHAPES_MODEL, *images, "--method", "gradcam,cfcam,ablationcam", "--boxes",
                 SHAPES_MODEL.parent / "images" / "boxes.json", "-o", out, "--steps", "8")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.csv", "evaluation.md", "evaluation.png"]
    csv = (out / "evaluation.csv").read_text().splitlines()
    assert csv[0].startswith("method,deletion_auc,insertion_auc,average_drop") and "pointing_game" in csv[0]
    assert [line.split(",")[0] for line in csv[1:]] == ["gradcam", "cfcam", "ablationcam"]
    assert "| gradcam |" in (out / "evaluation.md").read_text()


def test_evaluate_bad_boxes_and_methods(tmp_path):
    from tests.conftest import SHAPES_MODEL

    image = sorted((SHAPES_MODEL.parent / "images").glob("*.png"))[0]
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"other.png": [0, 0, 4, 4]}')
    for expected, args in {
        "has no box for": ("--boxes", boxes),
        "unknown method 'gradkam'": ("--method", "gradcam,gradkam"),
    }.items():
        message = _bad(tmp_path, "evaluate", SHAPES_MODEL, image, *args)
        assert expected in message
