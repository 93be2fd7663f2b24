"""The Ray engine: explain a data set on a Ray cluster with Ray Data, one :class:`~onnxcam.runtime.Explainer` per
actor (:func:`onnxcam.runs.job.run_job` runs it for ``--engine ray``).

``pip install 'onnxcam[ray]'``. Ray is imported here only, when a run starts (an optional, heavy engine).
The actors decode, explain and encode each image's artefacts; the driver writes them (atomically) with
``manifest.jsonl``, ``errors.jsonl`` and ``summary.json`` into the output folder, exactly as the local engine
does, so no shared filesystem is needed for the outputs. With paths, every node must be able to read them (a
shared filesystem); a Ray Dataset can bring the images itself (``ray.data.read_binary_files(...,
include_paths=True)``).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxcam.core.errors import OnnxcamError
from onnxcam.runs.config import RunConfig
from onnxcam.runs.image_paths import ImageSource, keyed
from onnxcam.runs.local import Progress
from onnxcam.runs.records import RunFolder, encode_artefacts, output_names
from onnxcam.runtime.explainer import Explainer
from onnxcam.runtime.results import ImageResult
from onnxcam.runtime.session import session_options

__all__ = ["ExplainActor", "check_available", "dataset_sources", "explain_sources"]

_FIELDS = ("source", "class_index", "class_name", "probability", "top_class_index", "top_class_name",
           "top_probability", "seconds")


def check_available() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise OnnxcamError("--engine ray needs Ray Data; run `pip install 'onnxcam[ray]'`") from None
    return ray


class ExplainActor:
    """A Ray Data callable class: builds one Explainer when the actor starts, then explains batches of rows
    (column ``path``, ``bytes`` or ``image``) into result columns: ``row``, ``error`` ("" when explained),
    ``result`` (JSON of the manifest fields) and one column of file bytes per artefact format."""

    def __init__(self, model: Any, config: RunConfig, class_index: int | None) -> None:
        import ray

        data = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self.explainer = Explainer(data, providers=config.device, layer=list(config.layers) or None,
                                   session_options=session_options(threads=config.threads or 1),
                                   **config.model_input.explainer_options())
        self.config, self.class_index = config, class_index

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        config = self.config
        column = next(c for c in ("bytes", "image", "path") if c in batch)
        items: list[Any] = [bytes(v) if column == "bytes" else v for v in batch[column]]
        results = list(self.explainer.explain_iter(items, method=config.method, class_index=self.class_index,
                                                   batch_size=max(1, len(items)), workers=1,
                                                   **config.method_options))
        out: dict[str, list[Any]] = {"row": list(batch["row"]), "error": [], "result": [],
                                     **{f: [] for f in config.formats}}
        for result in results:
            out["error"].append(result.error or "")
            out["result"].append(json.dumps({k: getattr(result, k) for k in _FIELDS}))
            files = encode_artefacts(result, config.formats, alpha=config.alpha, colormap=config.colormap) \
                if result.ok else {}
            for f in config.formats:
                out[f].append(files.get(f, b""))
        return {k: np.asarray(v, dtype=np.int64 if k == "row" else object) for k, v in out.items()}


def _start(ray: Any, address: str | None, workers: int) -> bool:
    """Connect to ``address``, or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        kwargs["num_cpus"] = max(os.cpu_count() or 1, workers + 1)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise OnnxcamError(f"could not reach the Ray cluster at '{address}' ({str(exc).splitlines()[0]}); check "
                           "--address, or leave it out to start a local Ray") from None
    return True


def explain_sources(config: RunConfig, sources: Sequence[ImageSource], folder: RunFolder,
                    class_index: int | None = None, *, progress: Progress | None = None, dataset: Any = None) -> None:
    """The Ray engine behind ``onnxcam explain --engine ray``: explain each source not already done in
    ``folder`` on ``config.ray_workers`` Ray actors (``num_gpus=1`` each with ``device="cuda"``), writing as the
    local engine does. ``dataset``: a Ray Dataset with a ``path`` column to use instead of reading ``sources``."""
    ray = check_available()
    started = _start(ray, config.address, config.ray_workers)
    try:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        todo = [s for s in sources if s.key not in folder.done]
        by_row = dict(enumerate(todo))
        if dataset is None:
            if not todo:
                return
            data = ray.data.from_items([{"row": i, "path": s.path} for i, s in by_row.items()])
        else:
            wanted = {s.path: i for i, s in by_row.items()}
            if len(wanted) < len(sources):  # resumed: leave out the images done before
                dataset = dataset.filter(lambda r: r["path"] in wanted)
            data = dataset.map(lambda r: {**r, "row": wanted[r["path"]]})
        # a local Ray reads the file where it is; a cluster gets its bytes through the object store
        model_ref = str(config.model) if config.address is None else ray.put(pathlib.Path(config.model).read_bytes())
        mapped = data.map_batches(
            ExplainActor, batch_size=config.batch_size, batch_format="numpy", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=config.ray_workers),
            num_gpus=1 if config.device == "cuda" else 0,
            fn_constructor_kwargs={"model": model_ref, "config": config, "class_index": class_index})
        for row in mapped.iter_rows():
            source = by_row[int(row["row"])]
            if row["error"]:
                record, error = None, folder.fail(source.key, source.path, row["error"])
            else:
                result = ImageResult(index=int(row["row"]), **{**json.loads(row["result"]), "source": source.path})
                names = output_names(source.stem, config.method, config.formats)
                record, error = folder.add(source.key, result, {f: row[f] for f in config.formats}, names), None
            if progress is not None:
                progress(source, record, error)
    finally:
        if started:
            ray.shutdown()


def dataset_sources(dataset: Any) -> list[ImageSource]:
    """Keys for a Ray Dataset's ``path`` column, as :func:`~onnxcam.runs.image_paths.collect_images` makes them
    for files."""
    if "path" not in dataset.columns():
        raise OnnxcamError("the Ray Dataset needs a 'path' column to name the outputs; read it with "
                           "include_paths=True")
    paths = [row["path"] for row in dataset.select_columns(["path"]).iter_rows()]
    return keyed(paths)
