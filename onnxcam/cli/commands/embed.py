"""``onnxcam embed``: write a copy of a model that outputs the finished maps ``cam_<method>``."""

from __future__ import annotations

import click

from onnxcam.cams.embed import embed_cams
from onnxcam.cli.options import cam_options, heatmap_options, input_options, input_size, method_list
from onnxcam.core.metadata import read_metadata
from onnxcam.core.model_io import load_model, output_file, write_model


@click.command("embed")
@click.argument("model", type=str)
@click.option("--cam", "cams", required=True, help="Comma-separated methods to embed, e.g. gradcam,layercam.")
@click.option("--cam-options", "options_text", default=None,
              help="Method options, METHOD.OPTION=VALUE[,...], e.g. gradcampp.eps=0.")
@click.option("--cam-dtype", type=click.Choice(["float32", "uint8"]), default="float32", show_default=True,
              help="cam_<method> as float32 in [0,1], or uint8 levels 0-255.")
@click.option("--overlay", is_flag=True, help="Also output overlay_<method>: [N,H,W,3] uint8 heatmap over the image.")
@heatmap_options
@click.option("--layer", "layers", multiple=True,
              help="Target layer (default: the file's, or the one `onnxcam layers` marks).")
@input_options
@click.option("-o", "--output", required=True, help="Path of the .onnx file to write.")
def command(model: str, cams: str, options_text: str | None, cam_dtype: str, overlay: bool, alpha: float,
            colormap: str, layers: tuple[str, ...], input_size_text: str | None, input_layout: str | None,
            output: str) -> None:
    """Write a copy of MODEL that outputs the finished maps cam_<method> ([N,H,W] at the input resolution,
    in [0,1]) for any ONNX runtime: no Python needed to get the explanation."""
    methods = method_list(cams)
    options = cam_options(options_text, methods)
    dst = output_file(model, output, "embedded copy")
    result = embed_cams(load_model(model), methods, options=options, dtype=cam_dtype, overlay=overlay, alpha=alpha,
                        colormap=colormap, layer=list(layers) or None, input_size=input_size(input_size_text),
                        input_layout=input_layout)
    write_model(result, dst)
    meta = read_metadata(result)
    outputs = ", ".join(n for e in meta.cams or [] for n in (e["output"], e["overlay"]) if n)
    size = "x".join(map(str, (meta.input_size or [])[1:]))
    click.echo(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB): {outputs} at {size}, layer "
               f"{', '.join(meta.target_layers)}")
