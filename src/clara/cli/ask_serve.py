"""CLI commands: ``clara ask`` (one question, or the demo) and ``clara serve`` (HTTP API)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .index import DEFAULT_NPROBE, MODEL_HELP, fail, load_model

if TYPE_CHECKING:
    from ..index import MemoryIndex
    from ..model import ClaraModel
    from ..rag import Answer

log = logging.getLogger(__name__)
console = Console()


def open_index(model: "ClaraModel", model_path: Optional[str], index_dir: Optional[Path]) -> "MemoryIndex":
    """The given index (checked against the model) or, without one, the demo index."""
    from ..demo import demo_index
    from ..index import MemoryIndex
    from ..io import DataError

    try:
        if index_dir is None:
            return demo_index(model, model_path)
        index = MemoryIndex.open(index_dir)
        index.check_model(model)
        return index
    except DataError as e:
        fail(e)
        raise  # unreachable: fail exits


def print_answer(answer: "Answer", gold: Optional[str] = None, show_answer: bool = True) -> None:
    # questions, answers and corpus text are data, not Rich markup ("[/INST]" would raise, "[film]" vanish)
    console.rule(Text(answer.question, style="bold"))
    if show_answer:
        console.print(Text(answer.answer or "(empty answer)", style="bold green"))
    if gold is not None:
        console.print(Text(f"expected: {gold}", style="dim"))
    table = Table("rank", "score", "id", "title")
    for i, s in enumerate(answer.sources, 1):
        table.add_row(str(i), f"{s.score:.4f}", Text(s.id), Text(s.title))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""

    @app.command("ask")
    def ask(
        question: Optional[str] = typer.Argument(None, help="The question (none: the demo questions)."),
        index_dir: Optional[Path] = typer.Option(None, "--index", "-i", help="Index folder (none: the demo index)."),
        model: Optional[str] = typer.Option(None, "--model", "-m", "--checkpoint", help=MODEL_HELP),
        k: int = typer.Option(5, "-k", min=1, help="Documents to read."),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Longest answer in tokens."),
        demo: bool = typer.Option(False, "--demo", help="Answer the 5 demo questions over the demo corpus."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON (answer, sources, timings)."),
        stream: bool = typer.Option(False, "--stream", help="Print the answer token by token."),
        premerge: Optional[bool] = typer.Option(
            None, "--premerge/--no-premerge", help="Keep merged LoRA weights for fast questions (default: on up to 3B parameters)."
        ),
        device: str = typer.Option("auto", help="auto, cpu, cuda:0, ..."),
    ) -> None:
        """Answer QUESTION from the top-k documents of an index, and show the sources."""
        from ..demo import demo_questions
        from ..rag import ClaraRAG

        if question is not None and demo:
            fail("give either a QUESTION or --demo (the demo questions), not both")
        if stream and as_json:
            fail("--stream prints the answer as it comes; --json prints it once at the end: choose one")
        if question is None and index_dir is not None and not demo:
            # the demo questions are about the demo corpus: asked of another index they mean nothing
            fail(f"give a QUESTION to ask of {index_dir} (--demo answers the demo questions over the demo corpus)")
        clara, model_path = load_model(model, device, index_dir)
        index = open_index(clara, model_path, None if demo else index_dir)
        rag = ClaraRAG(clara, index, k=k, max_new_tokens=max_new_tokens, premerge=premerge)
        if demo or question is None:
            items = demo_questions()
            answers = rag.ask_batch([it["question"] for it in items])
            if as_json:
                out = [{**a.to_dict(), "expected": it["answer"]} for a, it in zip(answers, items)]
                typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
                return
            for a, it in zip(answers, items):
                print_answer(a, gold=it["answer"])
            return
        if stream and not as_json:
            from transformers import TextStreamer

            streamer = TextStreamer(clara.tokenizer, skip_prompt=True, skip_special_tokens=True)
            answer = rag.ask(question, streamer=streamer)
            print_answer(answer, show_answer=False)
            return
        answer = rag.ask(question)
        if as_json:
            typer.echo(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        else:
            print_answer(answer)

    @app.command("serve")
    def serve(
        index_dir: Optional[Path] = typer.Option(None, "--index", "-i", help="Index folder (none: the demo index)."),
        model: Optional[str] = typer.Option(None, "--model", "-m", "--checkpoint", help=MODEL_HELP),
        host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
        port: int = typer.Option(8000, help="TCP port."),
        k: int = typer.Option(5, "-k", min=1, help="Default documents per question."),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Default longest answer."),
        max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most concurrent asks per generate call."),
        search: str = typer.Option("exact", help="exact, or ann (needs `clara index ann`)."),
        nprobe: int = typer.Option(DEFAULT_NPROBE, "--nprobe", min=1, help="IVF cells visited by --search ann."),
        premerge: Optional[bool] = typer.Option(
            None, "--premerge/--no-premerge", help="Keep merged LoRA weights for fast questions (default: on up to 3B parameters)."
        ),
        read_only: bool = typer.Option(False, "--read-only", help="Refuse POST /v1/documents (always so for the demo index)."),
        device: str = typer.Option("auto", help="auto, cpu, cuda:0, ..."),
    ) -> None:
        """Serve ask/retrieve/documents over HTTP (OpenAPI docs at /docs)."""
        import uvicorn

        from ..io import DataError
        from ..rag import ClaraRAG
        from ..server import ServerConfig, create_app

        clara, model_path = load_model(model, device, index_dir)
        index = open_index(clara, model_path, index_dir)
        try:
            rag = ClaraRAG(
                clara, index, k=k, max_new_tokens=max_new_tokens, search=search, nprobe=nprobe, premerge=premerge
            )
        except (DataError, ValueError) as e:
            fail(e)
        # the defaults given here must be allowed to the requests that rely on them
        # the demo index is a shared cache that `clara ask` also reads: documents added to it would stay
        limits = ServerConfig(max_batch=max_batch, read_only=read_only or index_dir is None)
        limits.max_k, limits.max_new_tokens = max(limits.max_k, k), max(limits.max_new_tokens, max_new_tokens)
        app_ = create_app(rag, limits)
        mode = " (read-only)" if limits.read_only else ""
        console.print(Text(f"serving {len(index)} documents{mode} from {index.path} on http://{host}:{port} (docs: /docs)"))
        uvicorn.run(app_, host=host, port=port, log_level="info")
