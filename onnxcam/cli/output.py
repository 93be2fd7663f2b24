"""Results are collected in memory and written together, so a failure leaves no half-written output."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from onnxcam.cams.render import encode_npy, encode_png
from onnxcam.core.errors import OnnxcamError


class OutputWriter:
    """Collects named files (PNG images, .npy arrays, JSON) and writes them all in :meth:`commit`."""

    def __init__(self, folder: pathlib.Path) -> None:
        if folder.exists() and not folder.is_dir():
            raise OnnxcamError(f"output '{folder}' exists and is not a folder; choose another -o")
        self.folder = folder
        self.files: dict[str, bytes] = {}

    def add(self, name: str, value: Any) -> None:
        """Queue ``value``: a ``[H,W,3]`` uint8 image for ``.png``, an array for ``.npy``, JSON otherwise."""
        if name.endswith(".png"):
            self.files[name] = encode_png(value)
        elif name.endswith(".npy"):
            self.files[name] = encode_npy(value)
        else:
            self.files[name] = json.dumps(value, indent=2).encode()

    def add_bytes(self, name: str, data: bytes) -> None:
        """Queue raw bytes under ``name``."""
        self.files[name] = data

    def commit(self) -> None:
        """Write every queued file (temporary names first, then renames); on failure remove what was written."""
        written: list[pathlib.Path] = []
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            temps = []
            for name, data in self.files.items():
                tmp = self.folder / f".{name}.partial"
                tmp.write_bytes(data)
                written.append(tmp)
                temps.append((tmp, self.folder / name))
            for tmp, final in temps:
                tmp.replace(final)
                written.append(final)
        except OSError as exc:
            for path in written:
                path.unlink(missing_ok=True)
            raise OnnxcamError(f"could not write to '{self.folder}' ({exc.strerror}); choose another -o") from None
