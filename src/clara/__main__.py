"""``python -m clara`` (and ``accelerate launch -m clara``) runs the CLI."""

from .cli import run

run()
