"""``onnxcam export``: a PyTorch classifier to an onnxcam file (needs torch, imported when the command runs)."""

from __future__ import annotations

import pathlib
from typing import Any

import click

from onnxcam.classifier.labels import read_labels
from onnxcam.cli.options import factory_model, method_list
from onnxcam.core.errors import OnnxcamError
from onnxcam.frontends.torch_capture import require_torch
from onnxcam.frontends.torch_export import export_torch


@click.command("export")
@click.option("--torchvision", "tv_name", default=None, help="torchvision model name, e.g. resnet18.")
@click.option("--module", "factory", default=None, help="A factory 'package.module:function' returning the model.")
@click.option("--weights", type=str, default=None, help="State dict file (loaded with weights_only=True).")
@click.option("--layer", required=True, help="Target layer: dotted module name, e.g. layer4 or features.14.")
@click.option("--input-size", default=224, show_default=True, type=click.IntRange(8), help="Square input size.")
@click.option("--labels", "labels_file", default=None, help="Text file with one class name per line.")
@click.option("--opset", default=None, type=int, help="ONNX opset (default 17).")
@click.option("--cam", "cams", default=None, help="Also embed these methods' maps, e.g. gradcam,layercam (see embed).")
@click.option("--overlay", is_flag=True, help="With --cam: also embed overlay_<method> images.")
@click.option("-o", "--output", required=True, help="Path of the .onnx file to write.")
def command(tv_name: str | None, factory: str | None, weights: str | None, layer: str, input_size: int,
            labels_file: str | None, opset: int | None, cams: str | None, overlay: bool, output: str) -> None:
    """Export a PyTorch classifier to an onnxcam graph (needs torch: pip install onnxcam[export])."""
    if (tv_name is None) == (factory is None):
        raise OnnxcamError("give exactly one of --torchvision NAME or --module package.module:function")
    model = _torchvision_model(tv_name) if tv_name else factory_model(str(factory))
    if weights:
        _load_weights(model, weights)
    labels = read_labels(labels_file) if labels_file else None
    methods = method_list(cams) if cams else []
    click.echo(f"exporting {tv_name or factory} at layer '{layer}', input 3x{input_size}x{input_size} ...")
    path = export_torch(model, output, target_layer=layer, input_shape=(3, input_size, input_size),
                        labels=labels, opset=opset, cams=methods, overlay=overlay)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); gradients checked against torch.autograd")


def _load_weights(model: Any, weights: str) -> None:
    torch = require_torch()
    if not pathlib.Path(weights).is_file():
        raise OnnxcamError(f"weights file '{weights}' does not exist; check the path")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise OnnxcamError(f"could not load '{weights}' as a state dict ({str(exc).splitlines()[0]})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise OnnxcamError(f"the weights do not fit the model: {str(exc).splitlines()[1].strip()}") from None


def _torchvision_model(name: str) -> Any:
    try:
        import torchvision
    except ImportError:
        raise OnnxcamError("--torchvision needs torchvision; run `pip install onnxcam[export]`") from None
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise OnnxcamError(f"unknown torchvision classifier '{name}'; e.g. resnet18, mobilenet_v2, efficientnet_b0")
    return torchvision.models.get_model(name, weights=None)
