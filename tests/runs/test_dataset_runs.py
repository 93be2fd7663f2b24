"""`onnxcam explain` on data sets: folders, lists, unreadable files, killed and resumed runs; explain_iter."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from onnxcam.cli.commands.explain import EXIT_IMAGES_FAILED, EXIT_INTERRUPTED
from onnxcam.cli.main import main
from onnxcam.runs.image_paths import collect_images
from onnxcam.runtime import Explainer
from tests.conftest import SHAPES_MODEL

SAMPLES = sorted((SHAPES_MODEL.parent / "images").glob("*.png"))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def records(folder: pathlib.Path, name: str = "manifest.jsonl") -> list[dict]:
    path = folder / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def make_images(folder: pathlib.Path, n: int, *, subfolders: int = 3) -> list[pathlib.Path]:
    """``n`` small PNGs from the sample images (flipped, rotated, cropped), spread over nested subfolders."""
    paths = []
    for i in range(n):
        image = cv2.imread(str(SAMPLES[i % len(SAMPLES)]))
        image = image[:, ::-1] if i % 3 == 1 else image
        image = np.rot90(image, i % 4) if i % 5 == 2 else image
        image = image[i % 7:, : image.shape[1] - i % 5]
        path = folder / f"part{i % subfolders}" / ("deeper" if i % 2 else "") / f"img{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.ascontiguousarray(image))
        paths.append(path)
    return paths


def check_outputs_load(folder: pathlib.Path) -> int:
    """Every visible output file under ``folder`` loads; returns how many there are."""
    count = 0
    for path in folder.rglob("*"):
        if path.name.startswith(".") or not path.is_file() or path.suffix not in (".npy", ".png"):
            continue
        if path.suffix == ".npy":
            cam = np.load(path)
            assert cam.dtype == np.float32 and cam.ndim == 2 and np.isfinite(cam).all(), path
        else:
            assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None, path
        count += 1
    return count


def test_nested_folders_keep_their_structure_and_never_collide(tmp_path):
    photos = tmp_path / "photos"
    for folder, sample in (("a", 0), ("b", 1), ("", 2)):
        (photos / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(photos / folder / "img.png"), cv2.imread(str(SAMPLES[sample])))
    cv2.imwrite(str(photos / "img.jpg"), cv2.imread(str(SAMPLES[3])))  # same stem, another extension
    (photos / ".hidden.png").write_bytes(SAMPLES[0].read_bytes())  # hidden files are not images of the run
    out = tmp_path / "out"
    result = run("explain", SHAPES_MODEL, photos, "-o", out, "--method", "gradcam", "--format", "npy,png16")
    assert result.exit_code == 0, result.output
    got = records(out)
    assert [r["image"] for r in got] == ["a/img.png", "b/img.png", "img.jpg", "img.png"]  # sorted, stable
    assert [r["files"]["npy"] for r in got] == ["a/img.gradcam.npy", "b/img.gradcam.npy", "img.jpg.gradcam.npy",
                                                "img.png.gradcam.npy"]
    maps = [np.load(out / r["files"]["npy"]) for r in got]
    assert not np.array_equal(maps[0], maps[1])  # two img.png, two different maps
    for r, cam in zip(got, maps):
        level = cv2.imread(str(out / r["files"]["png16"]), cv2.IMREAD_UNCHANGED)
        assert level.dtype == np.uint16 and level.shape == cam.shape
        np.testing.assert_array_equal(level, np.uint16(cam * 65535 + 0.5))
    # the same images through --list and a glob give the same keys and maps; the output folder is never an input
    listing = tmp_path / "list.txt"
    listing.write_text("# images\n" + "\n".join(str(photos / r["image"]) for r in got) + "\n\n")
    inside = photos / "out"
    for args in (("--list", listing), (photos / "**" / "img.*",), (photos,)):
        again = run("explain", SHAPES_MODEL, *args, "-o", inside, "--method", "gradcam", "--format", "npy", "-q")
        assert again.exit_code == 0, again.output
        assert [r["image"] for r in records(inside)] == [r["image"] for r in got], args
        for r in got:
            np.testing.assert_array_equal(np.load(inside / r["files"]["npy"]), np.load(out / r["files"]["npy"]))


def test_format_none_writes_the_manifest_only(tmp_path):
    out = tmp_path / "out"
    result = run("explain", SHAPES_MODEL, *SAMPLES[:3], "-o", out, "--method", "gradcam", "--format", "none")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", "summary.json"]
    assert [r["files"] for r in records(out)] == [{}, {}, {}]


def test_unreadable_files_are_recorded_and_the_run_goes_on(tmp_path):
    folder = tmp_path / "mixed"
    good = make_images(folder, 6, subfolders=2)
    (folder / "part0" / "corrupt.jpg").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 900, np.uint8)))
    (folder / "part1" / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is a text file with a .jpg name")
    (folder / "truncated.png").write_bytes(SAMPLES[0].read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image: ignored by the folder walk")
    out = tmp_path / "out"
    result = run("explain", SHAPES_MODEL, folder, "-o", out, "--method", "gradcam", "--batch-size", "4")
    assert result.exit_code == EXIT_IMAGES_FAILED == 3, result.output
    explained = records(out)
    assert len(explained) == len(good) and all((out / f).is_file() for r in explained for f in r["files"].values())
    errors = {r["image"]: r["error"] for r in records(out, "errors.jsonl")}
    assert sorted(errors) == ["part0/corrupt.jpg", "part1/empty.png", "text.jpg", "truncated.png"]
    assert "empty (0 bytes)" in errors["part1/empty.png"] and "not an image" in errors["text.jpg"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["images"], summary["explained"], summary["failed"]) == \
        ("complete with errors", 10, 6, 4)
    assert "4 of 10 images could not be explained" in result.output  # the one-line summary
    # a lone unreadable file named on the command line is an image error too, not a crash
    alone = run("explain", SHAPES_MODEL, folder / "text.jpg", "-o", tmp_path / "alone")
    assert alone.exit_code == EXIT_IMAGES_FAILED and len(records(tmp_path / "alone", "errors.jsonl")) == 1


def test_explain_iter_streams_in_order_with_bounded_read_ahead():
    explainer = Explainer(SHAPES_MODEL, providers="cpu")
    pulled = []

    def images():
        for i in range(40):
            pulled.append(i)
            yield SAMPLES[i % len(SAMPLES)] if i != 5 else SHAPES_MODEL  # one item is not an image
    stream = explainer.explain_iter(images(), method="gradcam", batch_size=4, workers=2)
    first = next(stream)
    assert first.index == 0 and first.ok and len(pulled) <= 3 * 4 + 2 + 1  # a batch, about two ahead: not all 40
    rest = list(stream)
    assert [r.index for r in [first, *rest]] == list(range(40))
    assert not rest[4].ok and "not an image" in rest[4].error and rest[4].cam is None
    whole = explainer.explain(SAMPLES, method="gradcam")
    for r in [first, *rest]:
        if r.ok:
            k = r.index % len(SAMPLES)
            np.testing.assert_allclose(r.cam, whole.cams[k], atol=1e-6)
            assert r.class_index == whole.class_index[k] and r.class_name == whole.labels[k]
            assert r.probability == pytest.approx(float(whole.scores[k]), abs=1e-6)
    with pytest.raises(Exception, match="unknown method"):
        explainer.explain_iter(SAMPLES, method="gradkam")  # mistakes raise at the call, before any image


def test_paths_make_distinct_keys(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "img.png").write_bytes(SAMPLES[0].read_bytes())
    sources = collect_images([tmp_path / "x" / "img.png", tmp_path / "y" / "img.png", tmp_path / "x" / "img.png"])
    assert [(s.key, s.stem) for s in sources] == [("x/img.png", "x/img"), ("y/img.png", "y/img")]


def _start(images: pathlib.Path, out: pathlib.Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "onnxcam.cli", "explain", str(SHAPES_MODEL), str(images), "-o",
                             str(out), "--method", "gradcam", "--format", "overlay,npy,png16", "--batch-size", "1",
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """The child's Ctrl-C as a terminal's: a shell that starts the tests in the background (``cmd &``) passes
    SIGINT on as ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _lines(path: pathlib.Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _stop_half_way(proc: subprocess.Popen, out: pathlib.Path, sig: int, total: int) -> int:
    deadline = time.monotonic() + 120
    while _lines(out / "manifest.jsonl") < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    done = _lines(out / "manifest.jsonl")
    assert 0 < done < total, f"the run was not stopped half-way ({done} of {total})"
    return done


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> tuple[pathlib.Path, int]:
    folder = tmp_path_factory.mktemp("many")
    return folder, len(make_images(folder, 600, subfolders=4))


def _complete_after_resume(images: pathlib.Path, out: pathlib.Path, total: int) -> None:
    resumed = subprocess.run([sys.executable, "-m", "onnxcam.cli", "explain", str(SHAPES_MODEL), str(images), "-o",
                              str(out), "--method", "gradcam", "--format", "overlay,npy,png16", "--resume", "-q"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    got = records(out)
    keys = [r["image"] for r in got]
    assert len(keys) == len(set(keys)) == total  # exactly one line per image
    assert sorted(keys) == sorted(s.key for s in collect_images([images]))
    for r in got:
        assert len(r["files"]) == 3 and all((out / f).is_file() for f in r["files"].values())
    assert check_outputs_load(out) == 3 * total
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary file is left
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


def test_sigkill_half_way_then_resume(many, tmp_path):
    images, total = many
    out = tmp_path / "out"
    proc = _start(images, out)
    done = _stop_half_way(proc, out, signal.SIGKILL, total)
    assert proc.returncode == -signal.SIGKILL
    check_outputs_load(out)  # every file written before the kill is whole
    # a torn last line, as a kill in the middle of a write leaves it, is dropped and its image redone
    with open(out / "manifest.jsonl", "ab") as f:
        f.write(b'{"image": "part0/img0000.png", "path": "x", "class_ind')
    _complete_after_resume(images, out, total)
    assert done < total


def test_ctrl_c_stops_cleanly_then_resume(many, tmp_path):
    images, total = many
    out = tmp_path / "out"
    proc = _start(images, out)
    _stop_half_way(proc, out, signal.SIGINT, total)
    assert proc.returncode == EXIT_INTERRUPTED == 130
    assert "--resume" in proc.stderr.read().strip().splitlines()[-1]
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert not (out / "manifest.jsonl").read_bytes().endswith(b"}")  # the last line is whole
    check_outputs_load(out)
    _complete_after_resume(images, out, total)


def test_resume_redoes_missing_files_and_refuses_other_options(tmp_path):
    folder = tmp_path / "imgs"
    make_images(folder, 5, subfolders=1)
    out = tmp_path / "out"
    assert run("explain", SHAPES_MODEL, folder, "-o", out, "--method", "gradcam").exit_code == 0
    first = records(out)
    (out / first[2]["files"]["npy"]).unlink()  # a lost file: that image is explained again
    again = run("explain", SHAPES_MODEL, folder, "-o", out, "--method", "gradcam", "--resume")
    assert again.exit_code == 0 and "(4 from the earlier run)" in again.output, again.output
    assert sorted(r["image"] for r in records(out)) == sorted(r["image"] for r in first)
    assert (out / first[2]["files"]["npy"]).is_file()
    other = run("explain", SHAPES_MODEL, folder, "-o", out, "--method", "layercam", "--resume")
    assert other.exit_code == 1 and "other method" in other.output and len(other.output.splitlines()) == 1
    assert len(records(out)) == 5  # the refused run touched nothing
    # without --resume a run starts afresh
    fresh = run("explain", SHAPES_MODEL, folder, "-o", out, "--method", "layercam", "--format", "npy")
    assert fresh.exit_code == 0 and len(records(out)) == 5 and records(out)[0]["files"] == {
        "npy": first[0]["files"]["npy"].replace("gradcam", "layercam")}
