"""Build or extend a memory index from documents: compress in batches, commit shard by shard.

Resumable by construction: documents whose id is already committed are skipped, so a
build killed at any point is completed by running the same command again.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from ..data.corpus import Document
from .fingerprint import model_fingerprint
from .store import MANIFEST, MemoryIndex

if TYPE_CHECKING:
    from ..model import ClaraModel

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    """What one build or add run did."""

    added: int
    skipped: int  # already in the index (a resumed build, or an add of known ids)
    total: int  # documents in the index afterwards
    seconds: float
    truncated: int = 0  # added documents longer than doc_max_len tokens: the compressor read their start only

    @property
    def docs_per_second(self) -> float:
        return self.added / self.seconds if self.seconds > 0 else 0.0


def _batches(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    it = iter(docs)
    while batch := list(islice(it, size)):
        yield batch


def open_or_create(
    model: "ClaraModel",
    out: str | Path,
    storage: str = "float16",
    shard_size: int = 4096,
    model_path: str | None = None,
    readout: bool | None = None,
) -> MemoryIndex:
    """Open the index at ``out`` (checking it matches ``model``) or create an empty one.

    ``readout`` (new indexes only) stores the generator's input rows beside the states;
    None stores them when they serve the model (:func:`stores_readout`), where they cost a
    pass per question otherwise.
    """
    out = Path(out)
    if (out / MANIFEST).is_file():
        index = MemoryIndex.open(out)
        index.check_model(model)
        if index.storage != storage:
            log.warning("index %s stores %s; ignoring the requested %s", out, index.storage, storage)
        if readout is not None and readout != index.has_readout:
            log.warning("index %s was created %s readout rows; ignoring readout=%s", out,
                        "with" if index.has_readout else "without", readout)
        return index
    if readout is None:
        readout = stores_readout(model)
    elif readout and not stores_readout(model):
        raise ValueError(
            f"readout rows do not serve mem_readout={model.config.mem_readout!r} (readout_tokens="
            f"{model.config.readout_tokens}): build the index without them"
        )
    return MemoryIndex.create(
        out, model_fingerprint(model), storage=storage, shard_size=shard_size, model_path=model_path, readout=readout
    )


def stores_readout(model: "ClaraModel") -> bool:
    """Whether an index's stored readout rows (one per memory slot) are what ``model``'s generator reads.

    They are for the soft-token readouts: one row per slot through the output head, a pass
    per question saved. ``states`` reads the states themselves, and ``top_tokens`` rows are
    looked up per question (one small output-head pass) rather than stored r times over.
    """
    return model.config.mem_readout in ("soft_tokens", "soft_tokens_linear")


@torch.no_grad()
def add_documents(
    model: "ClaraModel",
    index: MemoryIndex,
    docs: Iterable[Document],
    batch_size: int = 32,
    progress: bool = True,
    total: int | None = None,
) -> BuildReport:
    """Compress the documents not yet in ``index`` and commit them, one shard at a time.

    ``docs`` is consumed lazily, one shard's worth at a time, so corpora larger than memory
    stream through. ``total`` (if known) sizes the progress bar, which shows docs/s.
    """
    import time

    from ..model import MERGE_MIN_TEXTS

    from ..tokens import compressor_ids

    start = time.perf_counter()
    added = skipped = truncated = 0
    bar = tqdm(total=total, initial=0, unit="doc", desc="compress", disable=not progress, dynamic_ncols=True)
    with ExitStack() as stack:
        merged = False
        for chunk in _batches(docs, int(index.manifest["shard_size"])):
            new = [d for d in chunk if d.id not in index]
            skipped += len(chunk) - len(new)
            bar.update(len(chunk) - len(new))
            if not new:
                continue
            if len(new) >= MERGE_MIN_TEXTS and not merged:
                # fold the compressor LoRA into the weights once for the whole run (not once per
                # batch): a forward then costs a plain forward of the backbone
                stack.enter_context(model.merged("compressor"))
                merged = True
            texts = [d.full_text() for d in new]
            truncated += compressor_ids(model.tokenizer, texts, model.config.doc_max_len, model.special,
                                        style=model.config.prompt_style)[1]
            # length-bucketed: batches of similar length pad little; rows go back to corpus order
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            states = torch.empty(len(new), index.n_mem, index.hidden_size)  # (n, n_mem, H)
            readout = torch.empty_like(states) if index.has_readout else None  # generator input rows
            for b in range(0, len(order), batch_size):
                rows = order[b : b + batch_size]
                batch = model.compress([texts[i] for i in rows], batch_size=batch_size)  # (b, n_mem, H)
                states[rows] = batch.float().cpu()
                if readout is not None:
                    readout[rows] = model.read_rows(batch).float().cpu()
                bar.update(len(rows))
            index.add(new, states, readout)
            added += len(new)
    bar.close()
    seconds = time.perf_counter() - start
    if skipped:
        log.info("skipped %d documents already in the index", skipped)
    if truncated:
        log.warning("%d of %d documents added were longer than doc_max_len (%d tokens) and were cut to it; split "
                    "long documents before indexing (`clara index build/add --chunk`; a folder corpus is chunked)",
                    truncated, added, model.config.doc_max_len)
    return BuildReport(added=added, skipped=skipped, total=len(index), seconds=seconds, truncated=truncated)
