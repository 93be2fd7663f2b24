"""A folder run (`onnxcam explain FOLDER`) against the floor, and its peak memory at two folder sizes.

    python benchmarks/bench_folder.py                  # 1,000 JPEGs, resnet18 at 224², gradcam, --format npy
    python benchmarks/bench_folder.py --engine ray     # also the Ray engine (2 actors, 1 ORT thread each)
    python benchmarks/bench_folder.py --smoke          # seconds: 60 images at 64², one round

The photographs (scikit-image, scikit-learn) are cut into ``--images`` JPEGs (random crops, flips, resizes to
a short side of 240–480) in a temporary folder. Timed, alternately, over ``--rounds`` rounds:

- **floor**: the same streaming decode (the run's thread pool, read-ahead and preprocessing) feeding ONNX
  Runtime's forward pass of the plain classifier (gradient outputs stripped), same batch size, nothing written;
- **local**: ``explain_to_folder`` — what ``onnxcam explain FOLDER --method gradcam --format npy`` runs after
  loading the model: streaming decode, the gradient graph, Grad-CAM, each map written atomically as .npy and its
  manifest line appended and flushed;
- **ray** (with ``--engine ray``): ``onnxcam.runs.ray_engine.explain_sources`` on a local Ray with ``--workers`` actors.

It prints images/s of each and the ratio run/floor (the median over the rounds), then the peak resident memory
(VmHWM of the child) of ``onnxcam explain`` as a subprocess on the first 50 images and on all of them.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxcam.evaluation.benchmark import forward_floor, machine  # noqa: E402
from onnxcam.runs.config import RunConfig, run_settings  # noqa: E402
from onnxcam.runs.image_paths import collect_images  # noqa: E402
from onnxcam.runs.local import explain_to_folder  # noqa: E402
from onnxcam.runs.ray_engine import explain_sources  # noqa: E402
from onnxcam.runs.records import RunFolder  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.runtime.session import session_options  # noqa: E402
from onnxcam.runtime.stream import default_workers, prepare_image  # noqa: E402
from sample_models.photos import photographs  # noqa: E402


def make_jpegs(folder: pathlib.Path, n: int, seed: int = 0) -> None:
    """``n`` JPEGs cut from the sample photographs: a random crop (45–100 % of each side), a flip half the
    time, resized to a short side of 240–480, quality 90; spread over 10 subfolders."""
    rng = np.random.default_rng(seed)
    photos, names = photographs()
    for i in range(n):
        k = i % len(photos)
        image = photos[k]
        h, w = image.shape[:2]
        ch, cw = int(h * rng.uniform(0.45, 1)), int(w * rng.uniform(0.45, 1))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = image[top:top + ch, left:left + cw]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        short = int(rng.integers(240, 481))
        scale = short / min(crop.shape[:2])
        crop = cv2.resize(np.ascontiguousarray(crop), (max(1, round(crop.shape[1] * scale)),
                                                       max(1, round(crop.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
        path = folder / f"set{i % 10}" / f"{names[k]}_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])


def floor_run(explainer: Explainer, paths: list[str], batch_size: int, workers: int) -> int:
    """Decode and preprocess with the run's read-ahead, then the plain forward pass per batch; returns images."""
    forward = forward_floor(explainer)
    ahead = 2 * batch_size + workers
    done = 0
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        source = iter(paths)
        batch: list[np.ndarray] = []
        while True:
            while len(pending) < ahead:
                path = next(source, None)
                if path is None:
                    break
                pending.append(pool.submit(prepare_image, explainer, path))
            if not pending:
                break
            batch.append(pending.popleft().result()[0])
            if len(batch) == batch_size or not pending:
                forward(np.stack(batch))
                done += len(batch)
                batch = []
    return done


def local_run(explainer: Explainer, model: pathlib.Path, sources: list, out: pathlib.Path, batch_size: int,
              workers: int) -> int:
    config = RunConfig(model=str(model), output=str(out), method="gradcam", formats=("npy",), batch_size=batch_size,
                       workers=workers).checked()
    folder = RunFolder(out, run_settings(explainer, config, None))
    try:
        explain_to_folder(explainer, config, sources, folder)
    finally:
        folder.close()
    return folder.explained


def ray_run(model: pathlib.Path, sources: list, out: pathlib.Path, batch_size: int, workers: int) -> int:
    explainer = Explainer(model, providers="cpu")
    config = RunConfig(model=str(model), output=str(out), method="gradcam", formats=("npy",), batch_size=batch_size,
                       workers=workers, engine="ray", device="cpu", threads=1).checked()
    folder = RunFolder(out, run_settings(explainer, config, None))
    try:
        explain_sources(config, sources, folder)
    finally:
        folder.close()
    return folder.explained


CHILD = """
import atexit, pathlib, sys
def report():  # VmHWM: this process's own peak (ru_maxrss would include the parent's size at the fork)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    pathlib.Path(sys.argv[1]).write_text(hwm)
atexit.register(report)
from onnxcam.cli.main import main
main(sys.argv[2:])
"""


def peak_rss_mb(model: pathlib.Path, listing: pathlib.Path, out: pathlib.Path, batch_size: int) -> float:
    """Peak resident memory (MB) of `onnxcam explain --list` in a child process (its VmHWM at exit)."""
    report = out.with_suffix(".hwm")
    subprocess.run([sys.executable, "-c", CHILD, str(report), "explain", str(model), "--list", str(listing), "-o",
                    str(out), "--method", "gradcam", "--format", "npy", "-q", "--batch-size", str(batch_size)],
                   stdout=subprocess.DEVNULL, check=True)
    return int(report.read_text()) / 1024  # kB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: also time the Ray engine")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--smoke", action="store_true", help="60 images at 64², one round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.size, args.rounds = 60, 64, 1
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        import torch
        import torchvision

        from onnxcam.exporter import export_torch

        torch.manual_seed(0)
        net = getattr(torchvision.models, args.model)(weights=None).eval()
        model = export_torch(net, tmp / f"{args.model}.onnx", target_layer="layer4",
                             input_shape=(3, args.size, args.size))
        make_jpegs(tmp / "photos", args.images)
        sources = collect_images([tmp / "photos"])
        paths = [s.path for s in sources]
        print(f"[{time.time() - started:4.0f}s] {len(sources)} JPEGs, {args.model} at {args.size}², batch "
              f"{args.batch_size}", file=sys.stderr)
        explainer = Explainer(model, providers="cpu", session_options=session_options())
        workers = default_workers()
        floor_run(explainer, paths[:2 * args.batch_size], args.batch_size, workers)  # warm-up
        local_run(explainer, model, sources[:2 * args.batch_size], tmp / "warm", args.batch_size, workers)
        rates: dict[str, list[float]] = {"floor": [], "local": [], "ray": []}
        for r in range(args.rounds):
            runners = [("floor", lambda: floor_run(explainer, paths, args.batch_size, workers)),
                       ("local", lambda r=r: local_run(explainer, model, sources, tmp / f"local{r}", args.batch_size,
                                                       workers))]
            if args.engine == "ray":
                runners.append(("ray", lambda r=r: ray_run(model, sources, tmp / f"ray{r}", args.batch_size,
                                                           args.workers)))
            for name, runner in runners:
                t0 = time.perf_counter()
                count = runner()
                seconds = time.perf_counter() - t0
                assert count == len(sources), (name, count)
                rates[name].append(count / seconds)
                print(f"[{time.time() - started:4.0f}s] round {r + 1} {name}: {count / seconds:.1f} images/s",
                      file=sys.stderr)
        print(f"folder run: {len(sources)} JPEGs, {args.model} (layer4) at {args.size}², gradcam, --format npy, "
              f"batch {args.batch_size}, {workers} decode threads, {args.rounds} rounds (median)")
        floor = statistics.median(rates["floor"])
        print(f"  floor (decode + preprocess + plain forward): {floor:.1f} images/s")
        for name in ("local", "ray"):
            if rates[name]:
                rate = statistics.median(rates[name])
                ratios = ", ".join(f"{a / b:.3f}" for a, b in zip(rates[name], rates["floor"]))
                print(f"  {name} engine: {rate:.1f} images/s, ratio to floor {rate / floor:.3f} (per round: {ratios})")
        if not args.no_memory:
            small = tmp / "small.txt"
            small.write_text("\n".join(paths[:50]) + "\n")
            whole = tmp / "all.txt"
            whole.write_text("\n".join(paths) + "\n")
            mb50 = peak_rss_mb(model, small, tmp / "mem50", args.batch_size)
            mball = peak_rss_mb(model, whole, tmp / "memall", args.batch_size)
            print(f"  peak RSS of `onnxcam explain`: {mb50:.0f} MB on 50 images, {mball:.0f} MB on {len(paths)} "
                  f"images, ratio {mball / mb50:.3f}")
    print(f"machine: {machine()}; {time.time() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
