"""A run's output folder: each image's artefacts written atomically as it completes, ``manifest.jsonl`` (one
line per explained image), ``errors.jsonl`` (one line per image that could not be read) and ``summary.json``;
and what ``--resume`` finds there."""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from onnxcam.cams.render import encode_npy, encode_png, overlay, upscale
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.model_io import PARTIAL, write_atomic
from onnxcam.runtime.results import ImageResult

#: artefact formats: overlay PNG, the map as .npy (float32 [H,W] in [0,1]), the map as a 16-bit grey PNG
FORMATS = ("overlay", "npy", "png16")
SUFFIXES = {"overlay": ".png", "npy": ".npy", "png16": ".map.png"}
MANIFEST, ERRORS, SUMMARY = "manifest.jsonl", "errors.jsonl", "summary.json"
#: options a resumed run must share with the run it finishes
RESUME_KEYS = ("model_sha256", "method", "method_options", "class", "layer", "formats", "alpha", "colormap",
               "input_size", "input_layout", "preprocessing")


def parse_formats(text: str) -> list[str]:
    """``"overlay,npy"`` → ``["overlay", "npy"]``; ``"none"`` → ``[]`` (manifest only)."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise OnnxcamError(f"unknown --format '{','.join(unknown) or text}'; use a comma-separated list of "
                           f"{', '.join(FORMATS)}, or none")
    return list(dict.fromkeys(names))


def output_names(stem: str, method: str, formats: Sequence[str]) -> dict[str, str]:
    """The file name (relative to the output folder) of each artefact of the image with output ``stem``."""
    return {f: f"{stem}.{method}{SUFFIXES[f]}" for f in formats}


def encode_artefacts(result: ImageResult, formats: Sequence[str], *, alpha: float = 0.5,
                     colormap: str = "jet") -> dict[str, bytes]:
    """Each requested artefact of an explained image as file bytes, by format."""
    out: dict[str, bytes] = {}
    if result.cam is None or result.image is None:
        raise OnnxcamError(f"{result.source} was not explained ({result.error}); it has no files")
    cam = np.asarray(result.cam, np.float32)
    for fmt in formats:
        if fmt == "overlay":
            out[fmt] = encode_png(upscale(overlay(result.image, cam, alpha=alpha, colormap=colormap)))
        elif fmt == "npy":
            out[fmt] = encode_npy(cam)
        elif fmt == "png16":
            ok, data = cv2.imencode(".png", np.uint16(np.clip(cam, 0.0, 1.0) * 65535 + 0.5))
            if not ok:
                raise OnnxcamError("could not encode the 16-bit PNG")
            out[fmt] = data.tobytes()
    return out


def image_record(result: ImageResult, key: str, files: dict[str, str]) -> dict[str, Any]:
    """The manifest line of an explained image."""
    return {"image": key, "path": result.source, "class_index": result.class_index, "class_name": result.class_name,
            "probability": result.probability, "top_class_index": result.top_class_index,
            "top_class_name": result.top_class_name, "top_probability": result.top_probability, "files": files,
            "ms": round(result.seconds * 1000, 3)}






class RunFolder:
    """The output folder of one run. ``settings`` (model hash, method, options…) go into ``summary.json``;
    with ``resume``, the images already in ``manifest.jsonl`` with all their files are :attr:`done` and
    their lines kept, and the settings must match the earlier run's. Without it, the records start afresh."""

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any], *, resume: bool = False) -> None:
        self.folder = pathlib.Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise OnnxcamError(f"output '{self.folder}' exists and is not a folder; choose another -o")
        self.settings = settings
        self.done: dict[str, dict[str, Any]] = {}
        self.explained = self.failed = 0
        self.started = time.time()
        kept = self._previous() if resume else []
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if resume:
                _remove_partials(self.folder)
            write_atomic(self.folder / MANIFEST, b"".join((json.dumps(r) + "\n").encode() for r in kept))
            (self.folder / ERRORS).unlink(missing_ok=True)
            self._manifest = open(self.folder / MANIFEST, "a", encoding="utf-8")  # noqa: SIM115 - open for the run
        except OSError as exc:
            raise OnnxcamError(f"could not write to '{self.folder}' ({exc.strerror}); choose another -o") from None
        self._errors: Any = None
        self.write_summary("running")

    def _previous(self) -> list[dict[str, Any]]:
        """The earlier run's complete records (their files all present), after checking its settings."""
        summary_path, manifest_path = self.folder / SUMMARY, self.folder / MANIFEST
        if summary_path.is_file():
            try:
                before = json.loads(summary_path.read_text()).get("settings", {})
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                before = {}
            differ = [k for k in RESUME_KEYS if k in before and before[k] != self.settings.get(k)]
            if differ:
                raise OnnxcamError(f"--resume: '{self.folder}' holds a run with other {', '.join(differ)}; resume "
                                   "with the same model and options, or choose another -o")
        if not manifest_path.is_file():
            return []
        data = manifest_path.read_bytes()
        kept = []
        for line in data.split(b"\n"):  # a torn last line (the run was killed mid-write) fails to parse: dropped
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(record, dict) or "image" not in record or record["image"] in self.done:
                continue
            if all((self.folder / name).is_file() for name in record.get("files", {}).values()):
                self.done[record["image"]] = record
                kept.append(record)
        return kept

    def add(self, key: str, result: ImageResult, files: dict[str, bytes], names: dict[str, str],
            ) -> dict[str, Any]:
        """Write an explained image's artefacts (each atomically), then append and flush its manifest line."""
        try:
            for fmt, data in files.items():
                path = self.folder / names[fmt]
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, data)
            record = image_record(result, key, names)
            self._manifest.write(json.dumps(record) + "\n")
            self._manifest.flush()
        except OSError as exc:
            raise OnnxcamError(f"could not write to '{self.folder}' ({exc.strerror}); free some space or choose "
                               "another -o, then run again with --resume") from None
        self.done[key] = record
        self.explained += 1
        return record

    def fail(self, key: str, path: str, reason: str) -> dict[str, Any]:
        """Append an image that could not be explained to ``errors.jsonl``."""
        record = {"image": key, "path": path, "error": reason}
        if self._errors is None:
            self._errors = open(self.folder / ERRORS, "a", encoding="utf-8")  # noqa: SIM115 - open for the run
        self._errors.write(json.dumps(record) + "\n")
        self._errors.flush()
        self.failed += 1
        return record

    def write_summary(self, status: str, **extra: Any) -> dict[str, Any]:
        """Write ``summary.json`` atomically: settings, counts so far and ``status``."""
        seconds = time.time() - self.started
        summary = {"status": status, "images": extra.pop("images", None), "explained": len(self.done),
                   "explained_this_run": self.explained, "failed": self.failed,
                   "seconds": round(seconds, 3),
                   "images_per_second": round(self.explained / seconds, 3) if seconds > 0 else None,
                   **extra, "settings": self.settings}
        write_atomic(self.folder / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
        return summary

    def close(self) -> None:
        """Close the record files."""
        for f in (self._manifest, self._errors):
            if f is not None:
                f.close()


def _remove_partials(folder: pathlib.Path) -> None:
    """Temporary files left by a killed run."""
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(PARTIAL):
                pathlib.Path(root, name).unlink(missing_ok=True)
