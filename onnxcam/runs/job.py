"""One function runs a whole job, whoever asks (``onnxcam explain``, :func:`onnxcam.ray.explain_dataset`): check
the config and the model, open the run folder, explain on the local engine or on Ray, write ``summary.json``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from onnxcam.runs.config import RunConfig, run_settings
from onnxcam.runs.image_paths import ImageSource
from onnxcam.runs.local import Progress, explain_to_folder
from onnxcam.runs.ray_engine import check_available, explain_sources
from onnxcam.runs.records import RunFolder
from onnxcam.runtime.explainer import Explainer
from onnxcam.runtime.session import session_options


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: ``status`` (complete, complete with errors, interrupted), the images ``explained`` in
    the folder (this run's and a resumed run's), those ``failed``, those ``resumed`` (done before this run),
    and the ``summary`` written to ``summary.json``."""

    status: str
    images: int
    explained: int
    failed: int
    resumed: int
    summary: dict[str, Any]


def run_job(config: RunConfig, sources: Sequence[ImageSource], *, dataset: Any = None,
            progress: Progress | None = None, on_start: Callable[[int, int], None] | None = None) -> RunOutcome:
    """Explain ``sources`` as ``config`` says. Everything that can be checked (the config, the model, the class)
    is checked before the output folder is touched. ``dataset``: a Ray Dataset to read the images from instead of
    their paths (Ray engine); ``on_start(total, resumed)`` is called once the folder is open, ``progress`` after
    each image. Ctrl-C ends the run with status "interrupted", every file written so far complete."""
    config = config.checked()
    if config.engine == "ray":
        check_available()
    # with Ray the driver only checks the model and the options: the actors run it, on ``device``
    explainer = Explainer(config.model, providers="cpu" if config.engine == "ray" else config.device,
                          layer=list(config.layers) or None, session_options=session_options(threads=config.threads
                                                                                             or None),
                          **config.model_input.explainer_options())
    class_index = None if config.class_spec is None else explainer.class_index_of(config.class_spec)
    folder = RunFolder(config.output, run_settings(explainer, config, class_index), resume=config.resume)
    resumed = len([s for s in sources if s.key in folder.done])
    if on_start is not None:
        on_start(len(sources), resumed)
    status = "stopped"
    try:
        if config.engine == "ray":
            explain_sources(config, sources, folder, class_index, progress=progress, dataset=dataset)
        else:
            explain_to_folder(explainer, config, sources, folder, class_index, progress=progress)
        status = "complete" if not folder.failed else "complete with errors"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        folder.close()
        summary = folder.write_summary(status, images=len(sources), engine=config.engine)
    return RunOutcome(status, len(sources), len(folder.done), folder.failed, resumed, summary)
