"""The evaluation runner: systems x questions -> predictions.jsonl, metrics.json, results.md, plots.

Settings (CLARA.md section 7):

- ``oracle``: each question ranks only its own candidates (gold included);
- ``normal``: every document of the split (deduplicated by text, plus an optional extra
  corpus) is pooled into one set and each system's retriever takes the top-k from it.

Systems share one backbone: ``clara`` (memory-state retrieval and reading, per checkpoint),
``closed-book`` (backbone, no documents), ``full-text`` (CLaRa's top-k read as raw text),
``gold-text`` (the gold documents as raw text), ``bm25`` and ``minilm`` (their top-k as raw
text). ``full-text-lora`` and ``gold-text-lora`` read the same text with the generator LoRA of
``text_checkpoint`` (trained by ``clara train text`` on the same QA data: the fair full-text
RAG baseline). ``gold-clara`` and ``bm25-clara`` are CLaRa's reader (compressed memory) given
the gold documents or BM25's top-k: how much of its answers' gap is retrieval and how much
reading. ``retrieval_only`` scores Recall@k alone and generates nothing.

From Python::

    metrics = run_eval(EvalConfig(data="hotpot.jsonl", checkpoints=["ckpt/"], limit=50, out_dir="runs/x"))
    metrics["systems"]["clara"]["f1"]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from tqdm.auto import tqdm

from ..data.corpus import Document, read_corpus
from ..data.qa import QAExample, load_qa
from ..io import DataError, append_jsonl, atomic_write_json, read_jsonl
from .metrics import ANSWER_METRICS, answer_scores, mean, recall_at_k
from .readers import ClaraReader, TextReader
from .retrievers import BM25Retriever, ClaraRetriever, GoldRetriever, MiniLMRetriever, Retriever, top_k

if TYPE_CHECKING:
    from ..model import ClaraModel

log = logging.getLogger(__name__)

SETTINGS = ("oracle", "normal")
#: system name -> (retriever, reader); "clara" parts come from each checkpoint
SYSTEMS: dict[str, tuple[str | None, str]] = {
    "clara": ("clara", "clara"),
    "closed-book": (None, "text"),
    "full-text": ("clara", "text"),
    "gold-text": ("gold", "text"),
    "bm25": ("bm25", "text"),
    "minilm": ("minilm", "text"),
    "full-text-lora": ("clara", "text-lora"),
    "gold-text-lora": ("gold", "text-lora"),
    "gold-clara": ("gold", "clara"),
    "bm25-clara": ("bm25", "clara"),
}
RECALL_KS = (1, 3, 5)


@dataclass
class EvalConfig:
    """One evaluation run."""

    data: str = field(metadata={"help": "QA file (HotpotQA, 2Wiki, MuSiQue, NQ, SQuAD or FlashRAG format)."})
    out_dir: str = field(default="runs/eval", metadata={"help": "Run folder: config, predictions, metrics, report."})
    fmt: str | None = field(default=None, metadata={"help": "QA format; None = detect from the content."})
    setting: str = field(default="oracle", metadata={"help": "'oracle' (own candidates) or 'normal' (pooled)."})
    systems: list[str] = field(
        default_factory=lambda: ["clara", "closed-book", "full-text", "bm25", "minilm"],
        metadata={"help": f"Systems to compare, from {list(SYSTEMS)}."},
    )
    checkpoints: list[str] = field(
        default_factory=lambda: ["default"], metadata={"help": "CLaRa checkpoints ('default' = shipped one)."}
    )
    backbone: str | None = field(
        default=None, metadata={"help": "Backbone for baseline-only runs, or to override the checkpoints' one."}
    )
    text_checkpoint: str | None = field(
        default=None, metadata={"help": "Checkpoint of `clara train text` read by the *-text-lora systems."}
    )
    retrieval_score: str | None = field(
        default=None, metadata={"help": "Override the checkpoints' retrieval score: 'cosine' or 'maxsim' (clara.score)."}
    )
    top_k: int = field(default=5, metadata={"help": "Documents each reader gets."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N questions."})
    split: str | None = field(
        default=None, metadata={"help": "splits/dev.json-style file: evaluate only the question ids it lists."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for torch and negative sampling."})
    first_answer_only: bool = field(default=False, metadata={"help": "Score the first gold answer only (Apple's code)."})
    retrieval_only: bool = field(default=False, metadata={"help": "Recall@k only; generate nothing."})
    max_new_tokens: int = field(default=32, metadata={"help": "Answer length limit."})
    batch_size: int = field(default=8, metadata={"help": "Questions per generation batch."})
    corpus: str | None = field(default=None, metadata={"help": "Passage corpus of the 2wiki questions form."})
    pool_corpus: str | None = field(default=None, metadata={"help": "Extra documents pooled in the normal setting."})
    negatives: int = field(default=0, metadata={"help": "2wiki-corpus form: random negatives per question."})
    unanswerable: str = field(default="skip", metadata={"help": "SQuAD v2 / MuSiQue-full: 'skip' or 'keep'."})
    device: str = field(default="auto", metadata={"help": "Device of the models."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {self.setting!r}")
        unknown = [s for s in self.systems if s not in SYSTEMS]
        if unknown:
            raise ValueError(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
        if any(SYSTEMS[s][1] == "text-lora" for s in self.systems) and not self.text_checkpoint and not self.retrieval_only:
            raise ValueError("the *-text-lora systems need text_checkpoint (a checkpoint trained by `clara train text`)")
        for name in ("top_k", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or None for all questions), got {self.limit}")
        if self.pool_corpus and self.setting != "normal":
            raise ValueError("pool_corpus adds documents to the normal setting's pool; the oracle setting ranks each "
                             "question's own candidates (use setting='normal')")
        _labels(self.checkpoints)  # two checkpoints with one name would share their predictions


@dataclass
class System:
    """A retriever (or none) and a reader (or none, retrieval-only) under one name."""

    name: str
    retriever: Retriever | None
    reader: ClaraReader | TextReader | None
    info: dict[str, Any] = field(default_factory=dict)  # checkpoint, compression_ratio, ...


# ---------------------------------------------------------------------- candidates
def pool_documents(examples: Sequence[QAExample], extra: Sequence[Document] = ()) -> tuple[list[Document], dict[str, str]]:
    """One deduplicated document list for the normal setting, and each example doc id -> pooled id.

    Documents with the same full text are the same document (HotpotQA repeats a paragraph
    under a new id in every question that uses it).
    """
    pool: list[Document] = []
    by_text: dict[str, str] = {}
    canonical: dict[str, str] = {}
    for ex in examples:
        for d in ex.docs:
            text = d.full_text()
            if text not in by_text:
                by_text[text] = d.id
                pool.append(d)
            canonical[d.id] = by_text[text]
    for d in extra:
        if d.full_text() not in by_text:
            by_text[d.full_text()] = d.id
            pool.append(d)
    return pool, canonical


def candidates(examples: Sequence[QAExample], setting: str, extra: Sequence[Document] = ()) -> tuple[
    list[list[Document]], list[set[str]]
]:
    """Per question: the documents its retriever ranks and its gold ids in that list's id space."""
    if setting == "oracle":
        return [list(ex.docs) for ex in examples], [set(ex.gold_ids) for ex in examples]
    pool, canonical = pool_documents(examples, extra)
    return [pool] * len(examples), [{canonical.get(g, g) for g in ex.gold_ids} for ex in examples]


# ---------------------------------------------------------------------- systems
def _labels(checkpoints: Sequence[str]) -> list[str]:
    """Short, distinct names for the checkpoints: the folder name, with parents added where two
    share it (``clara train`` writes every run to ``OUTPUT_DIR/final``)."""
    paths = ["default" if c in ("default", "") else str(Path(c)) for c in checkpoints]
    if len(set(paths)) < len(paths):
        raise ValueError(f"checkpoint given twice: {sorted(p for p in set(paths) if paths.count(p) > 1)}")
    depth = 1
    while True:
        labels = [p if p == "default" else "/".join(Path(p).parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels) or depth > max(len(Path(p).parts) for p in paths):
            return labels
        depth += 1


def load_models(cfg: EvalConfig) -> tuple[list[tuple[str, "ClaraModel"]], "ClaraModel | None"]:
    """The CLaRa checkpoints (label, model) and the model whose backbone the baselines use."""
    from ..config import ClaraConfig
    from ..model import ClaraModel

    needs_clara = any(SYSTEMS[s][0] == "clara" or SYSTEMS[s][1] == "clara" for s in cfg.systems)
    models = []
    if needs_clara:
        score = {"retrieval_score": cfg.retrieval_score} if cfg.retrieval_score else {}
        for ckpt, label in zip(cfg.checkpoints, _labels(cfg.checkpoints)):
            path = None if ckpt == "default" else ckpt
            model = ClaraModel.from_pretrained(path, backbone=cfg.backbone, device=cfg.device, **score)
            models.append((label, model))
    if models:
        return models, models[0][1]
    if cfg.retrieval_only or all(SYSTEMS[s][1] != "text" for s in cfg.systems):
        return models, None  # BM25 / MiniLM retrieval alone needs no language model
    base = ClaraConfig(device=cfg.device, **({"backbone": cfg.backbone} if cfg.backbone else {}))
    return models, ClaraModel.from_backbone(base)


def build_systems(
    cfg: EvalConfig, models: Sequence[tuple[str, "ClaraModel"]], base: "ClaraModel | None"
) -> list[System]:
    """Instantiate the requested systems; CLaRa-based ones once per checkpoint."""
    from ..backbone import resolve_device
    from ..model import ClaraModel

    systems: list[System] = []
    text_model = None
    if not cfg.retrieval_only and any(SYSTEMS[s][1] == "text-lora" for s in cfg.systems):
        text_model = ClaraModel.from_pretrained(cfg.text_checkpoint, backbone=cfg.backbone, device=cfg.device)
    clara_parts = {label: ClaraRetriever(m, name=f"clara@{label}") for label, m in models}
    several = len(models) > 1
    shared: dict[str, Retriever] = {}
    for name in cfg.systems:
        retriever_kind, reader_kind = SYSTEMS[name]
        if cfg.retrieval_only and retriever_kind in (None, "gold"):
            continue  # nothing to measure without a real retriever
        if cfg.retrieval_only and name in ("full-text", "full-text-lora") and "clara" in cfg.systems:
            continue  # same retriever as 'clara'
        per_ckpt = retriever_kind == "clara" or reader_kind == "clara"
        for label, model in (models if per_ckpt else [("", base)]):
            if retriever_kind == "clara":
                retriever: Retriever | None = clara_parts[label]
            elif retriever_kind is None:
                retriever = None
            else:
                if retriever_kind not in shared:
                    shared[retriever_kind] = (
                        MiniLMRetriever(device=str(resolve_device(cfg.device))) if retriever_kind == "minilm"
                        else {"bm25": BM25Retriever, "gold": GoldRetriever}[retriever_kind]()
                    )
                retriever = shared[retriever_kind]
            reader = None
            if not cfg.retrieval_only:
                if reader_kind == "clara":
                    reader = ClaraReader(clara_parts[label], cfg.max_new_tokens)
                elif reader_kind == "text-lora":
                    # documents cut like the CLaRa model's own input, read by the text-trained LoRA
                    reader = TextReader(text_model, cfg.max_new_tokens, (model or text_model).config.doc_max_len, adapter="generator")
                else:
                    reader = TextReader(model, cfg.max_new_tokens)
            info: dict[str, Any] = {"retriever": retriever_kind, "reader": reader_kind}
            if per_ckpt:
                info.update(checkpoint=label, compression_ratio=model.config.compression_ratio, n_mem=model.config.n_mem)
            systems.append(System(f"{name}@{label}" if per_ckpt and several else name, retriever, reader, info))
    return systems


# ---------------------------------------------------------------------- the loop
def _done_rows(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Rows of an earlier (possibly killed) run; a torn last line is cut off so appends stay valid."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        log.warning("%s: dropping a torn last line left by an interrupted run", path)
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    return {(row["system"], row["id"]): row for _, row in read_jsonl(path, torn_tail_ok=True)}


def evaluate(
    examples: Sequence[QAExample],
    systems: Sequence[System],
    out_dir: str | Path,
    setting: str = "oracle",
    top_k_docs: int = 5,
    batch_size: int = 8,
    first_answer_only: bool = False,
    extra_docs: Sequence[Document] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Run every system on every example; append to ``out_dir/predictions.jsonl`` and return metrics.

    Rows already in predictions.jsonl (same system and question id) are kept and skipped:
    an interrupted run resumes where it stopped.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / "predictions.jsonl"
    done = _done_rows(pred_path)
    docs, gold = candidates(examples, setting, extra_docs)
    depth = max(top_k_docs, *RECALL_KS)
    for system in systems:
        todo = [i for i, ex in enumerate(examples) if (system.name, ex.id) not in done]
        if len(todo) < len(examples):
            log.info("%s: %d of %d questions already done, resuming", system.name, len(examples) - len(todo), len(examples))
        bar = tqdm(total=len(todo), desc=system.name, unit="q", disable=not progress)
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            rows = _run_batch(system, [examples[i] for i in idx], [docs[i] for i in idx], [gold[i] for i in idx],
                              top_k_docs, depth, first_answer_only)
            append_jsonl(pred_path, rows)
            done.update({(r["system"], r["id"]): r for r in rows})
            bar.update(len(idx))
        bar.close()
    wanted = {ex.id for ex in examples}
    rows = [r for (name, qid), r in done.items() if qid in wanted and name in {s.name for s in systems}]
    return aggregate(rows, systems, setting)


def _run_batch(
    system: System,
    batch: list[QAExample],
    docs: list[list[Document]],
    gold: list[set[str]],
    top_k_docs: int,
    depth: int,
    first_answer_only: bool,
) -> list[dict[str, Any]]:
    questions = [ex.question for ex in batch]
    t0 = time.perf_counter()
    ranked: list[list[Document]] = [[] for _ in batch]
    have_docs = [i for i, d in enumerate(docs) if d]  # FlashRAG / plain NQ questions come without any
    if system.retriever is not None and have_docs:
        scores = system.retriever.scores([questions[i] for i in have_docs], [docs[i] for i in have_docs],
                                         [gold[i] for i in have_docs])
        for i, s in zip(have_docs, scores):
            ranked[i] = [docs[i][j] for j in top_k(s, depth)]
    t1 = time.perf_counter()
    predictions = [None] * len(batch)
    if system.reader is not None:
        predictions = system.reader.answer(questions, [r[:top_k_docs] for r in ranked])
    t2 = time.perf_counter()
    rows = []
    for ex, r, g, pred in zip(batch, ranked, gold, predictions):
        scores: dict[str, float | None] = {}
        if pred is not None:
            scores.update(answer_scores(pred, ex.answers, first_answer_only))
        if system.retriever is not None:
            ids = [d.id for d in r]
            scores.update({f"recall@{k}": recall_at_k(ids, sorted(g), k) for k in RECALL_KS})
        rows.append({
            "system": system.name, "id": ex.id, "question": ex.question, "gold": ex.answers,
            "gold_ids": sorted(g), "prediction": pred, "retrieved": [d.id for d in r[:top_k_docs]],
            "scores": scores, "meta": ex.meta,
            # per-question latency = batch time / batch size (batched like a server would)
            "latency_ms": {"retrieve": 1000 * (t1 - t0) / len(batch), "generate": 1000 * (t2 - t1) / len(batch)},
        })
    return rows


# ---------------------------------------------------------------------- aggregation
def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    keys = [*ANSWER_METRICS, *(f"recall@{k}" for k in RECALL_KS)]
    out: dict[str, Any] = {"n": len(rows)}
    for key in keys:
        value = mean([r["scores"].get(key) for r in rows])
        if value is not None:
            out[key] = 100 * value  # percentages, as the paper reports
    return out


def aggregate(rows: Sequence[dict[str, Any]], systems: Sequence[System], setting: str) -> dict[str, Any]:
    """Metrics per system (percent), with latency and breakdowns by question type and hop count."""
    by_system: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_system[r["system"]].append(r)
    result: dict[str, Any] = {"setting": setting, "systems": {}}
    for system in systems:
        srows = by_system.get(system.name, [])
        summary = _summary(srows)
        summary["info"] = system.info
        summary["latency_ms"] = {
            part: mean([r["latency_ms"][part] for r in srows]) for part in ("retrieve", "generate")
        }
        for field_name in ("type", "hops"):
            groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in srows:
                if r["meta"].get(field_name) is not None:
                    groups[str(r["meta"][field_name])].append(r)
            if len(groups) > 1 or (groups and field_name == "type"):
                summary[f"by_{field_name}"] = {k: _summary(v) for k, v in sorted(groups.items())}
        result["systems"][system.name] = summary
    return result


# ---------------------------------------------------------------------- one call does it all
def _check_resume(out: Path, saved: dict[str, Any]) -> None:
    path = out / "config.json"
    if not path.exists():
        return
    import json

    old = json.loads(path.read_text())
    ignore = {"limit", "progress", "batch_size", "systems", "checkpoints", "device"}
    diff = sorted(k for k in saved if k not in ignore and old.get(k) != saved[k])
    if diff:
        raise ValueError(
            f"{out} holds a run with different settings ({', '.join(diff)}); use another --out folder"
        )


def _weights(models: Sequence[tuple[str, "ClaraModel"]]) -> dict[str, str]:
    """Each CLaRa checkpoint's weight hash (all three adapters and the memory rows), by label."""
    from ..index.fingerprint import adapter_hash
    from ..model import ADAPTERS

    return {label: adapter_hash(model, ADAPTERS) for label, model in models}


def _check_resume_weights(out: Path, weights: dict[str, str]) -> None:
    """A checkpoint retrained in place keeps its label: its old predictions must not be resumed."""
    path = out / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text()).get("weights_sha256", {})
    changed = {label for label, sha in weights.items() if label in old and old[label] != sha}
    if len(weights) == 1 and len(old) == 1 and list(weights.values()) != list(old.values()):
        changed |= set(weights)  # one checkpoint's systems are named without its label ('clara'): any change collides
    changed = sorted(changed)
    if changed:
        raise ValueError(
            f"{out} holds predictions of other weights under the checkpoint label(s) {', '.join(changed)}; "
            "use another --out folder"
        )


def split_ids(path: str | Path) -> set[str]:
    """Question ids of a splits file: ``{"name": {"ids": [...]}, ...}`` (splits/dev.json) or a plain list."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if isinstance(data, list):
        entries = [data]
    elif isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
        entries = [v.get("ids", []) for v in data.values()]
    else:
        raise DataError(f"{file}: expected a list of ids or {{name: {{\"ids\": [...]}}}} as splits/dev.json")
    for ids in entries:
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(f"{file}: 'ids' must be a list of strings")
    return {i for ids in entries for i in ids}


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Load data and models, evaluate every system, write the run folder; returns metrics.json's content."""
    from .report import write_report

    out = Path(cfg.out_dir)
    saved = dataclasses.asdict(cfg)
    _check_resume(out, saved)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    examples = load_qa(cfg.data, cfg.fmt, corpus=cfg.corpus, negatives=cfg.negatives,
                       unanswerable=cfg.unanswerable, seed=cfg.seed)
    if cfg.split:
        keep = split_ids(cfg.split)
        examples = [ex for ex in examples if ex.id in keep]
    examples = examples[: cfg.limit] if cfg.limit is not None else examples
    if not examples:
        raise ValueError(f"{cfg.data}: no questions to evaluate")
    extra = list(read_corpus(cfg.pool_corpus)) if cfg.pool_corpus and cfg.setting == "normal" else []
    models, base = load_models(cfg)
    saved["weights_sha256"] = _weights(models)
    _check_resume_weights(out, saved["weights_sha256"])
    systems = build_systems(cfg, models, base)
    atomic_write_json(out / "config.json", saved)
    metrics = evaluate(examples, systems, out, cfg.setting, cfg.top_k, cfg.batch_size, cfg.first_answer_only,
                       extra, cfg.progress)
    metrics.update(data=cfg.data, n_questions=len(examples), top_k=cfg.top_k,
                   answer_scoring="first gold answer" if cfg.first_answer_only else "max over gold answers")
    atomic_write_json(out / "metrics.json", metrics)
    write_report(metrics, out)
    return metrics
