"""Reading ONNX models with one-line errors, and the one atomic writer every file onnxcam writes goes through."""

from __future__ import annotations

import hashlib
import os
import pathlib
import uuid

import onnx

from onnxcam.core.errors import OnnxcamError

ModelSource = str | os.PathLike | bytes | onnx.ModelProto


def load_model(model: ModelSource) -> onnx.ModelProto:
    """Read an ONNX model from a path, bytes or a ModelProto, with one-line errors."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        data, where = model, "the given bytes"
    else:
        p = pathlib.Path(model)
        if not p.is_file():
            raise OnnxcamError(f"model '{p}' does not exist; check the path")
        data, where = p.read_bytes(), f"'{p}'"
    try:
        proto = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - protobuf raises several types
        proto = None
    if proto is None or not proto.graph.node:
        raise OnnxcamError(f"{where} is not an ONNX model; pass a .onnx file (export one with `onnxcam export`)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        if isinstance(model, bytes):
            raise OnnxcamError("the model keeps its weights in external data files; pass its path instead of bytes")
        onnx.load_external_data_for_model(proto, str(pathlib.Path(model).parent))
    return proto


#: Suffix of the temporary files :func:`write_atomic` renames into place (a killed run may leave some).
PARTIAL = ".onnxcam-partial"


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, then rename it: ``path`` is whole or absent.
    The file gets the usual permissions (0666 less the umask); the temporary file is removed on any failure."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_model(model: onnx.ModelProto, dst: str | os.PathLike, *, externals: list[str] | None = None,
                source_folder: str | os.PathLike | None = None) -> None:
    """Write ``model`` to ``dst`` atomically (:func:`write_atomic`). ``externals``: the model's external data
    files, copied from ``source_folder`` next to ``dst`` when that is another folder (the references stay
    relative, the weights unchanged), each atomically too. An OSError is a one-line error naming ``dst``."""
    dst = pathlib.Path(dst)
    folder = dst.parent if str(dst.parent) else pathlib.Path(".")
    src_dir = pathlib.Path(source_folder) if source_folder is not None else folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in externals or []:
            target = folder / name
            if target.resolve() != (src_dir / name).resolve():
                write_atomic(target, (src_dir / name).read_bytes())
        write_atomic(dst, model.SerializeToString())
    except OSError as exc:
        raise OnnxcamError(f"could not write '{dst}' ({exc.strerror}); choose another -o") from None


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_file(model: str | os.PathLike, output: str | os.PathLike, what: str = "copy") -> pathlib.Path:
    """``output`` as the path of the model file (``what``) to write: never the input model itself, never a folder."""
    src, dst = pathlib.Path(model), pathlib.Path(output)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise OnnxcamError(f"the output '{dst}' is the input model; write the {what} to another path with -o")
    if dst.is_dir():
        raise OnnxcamError(f"the output '{dst}' is a folder; give a file path such as {dst / src.name}")
    return dst
