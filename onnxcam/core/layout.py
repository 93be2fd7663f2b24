"""Target-layer layouts: every CAM method works on ``[N, C, h, w]``; token and channels-last layers are
turned into that shape first, as the metadata describes.

- ``NCHW``: convolutional feature maps, used as they are;
- ``NHWC``: channels-last grids (Swin), transposed;
- ``NTC``: tokens ``[N, T, C]`` (ViT): the ``prefix_tokens`` (class/distillation tokens) are dropped and the
  rest reshaped row-major to the patch ``grid`` ``[gh, gw]``.

:func:`infer_layout` works a layout out from a tensor's shape; :func:`to_nchw` applies it in numpy and
:func:`to_nchw_graph` as ONNX nodes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import GraphBuilder
from onnxcam.core.tensor_info import Shape

LAYOUTS = ("NCHW", "NHWC", "NTC")
MAX_PREFIX_TOKENS = 8



def infer_layout(shape: Shape, input_hw: tuple[int, int]) -> dict[str, Any]:
    """The layout of a target tensor of ``shape`` (batch first) for an input of ``input_hw``.

    4-D: NCHW unless only the channels-last reading has the input's aspect at one stride for both axes.
    3-D ``[N, T, C]``: the fewest prefix tokens P such that T − P tokens tile the input in square patches.
    """
    height, width = input_hw

    def same_stride(h: int | None, w: int | None) -> bool:
        return bool(h and w) and abs(math.log((height / int(h or 1)) / (width / int(w or 1)))) < math.log(1.5)

    if len(shape) == 4:
        _, a, b, c = shape
        if same_stride(a, b) and not same_stride(b, c):
            return {"layout": "NHWC", "grid": [a, b]}
        return {"layout": "NCHW", "grid": [b, c]}
    if len(shape) == 3 and shape[1] is not None:
        tokens = shape[1]
        for prefix in range(min(tokens, MAX_PREFIX_TOKENS + 1)):
            n = tokens - prefix
            for gh in (d for d in range(1, n + 1) if n % d == 0):
                gw = n // gh
                if height % gh == 0 and width % gw == 0 and height // gh == width // gw:
                    return {"layout": "NTC", "grid": [gh, gw], "prefix_tokens": prefix}
        raise OnnxcamError(f"cannot work out the patch grid of a token layer of shape {list(shape)} for a "
                           f"{height}x{width} input; pass layouts=[{{'layout': 'NTC', 'grid': [gh, gw], "
                           "'prefix_tokens': P}]")
    raise OnnxcamError(f"a target layer must be 4-D (feature map) or 3-D (tokens), got shape {list(shape)}")


def to_nchw(tensor: np.ndarray, layout: dict[str, Any] | None) -> np.ndarray:
    """``tensor`` (activations or gradients of one target layer) as ``[N, C, h, w]``."""
    kind = (layout or {}).get("layout", "NCHW")
    if kind == "NCHW":
        return tensor
    if kind == "NHWC":
        return np.ascontiguousarray(tensor.transpose(0, 3, 1, 2))
    if kind == "NTC" and layout is not None:
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
        c, h, w = shape
        return tensor, (c, h, w)
    if kind == "NHWC":
        h, w, c = shape
        return b.op("Transpose", tensor, perm=[0, 3, 1, 2]), (c, h, w)
    if kind == "NTC" and layout is not None:
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
