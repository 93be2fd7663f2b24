"""``onnxcam explain``'s run over many images: inputs, progress bar, per-image lines, records and exit codes."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import click

from onnxcam.core.errors import OnnxcamError

#: exit codes of ``onnxcam explain`` (1: an error before any work; 2: a usage error, from click)
EXIT_IMAGES_FAILED = 3
EXIT_INTERRUPTED = 130


def explain_images(*, model: str, paths: tuple[str, ...], list_file: str | None, output: str, method: str,
                   class_spec: str | None, device: str, layers: tuple[str, ...], batch_size: int, alpha: float,
                   colormap: str, threads: int, formats: str, resume: bool, quiet: bool, workers: int, engine: str,
                   address: str | None, explainer_input: dict[str, Any]) -> int:
    """Run ``explain`` and return its exit code. Everything that can be checked is checked before the output
    folder is touched."""
    from onnxcam.cams import get_method
    from onnxcam.runs.image_paths import collect_images
    from onnxcam.runs.local import check_render_options, explain_to_folder, run_settings
    from onnxcam.runs.records import ERRORS, RunFolder
    from onnxcam.runtime import Explainer
    from onnxcam.runtime.session import session_options

    if not paths and list_file is None:
        raise OnnxcamError("give images to explain: files, folders or globs, or --list FILE")
    if engine != "ray" and address is not None:
        raise OnnxcamError("--address joins a Ray cluster; add --engine ray")
    get_method(method)
    format_list = check_render_options(formats, alpha, colormap)
    sources = collect_images(paths, list_file=list_file, exclude=output)
    if engine == "ray":
        from onnxcam.ray import check_available

        check_available()
    options = session_options(threads=threads or None)
    # with Ray the driver only checks the model and the options: the actors run it, on --device
    explainer = Explainer(model, providers="cpu" if engine == "ray" else device, layer=list(layers) or None,
                          session_options=options, **explainer_input)
    class_index = None if class_spec is None else explainer.class_index_of(class_spec)
    settings = run_settings(explainer, model, method=method, class_index=class_index, formats=format_list,
                            alpha=alpha, colormap=colormap, batch_size=batch_size, engine=engine, device=device)
    folder = RunFolder(output, settings, resume=resume)
    already = len([s for s in sources if s.key in folder.done])
    bar = _progress_bar(len(sources), already, quiet)

    def progress(source: Any, record: dict[str, Any] | None, error: dict[str, Any] | None) -> None:
        bar.update(1)
        if quiet:
            return
        if record is not None:
            shown = f" explaining {record['class_name']}" if record["class_index"] != record["top_class_index"] else ""
            _echo(bar, f"{source.path}: {record['top_class_name']} ({record['top_probability']:.1%}){shown}")
        else:
            _echo(bar, f"skipped {source.path}: {error['error'] if error else 'failed'}", err=True)

    status = "stopped"
    try:
        if engine == "ray":
            from onnxcam.ray import explain_sources

            explain_sources(model, sources, folder, method=method, class_index=class_index, formats=format_list,
                            alpha=alpha, colormap=colormap, batch_size=batch_size, workers=workers or 2,
                            address=address, device=device, layers=list(layers) or None, threads=threads,
                            explainer_input=explainer_input, progress=progress)
        else:
            explain_to_folder(explainer, sources, folder, method=method, class_index=class_index, formats=format_list,
                              alpha=alpha, colormap=colormap, batch_size=batch_size, workers=workers or None,
                              progress=progress)
        status = "complete" if not folder.failed else "complete with errors"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
        folder.close()
        folder.write_summary(status, images=len(sources), engine=engine)
    where = pathlib.Path(output)
    done = len(folder.done)
    if status == "interrupted":
        click.echo(f"interrupted: {done} of {len(sources)} images are complete in {where}; run the same command "
                   "with --resume to finish", err=True)
        return EXIT_INTERRUPTED
    resumed = f" ({already} from the earlier run)" if resume and already else ""
    click.echo(f"explained {done} of {len(sources)} images{resumed} into {where} (manifest.jsonl, summary.json)")
    if folder.failed:
        click.echo(f"onnxcam: {folder.failed} of {len(sources)} images could not be explained; see "
                   f"{where / ERRORS}", err=True)
        return EXIT_IMAGES_FAILED
    return 0


def _progress_bar(total: int, initial: int, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.05,
                disable=quiet or not sys.stderr.isatty(), desc="explain")


def _echo(bar: Any, line: str, err: bool = False) -> None:
    if bar.disable:
        click.echo(line, err=err)
    else:
        bar.write(line, file=sys.stderr if err else sys.stdout)
