"""``Explainer``: an onnxcam graph on ONNX Runtime, from images to class activation maps."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxcam.autodiff.gradients import add_gradients
from onnxcam.cams import CAMContext, finalise, get_method
from onnxcam.core.contract import has_gradients, strip_gradients, target_output_names
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import set_ir_version
from onnxcam.core.graph_queries import head_model
from onnxcam.core.layout import to_nchw
from onnxcam.core.metadata import CamMetadata, class_probabilities, read_metadata
from onnxcam.core.model_io import ModelSource, load_model
from onnxcam.core.preprocessing import IMAGENET_PREPROCESSING, check_preprocessing
from onnxcam.runtime.preprocess import as_rgb, load_image, model_view, normalise
from onnxcam.runtime.results import Explanation, ImageResult, TargetLayer
from onnxcam.runtime.session import create_session, run
from onnxcam.runtime.stream import stream_explain

ImageInput = str | os.PathLike | np.ndarray


class Explainer:
    """Explain a classifier with CAMs on ONNX Runtime.

    ``model`` is an onnxcam graph or any ONNX classifier (augmented in memory with ``add_gradients``).
    ``layer`` re-targets the gradients to other tensor(s) or torch module name(s); ``batch_size`` bounds the
    images per ORT run in the extra passes of Score-CAM and Ablation-CAM.
    ``providers``: "auto", "cuda", "cpu" or an ORT providers list; ``session_options`` an ORT SessionOptions
    (see :func:`onnxcam.runtime.session.session_options`), used for every session the explainer opens.
    ``input_size`` = (H, W) fixes a dynamic image size and ``input_layout`` ("NCHW"/"NHWC") overrides the
    detected layout of a plain classifier's input; ``preprocessing`` overrides keys of the file's
    preprocessing (resize, crop, scale, mean, std, channel_order; ImageNet's when the file carries none).
    """

    def __init__(self, model: ModelSource, *, providers: str | Sequence[Any] = "auto",
                 layer: str | Sequence[str] | None = None, session_options: Any = None, batch_size: int = 32,
                 input_size: tuple[int, int] | None = None, input_layout: str | None = None,
                 preprocessing: dict[str, Any] | None = None) -> None:
        proto = load_model(model)
        meta = read_metadata(proto)
        layers = [layer] if isinstance(layer, str) else list(layer or [])
        same = layers in (meta.target_layers, meta.target_tensors) or (
            len(layers) == len(meta.target_layers) == 1 and layers[0] in meta.target_tensors)
        recorded_size = tuple(meta.input_size[1:]) if meta.input_size else None
        new_input = (input_size is not None and tuple(input_size) != recorded_size) or (
            input_layout is not None and input_layout.upper() != (meta.input_layout or "NCHW"))
        if not has_gradients(proto) or (layers and not same) or new_input:
            proto = add_gradients(proto, activations=layers or meta.target_layers or None, target=meta.target,
                                  input_size=input_size, input_layout=input_layout)
            meta = read_metadata(proto)
        self.model = proto
        self.metadata: CamMetadata = meta
        self.session_options = session_options
        self.session = create_session(proto.SerializeToString(), providers, session_options)
        self._providers: list[str] = list(self.session.get_providers())  # fixed once the session exists
        dims = self.session.get_inputs()[0].shape
        if any(not isinstance(d, int) for d in dims[1:]):
            raise OnnxcamError(f"the model input has dynamic image dimensions {dims}; pass --input-size HxW")
        self.input_shape: tuple[int, int, int] = tuple(dims[1:])
        outputs = [o.name for o in self.session.get_outputs()]
        self._outputs = set(outputs)
        pairs = target_output_names(sum(a.startswith("activations") for a in outputs))
        self.num_classes = int(self.session.get_outputs()[0].shape[1])
        base = dict(meta.preprocessing or IMAGENET_PREPROCESSING)
        #: where the preprocessing comes from: "file", "assumed (ImageNet)", plus "overridden" with overrides
        self.preprocessing_source = "file" if meta.preprocessing else "assumed (ImageNet)"
        if preprocessing:
            base.update({k: v for k, v in preprocessing.items() if v is not None})
            self.preprocessing_source += ", overridden"
        self.preprocessing: dict[str, Any] = check_preprocessing(base, self.input_shape[0])
        layouts = meta.layouts or [{"layout": "NCHW"}] * len(pairs)
        self._targets = [TargetLayer(a, g, dict(layout or {"layout": "NCHW"}))
                         for (a, g), layout in zip(pairs, layouts)]
        self.batch_size = batch_size
        self._forward_session: Any = None
        self._head_sessions: dict[int, Any] = {}
        self._resolved: dict[tuple, tuple[Any, str | None]] = {}

    @property
    def providers(self) -> list[str]:
        """The execution providers the session really runs on, in priority order."""
        return list(self._providers)

    @property
    def targets(self) -> list[TargetLayer]:
        """The target layers, in order: each one's activations and gradients outputs and their layout."""
        return list(self._targets)

    @property
    def labels(self) -> list[str] | None:
        """Class names from the metadata, when the model carries them."""
        return self.metadata.labels

    @property
    def layer(self) -> str:
        """The target layer's name (torch module name or tensor name)."""
        return ", ".join(self.metadata.target_layers)

    def class_index_of(self, spec: int | str) -> int:
        """A class index from an int, a numeric string or a label name; −1 means the predicted class."""
        if isinstance(spec, str) and not spec.lstrip("-").isdigit():
            names = [n.lower() for n in (self.labels or [])]
            if spec.lower() not in names:
                hint = "the model carries no class names; pass an index" if not names else \
                    "run `onnxcam explain` without --class to see the predicted names"
                raise OnnxcamError(f"unknown class name '{spec}'; {hint}")
            return names.index(spec.lower())
        index = int(spec)
        if not -1 <= index < self.num_classes:
            raise OnnxcamError(f"class index {index} is out of range; the model has {self.num_classes} classes "
                               f"(0–{self.num_classes - 1}, or -1 for the predicted class)")
        return index

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> tuple[np.ndarray, np.ndarray | None]:
        """Images (paths or HWC uint8 arrays) or a preprocessed NCHW float32 batch → (batch, model views)."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype != np.uint8:
            batch = np.ascontiguousarray(images, dtype=np.float32)
            if batch.shape[1:] != self.input_shape:
                expected = ", ".join(map(str, self.input_shape))
                raise OnnxcamError(f"a preprocessed batch must have shape [N, {expected}], got {list(batch.shape)}")
            return batch, None
        if isinstance(images, str | os.PathLike) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        if len(images) == 0:
            raise OnnxcamError("no images given")
        size = self.input_shape[1:]
        views = np.stack([model_view(load_image(im) if isinstance(im, str | os.PathLike) else as_rgb(im),
                                     self.preprocessing, size) for im in images])
        return normalise(views, self.preprocessing, channels=self.input_shape[0]), views

    def forward(self, batch: np.ndarray, class_index: int | Sequence[int] | np.ndarray | None = None, *,
                outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Raw graph outputs (``logits``, ``activations``, ``gradients``, any embedded maps) for a preprocessed
        batch; ``outputs`` names the ones to fetch (default: all)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        index = self.class_indices(class_index, len(batch))
        names = list(outputs) if outputs is not None else [o.name for o in self.session.get_outputs()]
        return dict(zip(names, run(self.session, {"input": batch, "class_index": index}, outputs=names)))

    def scores(self, batch: np.ndarray, class_index: np.ndarray, *, probability: bool = False) -> np.ndarray:
        """The logit (or softmax probability) of ``class_index`` for each image of a preprocessed batch,
        from forward passes only, ``batch_size`` images at a time."""
        if self._forward_session is None:
            self._forward_session = self._sub_session(strip_gradients(self.model))
        return self._class_scores(self._forward_session, batch, class_index, probability)

    def probabilities(self, batch: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        """Softmax probability of ``class_index`` per image (the scorer the metrics use)."""
        return self.scores(batch, class_index, probability=True)

    def head_scores(self, layer: int, activations: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        """The logit of ``class_index`` computed from target layer ``layer``'s ``[M,C,h,w]`` activations by the
        part of the model after that layer only (the head subgraph), batched."""
        layout = self._targets[layer].layout
        if layout.get("layout", "NCHW") == "NTC":
            raise OnnxcamError("this method needs the head after the layer, which is not supported for token layers "
                               "yet; use a gradient-based method")
        if layer not in self._head_sessions:
            forward = strip_gradients(self.model)
            head = head_model(forward, self.metadata.target_tensors[layer], forward.graph.output[0].name)
            self._head_sessions[layer] = self._sub_session(head)
        session = self._head_sessions[layer]
        raw = activations if layout.get("layout", "NCHW") == "NCHW" else activations.transpose(0, 2, 3, 1)
        return self._class_scores(session, raw, class_index, probability=False)

    def _class_scores(self, session: Any, inputs: np.ndarray, class_index: np.ndarray, probability: bool,
                      ) -> np.ndarray:
        """Run a logits-only ``session`` on ``inputs``, ``batch_size`` at a time; pick each row's class."""
        out = np.empty(len(inputs), np.float32)
        for start in range(0, len(inputs), self.batch_size):
            chunk = np.ascontiguousarray(inputs[start:start + self.batch_size], dtype=np.float32)
            logits = run(session, {session.get_inputs()[0].name: chunk})[0]
            values = class_probabilities(logits, self.metadata.output_kind) if probability else logits
            out[start:start + len(chunk)] = values[np.arange(len(chunk)), class_index[start:start + len(chunk)]]
        return out

    def _sub_session(self, model: onnx.ModelProto) -> Any:
        set_ir_version(model)
        return create_session(model.SerializeToString(), self.providers, self.session_options)

    def class_indices(self, spec: Any, n: int) -> np.ndarray:
        """Class indices for ``n`` images from ``spec``: None (−1, the predicted class, for each), one index or
        label name for every image, ``[n]`` one per image, or ``[n, K]`` K per image; int64, checked."""
        if spec is None:
            return np.full(n, -1, np.int64)
        if isinstance(spec, int | str | np.integer):
            return np.full(n, self.class_index_of(spec if isinstance(spec, str) else int(spec)), np.int64)
        if isinstance(spec, np.ndarray) and spec.dtype.kind in "iu" and 1 <= spec.ndim <= 2 and len(spec) == n and \
                spec.size and spec.min() >= -1 and spec.max() < self.num_classes:
            return spec.astype(np.int64, copy=False)  # already checked indices (explain_batch's): no per-item calls
        rows = np.asarray(spec, dtype=object)
        values = np.vectorize(self.class_index_of, otypes=[np.int64])(rows) if rows.size else rows.astype(np.int64)
        if len(values) != n or values.ndim > 2:
            raise OnnxcamError(f"class indices of shape {list(values.shape)} given for {n} images; use [N] or [N, K]")
        return values

    def embedded_output(self, method: str, options: Mapping[str, Any] | None = None) -> str | None:
        """The graph output that carries ``method``'s finished float32 map with options that give the same maps
        as ``options`` (compared resolved, so ``{}`` matches the defaults spelled out), or None when the file
        does not embed it so."""
        spec = get_method(method)
        wanted = spec.resolve(options)
        for entry in self.metadata.cams or []:
            if (entry.get("method"), entry.get("dtype")) != (method, "float32") or \
                    entry.get("output") not in self._outputs:
                continue
            try:
                if spec.same_options(entry.get("options") or {}, wanted):
                    return str(entry["output"])
            except OnnxcamError:  # options this version does not know: not the same maps
                continue
        return None

    def _resolve(self, method: str, options: Mapping[str, Any] | None, embedded: bool) -> tuple[Any, str | None]:
        """(``method``'s resolved options, the embedded output that gives its maps or None), remembered per
        method and options: resolving type-checks every option, a fixed cost that shows on fast models."""
        try:  # value types in the key: {"x": True} must not hit {"x": 1}'s entry (True == 1), it may be refused
            given = tuple(sorted((k, type(v).__name__, v) for k, v in options.items())) \
                if isinstance(options, Mapping) else options
            key: tuple | None = (method, embedded, given)
            hash(key)
        except TypeError:  # unhashable option values, or unsortable names: resolved every time
            key = None
        if key is not None and key in self._resolved:
            return self._resolved[key]
        found = (get_method(method).resolve(options), self.embedded_output(method, options) if embedded else None)
        if key is not None:
            self._resolved[key] = found
        return found

    def explain(self, images: ImageInput | Sequence[ImageInput], *, method: str = "cfcam",
                class_index: Any = None, embedded: bool = True, **method_options: Any) -> Explanation:
        """CAMs of ``method`` for ``images``.

        ``class_index``: None/−1 explains the predicted class; an int or label the same class for every image;
        ``[N]`` one class per image; ``[N, K]`` K classes per image, giving ``cams`` of shape ``[N, K, H, W]``.
        With several target layers, each layer's map is upsampled and scaled to [0, 1], the maps are averaged,
        and the average is divided by its maximum. When the file embeds ``method`` with the same options
        (``onnxcam embed``), its ``cam_<method>`` output is the map and numpy computes nothing;
        ``embedded=False`` computes it in numpy all the same.
        """
        self._resolve(method, method_options, embedded)  # bad options fail before any image is read
        batch, views = self.preprocess(images)
        return self.explain_batch(batch, views, self.class_indices(class_index, len(batch)), method=method,
                                  options=method_options, embedded=embedded)

    def explain_iter(self, images: Iterable[ImageInput], *, method: str = "cfcam", class_index: int | str | None = None,
                     batch_size: int = 16, workers: int | None = None, embedded: bool = True,
                     **method_options: Any) -> Iterator[ImageResult]:
        """Explain a stream of images (paths or HWC uint8 arrays; any iterable, read lazily), yielding one
        :class:`~onnxcam.runtime.results.ImageResult` per image in input order as soon as its batch is done.

        ``workers`` threads (default: up to 4) decode and preprocess ahead of ONNX Runtime, which runs
        ``batch_size`` images at a time; at most a few batches are held in memory, whatever the number of images.
        An image that cannot be read gives a result with ``error`` set, and the stream goes on.
        ``class_index``: None (the predicted class), or one index or label name for every image."""
        return stream_explain(self, images, method=method, class_index=class_index, batch_size=batch_size,
                              workers=workers, embedded=embedded, method_options=method_options)

    def explain_batch(self, batch: np.ndarray, views: np.ndarray | None, class_index: np.ndarray, *, method: str,
                      options: Mapping[str, Any] | None = None, embedded: bool = True) -> Explanation:
        """:meth:`explain` on a preprocessed ``batch`` ``[N,C,H,W]`` with ``views`` (what the model saw, or None)
        and the class indices :meth:`class_indices` gives (``[N]`` or ``[N, K]``; −1: the predicted class)."""
        spec = get_method(method)
        resolved, from_graph = self._resolve(method, options, embedded)
        index = np.asarray(class_index, dtype=np.int64)
        per_image = index.shape[1] if index.ndim == 2 else 1
        flat_batch = np.repeat(batch, per_image, axis=0) if index.ndim == 2 else batch
        flat_index = index.reshape(-1)
        wanted = [from_graph] if from_graph else [t for target in self._targets
                                                  for t in (target.activations, target.gradients)]
        out = self.forward(flat_batch, flat_index, outputs=["logits", *wanted])
        chosen = np.where(flat_index < 0, out["logits"].argmax(axis=1), flat_index)
        maps = [out[from_graph]] if from_graph else []
        for layer, target in enumerate([] if from_graph else self._targets):
            acts, grads = to_nchw(out[target.activations], target.layout), to_nchw(out[target.gradients], target.layout)
            model = LayerAccess(self, layer) if spec.uses_model else None
            raw = spec.run(CAMContext(acts, grads, flat_batch, chosen, model), resolved)
            maps.append(finalise(raw, self.input_shape[1:], spec.normalise))
        cams = maps[0] if len(maps) == 1 else _fuse(maps)
        logits = out["logits"][::per_image]
        if index.ndim == 2:
            cams = cams.reshape(len(batch), per_image, *cams.shape[1:])
            chosen = chosen.reshape(len(batch), per_image)
        names: list[str] | list[list[str]] | None = None
        if self.labels:
            labels = self.labels
            names = [labels[c] for c in chosen] if chosen.ndim == 1 else [[labels[c] for c in row] for row in chosen]
        return Explanation(cams=cams, class_index=chosen, logits=logits,
                           probabilities=class_probabilities(logits, self.metadata.output_kind),
                           method=method, providers=self.providers, labels=names, images=views,
                           options=dict(options or {}))

    def layer_gradients(self, layer: int, batch: np.ndarray, class_index: np.ndarray,
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Target layer ``layer``'s ``(activations, gradients)`` ``[N,C,h,w]`` for a preprocessed batch."""
        target = self._targets[layer]
        out = self.forward(batch, class_index, outputs=[target.activations, target.gradients])
        return to_nchw(out[target.activations], target.layout), to_nchw(out[target.gradients], target.layout)


@dataclass(frozen=True)
class LayerAccess:
    """:class:`~onnxcam.cams.base.ModelAccess` for one target layer of an :class:`Explainer`: what Score-CAM,
    Ablation-CAM and Smooth Grad-CAM++ run their extra passes through."""

    explainer: Explainer
    layer: int

    @property
    def batch_size(self) -> int:
        return self.explainer.batch_size

    def scores(self, batch: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        return self.explainer.scores(batch, class_index)

    def gradients_at(self, batch: np.ndarray, class_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.explainer.layer_gradients(self.layer, batch, class_index)

    def head(self, activations: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        return self.explainer.head_scores(self.layer, activations, class_index)


def _fuse(maps: list[np.ndarray]) -> np.ndarray:
    """Several layers' [0, 1] maps → their mean, divided by its maximum (per image)."""
    mean = np.mean(maps, axis=0)
    peak = mean.reshape(len(mean), -1).max(axis=1)[:, None, None]
    return np.where(peak > 0, mean / np.where(peak > 0, peak, 1), mean).astype(np.float32)
