"""Target-layer layouts: every CAM method works on ``[N, C, h, w]``; token and channels-last layers are
turned into that shape first, as the metadata describes.

- ``NCHW``: convolutional feature maps, used as they are;
- ``NHWC``: channels-last grids (Swin), transposed;
- ``NTC``: tokens ``[N, T, C]`` (ViT): the ``prefix_tokens`` (class/distillation tokens) are dropped and the
  rest reshaped row-major to the patch ``grid`` ``[gh, gw]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import OnnxcamError

LAYOUTS = ("NCHW", "NHWC", "NTC")


def to_nchw(tensor: np.ndarray, layout: dict[str, Any] | None) -> np.ndarray:
    """``tensor`` (activations or gradients of one target layer) as ``[N, C, h, w]``."""
    kind = (layout or {}).get("layout", "NCHW")
    if kind == "NCHW":
        return tensor
    if kind == "NHWC":
        return np.ascontiguousarray(tensor.transpose(0, 3, 1, 2))
    if kind == "NTC":
        gh, gw = layout["grid"]
        prefix = int(layout.get("prefix_tokens", 0))
        n, t, c = tensor.shape
        if t - prefix != gh * gw:
            raise OnnxcamError(f"token layer has {t} tokens, which does not fit {prefix} prefix tokens and a "
                               f"{gh}x{gw} grid; fix the metadata's layouts")
        return np.ascontiguousarray(tensor[:, prefix:].reshape(n, gh, gw, c).transpose(0, 3, 1, 2))
    raise OnnxcamError(f"unknown layer layout '{kind}'; use one of {', '.join(LAYOUTS)}")
