"""`onnxcam explain --engine ray` and `onnxcam.ray.explain_dataset` on a local Ray with 2 actors: the same files
and records as the local engine (skipped when Ray is not installed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnxcam.cli.main import main
from tests.conftest import SHAPES_MODEL
from tests.runs.test_dataset_runs import SAMPLES, make_images, records

pytest.importorskip("ray.data")

TIMING = ("ms",)


def _comparable(folder):
    return {r["image"]: {k: v for k, v in r.items() if k not in TIMING} for r in records(folder)}


def test_ray_engine_matches_the_local_engine(tmp_path):
    images = tmp_path / "images"
    make_images(images, 200, subfolders=4)
    (images / "part1" / "broken.png").write_bytes(b"not a png")
    outs = {}
    for engine in ("local", "ray"):
        outs[engine] = tmp_path / engine
        result = CliRunner().invoke(main, ["explain", str(SHAPES_MODEL), str(images), "-o", str(outs[engine]),
                                           "--method", "gradcam", "--format", "npy,overlay", "--engine", engine,
                                           "--workers", "2", "--batch-size", "8", "-q"])
        assert result.exit_code == 3, result.output  # the broken file, in both
    local, ray = _comparable(outs["local"]), _comparable(outs["ray"])
    assert len(local) == 200 and local == ray  # the same records, aside from timing
    for record in local.values():
        for name in record["files"].values():
            assert (outs["ray"] / name).read_bytes() == (outs["local"] / name).read_bytes(), name
    assert records(outs["ray"], "errors.jsonl") == records(outs["local"], "errors.jsonl")
    summary = json.loads((outs["ray"] / "summary.json").read_text())
    assert (summary["explained"], summary["failed"], summary["settings"]["engine"]) == (200, 1, "ray")


def test_explain_dataset_on_a_ray_dataset(tmp_path):
    import ray

    from onnxcam.ray import explain_dataset

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        dataset = ray.data.read_binary_files([str(p) for p in SAMPLES], include_paths=True)
        summary = explain_dataset(dataset, SHAPES_MODEL, output=tmp_path / "ray", method="gradcam", formats="npy",
                                  workers=2)
        assert ray.is_initialized()  # a Ray the caller started is left running
    finally:
        ray.shutdown()
    assert summary["status"] == "complete" and summary["explained"] == len(SAMPLES)
    local = CliRunner().invoke(main, ["explain", str(SHAPES_MODEL), *map(str, SAMPLES), "-o", str(tmp_path / "local"),
                                      "--method", "gradcam", "--format", "npy", "-q"])
    assert local.exit_code == 0, local.output
    assert _comparable(tmp_path / "ray") == _comparable(tmp_path / "local")
    for sample in SAMPLES:
        name = f"{sample.stem}.gradcam.npy"
        np.testing.assert_array_equal(np.load(tmp_path / "ray" / name), np.load(tmp_path / "local" / name))
