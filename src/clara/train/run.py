"""``train(cfg)``: build the model and the stage's data, then run the shared loop."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed

from ..config import ClaraConfig
from ..data.qa import QAExample, load_qa
from ..model import ClaraModel
from . import e2e, instruct, scp, text
from .config import TrainConfig
from .info_flow import info_flow
from .loop import train_loop
from .reader_distill import ReaderTeacher
from .rows import ScpRow, describe, load_exclusions, read_reconstruction, read_scp

log = logging.getLogger(__name__)


def build_model(cfg: TrainConfig) -> ClaraModel:
    """Start from the previous stage's checkpoint, or fresh adapters on a backbone."""
    if cfg.init:
        # a checkpoint fixes the model's shape; only placement, the memory readout (and its rows
        # per slot), the retrieval score, a lower compression ratio (checkpoint.fit_mem_rows)
        # and higher adapter ranks (checkpoint.grow_lora) may change
        free = ("device", "dtype", "mem_readout", "readout_tokens", "mem_scale", "retrieval_score", "compression_ratio",
                "adapter_r")
        overrides = {k: v for k, v in cfg.model.items() if k in free}
        model = ClaraModel.from_pretrained(cfg.init, **overrides)
        ignored = [f"model.{k}={v!r} (the checkpoint's: {getattr(model.config, k, None)!r})"
                   for k, v in cfg.model.items() if k not in free and getattr(model.config, k, None) != v]
        if ignored:
            log.warning("%s fixes the model's shape; ignored: %s", cfg.init, ", ".join(ignored))
        return model
    return ClaraModel.from_backbone(ClaraConfig(**cfg.model))


def init_stage(cfg: TrainConfig) -> str | None:
    """The training stage that wrote ``cfg.init`` (None: a fresh model, or a checkpoint with no record)."""
    config = Path(cfg.init) / "config.json" if cfg.init else None
    if config is None or not config.is_file():
        return None
    return json.loads(config.read_text()).get("training", {}).get("stage")


def scp_data(cfg: TrainConfig, exclude: set[str]) -> tuple[list[ScpRow], list[ScpRow]]:
    """Training rows and held-out rows (for the information-flow measure), shuffled by seed."""
    rows: list[ScpRow] = []
    dev: list[ScpRow] = []  # rows of the dev split: never trained on, measured for information flow
    for path in cfg.data:
        for r in read_scp(path):
            (dev if r.doc_id in exclude else rows).append(r)
    for path in cfg.recon_data:
        rows += read_reconstruction(path, exclude)
    if not rows:
        raise ValueError("stage scp needs training rows: set `data` (SCP JSONL) and/or `recon_data` (corpora)")
    random.Random(cfg.seed).shuffle(rows)
    n_held = cfg.eval_rows if cfg.eval_every else 0
    if dev:
        held = [r for r in dev if r.questions][:n_held]
    else:  # no dev split given: hold out some training rows instead
        if exclude:
            # the split names ids like "clara_pretrain_qa_1k:21" (file stem:line): a renamed copy of
            # the file matches none, which silently put dev documents into training before session 10
            log.warning("no SCP row is in the dev split (exclude_ids %s): ids come from the file name "
                        "and line, so check that the data file kept its name; holding out %d training rows "
                        "instead", cfg.exclude_ids, n_held)
        carved = set([i for i, r in enumerate(rows) if r.questions][:n_held])
        held = [rows[i] for i in sorted(carved)]
        rows = [r for i, r in enumerate(rows) if i not in carved]
    return rows[: cfg.max_rows or None], held


def qa_data(cfg: TrainConfig, exclude: set[str]) -> list[QAExample]:
    examples: list[QAExample] = []
    for path in cfg.data:
        loaded = load_qa(path, negatives=cfg.corpus_negatives, hard_negatives=True)
        examples += [ex for ex in loaded if ex.id not in exclude and ex.answers and ex.docs]
    if not examples:
        raise ValueError(f"stage {cfg.stage} needs QA training data: set `data` to QA dataset files")
    random.Random(cfg.seed).shuffle(examples)
    return examples[: cfg.max_rows or None]


def train(cfg: TrainConfig, accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Run one stage; the final checkpoint lands in ``cfg.output_dir/final``."""
    set_seed(cfg.seed)  # fresh adapters and memory rows are drawn from the seeded RNG
    model = build_model(cfg)
    exclude = load_exclusions(cfg.exclude_ids)
    evaluate = None
    teacher = ReaderTeacher.load(cfg.reader_teacher, cfg.reader_distill_temperature) if cfg.reader_teacher else None
    if cfg.stage == "scp":
        data, held = scp_data(cfg, exclude)
        model.set_trainable(*scp.trainable(cfg))
        step = scp.make_step(cfg)
        if held:
            evaluate = lambda m: info_flow(m, held, max_target_len=cfg.max_target_len)  # noqa: E731
    elif cfg.stage == "instruct":
        data = qa_data(cfg, exclude)
        model.set_trainable(("compressor", "generator"), mem_rows=True)
        step = instruct.make_step(cfg, teacher)
    elif cfg.stage == "text":
        data = qa_data(cfg, exclude)
        model.set_trainable(("generator",), mem_rows=False)
        step = text.make_step(cfg)
    else:
        data = e2e.add_candidates(qa_data(cfg, exclude), cfg.n_candidates, cfg.seed)
        # the query reasoner starts as a copy of the compressor (CLARA.md section 5), unless
        # stage 3 goes on from a stage-3 checkpoint, whose query reasoner it keeps
        if init_stage(cfg) == "e2e":
            log.info("%s is a stage-3 checkpoint: its query reasoner is kept", cfg.init)
        else:
            model.init_query_reasoner_from_compressor()
        # compressor and memory rows stay frozen: cached document states stay valid
        model.set_trainable(("query_reasoner", "generator") if cfg.train_query_reasoner else ("generator",), mem_rows=False)
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        cache = e2e.cache_doc_states(model, data, Path(cfg.output_dir) / "doc_states.safetensors")
        step = e2e.make_step(cfg, cache, teacher)
    log.info("stage %s: %d training rows %s", cfg.stage, len(data), describe(data))
    return train_loop(model, data, step, cfg, evaluate=evaluate, accelerator=accelerator)
