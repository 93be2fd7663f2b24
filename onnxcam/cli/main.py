"""The ``onnxcam`` command: explain, evaluate, export, layers, bench.

Only ``export`` imports torch, and only when it runs.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import sys
from typing import Any

import click
import numpy as np

from onnxcam.cli import options as cli_options
from onnxcam.cli.options import input_options, preprocessing_options
from onnxcam.cli.output import OutputWriter
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.version import __version__


class Group(click.Group):
    """Turns user errors (``OnnxcamError``) into one line on stderr and exit code 1, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OnnxcamError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; nothing was written") from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxcam")
def main() -> None:
    """Class activation maps from ONNX classifiers, computed with ONNX Runtime alone."""


def _method_help() -> str:
    from onnxcam.cams import METHODS

    return "CAM method: " + ", ".join(sorted(METHODS)) + " (default cfcam)"


@main.command()
@click.argument("model", type=str)
@click.argument("paths", nargs=-1, type=str)
@click.option("--list", "list_file", default=None, help="A text file with one image path per line.")
@click.option("-o", "--output", "output", default="onnxcam-out", show_default=True, help="Folder for the results.")
@click.option("--method", default="cfcam", show_default=True, help=_method_help())
@click.option("--class", "class_spec", default=None, help="Class to explain: index or label name (default: predicted).")
@click.option("--format", "formats", default="overlay,npy", show_default=True,
              help="Files per image, comma-separated: overlay (PNG), npy (the map), png16 (the map as 16-bit PNG); "
                   "none: manifest only.")
@click.option("--resume", is_flag=True, help="Finish an earlier run in the output folder: skip the images it did.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no line per image.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--layer", "layers", multiple=True,
              help="Target layer: tensor or torch module name; repeat to fuse several layers' maps.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1), help="Images per ORT run.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0),
              help="Decode threads (local engine; 0: one per core, at most 4), or Ray actors (--engine ray; 0: 2).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data actors (pip install onnxcam[ray]).")
@click.option("--address", default=None, help="With --engine ray: the Ray cluster to join (default: a local Ray).")
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Heatmap opacity.")
@click.option("--colormap", default="jet", show_default=True, help="OpenCV colormap name.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0),
              help="ONNX Runtime intra-op threads (0: one per physical core).")
@input_options
@preprocessing_options
@click.pass_context
def explain(ctx: click.Context, model: str, paths: tuple[str, ...], list_file: str | None, output: str, method: str,
            class_spec: str | None, formats: str, resume: bool, quiet: bool, device: str, layers: tuple[str, ...],
            batch_size: int, workers: int, engine: str, address: str | None, alpha: float, colormap: str,
            threads: int, **input_and_preprocessing: Any) -> None:
    """Explain MODEL's decision on each image of PATHS (image files, folders, searched recursively, or globs).

    Writes per image, as soon as it is done, <name>.<method>.png (overlay) and <name>.<method>.npy (the map,
    [H,W] float32 in [0,1]), keeping the images' folder structure, plus manifest.jsonl (one line per image),
    errors.jsonl (images that could not be read) and summary.json. Exit codes: 0 all explained; 1 an error
    before any work; 3 some images could not be explained; 130 interrupted (finish with --resume)."""
    from onnxcam.cli.explain_run import explain_images

    code = explain_images(model=model, paths=paths, list_file=list_file, output=output, method=method,
                          class_spec=class_spec, device=device, layers=layers, batch_size=batch_size, alpha=alpha,
                          colormap=colormap, threads=threads, formats=formats, resume=resume, quiet=quiet,
                          workers=workers, engine=engine, address=address,
                          explainer_input=_explainer_input(input_and_preprocessing))
    if code:
        ctx.exit(code)


@main.command()
@click.argument("model", type=str)
@click.argument("images", nargs=-1, required=True, type=str)
@click.option("--method", "methods", default="gradcam,cfcam", show_default=True,
              help="Comma-separated CAM methods to compare.")
@click.option("--boxes", "boxes_file", default=None,
              help="JSON with a box (x0, y0, x1, y1 in model-input pixels) per image, for pointing game and energy.")
@click.option("-o", "--output", default="onnxcam-eval", show_default=True, help="Folder for table, CSV and figure.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--layer", "layers", multiple=True, help="Target layer (repeat to fuse several).")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(2), help="Deletion/insertion steps.")
@click.option("--no-road", is_flag=True, help="Skip ROAD (its imputation is the slowest metric).")
@input_options
@preprocessing_options
def evaluate(model: str, images: tuple[str, ...], methods: str, boxes_file: str | None, output: str, device: str,
             layers: tuple[str, ...], steps: int, no_road: bool, **input_and_preprocessing: Any) -> None:
    """Compare CAM methods on MODEL and IMAGEs: deletion/insertion AUC, Average Drop, Increase in Confidence,
    ROAD, gradient-noise robustness, pointing game and energy in box (with --boxes), and time per image.
    Writes evaluation.md, evaluation.csv and evaluation.png (overlays and curves) into the output folder."""
    from onnxcam.cams import get_method
    from onnxcam.evaluation.evaluate import evaluate as run_evaluation
    from onnxcam.evaluation.figures import evaluation_figure
    from onnxcam.runtime import Explainer
    from onnxcam.runtime.preprocess import load_image

    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        get_method(name)
    for path in images:
        load_image(path)
    boxes = _read_boxes(boxes_file, images) if boxes_file else None
    explainer = Explainer(model, providers=device, layer=list(layers) or None,
                          **_explainer_input(input_and_preprocessing))
    writer = OutputWriter(pathlib.Path(output))
    result = run_evaluation(explainer, list(images), names, boxes=boxes, steps=steps, road=not no_road,
                            progress=lambda name: click.echo(f"evaluating {name} on {len(images)} images ...",
                                                             err=True))
    markdown = result.markdown()
    click.echo(markdown)
    writer.add_bytes("evaluation.csv", result.csv().encode())
    writer.add_bytes("evaluation.md", (markdown + "\n").encode())
    writer.add("evaluation.png", evaluation_figure(result))
    writer.commit()
    click.echo(f"wrote evaluation.md, evaluation.csv and evaluation.png to {writer.folder}", err=True)


def _read_boxes(path: str, images: tuple[str, ...]) -> np.ndarray:
    """Boxes from JSON: ``{"images": [{"file": name, "box": [x0, y0, x1, y1]}, ...]}`` or ``{name: box}``."""
    import json

    p = pathlib.Path(path)
    if not p.is_file():
        raise OnnxcamError(f"boxes file '{p}' does not exist; check the path")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OnnxcamError(f"boxes file '{p}' is not JSON; give {{\"image name\": [x0, y0, x1, y1], ...}}") from None
    if isinstance(data, dict) and "images" in data:
        data = {entry["file"]: entry["box"] for entry in data["images"]}
    boxes = []
    for image in images:
        name = pathlib.Path(image).name
        if name not in data:
            raise OnnxcamError(f"boxes file '{p}' has no box for '{name}'; add one or leave out --boxes")
        boxes.append(data[name])
    return np.asarray(boxes, dtype=np.int64)


@main.command()
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
def export(tv_name: str | None, factory: str | None, weights: str | None, layer: str, input_size: int,
           labels_file: str | None, opset: int | None, cams: str | None, overlay: bool, output: str) -> None:
    """Export a PyTorch classifier to an onnxcam graph (needs torch: pip install onnxcam[export])."""
    if (tv_name is None) == (factory is None):
        raise OnnxcamError("give exactly one of --torchvision NAME or --module package.module:function")
    from onnxcam.exporter import export_torch
    from onnxcam.frontends.torch_export import _require_torch

    torch = _require_torch()
    model = _torchvision_model(tv_name) if tv_name else _factory_model(factory)
    if weights:
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
    labels = None
    if labels_file:
        from onnxcam.classifier.annotate import read_labels

        labels = read_labels(labels_file)
    methods = _method_list(cams) if cams else []
    click.echo(f"exporting {tv_name or factory} at layer '{layer}', input 3x{input_size}x{input_size} ...")
    path = export_torch(model, output, target_layer=layer, input_shape=(3, input_size, input_size),
                        labels=labels, opset=opset, cams=methods, overlay=overlay)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); gradients checked against torch.autograd")


def _method_list(text: str) -> list[str]:
    """``gradcam,layercam`` → the method names, each checked to have a graph form (before any slow work)."""
    from onnxcam.cams.embed import check_cams

    return check_cams([n.strip() for n in text.split(",") if n.strip()])


def _cam_options(text: str | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``gradcampp.eps=0,...`` → ``{"gradcampp": {"eps": 0}}`` (values read as JSON, else as text)."""
    out: dict[str, dict[str, Any]] = {}
    for item in [i.strip() for i in (text or "").split(",") if i.strip()]:
        key, sep, raw = item.partition("=")
        method, dot, option = key.strip().partition(".")
        if not sep or not dot or not option:
            raise OnnxcamError(f"--cam-options takes METHOD.OPTION=VALUE items, e.g. gradcampp.eps=0; got '{item}'")
        if method not in methods:
            raise OnnxcamError(f"--cam-options names '{method}', which --cam does not embed")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip()
        out.setdefault(method, {})[option.strip()] = value
    return out


@main.command()
@click.argument("model", type=str)
@click.option("--cam", "cams", required=True, help="Comma-separated methods to embed, e.g. gradcam,layercam.")
@click.option("--cam-options", default=None, help="Method options, METHOD.OPTION=VALUE[,...], e.g. gradcampp.eps=0.")
@click.option("--cam-dtype", type=click.Choice(["float32", "uint8"]), default="float32", show_default=True,
              help="cam_<method> as float32 in [0,1], or uint8 levels 0-255.")
@click.option("--overlay", is_flag=True, help="Also output overlay_<method>: [N,H,W,3] uint8 heatmap over the image.")
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Overlay opacity.")
@click.option("--colormap", default="jet", show_default=True, help="Overlay colormap (an OpenCV name).")
@click.option("--layer", "layers", multiple=True, help="Target layer (default: the file's, or the last feature map).")
@input_options
@click.option("-o", "--output", required=True, help="Path of the .onnx file to write.")
def embed(model: str, cams: str, cam_options: str | None, cam_dtype: str, overlay: bool, alpha: float,
          colormap: str, layers: tuple[str, ...], input_size: str | None, input_layout: str | None,
          output: str) -> None:
    """Write a copy of MODEL that outputs the finished maps cam_<method> ([N,H,W] at the input resolution,
    in [0,1]) for any ONNX runtime: no Python needed to get the explanation."""
    from onnxcam.cams.embed import embed_cams
    from onnxcam.core.metadata import read_metadata
    from onnxcam.core.model_io import load_model, write_model

    methods = _method_list(cams)
    options = _cam_options(cam_options, methods)
    src, dst = pathlib.Path(model), pathlib.Path(output)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise OnnxcamError(f"the output '{dst}' is the input model; write the embedded copy to another path with -o")
    if dst.is_dir():
        raise OnnxcamError(f"the output '{dst}' is a folder; give a file path such as {dst / src.name}")
    result = embed_cams(load_model(model), methods, options=options, dtype=cam_dtype, overlay=overlay, alpha=alpha,
                        colormap=colormap, layer=list(layers) or None,
                        input_size=cli_options.input_size(input_size), input_layout=input_layout)
    write_model(result, dst)
    meta = read_metadata(result)
    outputs = ", ".join(n for e in meta.cams for n in (e["output"], e["overlay"]) if n)
    size = "x".join(map(str, meta.input_size[1:]))
    click.echo(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB): {outputs} at {size}, layer "
               f"{', '.join(meta.target_layers)}")


def _torchvision_model(name: str) -> Any:
    try:
        import torchvision
    except ImportError:
        raise OnnxcamError("--torchvision needs torchvision; run `pip install onnxcam[export]`") from None
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise OnnxcamError(f"unknown torchvision classifier '{name}'; e.g. resnet18, mobilenet_v2, efficientnet_b0")
    return torchvision.models.get_model(name, weights=None)


def _factory_model(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise OnnxcamError(f"--module must look like 'package.module:function', got '{spec}'")
    sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise OnnxcamError(f"cannot load '{spec}': {exc}") from None
    return factory()


@main.command()
@click.argument("model", type=str)
@click.option("--batch", "batches", multiple=True, type=click.IntRange(1), default=(1, 8), show_default=True,
              help="Batch size; repeat for several.")
@click.option("--method", "methods", multiple=True, default=("gradcam", "cfcam"), show_default=True,
              help="CAM method; repeat for several.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--layer", "layers", multiple=True, help="Target layer (repeat to fuse several).")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(0), help="Untimed runs first.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1), help="Timed runs (median).")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0),
              help="ONNX Runtime intra-op threads (0: one per physical core).")
@click.option("--optimisation", type=click.Choice(["disable", "basic", "extended", "all"]), default="all",
              show_default=True, help="ONNX Runtime graph optimisation level.")
@click.option("--execution-mode", type=click.Choice(["sequential", "parallel"]), default="sequential",
              show_default=True, help="ONNX Runtime execution mode.")
@click.option("--torch-module", default=None,
              help="'package.module:function' returning the PyTorch model MODEL was exported from (same weights): "
                   "adds pytorch-grad-cam's column (needs torch and grad-cam).")
@click.option("--torch-layer", default=None, help="Target module in the PyTorch model (default: the recorded layer).")
@input_options
def bench(model: str, batches: tuple[int, ...], methods: tuple[str, ...], device: str, layers: tuple[str, ...],
          warmup: int, repeats: int, threads: int, optimisation: str, execution_mode: str, torch_module: str | None,
          torch_layer: str | None, input_size: str | None, input_layout: str | None) -> None:
    """Time explaining MODEL against its own forward pass: (a) ONNX Runtime's forward pass alone, (b) onnxcam
    end to end from a preprocessed batch to upsampled maps, (c) pytorch-grad-cam on PyTorch eager (with
    --torch-module); prints ms per image, (b)/(a), (c)/(b) and peak extra memory. Inputs are random images."""
    from onnxcam.cams import get_method
    from onnxcam.evaluation.benchmark import bench as run_bench
    from onnxcam.evaluation.benchmark import machine, text_table
    from onnxcam.runtime import Explainer
    from onnxcam.runtime.session import session_options

    for name in methods:
        get_method(name)
    options = session_options(threads=threads or None, optimisation=optimisation, execution_mode=execution_mode)
    explainer = Explainer(model, providers=device, layer=list(layers) or None, session_options=options,
                          **_explainer_input({"input_size": input_size, "input_layout": input_layout}))
    baseline = None
    if torch_module:
        baseline = _torch_baseline(torch_module, torch_layer or explainer.metadata.target_layers[0])
    rng = np.random.default_rng(0)
    height, width = explainer.input_shape[1:]
    rows = []
    for n in batches:
        batch, _ = explainer.preprocess(list(rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)))
        rows += run_bench(explainer, batch, list(methods), model=pathlib.Path(model).name, baseline=baseline,
                          warmup=warmup, repeats=repeats,
                          progress=lambda text: click.echo(f"timing {text} ...", err=True))
    click.echo(text_table(rows))
    click.echo(f"providers: {', '.join(explainer.providers)}; machine: {machine()}")
    if baseline is None:
        click.echo("(c) left out: pass --torch-module package.module:function to compare with pytorch-grad-cam")


def _torch_baseline(spec: str, layer: str) -> Any:
    from onnxcam.evaluation.torch_baseline import available, pytorch_grad_cam_runner

    if not available():
        raise OnnxcamError("--torch-module needs PyTorch and pytorch-grad-cam; run `pip install torch grad-cam` "
                           "or leave out --torch-module")
    module = _factory_model(spec).eval()
    try:
        module.get_submodule(layer)
    except AttributeError:
        raise OnnxcamError(f"the PyTorch model has no module '{layer}'; pass its name with --torch-layer") from None
    return lambda method: pytorch_grad_cam_runner(module, layer, method)


@main.command()
@click.argument("model", type=str)
@input_options
def layers(model: str, input_size: str | None, input_layout: str | None) -> None:
    """List MODEL's candidate target layers (feature maps and token tensors computed from the image that feed
    the logits), whether gradients reach each one, and the default (*)."""
    from onnxcam.classifier.layers import candidate_layers
    from onnxcam.core.metadata import read_metadata
    from onnxcam.core.model_io import load_model

    proto = load_model(model)
    meta = read_metadata(proto)
    rows = candidate_layers(proto, input_size=cli_options.input_size(input_size), input_layout=input_layout)
    if not rows:
        raise OnnxcamError("found no feature map or token tensor before the logits; is this an image classifier?")
    width = max(len(r.name) for r in rows)
    click.echo(f"{'':2}{'tensor':<{width}}  {'op':<20} {'shape':<16} gradient")
    for r in rows:
        mark = "*" if r.default else " "
        shape = "x".join("N" if d is None else str(d) for d in r.shape)
        flow = "yes" if r.flows else f"no: {r.blocker}"
        note = f"  <- exported target ({', '.join(meta.target_layers)})" if r.target else ""
        click.echo(f"{mark} {r.name:<{width}}  {r.op:<20} {shape:<16} {flow}{note}")
    click.echo("* default target layer (the last feature map before the head); pass another with --layer")


def _explainer_input(values: dict[str, Any]) -> dict[str, Any]:
    """Explainer keyword arguments from the shared input and preprocessing options."""
    out: dict[str, Any] = {"input_size": cli_options.input_size(values.pop("input_size", None)),
                           "input_layout": values.pop("input_layout", None)}
    if values:
        out["preprocessing"] = cli_options.preprocessing(**values) or None
    return out


@main.command()
@click.argument("model", type=str)
@click.option("-o", "--output", required=True, help="Path of the annotated .onnx file to write.")
@input_options
@preprocessing_options
@click.option("--labels", "labels_file", default=None, help="Class names: a text file (one per line) or JSON.")
@click.option("--layer", default=None, help="Default target layer (a tensor name from `onnxcam layers`).")
@click.option("--target", type=click.Choice(["logit", "probability"]), default=None,
              help="Explain the class score (logit, default) or its probability.")
def annotate(model: str, output: str, input_size: str | None, input_layout: str | None, labels_file: str | None,
             layer: str | None, target: str | None, **preprocessing: Any) -> None:
    """Write onnxcam's metadata (input size and layout, preprocessing, labels, layer, target) into a copy of
    MODEL, so that `onnxcam explain OUTPUT image.jpg` needs no flags. The graph and weights are untouched."""
    from onnxcam.classifier.annotate import annotate as write_annotation
    from onnxcam.classifier.annotate import read_labels

    labels = read_labels(labels_file) if labels_file else None
    recorded = write_annotation(model, output, input_size=cli_options.input_size(input_size), input_layout=input_layout,
                                preprocessing=cli_options.preprocessing(**preprocessing), labels=labels, layer=layer,
                                target=target)
    size = "x".join(map(str, recorded["input_size"][1:]))
    click.echo(f"wrote {output}: input {recorded['input_layout']} {size}, output {recorded['output_kind']}, "
               f"target {recorded['target']}, {recorded['labels'] or 'no'} labels, preprocessing "
               f"{json.dumps(recorded['preprocessing'])}")


@main.command()
@click.argument("model", type=str)
@input_options
def info(model: str, input_size: str | None, input_layout: str | None) -> None:
    """Show what onnxcam will assume for MODEL: input layout and size, preprocessing, labels, output kind,
    target and default layer."""
    from onnxcam.cli.info import describe

    for line in describe(model, input_size=cli_options.input_size(input_size), input_layout=input_layout):
        click.echo(line)
