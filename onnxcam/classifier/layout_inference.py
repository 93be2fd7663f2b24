"""Working out a target layer's layout (NCHW, NHWC or tokens) from its shape and the input size."""

from __future__ import annotations

import math
from typing import Any

from onnxcam.core.errors import OnnxcamError
from onnxcam.core.tensor_info import Shape

MAX_PREFIX_TOKENS = 8


def infer_layout(shape: Shape, input_hw: tuple[int, int]) -> dict[str, Any]:
    """The layout of a target tensor of ``shape`` (batch first) for an input of ``input_hw``.

    4-D: NCHW unless only the channels-last reading has the input's aspect at one stride for both axes.
    3-D ``[N, T, C]``: the fewest prefix tokens P such that T − P tokens tile the input in square patches.
    """
    height, width = input_hw

    def same_stride(h: int | None, w: int | None) -> bool:
        return bool(h and w) and abs(math.log((height / h) / (width / w))) < math.log(1.5)

    if len(shape) == 4:
        _, a, b, c = shape
        if same_stride(a, b) and not same_stride(b, c):
            return {"layout": "NHWC", "grid": [a, b]}
        return {"layout": "NCHW", "grid": [b, c]}
    if len(shape) == 3:
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
