"""What the runtime hands back: :class:`Explanation` (a batch), :class:`ImageResult` (one image of a stream),
:class:`TargetLayer` (one target layer's graph outputs), and :class:`BatchExplainer`, the part of
:class:`~onnxcam.runtime.explainer.Explainer` that the stream (``onnxcam.runtime.stream``) relies on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np


@dataclass
class Explanation:
    """CAMs for a batch: ``cams`` ``[N,H,W]`` float32 in [0,1] at the model's input resolution."""

    cams: np.ndarray
    class_index: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray
    method: str
    providers: list[str]
    labels: list[str] | list[list[str]] | None = None
    images: np.ndarray | None = None  # ``[N,H,W,3]`` uint8: what the model saw (None for a raw batch)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def scores(self) -> np.ndarray:
        """Probability of the explained class, per image."""
        return self.probabilities[np.arange(len(self.class_index)), self.class_index]


@dataclass
class ImageResult:
    """One image's explanation, or why it has none (``error``)."""

    index: int  # position in the input stream
    source: str  # the path, or "<array K>" for an image given as an array
    cam: np.ndarray | None = None  # [H,W] float32 in [0,1] at the model's input resolution
    class_index: int = -1
    class_name: str = ""
    probability: float = float("nan")  # of the explained class
    top_class_index: int = -1
    top_class_name: str = ""
    top_probability: float = float("nan")
    image: np.ndarray | None = None  # [H,W,3] uint8: what the model saw
    seconds: float = 0.0  # this image's share of its batch's ONNX Runtime and CAM time
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the image was explained."""
        return self.error is None


class TargetLayer(NamedTuple):
    """One target layer: the graph outputs of its activations and gradients, and their layout
    (``{"layout": "NCHW"}``, ``"NHWC"`` or a token layout, as the metadata records it)."""

    activations: str
    gradients: str
    layout: dict[str, Any]


class BatchExplainer(Protocol):
    """What the stream needs from an explainer: its preprocessing, its labels and its batch explanation."""

    @property
    def preprocessing(self) -> dict[str, Any]: ...

    @property
    def input_shape(self) -> tuple[int, int, int]: ...

    @property
    def labels(self) -> list[str] | None: ...

    def class_indices(self, spec: Any, n: int) -> np.ndarray: ...

    def explain_batch(self, batch: np.ndarray, views: np.ndarray | None, class_index: np.ndarray, *, method: str,
                      options: Mapping[str, Any] | None = None, embedded: bool = True) -> Explanation: ...
