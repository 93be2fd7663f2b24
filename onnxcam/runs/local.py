"""The local engine: explain a list of images into a run folder, streaming, one image's files at a time."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from onnxcam.cams.render import heatmap
from onnxcam.core.errors import OnnxcamError
from onnxcam.runs.image_paths import ImageSource
from onnxcam.runs.records import RunFolder, encode_artefacts, output_names, parse_formats
from onnxcam.runtime.explainer import Explainer

#: called after each image with (its source, its manifest record or None, its error record or None)
Progress = Callable[[ImageSource, "dict[str, Any] | None", "dict[str, Any] | None"], None]


def run_settings(explainer: Explainer, model: str | os.PathLike, *, method: str, class_index: int | None,
                 formats: Sequence[str], alpha: float, colormap: str, method_options: dict[str, Any] | None = None,
                 batch_size: int = 16, engine: str = "local", device: str = "auto") -> dict[str, Any]:
    """What ``summary.json`` records about a run (and what ``--resume`` checks)."""
    from onnxcam.core.model_io import file_sha256
    from onnxcam.core.version import __version__

    providers = explainer.providers if engine == "local" else None  # Ray: each actor's, from ``device``
    return {"onnxcam_version": __version__, "model": str(model), "model_sha256": file_sha256(model),
            "device": device, "providers": providers, "layer": explainer.layer, "method": method,
            "method_options": dict(method_options or {}), "class": class_index, "formats": list(formats),
            "alpha": alpha, "colormap": colormap, "batch_size": batch_size, "engine": engine,
            "input_size": list(explainer.input_shape), "input_layout": explainer.metadata.input_layout or "NCHW",
            "preprocessing": explainer.preprocessing, "preprocessing_source": explainer.preprocessing_source}


def check_render_options(formats: str | Sequence[str], alpha: float, colormap: str) -> list[str]:
    """The formats as a list, with the overlay options checked (before any work)."""
    formats = parse_formats(formats) if isinstance(formats, str) else parse_formats(",".join(formats) or "none")
    if not 0.0 <= alpha <= 1.0:
        raise OnnxcamError(f"alpha must lie in [0, 1], got {alpha}")
    heatmap(np.zeros((1, 1), np.float32), colormap)  # checks the colormap name
    return formats


def explain_to_folder(explainer: Explainer, sources: Sequence[ImageSource], folder: RunFolder, *, method: str,
                      class_index: int | None = None, formats: Sequence[str] = ("overlay", "npy"),
                      alpha: float = 0.5, colormap: str = "jet", batch_size: int = 16, workers: int | None = None,
                      method_options: dict[str, Any] | None = None, progress: Progress | None = None) -> None:
    """Explain each source not already :attr:`RunFolder.done`, writing its files and manifest line as soon as it
    is ready; an unreadable image goes to ``errors.jsonl``. Stops at the first KeyboardInterrupt, with every
    file and line written so far complete."""
    todo = [s for s in sources if s.key not in folder.done]
    results = explainer.explain_iter([s.path for s in todo], method=method, class_index=class_index,
                                     batch_size=batch_size, workers=workers, **(method_options or {}))
    for result in results:
        source = todo[result.index]
        if result.ok:
            names = output_names(source.stem, method, formats)
            record = folder.add(source.key, result, encode_artefacts(result, formats, alpha=alpha, colormap=colormap),
                                names)
            error = None
        else:
            record, error = None, folder.fail(source.key, source.path, result.error or "unknown error")
        if progress is not None:
            progress(source, record, error)
