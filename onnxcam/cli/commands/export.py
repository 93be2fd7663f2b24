"""``onnxcam export``: a PyTorch classifier (torchvision, a factory, or a local Hugging Face model folder) to an
onnxcam file (needs torch, and transformers for ``--hf``; imported when the command runs)."""

from __future__ import annotations

import pathlib
from typing import Any

import click

from onnxcam.classifier.labels import read_labels
from onnxcam.cli.options import factory_model, method_list
from onnxcam.core.errors import OnnxcamError
from onnxcam.frontends.huggingface import default_stage, load_hf_classifier
from onnxcam.frontends.torch_capture import require_torch
from onnxcam.frontends.torch_export import export_torch


@click.command("export")
@click.option("--torchvision", "tv_name", default=None, help="torchvision model name, e.g. resnet18.")
@click.option("--module", "factory", default=None, help="A factory 'package.module:function' returning the model.")
@click.option("--hf", "hf_folder", default=None, metavar="PATH",
              help="A local Hugging Face image classifier folder (save_pretrained output; no download).")
@click.option("--weights", type=str, default=None, help="State dict file (loaded with weights_only=True).")
@click.option("--layer", default=None,
              help="Target layer: dotted module name, e.g. layer4 or features.14 (required except with --hf, whose "
                   "default is the last stage).")
@click.option("--input-size", default=None, type=click.IntRange(8),
              help="Square input size (default 224; with --hf the folder's preprocessor or config size).")
@click.option("--labels", "labels_file", default=None, help="Text file with one class name per line.")
@click.option("--opset", default=None, type=int, help="ONNX opset (default 17; 18 with --exporter dynamo).")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True,
              help="torch's ONNX exporter (dynamo exports what TorchScript cannot, e.g. MobileViTV2's fold).")
@click.option("--cam", "cams", default=None, help="Also embed these methods' maps, e.g. gradcam,layercam (see embed).")
@click.option("--overlay", is_flag=True, help="With --cam: also embed overlay_<method> images.")
@click.option("-o", "--output", required=True, help="Path of the .onnx file to write.")
def command(tv_name: str | None, factory: str | None, hf_folder: str | None, weights: str | None, layer: str | None,
            input_size: int | None, labels_file: str | None, opset: int | None, exporter: str, cams: str | None,
            overlay: bool, output: str) -> None:
    """Export a PyTorch classifier to an onnxcam graph (needs torch: pip install onnxcam[export])."""
    if sum(source is not None for source in (tv_name, factory, hf_folder)) != 1:
        raise OnnxcamError("give exactly one of --torchvision NAME, --module package.module:function or --hf PATH")
    labels = read_labels(labels_file) if labels_file else None
    methods = method_list(cams) if cams else []
    if hf_folder is not None:
        _export_hf(hf_folder, output, layer, input_size, weights, labels, opset, exporter, methods, overlay)
        return
    if layer is None:
        raise OnnxcamError("--layer is required with --torchvision and --module (e.g. --layer layer4)")
    model = _torchvision_model(tv_name) if tv_name else factory_model(str(factory))
    if weights:
        _load_weights(model, weights)
    size = input_size or 224
    click.echo(f"exporting {tv_name or factory} at layer '{layer}', input 3x{size}x{size} ...")
    path = export_torch(model, output, target_layer=layer, input_shape=(3, size, size),
                        labels=labels, opset=opset, exporter=exporter, cams=methods, overlay=overlay)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); gradients checked against torch.autograd")


def _export_hf(folder: str, output: str, layer: str | None, input_size: int | None, weights: str | None,
               labels: list[str] | None, opset: int | None, exporter: str, methods: list[str], overlay: bool) -> None:
    """``--hf``: the folder's classifier at ``layer`` or its last stage, its preprocessing and labels."""
    loaded = load_hf_classifier(folder, input_size)
    if weights:
        _load_weights(loaded.model, weights)
    target = layer or default_stage(loaded.model, loaded.input_shape)
    side = loaded.input_shape[1]
    how = "" if layer else " (its last stage)"
    click.echo(f"exporting {loaded.model_type} from {folder} at layer '{target}'{how}, input 3x{side}x{side} ...")
    path = export_torch(loaded.model, output, target_layer=target, input_shape=loaded.input_shape,
                        preprocessing=loaded.preprocessing, labels=labels or loaded.labels, opset=opset,
                        exporter=exporter, cams=methods, overlay=overlay)
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
