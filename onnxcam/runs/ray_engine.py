"""Explain a data set on a Ray cluster with Ray Data: one :class:`~onnxcam.runtime.Explainer` per actor.

``pip install 'onnxcam[ray]'``. Ray is imported here only. The actors decode, explain and encode each image's
artefacts; the driver writes them (atomically) with ``manifest.jsonl``, ``errors.jsonl`` and ``summary.json``
into the output folder, exactly as the local engine does, so no shared filesystem is needed for the outputs.
With paths, every node must be able to read them (a shared filesystem); a Ray Dataset can bring the images
itself (``ray.data.read_binary_files(..., include_paths=True)``).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxcam.core.errors import OnnxcamError
from onnxcam.runs.image_paths import ImageSource, collect_images, keyed
from onnxcam.runs.local import Progress, check_render_options, run_settings
from onnxcam.runs.records import RunFolder, encode_artefacts, output_names
from onnxcam.runtime.stream import ImageResult

__all__ = ["check_available", "explain_dataset", "explain_sources"]

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

    def __init__(self, model: Any, method: str, class_index: int | None, formats: Sequence[str], alpha: float,
                 colormap: str, device: str, layers: list[str] | None, threads: int,
                 explainer_input: dict[str, Any], method_options: dict[str, Any]) -> None:
        import ray

        from onnxcam.runtime import Explainer
        from onnxcam.runtime.session import session_options

        data = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self.explainer = Explainer(data, providers=device, layer=layers,
                                   session_options=session_options(threads=threads or 1), **explainer_input)
        self.method, self.class_index, self.formats = method, class_index, list(formats)
        self.alpha, self.colormap, self.method_options = alpha, colormap, method_options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        column = next(c for c in ("bytes", "image", "path") if c in batch)
        items = [bytes(v) if column == "bytes" else v for v in batch[column]]
        results = list(self.explainer.explain_iter(items, method=self.method, class_index=self.class_index,
                                                   batch_size=max(1, len(items)), workers=1, **self.method_options))
        out: dict[str, list[Any]] = {"row": list(batch["row"]), "error": [], "result": [],
                                     **{f: [] for f in self.formats}}
        for result in results:
            out["error"].append(result.error or "")
            out["result"].append(json.dumps({k: getattr(result, k) for k in _FIELDS}))
            files = encode_artefacts(result, self.formats, alpha=self.alpha, colormap=self.colormap) \
                if result.ok else {}
            for f in self.formats:
                out[f].append(files.get(f, b""))
        return {k: np.asarray(v, dtype=np.int64 if k == "row" else object) for k, v in out.items()}


def _start(ray: Any, address: str | None, workers: int) -> bool:
    """Connect to ``address``, or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    import logging

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        kwargs["num_cpus"] = max(os.cpu_count() or 1, workers + 1)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise OnnxcamError(f"could not reach the Ray cluster at '{address}' ({str(exc).splitlines()[0]}); check "
                           "--address, or leave it out to start a local Ray") from None
    return True


def explain_sources(model: str | os.PathLike, sources: Sequence[ImageSource], folder: RunFolder, *, method: str,
                    class_index: int | None = None, formats: Sequence[str] = ("overlay", "npy"), alpha: float = 0.5,
                    colormap: str = "jet", batch_size: int = 16, workers: int = 2, address: str | None = None,
                    device: str = "cpu", layers: list[str] | None = None, threads: int = 1,
                    explainer_input: dict[str, Any] | None = None, method_options: dict[str, Any] | None = None,
                    progress: Progress | None = None, dataset: Any = None) -> None:
    """The Ray engine behind ``onnxcam explain --engine ray``: explain each source not already done in
    ``folder`` on ``workers`` Ray actors (``num_gpus=1`` each with ``device="cuda"``), writing as the local
    engine does. ``dataset``: a Ray Dataset with a ``path`` column to use instead of reading ``sources``."""
    ray = check_available()
    started = _start(ray, address, workers)
    try:
        import logging

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
        model_ref = str(model) if address is None else ray.put(pathlib.Path(model).read_bytes())
        mapped = data.map_batches(
            ExplainActor, batch_size=batch_size, batch_format="numpy", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=1 if device == "cuda" else 0,
            fn_constructor_kwargs={"model": model_ref, "method": method, "class_index": class_index,
                                   "formats": list(formats), "alpha": alpha, "colormap": colormap,
                                   "device": device, "layers": layers, "threads": threads,
                                   "explainer_input": explainer_input or {}, "method_options": method_options or {}})
        for row in mapped.iter_rows():
            source = by_row[int(row["row"])]
            if row["error"]:
                record, error = None, folder.fail(source.key, source.path, row["error"])
            else:
                result = ImageResult(index=int(row["row"]), **{**json.loads(row["result"]), "source": source.path})
                names = output_names(source.stem, method, formats)
                record, error = folder.add(source.key, result, {f: row[f] for f in formats}, names), None
            if progress is not None:
                progress(source, record, error)
    finally:
        if started:
            ray.shutdown()


def explain_dataset(data: Any, model: str | os.PathLike, *, output: str | os.PathLike = "onnxcam-out",
                    method: str = "cfcam", class_index: int | str | None = None,
                    formats: str | Sequence[str] = ("overlay", "npy"), alpha: float = 0.5, colormap: str = "jet",
                    batch_size: int = 16, workers: int = 2, address: str | None = None, device: str = "cpu",
                    layer: str | list[str] | None = None, threads: int = 1, resume: bool = False,
                    input_size: tuple[int, int] | None = None, input_layout: str | None = None,
                    preprocessing: dict[str, Any] | None = None, **method_options: Any) -> dict[str, Any]:
    """Explain ``data`` (image paths, folders or globs; or a Ray Dataset with a ``path`` column and the
    image in a ``bytes`` column, as ``ray.data.read_binary_files(..., include_paths=True)`` gives, or an
    ``image`` column of HWC uint8 arrays) with ``model`` on Ray Data, into ``output``: the same files,
    ``manifest.jsonl``, ``errors.jsonl`` and ``summary.json`` as ``onnxcam explain``. Returns the summary."""
    from onnxcam.cams import check_options, get_method
    from onnxcam.runtime import Explainer

    ray = check_available()
    check_options(get_method(method), method_options)
    format_list = check_render_options(formats, alpha, colormap)
    dataset = data if isinstance(data, ray.data.Dataset) else None
    if dataset is not None:
        if "path" not in dataset.columns():
            raise OnnxcamError("the Ray Dataset needs a 'path' column to name the outputs; read it with "
                               "include_paths=True")
        sources = _dataset_sources(dataset)
    else:
        paths = [data] if isinstance(data, str | os.PathLike) else list(data)
        sources = collect_images(paths, exclude=output)
    layers = [layer] if isinstance(layer, str) else layer
    explainer_input = {"input_size": input_size, "input_layout": input_layout, "preprocessing": preprocessing}
    explainer = Explainer(model, providers="cpu", layer=layers, **explainer_input)  # checks; the actors run it
    index = None if class_index is None else explainer.class_index_of(class_index)
    settings = run_settings(explainer, model, method=method, class_index=index, formats=format_list, alpha=alpha,
                            colormap=colormap, method_options=method_options, batch_size=batch_size, engine="ray",
                            device=device)
    folder = RunFolder(output, settings, resume=resume)
    status = "stopped"
    try:
        explain_sources(model, sources, folder, method=method, class_index=index, formats=format_list, alpha=alpha,
                        colormap=colormap, batch_size=batch_size, workers=workers, address=address, device=device,
                        layers=layers, threads=threads, explainer_input=explainer_input,
                        method_options=method_options, dataset=dataset)
        status = "complete" if not folder.failed else "complete with errors"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        folder.close()
        summary = folder.write_summary(status, images=len(sources), engine="ray")
    return summary


def _dataset_sources(dataset: Any) -> list[ImageSource]:
    """Keys for a Dataset's ``path`` column, as :func:`collect_images` makes them for files."""
    paths = [row["path"] for row in dataset.select_columns(["path"]).iter_rows()]
    return keyed(paths)
