"""CLI commands: ``clara synth run`` (corpus -> SCP training data) and ``clara synth serve-teacher``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)

synth_app = typer.Typer(help="Stage-1 (SCP) data: QA, complex QA and paraphrases written and verified by a teacher LLM.",
                        no_args_is_help=True)


@synth_app.command("run")
def run(
    corpus: Path = typer.Argument(..., help="Corpus: .jsonl (id/title/text or FlashRAG contents), .json list, or folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL (appended; a rerun resumes)."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1. Without it the model runs locally."),
    model: str = typer.Option("smollm2-135m-instruct", help="Served model name, or local HF folder / hub id."),
    api_key: str = typer.Option("EMPTY", envvar="OPENAI_API_KEY", help="API key (env OPENAI_API_KEY)."),
    json_mode: bool = typer.Option(False, help="Ask the server for JSON output (response_format=json_object)."),
    workers: int = typer.Option(8, help="Documents in flight at once (server concurrency)."),
    batch_size: int = typer.Option(8, help="Local teacher: requests per generate() batch."),
    device: str = typer.Option("auto", help="Local teacher device."),
    threads: Optional[int] = typer.Option(None, help="Local teacher on CPU: torch threads."),
    dtype: str = typer.Option("float32", help="Local teacher weights dtype (bfloat16 or float16 halve the memory)."),
    max_rounds: int = typer.Option(10, help="Verification/coverage rounds per document."),
    max_tokens: int = typer.Option(1024, help="Most tokens per teacher reply."),
    temperature: float = typer.Option(0.7, help="Sampling temperature for writing data."),
    judge_temperature: float = typer.Option(0.0, help="Temperature for verdicts (0: greedy)."),
    parse_retries: int = typer.Option(2, help="Re-asks after a malformed reply."),
    retries: int = typer.Option(6, help="HTTP retries with exponential backoff."),
    timeout: float = typer.Option(300.0, help="Seconds per HTTP request."),
    types: str = typer.Option("qa,complex_qa,paraphrase", help="Comma-separated data types to generate."),
    no_coverage: bool = typer.Option(False, "--no-coverage", help="Skip the coverage check (no supplementary questions)."),
    prompts: Optional[Path] = typer.Option(None, help="YAML/JSON file overriding prompt templates (see docs/synth.md)."),
    limit: Optional[int] = typer.Option(None, help="Process at most this many new documents."),
    max_doc_words: int = typer.Option(400, help="Cut longer documents to this many words (a CJK character counts as one)."),
    max_failed_docs: int = typer.Option(20, help="Stop after this many documents in a row fail (teacher down)."),
) -> None:
    """Generate verified SCP training rows for every document of CORPUS not yet in OUT."""
    from rich.console import Console
    from tqdm import tqdm

    from ..data.corpus import read_corpus
    from ..synth.pipeline import SynthConfig, check_settings, done_ids, run_synth, summary_path
    from ..synth.prompts import load_prompts
    from ..synth.teacher import TeacherConfig, TeacherUnavailable, make_teacher
    from .index import fail

    cfg = SynthConfig(
        data_types=tuple(t.strip() for t in types.split(",") if t.strip()), max_rounds=max_rounds,
        coverage=not no_coverage, max_tokens=max_tokens, temperature=temperature, parse_retries=parse_retries,
        workers=workers, max_doc_words=max_doc_words, limit=limit, judge_temperature=judge_temperature,
        max_failed_docs=max_failed_docs,
    )
    tcfg = TeacherConfig(base_url=base_url, model=model, api_key=api_key, timeout=timeout, max_retries=retries,
                         json_mode=json_mode, device=device, dtype=dtype, batch_size=batch_size, threads=threads)
    prompt_set = load_prompts(prompts)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        check_settings(out, cfg, prompt_set)  # before loading a teacher: a refused rerun should fail fast
    except ValueError as e:
        fail(e)
    done = done_ids(out) if out.exists() else set()
    # a cheap first pass over the corpus, for the progress bar's total
    todo = sum(1 for d in read_corpus(corpus) if d.id not in done)
    teacher = make_teacher(tcfg)
    bar = tqdm(total=min(todo, limit) if limit else todo, unit="doc", desc="synth")
    kept = [0]

    def progress(result) -> None:
        kept[0] += sum(len(r["answers"]) for r in result.rows if r["data_type"] != "paraphrase")
        bar.set_postfix(pairs=kept[0], refresh=False)
        bar.update()

    try:
        summary = run_synth(read_corpus(corpus), teacher, out, cfg, prompt_set, progress=progress)
    except TeacherUnavailable as e:
        fail(f"{e}; {summary_path(out)} counts what is done")
    except Exception as e:
        if type(e).__module__.startswith("openai"):  # a bad key or model name: every request would fail alike
            fail(f"teacher {base_url}: {type(e).__name__}: {e}")
        raise
    finally:
        bar.close()
        teacher.close()
    _print_summary(Console(), summary, out, summary_path(out))


def _print_summary(console, summary, out: Path, where: Path) -> None:
    from rich.table import Table

    table = Table(title=f"clara synth: {out}", show_header=False)
    d = summary.to_dict()
    table.add_row("documents (total / new / skipped / failed)",
                  f"{summary.documents} / {summary.new_documents} / {summary.skipped_documents} / {summary.failed_documents}")
    table.add_row("kept qa / complex_qa / paraphrase", " / ".join(str(summary.kept.get(k, 0)) for k in ("qa", "complex_qa", "paraphrase")))
    table.add_row("pairs per document", f"{summary.pairs_per_document:.2f}")
    table.add_row("rejected by the judge (qa / complex_qa / paraphrase)",
                  " / ".join(str(summary.rejected.get(k, 0)) for k in ("qa", "complex_qa", "paraphrase")))
    table.add_row("dropped (unjudged pairs / paraphrases / bad items)",
                  " / ".join(str(summary.dropped.get(k, 0)) for k in ("unjudged_dropped", "paraphrase_dropped", "dropped_items")))
    table.add_row("malformed replies / requests", f"{summary.malformed_replies} / {summary.requests}")
    table.add_row("rounds used (mean; histogram)", f"{summary.mean_rounds:.2f}; {d['rounds_histogram']}")
    table.add_row("coverage complete", f"{summary.coverage_complete} of {summary.documents}")
    console.print(table)
    console.print(f"summary written to {where}")


@synth_app.command("serve-teacher")
def serve_teacher(
    model: str = typer.Option("smollm2-135m-instruct", help="Local HF folder, hub id, or the packaged default."),
    host: str = typer.Option("127.0.0.1", help="Bind address (loopback by default)."),
    port: int = typer.Option(8000, help="Port."),
    served_name: Optional[str] = typer.Option(None, help="Model name clients send (default: --model)."),
    device: str = typer.Option("auto", help="Device."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    batch_size: int = typer.Option(8, help="Most concurrent requests per generate() batch."),
    threads: Optional[int] = typer.Option(None, help="CPU: torch threads."),
) -> None:
    """Serve a transformers chat model as a small OpenAI-compatible endpoint (/v1/chat/completions)."""
    import uvicorn

    from ..synth.teacher import LocalTeacher, TeacherConfig
    from ..synth.teacher_server import create_app

    teacher = LocalTeacher(TeacherConfig(model=model, device=device, dtype=dtype, batch_size=batch_size, threads=threads))
    log.info("serving %s at http://%s:%d/v1", served_name or model, host, port)
    try:
        uvicorn.run(create_app(teacher, served_name), host=host, port=port, log_level="info")
    finally:
        teacher.close()


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(synth_app, name="synth")
