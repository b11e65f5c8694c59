"""The ``clara`` command line: one typer app, each area's commands in its own module.

    clara train scp|instruct|e2e    clara synth       clara index build|add|stats|search
    clara ask                       clara serve       clara eval
    clara inspect query|doc         clara convert
"""

from __future__ import annotations

import logging
import sys

import typer

from . import ask_serve, convert_inspect, eval, index, synth, train

app = typer.Typer(
    name="clara",
    help="CLaRa: compress documents into memory tokens; retrieve and answer in that latent space.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


for _module in (train, synth, index, ask_serve, eval, convert_inspect):
    _module.register(app)


def run() -> None:
    """The ``clara`` console script: ``app`` with user errors (a malformed file, a wrong checkpoint
    folder, a bad value) printed as one line and exit code 2 instead of a traceback; ``-v`` keeps
    the traceback."""
    from rich.console import Console
    from rich.markup import escape

    from ..checkpoint import CheckpointError
    from ..io import DataError

    try:
        app()
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as e:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(e))} [dim](clara -v ... shows the traceback)[/dim]")
        sys.exit(2)
