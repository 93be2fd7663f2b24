"""``onnxcam bench``: time explaining a model against its own forward pass (and pytorch-grad-cam, optionally)."""

from __future__ import annotations

import pathlib
from typing import Any

import click
import numpy as np

from onnxcam.cams import get_method
from onnxcam.cli.options import explainer_input, factory_model, input_options
from onnxcam.core.errors import OnnxcamError
from onnxcam.evaluation.benchmark import bench, machine, text_table
from onnxcam.evaluation.torch_baseline import available, pytorch_grad_cam_runner
from onnxcam.runtime.explainer import Explainer
from onnxcam.runtime.session import session_options


@click.command("bench")
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
def command(model: str, batches: tuple[int, ...], methods: tuple[str, ...], device: str, layers: tuple[str, ...],
            warmup: int, repeats: int, threads: int, optimisation: str, execution_mode: str, torch_module: str | None,
            torch_layer: str | None, input_size_text: str | None, input_layout: str | None) -> None:
    """Time explaining MODEL against its own forward pass: (a) ONNX Runtime's forward pass alone, (b) onnxcam
    end to end from a preprocessed batch to upsampled maps, (c) pytorch-grad-cam on PyTorch eager (with
    --torch-module); prints ms per image, (b)/(a), (c)/(b) and peak extra memory. Inputs are random images."""
    for name in methods:
        get_method(name)
    options = session_options(threads=threads or None, optimisation=optimisation, execution_mode=execution_mode)
    explainer = Explainer(model, providers=device, layer=list(layers) or None, session_options=options,
                          **explainer_input({"input_size_text": input_size_text, "input_layout": input_layout}))
    baseline = None
    if torch_module:
        baseline = _torch_baseline(torch_module, torch_layer or explainer.metadata.target_layers[0])
    rng = np.random.default_rng(0)
    height, width = explainer.input_shape[1:]
    rows = []
    for n in batches:
        batch, _ = explainer.preprocess(list(rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)))
        rows += bench(explainer, batch, list(methods), model=pathlib.Path(model).name, baseline=baseline,
                      warmup=warmup, repeats=repeats, progress=lambda text: click.echo(f"timing {text} ...", err=True))
    click.echo(text_table(rows))
    click.echo(f"providers: {', '.join(explainer.providers)}; machine: {machine()}")
    if baseline is None:
        click.echo("(c) left out: pass --torch-module package.module:function to compare with pytorch-grad-cam")


def _torch_baseline(spec: str, layer: str) -> Any:
    if not available():
        raise OnnxcamError("--torch-module needs PyTorch and pytorch-grad-cam; run `pip install torch grad-cam` "
                           "or leave out --torch-module")
    module = factory_model(spec).eval()
    try:
        module.get_submodule(layer)
    except AttributeError:
        raise OnnxcamError(f"the PyTorch model has no module '{layer}'; pass its name with --torch-layer") from None
    return lambda method: pytorch_grad_cam_runner(module, layer, method)
