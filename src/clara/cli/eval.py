"""CLI command ``clara eval``: the paper's evaluation protocol on a QA file, with baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape

from .index import fail

console = Console()


def eval_command(
    data: Path = typer.Argument(..., help="QA file: HotpotQA, 2Wiki, MuSiQue, NQ-open, SQuAD or FlashRAG format."),
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Run folder (reused to resume)."),
    checkpoint: list[str] = typer.Option(
        ["default"], "--checkpoint", "-c", "--model", "-m", help="CLaRa checkpoint folder; repeat to compare several ('default' = shipped)."
    ),
    system: list[str] = typer.Option(
        ["clara", "closed-book", "full-text", "bm25", "minilm"], "--system", "-s",
        help="clara, closed-book, full-text, gold-text, bm25, minilm, full-text-lora, gold-text-lora, "
        "gold-clara, bm25-clara (CLaRa's reader on the gold documents / BM25's top-k); repeat the option.",
    ),
    setting: str = typer.Option("oracle", help="oracle (own candidates) or normal (all documents pooled)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Force the QA format instead of detecting it."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Documents each reader gets."),
    limit: Optional[int] = typer.Option(None, help="Only the first N questions."),
    split: Optional[Path] = typer.Option(None, exists=True, help="Only the question ids listed in this splits file (e.g. splits/dev.json)."),
    seed: int = typer.Option(0, help="Seed for torch and negative sampling."),
    first_answer_only: bool = typer.Option(False, "--first-answer-only", help="Score the first gold answer only."),
    retrieval_only: bool = typer.Option(False, "--retrieval-only", help="Recall@1/3/5 only, no generation."),
    backbone: Optional[str] = typer.Option(None, help="Backbone for baseline-only runs or to override a checkpoint's."),
    text_checkpoint: Optional[Path] = typer.Option(
        None, exists=True, help="Checkpoint of `clara train text`, read by the full-text-lora and gold-text-lora systems."
    ),
    retrieval_score: Optional[str] = typer.Option(
        None, help="Override the checkpoints' retrieval score: cosine (the paper) or maxsim (late interaction)."
    ),
    corpus: Optional[Path] = typer.Option(None, help="Passage corpus for the 2wiki questions form."),
    pool_corpus: Optional[Path] = typer.Option(None, help="Extra documents pooled in the normal setting."),
    negatives: int = typer.Option(0, help="2wiki questions form: random negatives per question."),
    keep_unanswerable: bool = typer.Option(False, help="SQuAD v2 / MuSiQue-full: keep no-answer questions."),
    max_new_tokens: int = typer.Option(32, help="Answer length limit."),
    batch_size: int = typer.Option(8, help="Questions per batch."),
    device: str = typer.Option("auto", help="auto, cpu, cuda:0, ..."),
) -> None:
    """Evaluate CLaRa checkpoints against baselines: predictions, metrics, a Markdown table and plots."""
    from ..eval.runner import EvalConfig, run_eval
    from ..io import DataError

    try:
        cfg = EvalConfig(
            data=str(data), out_dir=str(out), fmt=fmt, setting=setting, systems=list(system),
            checkpoints=list(checkpoint), backbone=backbone,
            text_checkpoint=str(text_checkpoint) if text_checkpoint else None, retrieval_score=retrieval_score,
            top_k=top_k, limit=limit, seed=seed,
            split=str(split) if split else None,
            first_answer_only=first_answer_only, retrieval_only=retrieval_only, max_new_tokens=max_new_tokens,
            batch_size=batch_size, corpus=str(corpus) if corpus else None,
            pool_corpus=str(pool_corpus) if pool_corpus else None, negatives=negatives,
            unanswerable="keep" if keep_unanswerable else "skip", device=device,
        )
        run_eval(cfg)
    except (DataError, ValueError, RuntimeError) as e:
        fail(e)
    console.print(Markdown((out / "results.md").read_text()))
    console.print(f"[green]wrote[/green] {escape(str(out))}/ (config.json, predictions.jsonl, metrics.json, results.md, *.png)")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("eval")(eval_command)
