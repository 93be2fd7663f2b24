"""Which images a run explains: files, folders (recursive), globs and list files, in a stable order, each with
the relative name its outputs get."""

from __future__ import annotations

import glob
import os
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from onnxcam.core.errors import OnnxcamError

#: file name endings a folder walk takes as images (case-insensitive); everything else in a folder is ignored
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".pbm", ".pnm", ".jp2")


@dataclass(frozen=True)
class ImageSource:
    """One image of a run: ``path`` as found (for reading), ``key`` its path relative to the run's root folder
    (POSIX separators; it identifies the image in the records) and ``stem``, which names its outputs
    ``<stem>.<method>.<ext>``: the key without its extension, or with it when two keys would collide."""

    path: str
    key: str
    stem: str


def is_image_name(name: str) -> bool:
    """True when ``name`` ends in one of :data:`IMAGE_EXTENSIONS` and is not hidden."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def walk_folder(folder: pathlib.Path, exclude: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Image files under ``folder`` (recursive; hidden files and folders and ``exclude`` skipped), sorted."""
    found: list[pathlib.Path] = []
    skip = exclude.resolve() if exclude is not None else None
    for root, dirs, files in os.walk(folder, followlinks=False):
        here = pathlib.Path(root)
        dirs[:] = [d for d in dirs if not d.startswith(".") and (skip is None or (here / d).resolve() != skip)]
        found += [here / f for f in files if is_image_name(f)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def read_list(path: str | os.PathLike) -> list[str]:
    """Paths from a list file: one per line; blank lines and lines starting with ``#`` are skipped; relative
    paths are taken from the current folder (as ``tar -T`` does)."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise OnnxcamError(f"list file '{p}' does not exist; check the --list path")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise OnnxcamError(f"list file '{p}' is not UTF-8 text; give one image path per line") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def collect_images(paths: Sequence[str | os.PathLike], *, list_file: str | os.PathLike | None = None,
                   exclude: str | os.PathLike | None = None) -> list[ImageSource]:
    """The images of a run, in order: each argument is an image file, a folder (its images, recursive, sorted by
    relative path), or a glob (``*``, ``?``, ``[]``, ``**``; its matches sorted); then the lines of
    ``list_file``, which are taken as they are (a missing or unreadable one becomes that image's error).
    A path met twice is explained once. ``exclude`` (the output folder) is never walked.

    Keys are relative to the deepest folder holding every folder argument and every file's folder, so two
    ``img.jpg`` in different folders never share a key. An argument that names nothing is a user error."""
    chosen: list[pathlib.Path] = []
    roots: list[pathlib.Path] = []
    skip = pathlib.Path(exclude) if exclude is not None else None
    for arg in map(str, paths):
        p = pathlib.Path(arg)
        if p.is_dir():
            chosen += walk_folder(p, skip)
            roots.append(p)
        elif p.exists():
            chosen.append(p)
        elif glob.has_magic(arg):
            files = []
            for match in map(pathlib.Path, sorted(glob.glob(arg, recursive=True))):
                if match.is_dir():
                    files += walk_folder(match, skip)
                elif is_image_name(match.name):
                    files.append(match)
            if not files:
                raise OnnxcamError(f"'{arg}' matches no image file; check the pattern")
            chosen += files
        else:
            raise OnnxcamError(f"image '{arg}' does not exist; check the path")
    if list_file is not None:
        listed = read_list(list_file)
        if not listed:
            raise OnnxcamError(f"list file '{list_file}' names no image; give one image path per line")
        chosen += map(pathlib.Path, listed)
    if not chosen:
        folders = ", ".join(f"'{r}'" for r in roots) or "the given paths"
        raise OnnxcamError(f"found no image in {folders} (looked for {', '.join(IMAGE_EXTENSIONS[:6])}, …)")
    return keyed(_unique(chosen), roots)


def _unique(paths: Iterable[pathlib.Path]) -> list[pathlib.Path]:
    seen: set[str] = set()
    out = []
    for p in paths:
        real = os.path.abspath(p)
        if real not in seen:
            seen.add(real)
            out.append(p)
    return out


def keyed(paths: Sequence[str | os.PathLike], roots: Sequence[str | os.PathLike] = ()) -> list[ImageSource]:
    """Sources for ``paths`` with keys relative to the deepest folder holding ``roots`` and every path's folder."""
    absolute = [os.path.abspath(p) for p in paths]
    anchors = [os.path.abspath(r) for r in roots] + [os.path.dirname(a) for a in absolute]
    root = os.path.commonpath(anchors)
    keys = [pathlib.Path(os.path.relpath(a, root)).as_posix() for a in absolute]
    stems = [_strip_extension(k) for k in keys]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    # img.jpg and img.png in one folder: both keep their extension in the output names (img.jpg.gradcam.png)
    return [ImageSource(str(p), k, s if counts[s] == 1 else k) for p, k, s in zip(paths, keys, stems)]


def _strip_extension(key: str) -> str:
    folder, _, name = key.rpartition("/")
    base = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{folder}/{base}" if folder else base
