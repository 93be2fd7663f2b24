"""Class names from a labels file: one name per line, or JSON (a list, or ``{"0": "cat", ...}``)."""

from __future__ import annotations

import json
import os
import pathlib

from onnxcam.core.errors import OnnxcamError


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a text file (one per line) or JSON (a list, or ``{"0": "cat", ...}``)."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise OnnxcamError(f"labels file '{p}' does not exist; check the path")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OnnxcamError(f"labels file '{p}' is not UTF-8 text; give one class name per line or JSON") from None
    if p.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OnnxcamError(f"labels file '{p}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict):
            try:
                index = {int(k): str(v) for k, v in data.items()}
            except ValueError:
                raise OnnxcamError(f"labels file '{p}': JSON keys must be class indices such as \"0\"") from None
            if sorted(index) != list(range(len(index))):
                raise OnnxcamError(f"labels file '{p}': JSON keys must be the indices 0..{len(index) - 1}, each once")
            return [index[i] for i in range(len(index))]
        if isinstance(data, list) and all(isinstance(v, str) for v in data):
            return list(data)
        raise OnnxcamError(f"labels file '{p}': JSON must be a list of names or an {{index: name}} object")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise OnnxcamError(f"labels file '{p}' is empty; give one class name per line")
    return names
