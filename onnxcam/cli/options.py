"""Options shared by several commands: the image input (size, layout) and the preprocessing overrides."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from onnxcam.core.errors import OnnxcamError


def input_options(fn: Callable) -> Callable:
    """``--input-size HxW`` and ``--input-layout NCHW|NHWC``."""
    fn = click.option("--input-layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False), default=None,
                      help="Layout of the model's image input (default: detected from its shape).")(fn)
    return click.option("--input-size", default=None, metavar="HxW",
                        help="Image size for a model whose input height/width are dynamic, e.g. 224x224.")(fn)


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
    from onnxcam.classifier.inputs import parse_size

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
