"""The files of ``onnxcam evaluate``: collected in memory and written together, so a failure leaves no
half-written output."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from onnxcam.cams.render import encode_npy, encode_png
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.model_io import write_atomic


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
        """Write every queued file, each atomically (:func:`~onnxcam.core.model_io.write_atomic`); when one fails,
        remove those already written, so the folder never holds part of the set."""
        written: list[pathlib.Path] = []
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for name, data in self.files.items():
                write_atomic(self.folder / name, data)
                written.append(self.folder / name)
        except OSError as exc:
            for path in written:
                path.unlink(missing_ok=True)
            raise OnnxcamError(f"could not write to '{self.folder}' ({exc.strerror}); choose another -o") from None
