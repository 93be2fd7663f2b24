"""A Hugging Face ``preprocessor_config.json`` (what ``AutoImageProcessor.save_pretrained`` writes) read as
onnxcam's preprocessing spec (:mod:`onnxcam.core.preprocessing`): plain JSON, no transformers needed.

Mapping: ``rescale_factor`` → ``scale`` (1 without ``do_rescale``); ``image_mean``/``image_std`` → ``mean``/``std``
(0 and 1 without ``do_normalize``; EfficientNet's ``rescale_offset`` adds 1 to the mean);
``do_flip_channel_order`` (MobileViT) → BGR; ``size {"shortest_edge": s}`` → ``resize`` s (ConvNeXt/PoolFormer
first divide by ``crop_pct``, LeViT multiplies by 256/224, as their processors do); ``size {"height",
"width"}`` → ``resize`` to the shorter of the two (onnxcam keeps the aspect ratio where Hugging Face warps:
the same on square pictures); ``do_center_crop`` with ``crop_size`` → ``crop``. ``resample`` has no place in
the spec (onnxcam resizes with OpenCV's area/bilinear filters): it is returned by name for provenance.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass
from typing import Any

from onnxcam.core.errors import OnnxcamError
from onnxcam.core.preprocessing import check_preprocessing

#: PIL's resampling filters by number, as Hugging Face processors store them.
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass
class HfPreprocessing:
    """What a ``preprocessor_config.json`` says: onnxcam's spec, the model's input side and the filter name."""

    spec: dict[str, Any]
    input_size: tuple[int, int] | None
    resample: str | None


def read_hf_preprocessor(path: str | os.PathLike) -> tuple[dict[str, Any], int | None]:
    """``(spec, square input side or None)`` from ``path`` (a ``preprocessor_config.json`` or its folder)."""
    read = read_hf_preprocessing(path)
    side = read.input_size[0] if read.input_size and read.input_size[0] == read.input_size[1] else None
    return read.spec, side


def read_hf_preprocessing(path: str | os.PathLike) -> HfPreprocessing:
    """The preprocessing in ``path`` (a ``preprocessor_config.json`` file or the folder holding one)."""
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / "preprocessor_config.json"
    if not p.is_file():
        raise OnnxcamError(f"'{p}' does not exist; pass a Hugging Face preprocessor_config.json or its folder")
    try:
        config = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OnnxcamError(f"'{p}' is not a JSON file ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise OnnxcamError(f"'{p}' holds no preprocessor settings; pass a Hugging Face preprocessor_config.json")
    return hf_preprocessing(config, str(p))


def hf_preprocessing(config: dict[str, Any], where: str = "preprocessor_config.json") -> HfPreprocessing:
    """:class:`HfPreprocessing` from a preprocessor config's dict."""
    try:
        return _convert(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise OnnxcamError(f"'{where}' has a preprocessing value onnxcam cannot read ({exc})") from None


def _convert(config: dict[str, Any]) -> HfPreprocessing:
    spec: dict[str, Any] = {"resize": None, "crop": None, "scale": 1.0, "mean": 0.0, "std": 1.0,
                            "channel_order": "RGB"}
    if config.get("do_rescale", True) and config.get("rescale_factor") is not None:
        spec["scale"] = float(config["rescale_factor"])
    mean: Any = 0.0
    if config.get("do_normalize", True) and config.get("image_mean") is not None:
        mean, spec["std"] = config["image_mean"], config.get("image_std", 1.0)
    if config.get("do_rescale", True) and config.get("rescale_offset"):
        mean = [float(m) + 1.0 for m in mean] if isinstance(mean, list) else float(mean) + 1.0
    spec["mean"] = mean
    if config.get("do_flip_channel_order"):
        spec["channel_order"] = "BGR"
    size = _size(config.get("size"))
    crop = _size(config.get("crop_size")) if config.get("do_center_crop", False) else None
    side: tuple[int, int] | None = None
    if config.get("do_resize", True) and size is not None:
        kind = str(config.get("image_processor_type", ""))
        if isinstance(size, int):  # shortest_edge
            if kind.startswith("Levit"):
                spec["resize"] = int(256 / 224 * size)
            elif config.get("crop_pct") and (not kind.startswith("ConvNext") or size < 384):
                spec["resize"] = int(size / float(config["crop_pct"]))
                crop = crop or (size, size)
            else:
                spec["resize"] = size
            side = (size, size)
        else:
            spec["resize"] = min(size)
            side = size
    if crop is not None:
        crop = (crop, crop) if isinstance(crop, int) else crop
        spec["crop"] = list(crop)
        side = crop
    resample = config.get("resample")
    name = RESAMPLE.get(int(resample)) if isinstance(resample, int | float) else None
    return HfPreprocessing(check_preprocessing(spec), side, name)


def _size(value: Any) -> int | tuple[int, int] | None:
    """A Hugging Face size: ``{"height", "width"}`` → (H, W), ``{"shortest_edge"}`` or a number → int."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
    raise ValueError(f"size {value!r}")
