"""``onnxcam explain``: a whole run over image files, folders, globs and list files — options into a
:class:`~onnxcam.runs.config.RunConfig`, :func:`~onnxcam.runs.job.run_job`, then the progress bar, the per-image
lines and the exit code."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import click
from tqdm import tqdm

from onnxcam.cams import METHODS
from onnxcam.cli.options import explainer_input, heatmap_options, input_options, preprocessing_options
from onnxcam.core.errors import OnnxcamError
from onnxcam.runs.config import ModelInput, RunConfig
from onnxcam.runs.image_paths import collect_images
from onnxcam.runs.job import run_job
from onnxcam.runs.records import ERRORS

#: exit codes of ``onnxcam explain`` (1: an error before any work; 2: a usage error, from click)
EXIT_IMAGES_FAILED = 3
EXIT_INTERRUPTED = 130


@click.command("explain")
@click.argument("model", type=str)
@click.argument("paths", nargs=-1, type=str)
@click.option("--list", "list_file", default=None, help="A text file with one image path per line.")
@click.option("-o", "--output", "output", default="onnxcam-out", show_default=True, help="Folder for the results.")
@click.option("--method", default="cfcam", show_default=True,
              help="CAM method: " + ", ".join(sorted(METHODS)) + " (default cfcam)")
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
@heatmap_options
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0),
              help="ONNX Runtime intra-op threads (0: one per physical core).")
@input_options
@preprocessing_options
@click.pass_context
def command(ctx: click.Context, model: str, paths: tuple[str, ...], list_file: str | None, output: str, method: str,
            class_spec: str | None, formats: str, resume: bool, quiet: bool, device: str, layers: tuple[str, ...],
            batch_size: int, workers: int, engine: str, address: str | None, alpha: float, colormap: str,
            threads: int, **input_and_preprocessing: Any) -> None:
    """Explain MODEL's decision on each image of PATHS (image files, folders, searched recursively, or globs).

    Writes per image, as soon as it is done, <name>.<method>.png (overlay) and <name>.<method>.npy (the map,
    [H,W] float32 in [0,1]), keeping the images' folder structure, plus manifest.jsonl (one line per image),
    errors.jsonl (images that could not be read) and summary.json. Exit codes: 0 all explained; 1 an error
    before any work; 3 some images could not be explained; 130 interrupted (finish with --resume)."""
    if not paths and list_file is None:
        raise OnnxcamError("give images to explain: files, folders or globs, or --list FILE")
    config = RunConfig(model=model, output=output, method=method, class_spec=class_spec,
                       formats=tuple(formats.split(",")), alpha=alpha, colormap=colormap, batch_size=batch_size,
                       workers=workers, engine=engine, address=address, device=device, layers=layers,
                       threads=threads, model_input=ModelInput(**explainer_input(input_and_preprocessing)),
                       resume=resume).checked()
    sources = collect_images(paths, list_file=list_file, exclude=output)
    bar: Any = None

    def start(total: int, resumed: int) -> None:
        nonlocal bar
        bar = _progress_bar(total, resumed, quiet)

    def progress(source: Any, record: dict[str, Any] | None, error: dict[str, Any] | None) -> None:
        bar.update(1)
        if quiet:
            return
        if record is not None:
            shown = f" explaining {record['class_name']}" if record["class_index"] != record["top_class_index"] else ""
            _echo(bar, f"{source.path}: {record['top_class_name']} ({record['top_probability']:.1%}){shown}")
        else:
            _echo(bar, f"skipped {source.path}: {error['error'] if error else 'failed'}", err=True)

    try:
        outcome = run_job(config, sources, progress=progress, on_start=start)
    finally:
        if bar is not None:
            bar.close()
    where = pathlib.Path(output)
    if outcome.status == "interrupted":
        click.echo(f"interrupted: {outcome.explained} of {outcome.images} images are complete in {where}; run the "
                   "same command with --resume to finish", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    resumed = f" ({outcome.resumed} from the earlier run)" if resume and outcome.resumed else ""
    click.echo(f"explained {outcome.explained} of {outcome.images} images{resumed} into {where} "
               "(manifest.jsonl, summary.json)")
    if outcome.failed:
        click.echo(f"onnxcam: {outcome.failed} of {outcome.images} images could not be explained; see "
                   f"{where / ERRORS}", err=True)
        ctx.exit(EXIT_IMAGES_FAILED)


def _progress_bar(total: int, initial: int, quiet: bool) -> Any:
    return tqdm(total=total, initial=initial, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.05,
                disable=quiet or not sys.stderr.isatty(), desc="explain")


def _echo(bar: Any, line: str, err: bool = False) -> None:
    if bar.disable:
        click.echo(line, err=err)
    else:
        bar.write(line, file=sys.stderr if err else sys.stdout)
