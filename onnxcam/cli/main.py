"""The ``onnxcam`` command: a click group whose commands are the modules of :mod:`onnxcam.cli.commands`, each
defining one click command named ``command`` (adding a command is adding a module there).

Only ``export`` (and ``bench --torch-module``) import torch, and only when they run.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import click

from onnxcam.cli import commands
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


for _found in pkgutil.iter_modules(commands.__path__):
    main.add_command(importlib.import_module(f"{commands.__name__}.{_found.name}").command)
