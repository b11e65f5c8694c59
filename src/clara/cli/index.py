"""CLI commands: ``clara index build|add|stats|search|ann``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from ..data.corpus import Document
    from ..model import ClaraModel
    from ..index import MemoryIndex

log = logging.getLogger(__name__)
console = Console()
index_app = typer.Typer(help="Compress a corpus into a memory index, inspect and search it.", no_args_is_help=True)

# clara.index.search.DEFAULT_NPROBE, repeated (a test keeps them equal) so that the CLI
# starts without importing torch and faiss
DEFAULT_NPROBE = 128
MODEL_HELP = "CLaRa checkpoint folder (default: the one recorded by the index, else the shipped default)."


def load_model(path: Optional[str], device: str = "auto", index_dir: Optional[Path] = None) -> tuple["ClaraModel", Optional[str]]:
    """Load ``path``; without it the checkpoint recorded in ``index_dir``'s manifest, else the shipped default.

    Returns the model and the checkpoint path to record in a new index (None = default).
    """
    from ..checkpoint import CheckpointError
    from ..index.store import MANIFEST, read_manifest
    from ..io import DataError
    from ..model import ClaraModel

    if path is None and index_dir is not None and (index_dir / MANIFEST).is_file():
        try:
            recorded = read_manifest(index_dir).get("model_path")
        except DataError as e:
            fail(e)
        if recorded and Path(recorded).is_dir():
            path = recorded
    try:
        model = ClaraModel.from_pretrained(path, device=device)
    except CheckpointError as e:
        fail(e)
    model.eval()
    return model, str(Path(path).resolve()) if path else None


def open_with_model(index_dir: Path, model: Optional[str], device: str) -> tuple["MemoryIndex", "ClaraModel"]:
    """Open an index and the model that built it (or ``model``), refusing a mismatch clearly."""
    from ..index import MemoryIndex
    from ..io import DataError

    try:
        index = MemoryIndex.open(index_dir)
        clara, _ = load_model(model, device, index_dir)
        index.check_model(clara)
    except DataError as e:
        fail(e)
    return index, clara


def fail(message: object) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(str(message))}")  # escaped: a path or id may hold [brackets]
    raise typer.Exit(2)


def check_overlap(model: "ClaraModel", overlap: int, corpus: Path, chunk: bool) -> None:
    """Refuse an overlap that leaves chunks no room, when anything will be chunked (folders, --chunk)."""
    if (chunk or corpus.is_dir()) and not 0 <= overlap < model.config.doc_max_len:
        fail(f"--chunk-overlap {overlap} must be at least 0 and below the model's doc_max_len ({model.config.doc_max_len})")


def corpus_documents(
    model: "ClaraModel", corpus: Path, overlap: int, chunk: bool = False
) -> tuple[Iterator["Document"], Optional[int]]:
    """Documents of a corpus file/folder (folders, and with ``chunk`` long records, cut to
    doc_max_len tokens) and their count if cheap."""
    from ..data.corpus import read_corpus
    from ..tokens import document_length

    docs = read_corpus(
        corpus, chunk_size=model.config.doc_max_len, chunk_overlap=overlap,
        count_tokens=document_length(model.tokenizer), chunk_records=chunk,
    )
    total = None
    if corpus.is_file() and corpus.suffix == ".jsonl" and not chunk:
        with open(corpus, encoding="utf-8") as f:
            total = sum(1 for line in f if line.strip())
    return docs, total


def _run_add(model: "ClaraModel", index, corpus: Path, batch_size: int, overlap: int, chunk: bool) -> None:
    from ..index import add_documents
    from ..io import DataError

    docs, total = corpus_documents(model, corpus, overlap, chunk)
    try:
        report = add_documents(model, index, docs, batch_size=batch_size, progress=True, total=total)
    except DataError as e:
        fail(e)
    line = Text(f"added {report.added} documents ({report.docs_per_second:.1f} docs/s), skipped {report.skipped} "
                f"already present; index {index.path} holds {report.total}")
    if report.truncated:
        # a piece still too long after chunking is one unbroken run of text (no spaces to cut at)
        hint = "--chunk splits them" if not chunk and not corpus.is_dir() else "pieces without spaces to cut at"
        line.append(f" ({report.truncated} added documents cut to doc_max_len tokens; {hint})", style="yellow")
    console.print(line)


@index_app.command("build")
def build(
    corpus: Path = typer.Argument(..., help="Corpus: .jsonl, .json list, or a folder of .txt/.md files."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create (or resume)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", "--checkpoint", help=MODEL_HELP),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Documents per compressor forward."),
    shard_size: int = typer.Option(4096, "--shard-size", help="Documents per committed shard."),
    int8: bool = typer.Option(False, "--int8", help="Store states as per-document int8 (half of fp16)."),
    ann: bool = typer.Option(False, "--ann", help="Also build the approximate (FAISS) search index."),
    overlap: int = typer.Option(32, "--chunk-overlap", help="Token overlap of chunks (folders; records with --chunk)."),
    chunk: bool = typer.Option(
        False, "--chunk", help="Cut JSONL/JSON records longer than doc_max_len into id#offset pieces."
    ),
    readout: Optional[bool] = typer.Option(
        None, "--readout/--no-readout",
        help="Store the generator's input rows beside the states (2x bytes, faster answers); "
        "default: on for soft-token models. New indexes only.",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda:0, ..."),
) -> None:
    """Compress CORPUS into a memory index at OUT; rerun the same command to resume a cut build."""
    from ..index import AnnConfig, build_ann, open_or_create
    from ..io import DataError

    clara, model_path = load_model(model, device, out)
    check_overlap(clara, overlap, corpus, chunk)  # before the index folder exists
    try:
        index = open_or_create(
            clara, out, storage="int8" if int8 else "float16", shard_size=shard_size, model_path=model_path,
            readout=readout,
        )
    except DataError as e:
        fail(e)
    _run_add(clara, index, corpus, batch_size, overlap, chunk)
    if ann:
        info = build_ann(index, AnnConfig(score=clara.config.retrieval_score))
        console.print(f"approximate index: {info}")


@index_app.command("add")
def add(
    index_dir: Path = typer.Argument(..., help="Existing index folder."),
    corpus: Path = typer.Argument(..., help="Documents to add (same formats as build); known ids are skipped."),
    model: Optional[str] = typer.Option(None, "--model", "-m", "--checkpoint", help=MODEL_HELP),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Documents per compressor forward."),
    overlap: int = typer.Option(32, "--chunk-overlap", help="Token overlap of chunks (folders; records with --chunk)."),
    chunk: bool = typer.Option(
        False, "--chunk", help="Cut JSONL/JSON records longer than doc_max_len into id#offset pieces."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda:0, ..."),
) -> None:
    """Compress more documents into an existing index."""
    index, clara = open_with_model(index_dir, model, device)
    check_overlap(clara, overlap, corpus, chunk)
    _run_add(clara, index, corpus, batch_size, overlap, chunk)


@index_app.command("stats")
def stats(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    verify: bool = typer.Option(False, "--verify", help="Recompute every shard checksum."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Counts, sizes and the model an index was built with."""
    from ..index import MemoryIndex
    from ..io import DataError

    try:
        index = MemoryIndex.open(index_dir)
    except DataError as e:
        fail(e)
    info = index.stats()
    if verify:
        info["problems"] = index.verify()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        table = Table(show_header=False)
        for key, value in info.items():
            table.add_row(key, Text(str(value)))
        console.print(table)
    if verify and info["problems"]:
        raise typer.Exit(1)


@index_app.command("compact")
def compact(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    shard_size: Optional[int] = typer.Option(
        None, "--shard-size", min=1, help="Rows per merged shard (default: the index's own shard size)."
    ),
) -> None:
    """Merge the small shards that one-at-a-time adds leave (POST /v1/documents); rows keep their numbers."""
    from ..index import MemoryIndex
    from ..io import DataError

    try:
        index = MemoryIndex.open(index_dir)
        removed = index.compact(shard_size)
    except DataError as e:
        fail(e)
    after = len(index.shards)
    console.print(Text(f"{index.path}: {after + removed} shards -> {after} ({len(index)} documents)"))


@index_app.command("search")
def search(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    query: str = typer.Argument(..., help="Question or query text."),
    k: int = typer.Option(5, "-k", min=1, help="Documents to return."),
    ann: bool = typer.Option(False, "--ann", help="Use the approximate (FAISS) path."),
    nprobe: int = typer.Option(DEFAULT_NPROBE, "--nprobe", min=1, help="IVF cells visited by --ann (more: better recall, slower)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", "--checkpoint", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = typer.Option("auto", help="auto, cpu, cuda:0, ..."),
) -> None:
    """Top-k documents for QUERY by the model's retrieval score over memory states."""
    from ..index import Searcher
    from ..io import DataError

    index, clara = open_with_model(index_dir, model, device)
    try:
        method = "ann" if ann else "exact"
        searcher = Searcher(index, method=method, nprobe=nprobe, score=clara.config.retrieval_score)
    except DataError as e:
        fail(e)
    if k < 1:
        fail("k must be >= 1")
    q = clara.encode_query([query])
    scores, rows = searcher.search(q, k)
    hits = []
    for s, r in zip(scores[0].tolist(), rows[0].tolist()):
        if r >= 0:
            d = index.document(r)
            hits.append({"id": d.id, "title": d.title, "score": round(s, 6), "text": d.text})
    if as_json:
        typer.echo(json.dumps(hits, indent=2, ensure_ascii=False))
        return
    table = Table("rank", "score", "id", "title", "text")
    for i, h in enumerate(hits, 1):
        table.add_row(str(i), f"{h['score']:.4f}", Text(h["id"]), Text(h["title"]), Text(h["text"][:80]))
    console.print(table)


@index_app.command("ann")
def ann(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    dim: int = typer.Option(256, help="Projected dimensions."),
    nlist: int = typer.Option(0, help="IVF cells (0: about 4*sqrt(vectors))."),
    score: Optional[str] = typer.Option(
        None, help="Retrieval score to serve: cosine or maxsim (default: the one of the model that built the index)."
    ),
) -> None:
    """(Re)build the approximate search index over every document now in the index."""
    from ..index import AnnConfig, MemoryIndex, build_ann
    from ..io import DataError

    try:
        index = MemoryIndex.open(index_dir)
        score = score or index.manifest["model_fingerprint"].get("retrieval_score", "cosine")
        info = build_ann(index, AnnConfig(dim=dim, nlist=nlist, score=score))
    except (DataError, ValueError) as e:
        fail(e)
    console.print(f"approximate index: {info}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(index_app, name="index")
