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

from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import GraphBuilder

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


def to_nchw_graph(b: GraphBuilder, tensor: str, layout: dict[str, Any] | None, shape: tuple[int, ...],
                  ) -> tuple[str, tuple[int, int, int]]:
    """:func:`to_nchw` as ONNX nodes: ``tensor`` (per-image ``shape``) → (``[N,C,h,w]`` tensor name, (C, h, w))."""
    kind = (layout or {}).get("layout", "NCHW")
    if kind == "NCHW":
        return tensor, tuple(shape)
    if kind == "NHWC":
        h, w, c = shape
        return b.op("Transpose", tensor, perm=[0, 3, 1, 2]), (c, h, w)
    if kind == "NTC":
        gh, gw = layout["grid"]
        prefix = int(layout.get("prefix_tokens", 0))
        t, c = shape
        if t - prefix != gh * gw:
            raise OnnxcamError(f"token layer has {t} tokens, which does not fit {prefix} prefix tokens and a "
                               f"{gh}x{gw} grid; fix the metadata's layouts")
        patches = b.op("Slice", tensor, b.ints([prefix]), b.ints([t]), b.ints([1])) if prefix else tensor
        grid = b.op("Reshape", patches, b.ints([0, gh, gw, c]))
        return b.op("Transpose", grid, perm=[0, 3, 1, 2]), (c, gh, gw)
    raise OnnxcamError(f"unknown layer layout '{kind}'; use one of {', '.join(LAYOUTS)}")
