"""Judging CAM methods on a model and images: faithfulness, robustness and localisation, all through ORT."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcam.cams import CAMContext, CAMMethod, finalise, get_method
from onnxcam.core.layout import to_nchw
from onnxcam.evaluation import metrics
from onnxcam.runtime.explainer import Explainer, ImageInput

#: Column name → (higher is better?) for every metric the table may hold.
METRICS = {
    "deletion_auc": False,
    "insertion_auc": True,
    "average_drop": False,
    "increase_in_confidence": True,
    "road_morf": False,
    "road_lerf": True,
    "noise_ssim": True,
    "pointing_game": True,
    "energy_in_box": True,
    "ms_per_image": False,
}


@dataclass
class MethodResult:
    """One method's maps, curves and metric means."""

    cams: np.ndarray
    metrics: dict[str, float]
    deletion_curve: np.ndarray
    insertion_curve: np.ndarray
    fractions: np.ndarray


@dataclass
class Evaluation:
    """Results per method for one model and image set."""

    images: np.ndarray  # [N,H,W,3] what the model saw
    class_index: np.ndarray
    labels: list[str] | None
    methods: dict[str, MethodResult] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per method: its name and the mean of every metric it has."""
        return [{"method": name, **result.metrics} for name, result in self.methods.items()]

    def columns(self) -> list[str]:
        """The metrics any method has, in the order of :data:`METRICS`."""
        rows = self.table()
        return [c for c in METRICS if any(c in row for row in rows)]

    def markdown(self) -> str:
        """The table in markdown; ↑ marks metrics where higher is better, ↓ lower."""
        columns = self.columns()
        head = ["method", *(f"{c} {'↑' if METRICS[c] else '↓'}" for c in columns)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.table():
            cells = [row["method"], *(f"{row[c]:.3f}" if c in row else "–" for c in columns)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def csv(self) -> str:
        """The table as CSV (full precision, empty cells where a method has no value)."""
        columns = self.columns()
        lines = [",".join(["method", *columns])]
        lines += [",".join([row["method"], *(f"{row[c]:.6g}" if c in row else "" for c in columns)])
                  for row in self.table()]
        return "\n".join(lines) + "\n"


MethodSpec = str | tuple[str, str, dict[str, Any]]


def evaluate(explainer: Explainer, images: ImageInput | Sequence[ImageInput], methods: Sequence[MethodSpec], *,
             boxes: np.ndarray | None = None, class_index: Any = None, steps: int = 50,
             noise_sigmas: Sequence[float] = (0.1, 0.2, 0.5, 1.0), road: bool = True,
             progress: Any = None) -> Evaluation:
    """Every metric of docs/design.md §7 for every method, on ``images`` (boxes ``[N,4]`` in model-input pixels).

    ``methods`` holds method names, or ``(label, name, options)`` for variants (e.g. CF-CAM's filters).

    Faithfulness uses the softmax probability of the explained class (predicted unless ``class_index``);
    gradient-noise robustness is measured for the methods that declare ``uses_gradients`` and compute their
    maps from the layer's tensors alone (not ``uses_model``). ``ms_per_image`` is the wall time of ``explain``
    divided by N.
    """
    variants = [(m, m, {}) if isinstance(m, str) else m for m in methods]
    for _, name, _ in variants:
        get_method(name)
    batch, views = explainer.preprocess(images)
    requested = explainer.class_indices(class_index, len(batch))
    first = explainer.forward(batch, requested)
    chosen = np.where(requested < 0, first["logits"].argmax(1), requested)
    labels = [explainer.labels[c] for c in chosen] if explainer.labels else None
    result = Evaluation(images=views if views is not None else np.zeros((0,)), class_index=chosen, labels=labels)

    def scorer(x: np.ndarray, cls: np.ndarray) -> np.ndarray:
        return explainer.probabilities(x, cls)

    for label, name, options in variants:
        if progress:
            progress(label)
        spec = get_method(name)
        start = time.perf_counter()
        cams = explainer.explain(batch, method=name, class_index=chosen, **options).cams
        elapsed = (time.perf_counter() - start) * 1000 / len(batch)
        di = metrics.deletion_insertion(scorer, batch, cams, chosen, steps=steps)
        drop = metrics.average_drop_increase(scorer, batch, cams, chosen)
        row = {"deletion_auc": float(di["deletion_auc_mean"]), "insertion_auc": float(di["insertion_auc_mean"]),
               "average_drop": float(drop["average_drop"]),
               "increase_in_confidence": float(drop["increase_in_confidence"])}
        if road:
            both = metrics.road_combined(scorer, batch, cams, chosen)
            row["road_morf"] = float(both["morf"]["mean"])
            row["road_lerf"] = float(both["lerf"]["mean"])
        if spec.uses_gradients and not spec.uses_model:
            row["noise_ssim"] = _noise_ssim(explainer, first, spec, options, noise_sigmas)
        if boxes is not None:
            row["pointing_game"] = float(metrics.pointing_game(cams, boxes))
            row["energy_in_box"] = float(np.mean(metrics.energy_in_box(cams, boxes)))
        row["ms_per_image"] = elapsed
        result.methods[label] = MethodResult(cams, row, di["deletion_curve"].mean(0), di["insertion_curve"].mean(0),
                                            di["fractions"])
    return result


def _noise_ssim(explainer: Explainer, out: dict[str, np.ndarray], spec: CAMMethod, options: dict[str, Any],
                sigmas: Sequence[float]) -> float:
    """Mean SSIM between clean and gradient-noised maps of the first target layer, over ``sigmas``."""
    target = explainer.targets[0]
    size = explainer.input_shape[1:]
    resolved = spec.resolve(options)

    def cam_fn(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return finalise(spec.run(CAMContext(acts, grads), resolved), size, spec.normalise)

    acts, grads = to_nchw(out[target.activations], target.layout), to_nchw(out[target.gradients], target.layout)
    robustness = metrics.gradient_noise_robustness(cam_fn, acts, grads, sigmas=tuple(sigmas))
    return float(np.mean(robustness["ssim"]))

