"""The ``lesion`` group, its ``train`` and ``predict`` subgroups, and the one place where errors
become messages and exit codes.

Every library error derives from :class:`deeplesion_cli.errors.LesionInputError` (bad input:
``Error: <message>``, exit 2) or :class:`deeplesion_cli.errors.LesionRunError` (a failed run:
exit 1); :class:`LesionGroup` catches both around every command, so no command maps errors
itself. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from deeplesion_cli import __version__
from deeplesion_cli.errors import EXIT_BAD_INPUT, LesionError

__all__ = ["main", "train", "predict", "Failure", "console", "warn", "EXIT_BAD_INPUT"]


class Failure(click.ClickException):
    """A :class:`LesionError` as click shows it: ``Error: <message>`` on stderr, no traceback,
    the error's exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class LesionGroup(click.Group):
    """A click group whose commands' :class:`LesionError` become :class:`Failure`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LesionError as exc:
            raise Failure(str(exc), exc.exit_code) from None


def console():
    from rich.console import Console

    # Piped output has no terminal width; rich would assume 80 columns and cut table headers.
    return Console() if sys.stdout.isatty() else Console(width=140)


def warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


@click.group(cls=LesionGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lesion")
def main() -> None:
    """Benchmark CT lesion detectors on NIH DeepLesion under one protocol.

    \b
    Examples (a whole path, without the 221 GB download):
      lesion synth data/synth                      # DeepLesion-format synthetic set
      lesion prepare data/synth data/prepared      # 8-bit images, COCO, darknet files
      lesion demo                                  # both, into ./lesion-demo
    """


@main.group()
def train() -> None:
    """Train a detector on a prepared folder.

    \b
    Examples:
      lesion train frcnn prepared/ --out runs/frcnn
      lesion train yolo prepared/ --cfg yolo.cfg --out runs/yolo
    """


@main.group()
def predict() -> None:
    """Write detections of a trained model as COCO results json.

    \b
    Examples:
      lesion predict frcnn runs/frcnn prepared/ -o frcnn.json
      lesion predict yolo prepared/ --cfg yolo.cfg --weights runs/yolo/backup/yolo_final.weights -o yolo.json
    """
