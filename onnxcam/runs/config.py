"""What a whole run is: one :class:`RunConfig`, built by the CLI's ``explain`` and by
:func:`onnxcam.ray.explain_dataset` alike, and the settings ``summary.json`` records about it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcam.cams import get_method
from onnxcam.cams.render import heatmap
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.model_io import file_sha256
from onnxcam.core.version import __version__
from onnxcam.runs.records import parse_formats
from onnxcam.runtime.explainer import Explainer

ENGINES = ("local", "ray")
#: Ray actors when ``workers`` is 0.
DEFAULT_RAY_WORKERS = 2


@dataclass(frozen=True)
class ModelInput:
    """How to read a model's image input: ``input_size`` = (H, W) for a dynamic one, ``input_layout`` (NCHW or
    NHWC) over the detected one, and ``preprocessing`` keys over the file's (resize, crop, scale, mean, std,
    channel_order)."""

    input_size: tuple[int, int] | None = None
    input_layout: str | None = None
    preprocessing: dict[str, Any] | None = None

    def explainer_options(self) -> dict[str, Any]:
        """These as :class:`~onnxcam.runtime.explainer.Explainer` keyword arguments."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunConfig:
    """One run: explain images with ``model`` into the folder ``output``.

    ``method`` and its ``method_options``; ``class_spec``: the class to explain (an index or a label name; None:
    each image's predicted class); ``formats``: the files per image (overlay, npy, png16; empty: records only),
    ``alpha`` and ``colormap`` for the overlay; ``batch_size`` images per ONNX Runtime run; ``workers``: decode
    threads (local engine; 0: one per core, at most 4) or Ray actors (0: 2); ``engine``: local or ray, with
    ``address`` (the Ray cluster; None: a local Ray); ``device``: auto, cpu or cuda; ``layers``: target layers
    (empty: the file's); ``threads``: ONNX Runtime intra-op threads (0: its default); ``model_input``: see
    :class:`ModelInput`; ``resume``: finish an earlier run in ``output``.
    """

    model: str
    output: str = "onnxcam-out"
    method: str = "cfcam"
    method_options: dict[str, Any] = field(default_factory=dict)
    class_spec: int | str | None = None
    formats: tuple[str, ...] = ("overlay", "npy")
    alpha: float = 0.5
    colormap: str = "jet"
    batch_size: int = 16
    workers: int = 0
    engine: str = "local"
    address: str | None = None
    device: str = "auto"
    layers: tuple[str, ...] = ()
    threads: int = 0
    model_input: ModelInput = field(default_factory=ModelInput)
    resume: bool = False

    def checked(self) -> RunConfig:
        """This config with its formats parsed, after the checks that need no model (one-line errors)."""
        if self.engine not in ENGINES:
            raise OnnxcamError(f"unknown engine '{self.engine}'; use one of {', '.join(ENGINES)}")
        if self.engine != "ray" and self.address is not None:
            raise OnnxcamError("--address joins a Ray cluster; add --engine ray")
        get_method(self.method).resolve(self.method_options)
        formats = parse_formats(",".join(self.formats) or "none")
        if not 0.0 <= self.alpha <= 1.0:
            raise OnnxcamError(f"alpha must lie in [0, 1], got {self.alpha}")
        heatmap(np.zeros((1, 1), np.float32), self.colormap)  # checks the colormap name
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise OnnxcamError(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")
        return dataclasses.replace(self, formats=tuple(formats))

    @property
    def ray_workers(self) -> int:
        """Ray actors: ``workers``, or :data:`DEFAULT_RAY_WORKERS`."""
        return self.workers or DEFAULT_RAY_WORKERS


def formats_of(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"overlay,npy"`` or ``["overlay", "npy"]`` → the checked tuple of formats."""
    text = formats if isinstance(formats, str) else (",".join(formats) or "none")
    return tuple(parse_formats(text))


def run_settings(explainer: Explainer, config: RunConfig, class_index: int | None) -> dict[str, Any]:
    """What ``summary.json`` records about a run (and what ``--resume`` checks)."""
    providers = explainer.providers if config.engine == "local" else None  # Ray: each actor's, from ``device``
    return {"onnxcam_version": __version__, "model": str(config.model), "model_sha256": file_sha256(config.model),
            "device": config.device, "providers": providers, "layer": explainer.layer, "method": config.method,
            "method_options": dict(config.method_options), "class": class_index, "formats": list(config.formats),
            "alpha": config.alpha, "colormap": config.colormap, "batch_size": config.batch_size,
            "engine": config.engine, "input_size": list(explainer.input_shape),
            "input_layout": explainer.metadata.input_layout or "NCHW", "preprocessing": explainer.preprocessing,
            "preprocessing_source": explainer.preprocessing_source}
