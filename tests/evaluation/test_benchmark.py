"""The benchmark machinery (evaluation/benchmark.py), `onnxcam bench` and a smoke run of benchmarks/bench_cam.py.

No test here asserts a time: timings belong to the benchmark script. These check that the figures are
computed from the right runs, that the memory probe sees an allocation, and that the commands work.
"""

from __future__ import annotations

import mmap
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from onnxcam.cli.main import main
from onnxcam.evaluation.benchmark import (
    BenchRow,
    Measure,
    PeakMemory,
    bench,
    forward_floor,
    markdown_table,
    postprocess_peak_mb,
    text_table,
)
from onnxcam.runtime import Explainer
from tests.conftest import ROOT, SHAPES_MODEL


def test_ratios_and_tables() -> None:
    row = BenchRow("m", 8, "gradcam", Measure(10.0, 1.0, 5), Measure(11.0, 2.0, 5), Measure(55.0, 30.0, 5))
    assert row.onnxcam_over_floor == pytest.approx(1.1) and row.baseline_over_onnxcam == pytest.approx(5.0)
    alone = BenchRow("m", 1, "cfcam", Measure(10.0, 0.0, 5), Measure(15.0, 0.0, 5))
    assert alone.baseline_over_onnxcam is None
    text = text_table([row, alone]).splitlines()
    assert "(b)/(a)" in text[0] and "(c)/(b)" in text[0]
    assert text[1].split()[-4:] == ["1.10", "5.0", "2", "30"] and text[2].split()[-4:] == ["1.50", "—", "0", "—"]
    assert markdown_table([row]).splitlines()[2].startswith("| m | 8 | gradcam | 10.0 | 11.0 | 55.0 | 1.10 | 5.0 |")


def test_peak_memory_sees_an_allocation() -> None:
    with PeakMemory() as small:
        pass
    with PeakMemory() as big:
        block = mmap.mmap(-1, 60_000_000)  # fresh pages (a numpy array could reuse freed, resident memory)
        for offset in range(0, len(block), 4096):
            block[offset] = 1
        time.sleep(0.01)
        block.close()
    assert big.mb > 40 and small.mb < 20


def test_cfcam_postprocessing_of_a_2048_channel_image_stays_under_100_mb() -> None:
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(1, 2048, 7, 7)), 0).astype(np.float32)
    grads = rng.normal(size=(1, 2048, 7, 7)).astype(np.float32) * 1e-3
    peak = postprocess_peak_mb("cfcam", acts, grads)
    assert 5 < peak < 100  # the 1536x1536 distances alone are ~9 MB, so the probe does see them


def test_floor_is_the_forward_pass_and_bench_fills_its_rows() -> None:
    explainer = Explainer(SHAPES_MODEL, providers="cpu")
    batch = np.random.default_rng(0).standard_normal((3, *explainer.input_shape)).astype(np.float32)
    logits = forward_floor(explainer)(batch)[0]
    np.testing.assert_allclose(logits, explainer.forward(batch)["logits"], rtol=1e-5, atol=1e-5)
    calls: list[int] = []
    slow_calls: list[int] = []

    def baseline(method: str):
        if method == "scorecam":
            return lambda x: slow_calls.append(len(x))
        return (lambda x: calls.append(len(x))) if method == "gradcam" else None

    rows = bench(explainer, batch, ["gradcam", "cfcam", "scorecam"], baseline=baseline, warmup=1, repeats=2)
    assert [r.method for r in rows] == ["gradcam", "cfcam", "scorecam"] and all(r.batch == 3 for r in rows)
    assert rows[0].baseline is not None and rows[1].baseline is None
    assert calls == [3, 3, 3, 3]  # warm-up, 2 timed, memory
    assert rows[0].floor is rows[1].floor is rows[2].floor and rows[0].onnxcam.runs == 2
    assert rows[2].onnxcam.runs == 1 and slow_calls == [1, 3]  # a slow method: one image, one timed run


def test_bench_command_without_torch_column() -> None:
    result = CliRunner().invoke(main, ["bench", str(SHAPES_MODEL), "--batch", "2", "--method", "gradcam",
                                       "--warmup", "0", "--repeats", "1", "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "(b)/(a)" in result.output and "(c) left out" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("shapes_cnn.onnx"))
    assert row.split()[1:3] == ["2", "gradcam"] and row.split()[5] == "—"


def test_bench_command_with_the_torch_model(tiny_model, tmp_path, monkeypatch) -> None:
    pytest.importorskip("pytorch_grad_cam")
    # the tiny_model fixture's own network builder, hence the same weights
    (tmp_path / "tinynet.py").write_text("from tests.conftest import tiny_net as build\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(main, ["bench", str(tiny_model), "--batch", "1", "--method", "gradcam",
                                       "--warmup", "0", "--repeats", "1", "--device", "cpu",
                                       "--torch-module", "tinynet:build"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("tiny.onnx")).split()
    assert float(row[5]) > 0 and float(row[7]) > 0  # (c) and (c)/(b) are filled in
    bad = CliRunner().invoke(main, ["bench", str(tiny_model), "--torch-module", "tinynet:build",
                                    "--torch-layer", "layer9"])
    assert bad.exit_code == 1 and "has no module 'layer9'" in bad.output and "Traceback" not in bad.output


def test_bench_command_bad_method() -> None:
    result = CliRunner().invoke(main, ["bench", str(SHAPES_MODEL), "--method", "gradcamm"])
    assert result.exit_code == 1 and "unknown method 'gradcamm'" in result.output


def test_benchmark_script_smoke(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("skimage")
    doc = tmp_path / "performance.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cam.py"), "--smoke",
                           "--markdown", str(doc)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("resnet18 (layer4)")]
    assert [(r[2], r[3]) for r in rows] == [("1", "gradcam"), ("1", "cfcam"), ("1", "scorecam"),
                                            ("2", "gradcam"), ("2", "cfcam")]
    assert all(float(r[8]) > 0 for r in rows)  # every row has its (c)/(b) ratio
    assert "CF-CAM post-processing of one image (512 channels" in proc.stdout
    assert "| resnet18 (layer4) | 1 | gradcam |" in doc.read_text()
