"""Timing an explanation against the model's own forward pass, in one process, on one batch.

For a batch x: (a) the floor, ONNX Runtime running the plain classifier (the onnxcam graph with its gradient
outputs stripped) on x; (b) ``Explainer.explain(x, method=…)`` end to end, from the preprocessed batch to
upsampled maps in [0, 1]; optionally (c) a baseline callable (pytorch-grad-cam on PyTorch eager, see
``onnxcam.evaluation.torch_baseline``). Each runs ``warmup`` times, then ``repeats`` timed times; the figure is
the median in milliseconds per image, with the peak resident memory of one more run.
Torch-free: ``onnxcam bench`` runs it without PyTorch.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcam.cams import CAMContext, get_method
from onnxcam.core.contract import strip_gradients
from onnxcam.core.graph_builder import set_ir_version
from onnxcam.core.ort import onnxruntime
from onnxcam.runtime.explainer import Explainer
from onnxcam.runtime.session import create_session, run

Runner = Callable[[np.ndarray], Any]


def rss_bytes() -> int:
    """The process's resident memory in bytes (Linux /proc; 0 where that is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """Context manager: the peak resident memory above the level at entry, sampled every millisecond."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak_bytes = max(self.peak_bytes, rss_bytes() - self._base)

    def __enter__(self) -> PeakMemory:
        self._base = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, rss_bytes() - self._base)

    @property
    def mb(self) -> float:
        """The peak in MB (10⁶ bytes)."""
        return self.peak_bytes / 1e6


@dataclass(frozen=True)
class Measure:
    """Median time of the repeated runs in ms per image, and their peak extra resident memory in MB."""

    ms_per_image: float
    peak_mb: float
    runs: int


def measure(runner: Runner, batch: np.ndarray, *, warmup: int = 2, repeats: int = 5,
            separate_memory_run: bool = True) -> Measure:
    """Time ``runner(batch)``: ``warmup`` untimed calls, the median of ``repeats`` timed ones, then one more
    call under :class:`PeakMemory` (kept out of the timed calls: the sampler costs time). With
    ``separate_memory_run=False`` the timed calls themselves run under the probe (for runs of minutes, where
    a second run would double the cost and the sampler's share is negligible).

    Each runner is timed in one block, not interleaved with others: ONNX Runtime's and PyTorch's thread pools
    keep spinning for a while after a call, and on a 2-core machine that took up to half the CPU from
    whichever runner came next (measured: Grad-CAM 1.9x its floor interleaved, 1.05x in blocks).
    """
    for _ in range(warmup):
        runner(batch)
    times = []
    peak = PeakMemory()
    with contextlib.nullcontext() if separate_memory_run else peak:
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            runner(batch)
            times.append(time.perf_counter() - start)
    if separate_memory_run:
        with peak:
            runner(batch)
    return Measure(1000.0 * statistics.median(times) / len(batch), peak.mb, len(times))


def postprocess_peak_mb(method: str, activations: np.ndarray, gradients: np.ndarray, **options: Any) -> float:
    """Peak memory (MB, numpy/Python allocations traced by ``tracemalloc``) that a gradient method's
    post-processing allocates on ``[N,C,h,w]`` activations and gradients, beyond its inputs."""
    spec = get_method(method)
    resolved = spec.resolve(options)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        spec.run(CAMContext(activations, gradients), resolved)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 1e6


def forward_floor(explainer: Explainer) -> Runner:
    """(a): ONNX Runtime running the plain classifier (gradient outputs stripped), on the explainer's
    providers and session options; returns a function of the preprocessed batch."""
    plain = strip_gradients(explainer.model)
    set_ir_version(plain)
    session = create_session(plain.SerializeToString(), explainer.providers, explainer.session_options)
    name = session.get_inputs()[0].name
    return lambda batch: run(session, {name: batch})


@dataclass(frozen=True)
class BenchRow:
    """One model, batch size and method: (a) floor, (b) onnxcam, (c) the baseline (None when not run)."""

    model: str
    batch: int
    method: str
    floor: Measure
    onnxcam: Measure
    baseline: Measure | None = None

    @property
    def onnxcam_over_floor(self) -> float:
        """(b)/(a): what explaining costs over classifying; 1.0 is free."""
        return self.onnxcam.ms_per_image / self.floor.ms_per_image

    @property
    def baseline_over_onnxcam(self) -> float | None:
        """(c)/(b): how many times faster onnxcam is than the baseline."""
        return None if self.baseline is None else self.baseline.ms_per_image / self.onnxcam.ms_per_image


def _explain_runner(explainer: Explainer, method: str) -> Runner:
    """(b): ``explainer.explain(batch, method=method)`` as a function of the preprocessed batch."""
    return lambda batch: explainer.explain(batch, method=method)


def bench(explainer: Explainer, batch: np.ndarray, methods: Sequence[str], *, model: str = "model",
          baseline: Callable[[str], Runner | None] | None = None, warmup: int = 2, repeats: int = 5,
          slow_methods: Sequence[str] = ("scorecam", "ablationcam"), progress: Callable[[str], None] | None = None,
          ) -> list[BenchRow]:
    """Rows for ``methods`` on ``batch`` (preprocessed ``[N,C,H,W]``): the floor once, then per method onnxcam
    and the baseline (:func:`measure`). ``baseline(method)`` returns the baseline's runner for a method, or
    None to leave that column empty. ``slow_methods`` (C extra passes per image) get one warm-up image and one
    timed run each.
    """
    say = progress or (lambda _: None)
    say(f"{model} batch {len(batch)}: forward-only floor")
    floor = measure(forward_floor(explainer), batch, warmup=warmup, repeats=repeats)
    rows = []
    for method in methods:
        sides: dict[str, Runner | None] = {"onnxcam": _explain_runner(explainer, method),
                                           "baseline": baseline(method) if baseline else None}
        measured: dict[str, Measure] = {}
        for side, runner in sides.items():
            if runner is None:
                continue
            say(f"{model} batch {len(batch)}: {method} ({side})")
            if method in slow_methods:
                runner(batch[:1])
                measured[side] = measure(runner, batch, warmup=0, repeats=1, separate_memory_run=False)
            else:
                measured[side] = measure(runner, batch, warmup=warmup, repeats=repeats)
        rows.append(BenchRow(model, len(batch), method, floor, measured["onnxcam"], measured.get("baseline")))
    return rows


HEADER = ("model", "batch", "method", "(a) floor ms/img", "(b) onnxcam ms/img", "(c) pytorch-grad-cam ms/img",
          "(b)/(a)", "(c)/(b)", "peak MB (b)", "peak MB (c)")


def _cells(row: BenchRow) -> list[str]:
    c = row.baseline
    ratio = row.baseline_over_onnxcam
    return [row.model, str(row.batch), row.method, f"{row.floor.ms_per_image:.1f}", f"{row.onnxcam.ms_per_image:.1f}",
            "—" if c is None else f"{c.ms_per_image:.1f}", f"{row.onnxcam_over_floor:.2f}",
            "—" if ratio is None else f"{ratio:.1f}", f"{row.onnxcam.peak_mb:.0f}",
            "—" if c is None else f"{c.peak_mb:.0f}"]


def text_table(rows: Sequence[BenchRow]) -> str:
    """The rows as an aligned plain-text table (what ``onnxcam bench`` and the benchmark script print)."""
    table = [list(HEADER)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.rjust(w) if i > 2 else cell.ljust(w) for i, (cell, w) in
                               enumerate(zip(line, widths))).rstrip() for line in table)


def markdown_table(rows: Sequence[BenchRow]) -> str:
    """The rows as a markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line naming the CPU, its cores, the OS and the library versions that set the figures."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, numpy {np.__version__}, onnxruntime {onnxruntime().__version__}")
