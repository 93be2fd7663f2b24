"""The files edge boxes run, built from a float32 classifier with the tools people use: onnxslim, float16 by
onnxconverter-common (float32 I/O kept or not), int8 by ONNX Runtime's quantizer (static QDQ per tensor or per
channel, static QOperator, dynamic).

Static quantisation calibrates on real photographs (scikit-image / scikit-learn, nothing downloaded), preprocessed
as the model's metadata says. Usage::

    python -m sample_models.edge_variants sample_models/cache/efficientnet_lite0.onnx -o /tmp/edge
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Iterator

import numpy as np
import onnx

#: Every variant :func:`build` makes, with what it is.
KINDS: dict[str, str] = {
    "slim": "onnxslim-simplified float32",
    "fp16": "float16 inside, float32 inputs and outputs (keep_io_types=True)",
    "fp16_io": "float16 everywhere, inputs and outputs too (keep_io_types=False)",
    "qdq_tensor": "int8 QDQ, per-tensor (quantize_static)",
    "qdq_channel": "int8 QDQ, per-channel weights (quantize_static)",
    "qoperator": "int8 QOperator: QLinearConv, QLinearAdd, … (quantize_static)",
    "dynamic": "int8 dynamic: DynamicQuantizeLinear, ConvInteger, MatMulInteger (quantize_dynamic)",
}


def plain_float32(path: str | pathlib.Path) -> onnx.ModelProto:
    """The plain classifier of an onnxcam file (gradient outputs removed, metadata kept), or the file as it is."""
    from onnxcam.core.contract import strip_gradients

    return strip_gradients(onnx.load(str(path)))


def calibration_batches(model: onnx.ModelProto, count: int = 7) -> list[np.ndarray]:
    """The sample photographs preprocessed for ``model`` (its onnxcam metadata, else ImageNet's), one per batch."""
    from onnxcam.core.metadata import read_metadata
    from onnxcam.core.preprocessing import IMAGENET_PREPROCESSING
    from onnxcam.runtime.preprocess import model_view, normalise
    from sample_models.photos import photographs

    meta = read_metadata(model)
    spec = meta.preprocessing or IMAGENET_PREPROCESSING
    dims = model.graph.input[0].type.tensor_type.shape.dim
    h, w = (meta.input_size[1], meta.input_size[2]) if meta.input_size else (dims[2].dim_value, dims[3].dim_value)
    images, _ = photographs()
    return [normalise(model_view(img, spec, (h, w))[None], spec) for img in images[:count]]


class _Reader:
    """onnxruntime's CalibrationDataReader over fixed batches."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._name, self._batches = name, batches
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self._name: batch.astype(np.float32)}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def build(kind: str, source: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Write the ``kind`` variant (:data:`KINDS`) of the float32 classifier at ``source`` to ``out``."""
    if kind not in KINDS:
        raise ValueError(f"unknown variant '{kind}'; one of {', '.join(KINDS)}")
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = plain_float32(source)
    if kind == "slim":
        import onnxslim

        onnx.save(onnxslim.slim(model), str(out))
    elif kind in ("fp16", "fp16_io"):
        from onnxconverter_common import float16

        onnx.save(float16.convert_float_to_float16(model, keep_io_types=kind == "fp16"), str(out))
    elif kind == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        plain = out.with_suffix(".float32.onnx")
        onnx.save(model, str(plain))
        quantize_dynamic(str(plain), str(out), weight_type=QuantType.QInt8)
        plain.unlink()
    else:
        _static(model, kind, out)
    return out


def _static(model: onnx.ModelProto, kind: str, out: pathlib.Path) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    plain, prepared = out.with_suffix(".float32.onnx"), out.with_suffix(".prep.onnx")
    onnx.save(model, str(plain))
    quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)
    reader = _Reader(model.graph.input[0].name, calibration_batches(model))
    quantize_static(str(prepared), str(out), reader,
                    quant_format=QuantFormat.QOperator if kind == "qoperator" else QuantFormat.QDQ,
                    per_channel=kind == "qdq_channel", activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    for tmp in (plain, prepared):
        tmp.unlink()


def main(argv: list[str] | None = None) -> None:
    """Build every variant of a float32 classifier into a folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="float32 .onnx classifier (an onnxcam file or a plain one)")
    parser.add_argument("-o", "--output", default="edge_variants", help="output folder")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated variants")
    args = parser.parse_args(argv)
    for kind in args.kinds.split(","):
        print(f"wrote {build(kind, args.source, pathlib.Path(args.output) / f'{kind}.onnx')}  ({KINDS[kind]})")


if __name__ == "__main__":
    main()
