"""The preprocessing a file records (docs/design.md §2): x = (pixel·scale − mean) / std after an optional short-side
resize and centre crop; checking a spec and the ImageNet default."""

from __future__ import annotations

from typing import Any

from onnxcam.core.errors import OnnxcamError

#: Preprocessing used when a plain classifier carries none: resize to the input size, ImageNet statistics.
IMAGENET_PREPROCESSING: dict[str, Any] = {
    "resize": None,
    "crop": None,
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "channel_order": "RGB",
}


PREPROCESSING_KEYS = ("resize", "crop", "scale", "mean", "std", "channel_order")


def check_preprocessing(spec: dict[str, Any], channels: int = 3) -> dict[str, Any]:
    """``spec`` with its values checked (one-line errors naming the option) and ``crop`` as ``[H, W]``."""
    out = dict(spec)
    unknown = sorted(set(out) - set(PREPROCESSING_KEYS))
    if unknown:
        raise OnnxcamError(f"unknown preprocessing key(s) {', '.join(unknown)}; use {', '.join(PREPROCESSING_KEYS)}")
    for key in ("mean", "std"):
        value = out.get(key, 0.0 if key == "mean" else 1.0)
        values = [value] if isinstance(value, int | float) else list(value)
        if len(values) not in (1, channels) or not all(isinstance(v, int | float) for v in values):
            raise OnnxcamError(f"--{key} needs {channels} numbers (one per channel, e.g. --{key} "
                               f"{','.join(['0.5'] * channels)}) or one for all, got {value!r}")
        if key == "std" and any(v == 0 for v in values):
            raise OnnxcamError("--std must not contain 0; pass the model's per-channel standard deviations")
        out[key] = [float(v) for v in values] if len(values) > 1 else float(values[0])
    scale = out.get("scale", 1 / 255)
    if not isinstance(scale, int | float) or scale <= 0:
        raise OnnxcamError(f"--scale must be a positive number (e.g. 0.00392 = 1/255), got {scale!r}")
    order = str(out.get("channel_order", "RGB")).upper()
    if order not in ("RGB", "BGR"):
        raise OnnxcamError(f"--channel-order must be RGB or BGR, got {out.get('channel_order')!r}")
    out["channel_order"] = order
    if out.get("resize") is not None and (not isinstance(out["resize"], int) or out["resize"] < 1):
        raise OnnxcamError(f"--resize must be a positive whole number of pixels, got {out['resize']!r}")
    crop = out.get("crop")
    if crop is not None:
        crop = [crop, crop] if isinstance(crop, int) else list(crop)
        if len(crop) != 2 or not all(isinstance(c, int) and c > 0 for c in crop):
            raise OnnxcamError(f"--crop must be a positive size N (or [H, W]), got {out['crop']!r}")
        out["crop"] = crop
    return out
