"""Explain a data set on a Ray cluster with Ray Data (``pip install 'onnxcam[ray]'``): :func:`explain_dataset`
builds a :class:`~onnxcam.runs.config.RunConfig` for the Ray engine (:mod:`onnxcam.runs.ray_engine`) and runs
it with :func:`~onnxcam.runs.job.run_job`, as ``onnxcam explain --engine ray`` does. Ray itself is imported only
when a run starts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from onnxcam.runs.config import ModelInput, RunConfig, formats_of
from onnxcam.runs.image_paths import collect_images
from onnxcam.runs.job import run_job
from onnxcam.runs.ray_engine import check_available, dataset_sources, explain_sources

__all__ = ["check_available", "explain_dataset", "explain_sources"]


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
    ``manifest.jsonl``, ``errors.jsonl`` and ``summary.json`` as ``onnxcam explain``. Returns the summary;
    Ctrl-C is re-raised once the summary is written."""
    ray = check_available()
    layers = [layer] if isinstance(layer, str) else list(layer or [])
    config = RunConfig(model=str(model), output=str(output), method=method, method_options=method_options,
                       class_spec=class_index, formats=formats_of(formats), alpha=alpha, colormap=colormap,
                       batch_size=batch_size, workers=workers, engine="ray", address=address, device=device,
                       layers=tuple(layers), threads=threads, resume=resume,
                       model_input=ModelInput(input_size, input_layout, preprocessing)).checked()
    dataset = data if isinstance(data, ray.data.Dataset) else None
    if dataset is not None:
        sources = dataset_sources(dataset)
    else:
        sources = collect_images([data] if isinstance(data, str | os.PathLike) else list(data), exclude=output)
    outcome = run_job(config, sources, dataset=dataset)
    if outcome.status == "interrupted":
        raise KeyboardInterrupt
    return outcome.summary
