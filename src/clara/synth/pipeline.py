"""The synthesis pipeline: per document, generate -> verify -> coverage rounds -> append.

Per document (CLARA.md section 3):
1. the teacher writes simple QA pairs, complex QA pairs and a paraphrase;
2. each round, the teacher judges every not-yet-judged pair against the document (rejected
   pairs are dropped) and the paraphrase for faithfulness (an unfaithful one is rewritten
   next round), then checks coverage of the document's facts and writes supplementary
   questions, which are judged in the next round;
3. after ``max_rounds`` rounds whatever is still unjudged or unfaithful is dropped; all
   drops are counted.

Output rows follow the SCP training format, one row per (document, data type):
``{"data_type": "qa"|"complex_qa"|"paraphrase", "question": [...], "answers": [...],
"docs": [document], "doc_id": id}``; a paraphrase row has ``question: []`` and the paraphrase
as its single answer. A document's rows are appended with one write and fsynced, then a
line in ``<out>.log.jsonl`` records its counts; a rerun skips every document already in
either file, so a kill loses at most the documents in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..data.corpus import Document
from ..io import atomic_write_json, read_jsonl
from .parse import ParseError, QAPair, dedupe, parse_coverage, parse_faithful, parse_paraphrase, parse_qa_pairs, parse_verdicts
from .prompts import Prompts, render
from .teacher import Teacher, TeacherRejected, TeacherUnavailable

log = logging.getLogger(__name__)

DATA_TYPES = ("qa", "complex_qa", "paraphrase")


@dataclass
class SynthConfig:
    """What to generate and how hard to try."""

    data_types: tuple[str, ...] = field(default=DATA_TYPES, metadata={"help": "Subset of qa, complex_qa, paraphrase."})
    max_rounds: int = field(default=10, metadata={"help": "Verification/coverage rounds per document (paper: 10)."})
    coverage: bool = field(default=True, metadata={"help": "Ask for supplementary questions on uncovered facts."})
    max_tokens: int = field(default=1024, metadata={"help": "Most tokens per teacher reply."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature for writing data (retries reuse it)."})
    judge_temperature: float = field(default=0.0, metadata={"help": "Temperature for verdicts (0: greedy)."})
    parse_retries: int = field(default=2, metadata={"help": "Re-asks after a malformed reply before it is counted."})
    workers: int = field(default=8, metadata={"help": "Documents in flight at once (server concurrency)."})
    max_doc_words: int = field(default=400, metadata={"help": "Longer documents are cut to this many words (a CJK character counts as one)."})
    min_paraphrase_ratio: float = field(default=0.3, metadata={"help": "A paraphrase shorter than this share of the document's words is malformed."})
    limit: int | None = field(default=None, metadata={"help": "Stop after this many new documents."})
    max_failed_docs: int = field(default=20, metadata={"help": "Abort after this many documents in a row fail (teacher down)."})

    def __post_init__(self) -> None:
        bad = set(self.data_types) - set(DATA_TYPES)
        if bad or not self.data_types:
            raise ValueError(f"data_types must be a non-empty subset of {DATA_TYPES}, got {self.data_types}")
        if self.max_rounds < 1 or self.workers < 1 or self.parse_retries < 0:
            raise ValueError("max_rounds and workers must be >= 1, parse_retries >= 0")


@dataclass
class DocResult:
    """What one document produced, and what it cost."""

    doc_id: str
    rows: list[dict[str, Any]]
    stats: dict[str, Any]


class _Malformed(Exception):
    """A reply that stayed unparsable after every re-ask."""


# a word: a run of non-space characters, except that each CJK ideograph, kana or hangul syllable
# is a word of its own (those scripts do not separate words by spaces)
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def cut_words(text: str, max_words: int) -> str:
    """``text`` whole when it has at most ``max_words`` words, else its first ``max_words`` words
    with whitespace runs collapsed to one space; a CJK character counts as one word."""
    for i, word in enumerate(_WORD.finditer(text)):
        if i == max_words:
            return " ".join(text[: word.start()].split())
    return text


class _DocJob:
    """The state of one document through the rounds; a plain object so its steps read in order."""

    def __init__(self, doc: Document, teacher: Teacher, prompts: Prompts, cfg: SynthConfig) -> None:
        self.doc, self.teacher, self.prompts, self.cfg = doc, teacher, prompts, cfg
        self.text = cut_words(doc.full_text(), cfg.max_doc_words)
        self.stats: Counter[str] = Counter()

    def ask(self, prompt: str, parse: Callable[[str], Any], temperature: float, what: str) -> Any:
        """Send a prompt and parse the reply, re-asking up to parse_retries times; _Malformed after that."""
        messages = [{"role": "system", "content": self.prompts.system}, {"role": "user", "content": prompt}]
        for attempt in range(self.cfg.parse_retries + 1):
            self.stats["requests"] += 1
            reply = self.teacher.complete(messages, self.cfg.max_tokens, temperature)
            try:
                return parse(reply)
            except ParseError as e:
                self.stats["malformed_replies"] += 1
                log.debug("doc %s: malformed %s reply (attempt %d): %s | %.200r", self.doc.id, what, attempt + 1, e, reply)
        self.stats[f"malformed_{what}"] += 1
        raise _Malformed(what)

    def gen_pairs(self, template: str, what: str) -> list[QAPair]:
        def parse(r: str) -> list[QAPair]:
            pairs, dropped = parse_qa_pairs(r)
            self.stats["dropped_items"] += dropped
            return pairs

        try:
            return self.ask(render(template, document=self.text), parse, self.cfg.temperature, what)
        except _Malformed:
            return []

    def gen_paraphrase(self) -> str | None:
        try:
            return self.ask(
                render(self.prompts.paraphrase, document=self.text),
                lambda r: parse_paraphrase(r, self.text, self.cfg.min_paraphrase_ratio),
                self.cfg.temperature,
                "paraphrase",
            )
        except _Malformed:
            return None

    def judge_pairs(self, pending: list[tuple[str, QAPair]]) -> tuple[list[tuple[str, QAPair]], list[tuple[str, QAPair]]]:
        """(accepted, still pending): rejected pairs are counted and dropped; unjudged ones wait a round."""
        listing = "\n".join(f"{i}. Question: {p.question}\n   Answer: {p.answer}" for i, (_, p) in enumerate(pending, 1))
        try:
            verdicts = self.ask(
                render(self.prompts.verify_qa, document=self.text, pairs=listing),
                lambda r: parse_verdicts(r, len(pending)),
                self.cfg.judge_temperature,
                "verdicts",
            )
        except _Malformed:
            return [], pending
        accepted, waiting = [], []
        for i, item in enumerate(pending, 1):
            if i not in verdicts:
                waiting.append(item)
            elif verdicts[i]:
                accepted.append(item)
            else:
                self.stats[f"rejected_{item[0]}"] += 1
        return accepted, waiting

    def judge_paraphrase(self, text: str) -> bool | None:
        try:
            return self.ask(
                render(self.prompts.verify_paraphrase, document=self.text, paraphrase=text),
                parse_faithful,
                self.cfg.judge_temperature,
                "faithfulness",
            )
        except _Malformed:
            return None

    def run(self) -> DocResult:
        cfg, types = self.cfg, set(self.cfg.data_types)
        seen: set[str] = set()
        pending: list[tuple[str, QAPair]] = []
        for kind, template in (("qa", self.prompts.simple_qa), ("complex_qa", self.prompts.complex_qa)):
            if kind in types:
                new = dedupe(self.gen_pairs(template, kind), seen)
                self.stats[f"generated_{kind}"] += len(new)
                pending += [(kind, p) for p in new]
        want_para = "paraphrase" in types
        paraphrase = self.gen_paraphrase() if want_para else None
        faithful = False
        accepted: list[tuple[str, QAPair]] = []
        covered = not (cfg.coverage and "qa" in types)
        rounds = 0
        for rnd in range(1, cfg.max_rounds + 1):
            rounds = rnd
            if pending:
                ok, pending = self.judge_pairs(pending)
                accepted += ok
            if want_para and not faithful:
                if paraphrase is None:
                    paraphrase = self.gen_paraphrase()
                if paraphrase is not None:
                    verdict = self.judge_paraphrase(paraphrase)
                    if verdict is False:
                        self.stats["rejected_paraphrase"] += 1
                        paraphrase = None  # rewritten next round
                    faithful = bool(verdict)
            # Supplementary questions asked in the last round could never be judged: skip the call.
            if not covered and not pending and rnd < cfg.max_rounds:
                covered, extra = self.check_coverage(accepted, seen)
                self.stats["generated_supplementary"] += len(extra)
                pending += [("qa", p) for p in extra]
            if not pending and covered and (faithful or not want_para):
                break
        self.stats["unjudged_dropped"] += len(pending)
        if want_para and not faithful:
            self.stats["paraphrase_dropped"] += 1
        self.stats["rounds"] = rounds
        self.stats["coverage_complete"] = int(covered)
        return DocResult(self.doc.id, self.rows(accepted, paraphrase if faithful else None), dict(self.stats))

    def check_coverage(self, accepted: list[tuple[str, QAPair]], seen: set[str]) -> tuple[bool, list[QAPair]]:
        listing = "\n".join(f"{i}. {p.question} -> {p.answer}" for i, (_, p) in enumerate(accepted, 1)) or "(none)"
        try:
            complete, extra = self.ask(
                render(self.prompts.coverage, document=self.text, pairs=listing), parse_coverage, self.cfg.temperature, "coverage"
            )
        except _Malformed:
            return False, []
        return complete, dedupe(extra, seen)

    def rows(self, accepted: list[tuple[str, QAPair]], paraphrase: str | None) -> list[dict[str, Any]]:
        # docs holds the text the teacher saw (title + text), which is what the compressor will read
        out = []
        for kind in ("qa", "complex_qa"):
            pairs = [p for k, p in accepted if k == kind]
            self.stats[f"kept_{kind}"] = len(pairs)
            if pairs:
                out.append({"data_type": kind, "question": [p.question for p in pairs],
                            "answers": [p.answer for p in pairs], "docs": [self.text], "doc_id": self.doc.id})
        self.stats["kept_paraphrase"] = int(paraphrase is not None)
        if paraphrase is not None:
            out.append({"data_type": "paraphrase", "question": [], "answers": [paraphrase],
                        "docs": [self.text], "doc_id": self.doc.id})
        return out


def synthesize_document(doc: Document, teacher: Teacher, prompts: Prompts, cfg: SynthConfig) -> DocResult:
    """Run the whole per-document loop; TeacherUnavailable propagates (the document is not done)."""
    return _DocJob(doc, teacher, prompts, cfg).run()


def log_path(out: Path) -> Path:
    return out.with_name(out.name + ".log.jsonl")


def summary_path(out: Path) -> Path:
    return out.with_name(out.name + ".summary.json")


def settings_path(out: Path) -> Path:
    return out.with_name(out.name + ".settings.json")


#: SynthConfig fields that change what a document's rows are (workers, limit and the like do not)
OUTPUT_SETTINGS = ("data_types", "max_rounds", "coverage", "max_tokens", "temperature", "judge_temperature",
                   "max_doc_words", "min_paraphrase_ratio")


def check_settings(out: Path, cfg: SynthConfig, prompts: Prompts) -> None:
    """Record the settings a file is written with; a rerun with others would mix two kinds of rows."""
    settings = {k: getattr(cfg, k) for k in OUTPUT_SETTINGS}
    settings["data_types"] = list(cfg.data_types)
    blob = json.dumps(asdict(prompts), sort_keys=True).encode("utf-8")
    settings["prompts_sha256"] = hashlib.sha256(blob).hexdigest()
    path = settings_path(out)
    if not path.exists():
        atomic_write_json(path, settings)
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(k for k in settings if old.get(k) != settings[k])
    if changed:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in changed if k != "prompts_sha256")
        detail += ", the prompts" if "prompts_sha256" in changed else ""
        raise ValueError(f"{out} was written with other settings ({detail.strip(', ')}); rerun with the "
                         f"recorded ones ({path}) or write to another --out")


def _repair_tail(path: Path) -> None:
    """Cut an unterminated last line (a write torn by a kill) so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(data) - keep)
        f.truncate(keep)


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows with one write() and fsync: a kill leaves all of a document's rows or a torn tail."""
    if not rows:
        return
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, blob)
        os.fsync(fd)
    finally:
        os.close(fd)


def done_ids(out: Path) -> set[str]:
    """Documents finished by earlier runs: ids in the output or in its log."""
    ids: set[str] = set()
    for path in (out, log_path(out)):
        if path.exists():
            ids.update(str(obj["doc_id"]) for _, obj in read_jsonl(path, torn_tail_ok=True) if "doc_id" in obj)
    return ids


@dataclass
class Summary:
    """Totals over every document in the log (this run and earlier ones)."""

    documents: int = 0
    new_documents: int = 0
    skipped_documents: int = 0
    failed_documents: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    malformed_replies: int = 0
    requests: int = 0
    rounds_histogram: dict[int, int] = field(default_factory=dict)
    coverage_complete: int = 0

    @property
    def pairs_per_document(self) -> float:
        return (self.kept.get("qa", 0) + self.kept.get("complex_qa", 0)) / max(1, self.documents)

    @property
    def mean_rounds(self) -> float:
        return sum(r * n for r, n in self.rounds_histogram.items()) / max(1, self.documents)

    def add(self, stats: dict[str, Any]) -> None:
        self.documents += 1
        for kind in DATA_TYPES:
            self.kept[kind] = self.kept.get(kind, 0) + int(stats.get(f"kept_{kind}", 0))
            self.rejected[kind] = self.rejected.get(kind, 0) + int(stats.get(f"rejected_{kind}", 0))
        for what in ("unjudged_dropped", "paraphrase_dropped", "dropped_items"):
            self.dropped[what] = self.dropped.get(what, 0) + int(stats.get(what, 0))
        self.malformed_replies += int(stats.get("malformed_replies", 0))
        self.requests += int(stats.get("requests", 0))
        r = int(stats.get("rounds", 0))
        self.rounds_histogram[r] = self.rounds_histogram.get(r, 0) + 1
        self.coverage_complete += int(stats.get("coverage_complete", 0))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rounds_histogram"] = {str(k): v for k, v in sorted(self.rounds_histogram.items())}
        d["pairs_per_document"] = round(self.pairs_per_document, 3)
        d["mean_rounds"] = round(self.mean_rounds, 3)
        return d


def run_synth(
    docs: Iterable[Document],
    teacher: Teacher,
    out: str | Path,
    cfg: SynthConfig,
    prompts: Prompts | None = None,
    progress: Callable[[DocResult], None] | None = None,
) -> Summary:
    """Synthesise data for every document not already in ``out``; returns the summary of the whole file.

    ``progress`` is called in the main thread after each finished document (for a progress bar).
    """
    out = Path(out)
    prompts = prompts or Prompts()
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in (out, log_path(out)):
        _repair_tail(path)
    check_settings(out, cfg, prompts)
    out.touch()  # an output file exists even when every sample is rejected
    done = done_ids(out)
    summary = Summary()
    if log_path(out).exists():
        for _, obj in read_jsonl(log_path(out), torn_tail_ok=True):
            summary.add(obj.get("stats", {}))
    todo = _pending(docs, done, summary, cfg.limit)
    failed_in_row = 0
    stop = threading.Event()
    interrupted = False
    pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="synth")
    running: dict[Future, Document] = {}

    def fill() -> None:
        # a bounded window: a 2M-document corpus is streamed, never held as futures
        while not stop.is_set() and len(running) < 2 * cfg.workers:
            doc = next(todo, None)
            if doc is None:
                return
            running[pool.submit(synthesize_document, doc, teacher, prompts, cfg)] = doc

    try:
        fill()
        while running:
            try:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                if interrupted:
                    raise  # a second Ctrl-C: drop the documents in flight too
                interrupted = True
                stop.set()
                for fut in [f for f in running if f.cancel()]:  # queued, not started
                    running.pop(fut)
                log.warning("interrupted: finishing the %d documents in flight to keep their work "
                            "(Ctrl-C again to drop them; a rerun resumes)", len(running))
                continue
            for fut in finished:
                doc = running.pop(fut)
                try:
                    result = fut.result()
                except (TeacherUnavailable, TeacherRejected) as e:
                    summary.failed_documents += 1
                    failed_in_row += 1
                    log.error("doc %s not done (a rerun retries it): %s", doc.id, e)
                    if failed_in_row >= cfg.max_failed_docs:
                        stop.set()
                    continue
                failed_in_row = 0
                _append(out, result.rows)
                _append(log_path(out), [{"doc_id": result.doc_id, "stats": result.stats}])
                summary.add(result.stats)
                summary.new_documents += 1
                if progress:
                    progress(result)
            fill()
    finally:
        # on any exit (a fatal teacher error such as a bad API key, Ctrl-C) queued documents are
        # dropped, not run, and the summary still counts everything committed so far
        pool.shutdown(wait=False, cancel_futures=True)
        atomic_write_json(summary_path(out), summary.to_dict())
    if interrupted:
        raise KeyboardInterrupt
    if stop.is_set():
        raise TeacherUnavailable(f"{failed_in_row} documents in a row failed; stopping (rerun to resume)")
    return summary


def _pending(docs: Iterable[Document], done: set[str], summary: Summary, limit: int | None) -> Iterator[Document]:
    taken = 0
    for doc in docs:
        if doc.id in done:
            summary.skipped_documents += 1
            continue
        if limit is not None and taken >= limit:
            return
        taken += 1
        yield doc
