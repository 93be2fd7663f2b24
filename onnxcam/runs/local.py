"""The local engine: explain images into a run folder in this process, streaming, one image's files at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from onnxcam.runs.config import RunConfig
from onnxcam.runs.image_paths import ImageSource
from onnxcam.runs.records import RunFolder, encode_artefacts, output_names
from onnxcam.runtime.explainer import Explainer

#: called after each image with (its source, its manifest record or None, its error record or None)
Progress = Callable[[ImageSource, "dict[str, Any] | None", "dict[str, Any] | None"], None]


def explain_to_folder(explainer: Explainer, config: RunConfig, sources: Sequence[ImageSource], folder: RunFolder,
                      class_index: int | None = None, progress: Progress | None = None) -> None:
    """Explain each source not already :attr:`RunFolder.done`, writing its files and manifest line as soon as it
    is ready; an unreadable image goes to ``errors.jsonl``. Stops at the first KeyboardInterrupt, with every
    file and line written so far complete."""
    todo = [s for s in sources if s.key not in folder.done]
    results = explainer.explain_iter([s.path for s in todo], method=config.method, class_index=class_index,
                                     batch_size=config.batch_size, workers=config.workers or None,
                                     **config.method_options)
    for result in results:
        source = todo[result.index]
        if result.ok:
            names = output_names(source.stem, config.method, config.formats)
            files = encode_artefacts(result, config.formats, alpha=config.alpha, colormap=config.colormap)
            record = folder.add(source.key, result, files, names)
            error = None
        else:
            record, error = None, folder.fail(source.key, source.path, result.error or "unknown error")
        if progress is not None:
            progress(source, record, error)
