"""TrainConfig: one dataclass for all three stages, loadable from YAML with overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ADAPTERS

STAGES = ("scp", "instruct", "e2e", "text")
#: What a stage-3 teacher scores each candidate by (``clara.train.e2e.candidate_losses``).
TEACHERS = ("answer", "question", "question_answer", "question_text")


@dataclass
class TrainConfig:
    """Hyper-parameters and data of one training stage (CLARA.md sections 3-5)."""

    stage: str = field(default="scp", metadata={"help": "scp (stage 1), instruct (stage 2), e2e (stage 3), or text (full-text baseline)."})
    output_dir: str = field(default="runs/scp", metadata={"help": "Checkpoints, metrics.jsonl and the final model."})
    init: str = field(default="", metadata={"help": "Previous stage's checkpoint folder; empty = fresh adapters on `model.backbone`."})
    model: dict[str, Any] = field(default_factory=dict, metadata={"help": "ClaraConfig fields for a fresh model."})
    data: list[str] = field(default_factory=list, metadata={"help": "Training files: SCP JSONL (scp) or QA datasets (instruct, e2e)."})
    recon_data: list[str] = field(default_factory=list, metadata={"help": "Corpora whose passages become reconstruction rows (scp)."})
    corpus_negatives: int = field(default=0, metadata={"help": "Negatives added per question to QA files that come with a passage corpus (2Wiki questions + corpus): BM25's best answer-free passages (data.qa.bm25_negatives)."})
    exclude_ids: str = field(default="", metadata={"help": "JSON file of {dataset: [ids]} never trained on (the dev split)."})
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"qa": 1.0, "qa_single": 1.0, "paraphrase": 1.0, "reconstruct": 1.0},
        metadata={"help": "Relative frequency of SCP tasks among those a row supports."},
    )
    max_rows: int = field(default=0, metadata={"help": "Use at most this many training rows (0 = all)."})
    batch_size: int = field(default=4, metadata={"help": "Examples per process per micro-batch."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    lr: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    adapter_lr: dict[str, float] = field(default_factory=dict, metadata={"help": "Peak learning rate per adapter, e.g. {query_reasoner: 1e-3}; adapters not named (and memory rows) use `lr`."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps with linear warmup."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    epochs: int = field(default=1, metadata={"help": "Passes over the data (ignored when max_steps > 0)."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps (0 = epochs * steps per epoch)."})
    max_minutes: float = field(default=0.0, metadata={"help": "Stop cleanly (and save) after this many minutes (0 = no limit)."})
    mse_weight: float = field(default=0.1, metadata={"help": "lambda of CE + lambda * MSE (scp, instruct)."})
    bow_weight: float = field(default=0.0, metadata={"help": "Weight of the bag-of-words anchoring loss on memory slots (scp, instruct; clara/train/bow.py; 0 = the paper)."})
    span_weight: float = field(default=0.0, metadata={"help": "Weight of the span-mean loss: each slot's soft token against its span's mean input embedding, relative squared distance (scp, instruct; bow.span_loss; 0 = off)."})
    oracle_mix: float = field(default=0.0, metadata={"help": "Fraction of stage-1 examples whose generator reads the span means of the document (bow.span_means: what a perfect anchoring writes) instead of its memory (0 = the paper)."})
    memory_dropout: float = field(default=0.0, metadata={"help": "Fraction of stage-1 examples whose generator reads zeroed memory (read_memory(0)), so it learns a no-document prior and info flow's zeroed baseline is calibrated (0 = the paper)."})
    recon_mix: float = field(default=0.0, metadata={"help": "Share of questions (instruct, e2e) that also train reconstruction of one document they read or rank (rehearsal of stage 1; 0 = the paper)."})
    recon_target_len: int = field(default=128, metadata={"help": "Target tokens kept per rehearsal reconstruction (recon_mix)."})
    retrieval_weight: float = field(default=0.0, metadata={"help": "Weight of a contrastive retrieval loss in stage 2 (instruct): the compressor encodes the question and ranks the k documents it reads, multi-positive InfoNCE on the gold ones (instruct.retrieval_nce); stage 3's query reasoner starts from it (0 = the paper)."})
    retrieval_docs: int = field(default=0, metadata={"help": "Documents each question ranks in retrieval_weight's loss: the k it reads, then more of its own candidates up to this many, compressed for ranking only (0 = the k read)."})
    retrieval_in_batch: bool = field(default=False, metadata={"help": "Also rank the batch's other questions' documents as negatives in retrieval_weight's loss (in-batch negatives), so questions reading only gold (NQ) learn too."})
    retrieval_temperature: float = field(default=0.02, metadata={"help": "Temperature on the retrieval scores (in [-1, 1]) in retrieval_weight's softmax."})
    max_target_len: int = field(default=256, metadata={"help": "Target tokens kept per example."})
    train_generator: bool = field(default=True, metadata={"help": "Train the generator adapter (False: ICAE-style frozen decoder)."})
    train_query_reasoner: bool = field(default=True, metadata={"help": "Train the query reasoner in stage 3 (e2e; False: it stays the copy of the compressor it starts as, and only the generator trains, reading its top k)."})
    k_docs: int = field(default=5, metadata={"help": "Documents read per question (instruct) / selected top-k (e2e)."})
    n_candidates: int = field(default=20, metadata={"help": "Candidate documents per question (e2e)."})
    tau: float = field(default=1.0, metadata={"help": "Temperature of the differentiable top-k (e2e)."})
    distill_weight: float = field(default=0.0, metadata={"help": "Weight of perplexity distillation (e2e; Atlas): KL from a teacher's ranking of each question's candidates (distill_teacher) to the query reasoner's (e2e.distillation_kl; 0 = the paper)."})
    distill_teacher: str = field(default="answer", metadata={"help": "What the teacher scores each candidate by, reading it alone: answer, question, question_answer (read from memory) or question_text (the plain backbone reading the text) (e2e.candidate_losses)."})
    distill_top: int = field(default=0, metadata={"help": "Distil over each question's top candidates by the current scores only, as Atlas distils over what it retrieved (0 = all n_candidates; the teacher reads each once per step)."})
    distill_teacher_temperature: float = field(default=0.25, metadata={"help": "Temperature on the teacher's per-token losses (nats) in its softmax over candidates (at 135M they spread ~0.5 nats)."})
    distill_score_temperature: float = field(default=0.02, metadata={"help": "Temperature on the retrieval scores (in [-1, 1]; at 135M a question's candidates spread ~0.04) in the query reasoner's softmax over candidates."})
    reader_teacher: str = field(default="", metadata={"help": "A full-text reader checkpoint (`clara train text`) whose answer distributions, reading the same documents as text, the generator also learns (instruct, e2e; train.reader_distill; empty = off)."})
    reader_distill_weight: float = field(default=1.0, metadata={"help": "Weight of the per-token KL towards reader_teacher, added to the answer's cross-entropy."})
    reader_distill_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature T of that KL (scaled by T^2)."})
    seed: int = field(default=0, metadata={"help": "Seed of data order, task choice and dropout."})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 (accelerate autocast)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations to save memory."})
    log_every: int = field(default=10, metadata={"help": "Steps between metrics.jsonl lines."})
    save_every: int = field(default=200, metadata={"help": "Steps between resumable checkpoints."})
    eval_every: int = field(default=0, metadata={"help": "Steps between information-flow measurements (scp; 0 = off)."})
    eval_rows: int = field(default=24, metadata={"help": "Held-out rows used by the information-flow measurement."})

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        for f in dataclasses.fields(self):  # YAML 1.1 reads `5e-4` (no dot) as a string
            value = getattr(self, f.name)
            if f.type in ("float", "int") and isinstance(value, str):
                try:
                    setattr(self, f.name, float(value) if f.type == "float" else int(value))
                except ValueError:
                    raise ValueError(f"training config field {f.name!r} must be a number, got {value!r}") from None
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        for name in ("oracle_mix", "memory_dropout", "recon_mix"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("mse_weight", "bow_weight", "span_weight", "distill_weight", "retrieval_weight", "reader_distill_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.distill_weight and not self.train_query_reasoner:
            raise ValueError("distill_weight trains the query reasoner; it needs train_query_reasoner=true")
        for name in ("retrieval_docs", "corpus_negatives"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.distill_top < 0 or self.distill_top == 1:
            raise ValueError(f"distill_top must be 0 (all candidates) or >= 2, got {self.distill_top}")
        if self.distill_teacher not in TEACHERS:
            raise ValueError(f"distill_teacher must be one of {TEACHERS}, got {self.distill_teacher!r}")
        if self.reader_teacher and self.stage not in ("instruct", "e2e"):
            raise ValueError(f"reader_teacher distils answers in stages instruct and e2e, not {self.stage!r}")
        for name in ("tau", "distill_teacher_temperature", "distill_score_temperature", "retrieval_temperature",
                     "reader_distill_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name, value in self.adapter_lr.items():
            if name not in ADAPTERS:
                raise ValueError(f"adapter_lr: unknown adapter {name!r}; expected some of {ADAPTERS}")
            try:
                rate = float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
            except (TypeError, ValueError):
                rate = 0.0
            if isinstance(value, bool) or not rate > 0:
                raise ValueError(f"adapter_lr.{name} must be a number > 0, got {value!r}")
            self.adapter_lr[name] = rate
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None, **kw: Any) -> "TrainConfig":
        """Read a YAML file, then apply ``key=value`` overrides (values parsed as YAML)."""
        data: dict[str, Any] = {}
        if path:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: a training config must be a YAML mapping")
            data.update(loaded)
        data.update(kw)
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} must look like key=value")
            if not value.strip():  # `max_steps=` from an unset shell variable would silently become None
                raise ValueError(f"override {item!r} has no value")
            target = data
            *parents, leaf = key.split(".")
            for p in parents:  # model.compression_ratio=32
                target = target.setdefault(p, {})
            parsed = yaml.safe_load(value)
            if isinstance(parsed, str):  # `5e-4` is a string to YAML 1.1; a number here
                try:
                    parsed = float(parsed)
                except ValueError:
                    pass
            target[leaf] = parsed
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config fields: {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
