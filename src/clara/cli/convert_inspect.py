"""CLI commands: ``clara convert --from-apple`` and ``clara inspect query|doc`` (logit lens)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

log = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")


def convert(
    from_apple: Path = typer.Option(..., "--from-apple", help="Apple CLaRa folder (config.json, adapters.pth, ...)."),
    out: Path = typer.Option(..., "--out", help="Folder to write this project's checkpoint to."),
    backbone: Optional[str] = typer.Option(
        None, "--backbone", help="Local backbone folder, when the config's decoder_model_name is unreachable."
    ),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Load and store dtype: float32, bfloat16 or float16."),
    device: str = typer.Option("auto", "--device", help="'auto', 'cpu', 'cuda:0', ..."),
) -> None:
    """Convert an Apple CLaRa checkpoint (Base, Instruct or E2E) into this project's format."""
    import torch

    from ..apple import convert_apple_checkpoint

    if dtype not in _DTYPES:
        raise typer.BadParameter(f"dtype must be one of {_DTYPES}", param_hint="--dtype")
    model = convert_apple_checkpoint(
        from_apple, out, backbone=backbone, store_dtype=getattr(torch, dtype), dtype=dtype, device=device
    )
    Console().print(
        f"[green]wrote[/green] {out}  ({model.config.n_mem} memory tokens, backbone {model.config.backbone}, "
        f"prompt style {model.config.prompt_style})"
    )


def _inspect(kind: str, text: str, checkpoint: Optional[Path], backbone: Optional[str], top_k: int, as_json: bool,
             device: str) -> None:
    from ..inspect import inspect_texts
    from ..model import ClaraModel

    model = ClaraModel.from_pretrained(checkpoint, backbone=backbone, device=device)
    slots = inspect_texts(model, [text], kind, top_k)[0]
    console = Console()
    if as_json:
        console.print_json(json.dumps({"kind": kind, "text": text, "slots": [s.to_dict() for s in slots]}))
        return
    table = Table(title=f"logit lens of the {kind} memory states", show_lines=False)
    table.add_column("slot", justify="right")
    for i in range(top_k):
        table.add_column(f"top {i + 1}")
    for s in slots:
        table.add_row(str(s.slot), *[Text(f"{t!r} {p:.2f}") for t, p in zip(s.tokens, s.probs)])
    console.print(table)


_CHECKPOINT = typer.Option(None, "--checkpoint", "-c", "--model", "-m", help="Checkpoint folder (ours or Apple's); default: shipped.")
_BACKBONE = typer.Option(None, "--backbone", help="Replace the checkpoint's backbone with this local folder.")
_TOP_K = typer.Option(5, "--top-k", "-k", min=1, help="Tokens shown per memory state.")
_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
_DEVICE = typer.Option("auto", "--device", help="'auto', 'cpu', 'cuda:0', ...")


def inspect_query(
    question: str = typer.Argument(..., help="The question to encode with the query reasoner."),
    checkpoint: Optional[Path] = _CHECKPOINT,
    backbone: Optional[str] = _BACKBONE,
    top_k: int = _TOP_K,
    as_json: bool = _JSON,
    device: str = _DEVICE,
) -> None:
    """Top tokens of each query memory state under the backbone's output head."""
    _inspect("query", question, checkpoint, backbone, top_k, as_json, device)


def inspect_doc(
    text: str = typer.Argument(..., help="The document text to compress."),
    checkpoint: Optional[Path] = _CHECKPOINT,
    backbone: Optional[str] = _BACKBONE,
    top_k: int = _TOP_K,
    as_json: bool = _JSON,
    device: str = _DEVICE,
) -> None:
    """Top tokens of each document memory state under the backbone's output head."""
    _inspect("doc", text, checkpoint, backbone, top_k, as_json, device)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("convert")(convert)
    inspect_app = typer.Typer(help="Logit lens: what each memory state points at in the vocabulary.",
                              no_args_is_help=True)
    inspect_app.command("query")(inspect_query)
    inspect_app.command("doc")(inspect_doc)
    app.add_typer(inspect_app, name="inspect")
