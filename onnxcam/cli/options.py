"""What several commands share: the image input options (size, layout), the preprocessing overrides, method
lists and options, model factories."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from onnxcam.cams.embed import check_cams
from onnxcam.classifier.inputs import parse_size
from onnxcam.core.errors import OnnxcamError


def input_options(fn: Callable) -> Callable:
    """``--input-size HxW`` and ``--input-layout NCHW|NHWC``."""
    fn = click.option("--input-layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False), default=None,
                      help="Layout of the model's image input (default: detected from its shape).")(fn)
    return click.option("--input-size", "input_size_text", default=None, metavar="HxW",
                        help="Image size for a model whose input height/width are dynamic, e.g. 224x224.")(fn)


def heatmap_options(fn: Callable) -> Callable:
    """``--alpha`` and ``--colormap``: how the heatmap is drawn over the picture."""
    fn = click.option("--colormap", default="jet", show_default=True,
                      help="Heatmap colormap (an OpenCV name, e.g. jet, turbo, inferno).")(fn)
    return click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0, 1),
                        help="Heatmap opacity over the picture.")(fn)


def preprocessing_options(fn: Callable) -> Callable:
    """``--resize``, ``--crop``, ``--scale``, ``--mean``, ``--std``, ``--channel-order``."""
    for decorator in reversed([
        click.option("--resize", type=int, default=None, help="Resize the short side to N pixels first."),
        click.option("--crop", type=int, default=None, help="Then crop the centre N×N pixels."),
        click.option("--scale", type=float, default=None, help="Multiply pixels by S (e.g. 0.00392 = 1/255)."),
        click.option("--mean", default=None, metavar="R,G,B", help="Subtract these per-channel means (after scale)."),
        click.option("--std", default=None, metavar="R,G,B", help="Divide by these per-channel deviations."),
        click.option("--channel-order", type=click.Choice(["RGB", "BGR"], case_sensitive=False), default=None,
                     help="Channel order the model expects."),
    ]):
        fn = decorator(fn)
    return fn


def input_size(text: str | None) -> tuple[int, int] | None:
    """``--input-size`` parsed, or None."""
    return None if text is None else parse_size(text)


def preprocessing(resize: int | None, crop: int | None, scale: float | None, mean: str | None, std: str | None,
                  channel_order: str | None) -> dict[str, Any]:
    """The preprocessing overrides given on the command line (only the options that were passed)."""
    out: dict[str, Any] = {"resize": resize, "crop": crop, "scale": scale,
                           "mean": numbers(mean, "--mean"), "std": numbers(std, "--std"),
                           "channel_order": channel_order.upper() if channel_order else None}
    return {k: v for k, v in out.items() if v is not None}


def numbers(text: str | None, option: str) -> list[float] | None:
    """``"0.5,0.5,0.5"`` → [0.5, 0.5, 0.5], with a one-line error naming the option."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise OnnxcamError(f"{option} needs comma-separated numbers such as 0.485,0.456,0.406, got '{text}'") from None


def explainer_input(values: dict[str, Any]) -> dict[str, Any]:
    """Explainer keyword arguments from the shared input and preprocessing options (consumes them)."""
    out: dict[str, Any] = {"input_size": input_size(values.pop("input_size_text", None)),
                           "input_layout": values.pop("input_layout", None)}
    if values:
        out["preprocessing"] = preprocessing(**values) or None
    return out


def method_list(text: str) -> list[str]:
    """``gradcam,layercam`` → the method names, each checked to have a graph form (before any slow work)."""
    return check_cams([n.strip() for n in text.split(",") if n.strip()])


def cam_options(text: str | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``gradcampp.eps=0,...`` → ``{"gradcampp": {"eps": 0}}`` (values read as JSON, else as text)."""
    out: dict[str, dict[str, Any]] = {}
    for item in [i.strip() for i in (text or "").split(",") if i.strip()]:
        key, sep, raw = item.partition("=")
        method, dot, option = key.strip().partition(".")
        if not sep or not dot or not option:
            raise OnnxcamError(f"--cam-options takes METHOD.OPTION=VALUE items, e.g. gradcampp.eps=0; got '{item}'")
        if method not in methods:
            raise OnnxcamError(f"--cam-options names '{method}', which --cam does not embed")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip()
        out.setdefault(method, {})[option.strip()] = value
    return out


def factory_model(spec: str) -> Any:
    """The object returned by the factory ``package.module:function`` (imported from the current folder too)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise OnnxcamError(f"--module must look like 'package.module:function', got '{spec}'")
    sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise OnnxcamError(f"cannot load '{spec}': {exc}") from None
    return factory()
