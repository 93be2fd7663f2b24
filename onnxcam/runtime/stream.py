"""Streaming explanation: threads decode and preprocess ahead of ONNX Runtime, which runs in batches; results come
out image by image, in input order, with bounded memory whatever the number of images.

The stream takes the explainer as a :class:`~onnxcam.runtime.results.BatchExplainer` and imports nothing from
``onnxcam.runtime.explainer``; ``Explainer.explain_iter`` calls :func:`stream_explain`."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from onnxcam.cams import get_method
from onnxcam.core.errors import OnnxcamError
from onnxcam.runtime.preprocess import as_rgb, decode_image, load_image, model_view, normalise
from onnxcam.runtime.results import BatchExplainer, ImageResult


def default_workers() -> int:
    """Decode threads: one per core, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def read_any(item: Any) -> np.ndarray:
    """A path, encoded file bytes or an HWC uint8 array → RGB ``[H,W,3]`` uint8 (one-line errors)."""
    if isinstance(item, np.ndarray):
        return as_rgb(item)
    if isinstance(item, bytes | bytearray | memoryview):
        return decode_image(np.frombuffer(item, np.uint8), "the image data")
    return load_image(item)


def prepare_image(explainer: BatchExplainer, item: Any) -> tuple[np.ndarray, np.ndarray]:
    """(normalised ``[C,H,W]`` float32, model view ``[H,W,3]`` uint8) of one image, in a worker thread."""
    view = model_view(read_any(item), explainer.preprocessing, explainer.input_shape[1:])
    return normalise(view[None], explainer.preprocessing, channels=explainer.input_shape[0])[0], view


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OnnxcamError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"could not read the file ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'failed'}"


def stream_explain(explainer: BatchExplainer, images: Iterable[Any], *, method: str, class_index: int | str | None,
                   batch_size: int, workers: int | None, embedded: bool, method_options: dict[str, Any],
                   ) -> Iterator[ImageResult]:
    """See :meth:`Explainer.explain_iter`. The method, its options and the class are checked before the first
    image is read, so a mistake there raises at once."""
    get_method(method).resolve(method_options)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise OnnxcamError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    index = explainer.class_indices(class_index, 1)
    if index.ndim != 1:
        raise OnnxcamError("explain_iter explains one class per image; pass None, an index or a label name")
    return _run(explainer, images, method, int(index[0]), batch_size, workers or default_workers(), embedded,
                method_options)


def _run(explainer: BatchExplainer, images: Iterable[Any], method: str, class_index: int, batch_size: int,
         workers: int, embedded: bool, method_options: dict[str, Any]) -> Iterator[ImageResult]:
    ahead = 2 * batch_size + workers  # decoded images held at most: the batch being filled and about one more
    pending: deque[tuple[int, str, Future]] = deque()
    source = enumerate(images)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="onnxcam-decode")
    try:
        group: list[tuple[int, str, Any]] = []
        exhausted = False
        while True:
            while not exhausted and len(pending) < ahead:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                i, image = item
                name = f"<array {i}>" if isinstance(image, np.ndarray) else \
                    ("<bytes>" if isinstance(image, bytes | bytearray | memoryview) else str(image))
                pending.append((i, name, pool.submit(prepare_image, explainer, image)))
            if not pending:
                break
            i, name, future = pending.popleft()
            try:
                group.append((i, name, future.result()))
            except Exception as exc:  # noqa: BLE001 - any failure to read one image is that image's error
                group.append((i, name, exc))
            if sum(not isinstance(g[2], BaseException) for g in group) == batch_size or (exhausted and not pending):
                yield from _explain_group(explainer, group, method, class_index, embedded, method_options)
                group = []
        if group:
            yield from _explain_group(explainer, group, method, class_index, embedded, method_options)
    finally:
        for _, _, future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _explain_group(explainer: BatchExplainer, group: list[tuple[int, str, Any]], method: str, class_index: int,
                   embedded: bool, method_options: dict[str, Any]) -> Iterator[ImageResult]:
    good = [g for g in group if not isinstance(g[2], BaseException)]
    out = None
    started = time.perf_counter()
    if good:
        batch = np.stack([g[2][0] for g in good])
        views = np.stack([g[2][1] for g in good])
        out = explainer.explain_batch(batch, views, np.full(len(good), class_index, np.int64), method=method,
                                      options=method_options, embedded=embedded)
    share = (time.perf_counter() - started) / max(1, len(good))
    labels = explainer.labels
    k = 0
    for i, name, value in group:
        if isinstance(value, BaseException):
            yield ImageResult(index=i, source=name, error=_reason(value))
            continue
        assert out is not None  # every readable image of the group was explained above
        chosen = int(out.class_index[k])
        top = int(out.probabilities[k].argmax())
        yield ImageResult(index=i, source=name, cam=out.cams[k], class_index=chosen,
                          class_name=labels[chosen] if labels else str(chosen),
                          probability=float(out.probabilities[k, chosen]), top_class_index=top,
                          top_class_name=labels[top] if labels else str(top),
                          top_probability=float(out.probabilities[k, top]), image=views[k], seconds=share)
        k += 1
