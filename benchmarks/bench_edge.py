"""Grad-CAM on the models edge boxes run, against their own forward pass, in one process (issue 18, item 8).

    python benchmarks/bench_edge.py                      # mobilenet_v3_small, EfficientNet-Lite0, + int8; batch 1, 8
    python benchmarks/bench_edge.py --markdown table.md  # also write the table as markdown
    python benchmarks/bench_edge.py --smoke              # seconds: mobilenet_v3_small at 64x64, few rounds

For each model and batch size it prints, in ms per image (medians over the rounds): (a) the floor, ONNX Runtime's
forward pass of the plain classifier; (b) ``Explainer.explain(batch, method="gradcam", embedded=False)``, the
gradient file plus numpy, from the preprocessed batch to ``[N,H,W]`` maps; (c) one run of the file that
``onnxcam embed --cam gradcam`` writes, in a plain onnxruntime session, fetching only ``cam_gradcam``; (d) for
reference, the gradient file alone (the ORT run inside (b)); and the ratios (b)/(a), (c)/(a), (d)/(a).

The runners are interleaved: each round times every runner once, in an order that rotates from round to round,
and a ratio is the median over the rounds of the runner's time over the floor's time in the same round, so the
drift of a shared machine's speed cancels. Every session has the same options (ORT's default thread count,
every graph optimisation) with thread-pool spinning off: a spinning pool of one session takes the cores from
the next session's run when runs alternate (on 2 cores: mobilenet_v3_small's floor went from 2 ms to 20 ms).
mobilenet_v3_small carries seeded random torchvision weights (target ``features.12``, the last stage);
EfficientNet-Lite0 its real ImageNet weights (target ``head``). The int8 rows are ONNX Runtime's static QDQ
(per-channel) and QOperator quantisations of those files (``sample_models.edge_variants``), explained at the
same layer; a row reads "not yet" where the variant cannot be built or explained.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_cam import ModelSpec, build, export  # noqa: E402  (the models, as bench_cam builds and exports them)

from onnxcam.cams.embed import embed_cams  # noqa: E402
from onnxcam.core.errors import OnnxcamError  # noqa: E402
from onnxcam.evaluation.benchmark import forward_floor, machine  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.runtime.session import create_session, session_options  # noqa: E402
from sample_models.photos import photographs  # noqa: E402

HEADER = ["model", "batch", "(a) floor ms/img", "(b) explain ms/img", "(c) embedded ms/img", "(d) gradient file ms/img",
          "(b)/(a)", "(c)/(a)", "(d)/(a)"]
CACHED_LITE0 = ROOT / "sample_models" / "cache" / "efficientnet_lite0.onnx"
INT8 = {"int8 QDQ": "qdq_channel", "int8 QOperator": "qoperator"}


def float_models(names: list[str], size: int, folder: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
    """name → (onnxcam file, target layer) for the float32 models."""
    import torch
    import torchvision

    out = {}
    for name in names:
        if name == "mobilenet_v3_small":
            torch.manual_seed(0)
            module = torchvision.models.mobilenet_v3_small(weights=None).eval()
            spec = ModelSpec(name, module, "features.12", (3, size, size))
            out[name] = (export(spec, folder), spec.layer)
        elif name == "efficientnet_lite0" and CACHED_LITE0.exists() and size == 224:
            out[name] = (CACHED_LITE0, "head")
        else:
            spec = build(name, size)
            out[name] = (export(spec, folder), spec.layer)
    return out


def int8_file(source: pathlib.Path, kind: str, folder: pathlib.Path) -> pathlib.Path:
    """The ``kind`` int8 variant of the float32 onnxcam file ``source`` (``sample_models.edge_variants``)."""
    from sample_models import edge_variants

    return edge_variants.build(kind, source, folder / f"{source.stem}_{kind}.onnx")


def runners(path: pathlib.Path, layer_tensor: str | None, options: Any,
            ) -> tuple[Explainer, dict[str, Callable[[np.ndarray], Any]]]:
    """The explainer of one file, and (a)–(d) for it, each a function of the preprocessed batch."""
    try:
        explainer = Explainer(path, providers="cpu", session_options=options, layer=layer_tensor or None)
    except OnnxcamError as exc:  # a QOperator file fuses the float model's target tensor away: its default layer
        if "unknown layer" not in str(exc):
            raise
        explainer = Explainer(path, providers="cpu", session_options=options)
    floor = forward_floor(explainer)
    embedded = create_session(embed_cams(explainer.model, ["gradcam"]).SerializeToString(), "cpu", options)
    wanted = ["logits", *[t for target in explainer.targets for t in (target.activations, target.gradients)]]

    def explain(batch: np.ndarray) -> Any:
        return explainer.explain(batch, method="gradcam", embedded=False)

    def from_graph(batch: np.ndarray) -> Any:
        return embedded.run(["cam_gradcam"], {"input": batch, "class_index": np.full(len(batch), -1, np.int64)})

    def gradient_file(batch: np.ndarray) -> Any:
        return explainer.forward(batch, outputs=wanted)

    return explainer, {"floor": floor, "explain": explain, "embedded": from_graph, "gradient": gradient_file}


def interleaved(runs: dict[str, Callable[[np.ndarray], Any]], batch: np.ndarray, rounds: int, warmup: int,
                ) -> tuple[dict[str, float], dict[str, float]]:
    """Time every runner once per round, in an order rotating from round to round: (median ms per image of
    each, median over the rounds of each one's time over the floor's in the same round)."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for k in range(warmup + rounds):
        shift = k % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runs[name](batch)
            if k >= warmup:
                times[name].append(time.perf_counter() - start)
    ms = {name: 1000.0 * statistics.median(t) / len(batch) for name, t in times.items()}
    ratios = {name: statistics.median(np.asarray(t) / np.asarray(times["floor"])) for name, t in times.items()}
    return ms, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mobilenet_v3_small,efficientnet_lite0")
    parser.add_argument("--int8", default=",".join(INT8), help=f"int8 variants to add per model ({', '.join(INT8)})"
                        "; empty for none")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--size", type=int, default=224, help="input size of mobilenet_v3_small")
    parser.add_argument("--rounds", type=int, default=201, help="timed rounds (each runner once per round)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    parser.add_argument("--spin", action="store_true", help="leave ORT's thread-pool spinning on")
    parser.add_argument("--markdown", type=pathlib.Path, help="also write the table as this markdown file")
    parser.add_argument("--smoke", action="store_true", help="tiny run: mobilenet_v3_small at 64x64, batch 1")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.int8, args.batches, args.size, args.rounds, args.warmup = \
            "mobilenet_v3_small", "", "1", 64, 5, 1
    started = time.time()
    options = session_options(threads=args.threads or None)
    if not args.spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    images, _ = photographs()
    rows: list[list[str]] = []
    variants = [v for v in args.int8.split(",") if v]
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        for name, (path, layer) in float_models(args.models.split(","), args.size, folder).items():
            files: list[tuple[str, pathlib.Path | None, str]] = [(f"{name} ({layer})", path, "")]
            tensor = ",".join(Explainer(path, providers="cpu").metadata.target_tensors)
            for variant in variants:
                try:
                    files.append((f"{name} {variant}", int8_file(path, INT8[variant], folder), ""))
                except Exception as exc:  # noqa: BLE001 - the quantizer raises anything
                    files.append((f"{name} {variant}", None, f"{type(exc).__name__}: {exc}"))
            for label, file, error in files:
                print(f"[{time.time() - started:5.0f}s] {label}", file=sys.stderr)
                try:
                    if file is None:
                        raise OnnxcamError(error)
                    explainer, runs = runners(file, tensor if file != path else None, options)
                except Exception as exc:  # noqa: BLE001 - report the row, go on with the others
                    print(f"  not yet: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
                    rows += [[label, str(n), *["not yet"] * 7] for n in map(int, args.batches.split(","))]
                    continue
                for n in map(int, args.batches.split(",")):
                    batch, _ = explainer.preprocess([images[i % len(images)] for i in range(n)])
                    ms, ratios = interleaved(runs, batch, args.rounds, args.warmup)
                    rows.append([label, str(n), *(f"{ms[k]:.2f}" for k in ("floor", "explain", "embedded",
                                                                           "gradient")),
                                 *(f"{ratios[k]:.3f}" for k in ("explain", "embedded", "gradient"))])
                    print(f"[{time.time() - started:5.0f}s]   batch {n}: explain {ratios['explain']:.3f}x, "
                          f"embedded {ratios['embedded']:.3f}x, gradient file {ratios['gradient']:.3f}x",
                          file=sys.stderr)
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for row in [HEADER, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    host = machine()
    threads = args.threads or "ORT's default"
    print(f"machine: {host}; threads {threads}, spinning {'on' if args.spin else 'off'}; "
          f"{args.rounds} rounds; {time.time() - started:.0f} s in all")
    if args.markdown:
        command = "python benchmarks/bench_edge.py " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [f"Measured {datetime.date.today().isoformat()} with `{command.strip()}` on: {host}; ORT threads: "
                 f"{threads}, spinning {'on' if args.spin else 'off'}; {args.rounds} interleaved rounds.", "",
                 "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER),
                 *["| " + " | ".join(r) + " |" for r in rows], ""]
        args.markdown.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
