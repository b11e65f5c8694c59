"""Benchmark the memory index and RAG path on CPU; writes JSON to benchmarks/results/.

    python benchmarks/index_bench.py compress --docs 32 --reps 3              # index build vs plain forward
    python benchmarks/index_bench.py query --corpus nq --docs 100 --queries 10  # encode/search/generate vs full text
    python benchmarks/index_bench.py search --n 100000 --queries 200  # exact vs ANN on synthetic states
    python benchmarks/index_bench.py readout --model CKPT             # ask with vs without stored readout rows

Model: --model CKPT, else fresh adapters on the default backbone (timings do not depend on
training). Real text comes from ../shared/data (2wikimultihopqa, nq). --threads sets torch and
FAISS threads (this machine has 2 cores, often shared: results record threads and load).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from transformers import DynamicCache

from clara import ClaraConfig, ClaraModel, ClaraRAG
from clara.data.corpus import Document, read_corpus
from clara.index import AnnConfig, MemoryIndex, Searcher, add_documents, build_ann, exact_search, open_or_create, recall_at_k
from clara.model import left_pad, positions
from clara import tokens

log = logging.getLogger("index_bench")
ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "2wikimultihopqa" / "corpus_6119.json"
QUESTIONS = ROOT.parent / "shared" / "data" / "2wikimultihopqa" / "questions_1000.json"
NQ = ROOT.parent / "shared" / "data" / "nq" / "nq_open_oracle.jsonl.gz"


def load_model(path: str | None) -> ClaraModel:
    if path:
        return ClaraModel.from_pretrained(path, device="cpu").eval()
    return ClaraModel.from_backbone(ClaraConfig(device="cpu")).eval()


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    import faiss

    faiss.omp_set_num_threads(n)


def machine() -> dict:
    import faiss

    return {
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


@torch.no_grad()
def bench_compress(model: ClaraModel, n_docs: int, batch_size: int, reps: int) -> dict:
    """docs/s of `clara index build` (add_documents) vs a plain backbone forward over the same batches.

    The three runs are interleaved (build, plain, unmerged, build, ...) so that load from
    other processes falls on all of them alike; each is timed ``reps`` times. ``unmerged``
    is the compressor forward without folding the LoRA into the weights (what builds cost
    before ClaraModel.merged), for reference.
    """
    docs = list(read_corpus(CORPUS))[:n_docs]
    texts = [d.full_text() for d in docs]
    ids, _ = tokens.compressor_ids(
        model.tokenizer, texts, model.config.doc_max_len, model.special, style=model.config.prompt_style
    )
    # the batches a build forms: add_documents sorts a shard's texts by length in characters
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]

    def build() -> None:
        tmp = Path(tempfile.mkdtemp())
        try:
            add_documents(model, open_or_create(model, tmp / "idx"), docs, batch_size=batch_size, progress=False)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def plain() -> None:
        with model.adapter(None):
            for batch in batches:
                input_ids, mask = left_pad([ids[i] for i in batch], model.tokenizer.pad_token_id, model.device)
                # ordinary ids only (memory ids replaced by an ordinary token), no LoRA
                safe = input_ids.masked_fill(input_ids >= model.special.first_new, 0)
                model.lm.get_decoder()(input_ids=safe, attention_mask=mask, position_ids=positions(mask))

    def unmerged() -> None:
        for batch in batches:
            model._encode([texts[i] for i in batch], "compressor", model.config.doc_max_len)

    runs = {"build": build, "plain_forward": plain, "unmerged_compress": unmerged}
    for fn in runs.values():  # warm-up
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(v)) for name, v in seconds.items()}
    return {
        "docs": n_docs, "batch_size": batch_size, "reps": reps, "tokens": sum(len(x) for x in ids),
        "padded_tokens": sum(len(batch) * max(len(ids[i]) for i in batch) for batch in batches),
        "seconds": {name: [round(x, 2) for x in v] for name, v in seconds.items()},
        "build_docs_per_s": round(n_docs / med["build"], 2),
        "plain_forward_docs_per_s": round(n_docs / med["plain_forward"], 2),
        "unmerged_compress_docs_per_s": round(n_docs / med["unmerged_compress"], 2),
        "ratio": round(med["plain_forward"] / med["build"], 3),
        "ratio_unmerged": round(med["plain_forward"] / med["unmerged_compress"], 3),
        "note": "ratio = build docs/s / plain forward docs/s (medians of interleaved runs); build includes "
                "tokenisation, the memory-row embedding, merging the LoRA once and writing the shard",
    }


def qa_corpus(name: str, n_docs: int) -> tuple[list[Document], list[str]]:
    """Documents and questions: ``nq`` = NQ-open gold passages (100-word Wikipedia chunks,
    ~130 tokens) of the first n_docs questions; ``nq-long`` = two consecutive of those passages
    joined (~260 tokens: the reference's doc_max_len 256, for latency at its shape); ``2wiki`` =
    2Wiki passages (~40 tokens)."""
    if name in ("nq", "nq-long"):
        per_doc = 2 if name == "nq-long" else 1
        with gzip.open(NQ, "rt") as f:
            rows = [json.loads(line) for line in islice(f, n_docs * per_doc)]
        docs = []
        for i in range(0, len(rows) - per_doc + 1, per_doc):
            ctxs = [r["ctxs"][0] for r in rows[i : i + per_doc]]
            docs.append(Document(id=f"nq{i}", title=ctxs[0]["title"], text="\n".join(c["text"] for c in ctxs)))
        return docs, [r["question"] for r in rows]
    return list(read_corpus(CORPUS))[:n_docs], [q["question"] for q in json.loads(QUESTIONS.read_text())]


@contextmanager
def fixed_answer_length(model: ClaraModel, new_tokens: int) -> Iterator[None]:
    """Both systems generate exactly ``new_tokens`` tokens (no early stop), so decode work is equal."""
    gen = model.lm.generation_config
    before = gen.min_new_tokens
    gen.min_new_tokens = new_tokens
    try:
        yield
    finally:
        gen.min_new_tokens = before


@torch.no_grad()
def bench_query(
    model: ClaraModel, corpus: str, n_docs: int, n_queries: int, k: int, max_new_tokens: int, premerge: bool = True,
    prefix_cache: bool = True, readout: bool | None = None,
) -> dict:
    """Per-query latency of CLaRa (encode, search, generate from states) vs full-text RAG.

    Full-text RAG uses the same backbone without adapters, the same retrieved documents
    (CLaRa's own query encoding and search, timed separately) with their text in the
    prompt, and greedy decoding. Both generate exactly ``max_new_tokens`` tokens. CLaRa runs
    with its LoRA pre-merged (``ClaraRAG(premerge=...)``), so both pay plain-backbone matmuls,
    and with ``prefix_cache`` both reuse the key/value cache of their prompt's constant head
    (CLaRa does whenever it is pre-merged; ``premerge=False`` turns both off for CLaRa). The two
    systems alternate order from one question to the next so load from other processes
    falls on both alike. ``readout`` as in ``open_or_create`` (None: the index stores the
    generator's input rows for soft-token models, so CLaRa skips that pass per question).
    """
    docs, questions = qa_corpus(corpus, n_docs)
    questions = questions[:n_queries]
    tmp = Path(tempfile.mkdtemp())
    try:
        index = open_or_create(model, tmp / "idx", readout=readout)
        add_documents(model, index, docs, progress=False)
        rag = ClaraRAG(model, index, k=k, max_new_tokens=max_new_tokens, premerge=premerge)
        clara = {"encode": [], "search": [], "generate": [], "total": []}
        clara_answer_tokens: list[int] = []
        full = {"retrieve": [], "generate": [], "total": [], "prompt_tokens": [], "new_tokens": [], "cached_head_tokens": []}

        def run_clara(q: str) -> None:
            t0 = time.perf_counter()
            a = rag.ask(q)
            clara["total"].append(time.perf_counter() - t0)
            for key in ("encode", "search", "generate"):
                clara[key].append(a.timings[key])
            clara_answer_tokens.append(len(model.tokenizer(a.answer, add_special_tokens=False)["input_ids"]))

        def full_prompt(q: str, sources: list) -> dict:
            background = "\n\n".join(f"Document {i + 1}: {s.title}\n{s.text}" for i, s in enumerate(sources))
            msgs = [{"role": "user", "content": f"Background:\n{background}\n\nQuestion: {q}"}]
            return model.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)

        # full-text RAG gets the same prompt-head cache as CLaRa (ClaraModel._prefix_cache): the
        # tokens every full-text prompt shares (chat template, "Background:") are prefilled once
        a, b = (full_prompt(q, rag.retrieve([q], k=k)[0])["input_ids"][0].tolist() for q in questions[:2])
        head = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)  # real prompts of two questions
        head_cache = DynamicCache(config=model.lm.config)
        with model.adapter(None):
            model.lm(input_ids=torch.tensor([a[:head]]), cache=head_cache, use_cache=True, logits_to_keep=1)

        def run_full(q: str) -> None:
            t0 = time.perf_counter()
            sources = rag.retrieve([q], k=k)[0]
            t1 = time.perf_counter()
            ids = full_prompt(q, sources)
            if not prefix_cache or ids["input_ids"][0, :head].tolist() != a[:head]:
                past = None
            else:
                past = copy.deepcopy(head_cache)
            with model.adapter(None):
                gen = model.lm.generate(
                    **ids, cache=past, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=model.tokenizer.pad_token_id,
                )
            t2 = time.perf_counter()
            full["retrieve"].append(t1 - t0)
            full["generate"].append(t2 - t1)
            full["total"].append(t2 - t0)
            full["prompt_tokens"].append(int(ids["input_ids"].shape[1]))
            full["new_tokens"].append(int(gen.shape[1] - ids["input_ids"].shape[1]))
            full["cached_head_tokens"].append(head if past is not None else 0)

        with fixed_answer_length(model, max_new_tokens):
            run_clara(questions[0]), run_full(questions[0])  # warm-up, not recorded
            for key in (*clara, *full):
                (clara if key in clara else full)[key].clear()
            clara_answer_tokens.clear()
            for i, q in enumerate(questions):
                for run in (run_clara, run_full) if i % 2 == 0 else (run_full, run_clara):
                    run(q)
        ms = lambda xs: round(1000 * float(np.median(xs)), 1)  # noqa: E731
        doc_tokens = [len(model.tokenizer(d.full_text(), add_special_tokens=False)["input_ids"]) for d in docs]
        out = {
            "corpus": corpus, "docs": n_docs, "doc_tokens_median": int(np.median(doc_tokens)),
            "queries": len(questions), "k": k, "premerge": premerge, "fulltext_prefix_cache": prefix_cache, "index_readout_rows": index.has_readout, "max_new_tokens": max_new_tokens, "new_tokens_both": max_new_tokens,
            "n_mem": model.config.n_mem, "compression_ratio": model.config.compression_ratio, "doc_max_len": model.config.doc_max_len,
            "memory_slots_in_prompt": k * model.config.n_mem,
            "clara_ms": {key: ms(v) for key, v in clara.items()},
            "fulltext_ms": {key: ms(v) for key, v in full.items() if key in ("retrieve", "generate", "total")},
            "fulltext_cached_head_tokens": int(np.median(full["cached_head_tokens"])),
            "clara_cached_head_tokens": 0 if model._prefix is None else model._prefix[1].get_seq_length(),
            "fulltext_prompt_tokens_median": int(np.median(full["prompt_tokens"])),
            "fulltext_new_tokens_median": float(np.median(full["new_tokens"])),
            "clara_answer_tokens_median": float(np.median(clara_answer_tokens)),  # answer text re-tokenised
            "bytes_per_document": index.stats()["bytes_per_document"],
            "note": "full-text RAG retrieves with CLaRa's own encode+search (its retrieve column) and "
                    "generates from the documents' text with the plain backbone; both generate exactly "
                    "max_new_tokens tokens; medians over queries, the two systems alternating order",
        }
        out["speedup_generate"] = round(out["fulltext_ms"]["generate"] / out["clara_ms"]["generate"], 2)
        out["speedup_end_to_end"] = round(out["fulltext_ms"]["total"] / out["clara_ms"]["total"], 2)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class SyntheticStates:
    """Synthetic memory states shaped like real CLaRa states, generated block by block.

    Each profile is calibrated on real states: a 300-document demo index and 80 2Wiki
    questions encoded by the query reasoner (``calibration()`` recomputes the same
    statistics on synthetic rows; ``REAL_CALIBRATION`` holds the real ones). A random mean
    direction plus a Gaussian residual whose centred spectrum puts ``first_axis`` of the
    variance on one axis and decays as i**-decay on the others, on random orthonormal axes;
    queries are fresh draws with the residual scaled ``query_residual`` (no planted
    neighbour, no cluster structure: a harder case for IVF than topical real corpora). Rows
    are fp16-rounded on storage like real ones.

    ``spread`` (the default) fits the current shipped checkpoint (n_mem 8, H 576): pairwise
    cosine of different documents 0.66, residual 58% of the norm, top-1/10/50 axes 5/26/55%
    of the variance, queries about as spread as documents. ``anisotropic`` fits the previous
    default (n_mem 16), whose states had collapsed: cosine 0.9996, residual 1.7%, top-1/10/50
    axes 43/80/95%, query residuals 1.9x.

    ``clusters`` is the generator this benchmark used first: isotropic Gaussian cluster
    centres plus isotropic noise (pairwise cosine ~0 between clusters, ~0.6 inside). Real
    states look nothing like it, and its top-10 inside a cluster is decided by isotropic
    noise that no low-dimensional projection keeps; kept for comparison only.
    """

    #: per generator: share of the residual variance on the first principal axis, decay of the
    #: other axes (variance ~ i**-decay), |residual| / |mean| of documents, |query residual| /
    #: |document residual|. ``anisotropic``: the previous default's (collapsed) states;
    #: ``spread``: the current default's (search_NOTES.md: top-1/10/50 axes 5%/26%/55% on a
    #: 300-document sample, which overstates concentration; decay 1.0 gives 5%/28%/47%).
    PROFILES = {
        "anisotropic": {"first_axis": 0.43, "decay": 1.5, "residual": 0.0173, "query_residual": 1.94},
        "spread": {"first_axis": 0.051, "decay": 1.0, "residual": 0.577, "query_residual": 1.05},
    }

    def __init__(self, n: int, n_mem: int, hidden: int, kind: str = "spread", seed: int = 0) -> None:
        self.n, self.dim, self.kind, self.seed = n, n_mem * hidden, kind, seed
        rng = np.random.default_rng(seed)
        if kind in self.PROFILES:
            prof = self.PROFILES[kind]
            self.query_residual = prof["query_residual"]
            axes, _ = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))  # random orthonormal axes
            var = np.arange(1, self.dim + 1, dtype=np.float64) ** -prof["decay"]
            var[0] = 0.0
            var *= (1 - prof["first_axis"]) / var.sum()
            var[0] = prof["first_axis"]
            self.mean = (2.4 * rng.standard_normal(self.dim)).astype(np.float32)  # per-dim rms like SmolLM2's states
            scale = prof["residual"] * float(np.linalg.norm(self.mean))
            self.basis = (scale * np.sqrt(var)[:, None] * axes.T).astype(np.float32)  # (D, D): residual = z @ basis
        elif kind == "clusters":
            self.centers = rng.standard_normal((max(16, n // 200), self.dim)).astype(np.float32)
            self.assign = rng.integers(0, len(self.centers), size=n)
        else:
            raise ValueError(f"unknown synthetic kind {kind!r}")

    def docs(self, first: int, count: int) -> np.ndarray:
        """Rows [first, first+count) as (count, D) float32; the same rows whatever the blocking."""
        rng = np.random.default_rng([self.seed, 1, first])
        z = rng.standard_normal((count, self.dim), dtype=np.float32)
        if self.kind in self.PROFILES:
            return self.mean + z @ self.basis
        return self.centers[self.assign[first : first + count]] + 0.8 * z

    def queries(self, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2])
        z = rng.standard_normal((count, self.dim), dtype=np.float32)
        if self.kind in self.PROFILES:
            return self.mean + self.query_residual * (z @ self.basis)
        return self.centers[self.assign[rng.choice(self.n, count, replace=False)]] + 0.8 * z


# calibration() of the real states each profile was fitted on (see SyntheticStates)
REAL_CALIBRATION = {
    "spread": {
        "pairwise_cos_mean": 0.65987, "pairwise_cos_p5": 0.59065, "residual_norm": 0.5769,
        "query_over_doc_residual": 1.05, "centred_variance_top_1_10_50": [0.051, 0.259, 0.55],
    },
    "anisotropic": {
        "pairwise_cos_mean": 0.99962, "pairwise_cos_p5": 0.99914, "residual_norm": 0.0173,
        "query_over_doc_residual": 1.94, "centred_variance_top_1_10_50": [0.429, 0.797, 0.95],
    },
}


def calibration(docs: np.ndarray, queries: np.ndarray) -> dict:
    """The statistics the anisotropic generator was fitted on, for real or synthetic (n, D) rows."""
    x = torch.nn.functional.normalize(torch.as_tensor(docs, dtype=torch.float32), dim=-1)
    q = torch.nn.functional.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=-1)
    pair = (x @ x.T)[~torch.eye(len(x), dtype=torch.bool)]
    mean = x.mean(0)
    var = torch.linalg.svdvals(x - mean) ** 2
    share = (var / var.sum()).cumsum(0)
    return {
        "pairwise_cos_mean": round(float(pair.mean()), 5), "pairwise_cos_p5": round(float(pair.quantile(0.05)), 5),
        "residual_norm": round(float((x - mean).norm(dim=1).median()), 4),
        "query_over_doc_residual": round(float((q - mean).norm(dim=1).median() / (x - mean).norm(dim=1).median()), 2),
        "centred_variance_top_1_10_50": [round(float(share[i]), 3) for i in (0, 9, 49)],
    }


@torch.no_grad()
def bench_readout(model: ClaraModel, corpus: str, n_docs: int, n_queries: int, k: int, max_new_tokens: int) -> dict:
    """Per-question latency of ClaraRAG.ask over an index that stores the generator's input
    rows (``readout``) and over one that does not, interleaved in one process: the two runs
    of a question follow each other, so the machine's drift falls on both."""
    docs, questions = qa_corpus(corpus, n_docs)
    tmp = Path(tempfile.mkdtemp())
    try:
        rags = {}
        for readout in (True, False):
            index = open_or_create(model, tmp / str(readout), readout=readout)
            add_documents(model, index, docs, progress=False)
            rags[readout] = ClaraRAG(model, index, k=k, max_new_tokens=max_new_tokens)
        times: dict[bool, dict[str, list[float]]] = {r: {"total": [], "generate": []} for r in rags}
        with fixed_answer_length(model, max_new_tokens):
            for r in rags:
                rags[r].ask(questions[0])  # warm-up
            for i, q in enumerate(questions[1 : n_queries + 1]):
                for r in (True, False) if i % 2 == 0 else (False, True):
                    t0 = time.perf_counter()
                    a = rags[r].ask(q)
                    times[r]["total"].append(time.perf_counter() - t0)
                    times[r]["generate"].append(a.timings["generate"])
        stats = rags[True].index.stats(), rags[False].index.stats()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ms = {("with_readout" if r else "without_readout"): {key: round(1000 * float(np.median(v)), 1) for key, v in t.items()}
          for r, t in times.items()}
    return {
        "corpus": corpus, "docs": n_docs, "queries": n_queries, "k": k, "new_tokens": max_new_tokens, "ms": ms,
        "saved_ms_per_question": round(ms["without_readout"]["total"] - ms["with_readout"]["total"], 1),
        "bytes_per_document": {"with_readout": stats[0]["bytes_per_document"], "without_readout": stats[1]["bytes_per_document"]},
    }


def _time_queries(search, q: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Run ``search`` one query at a time: rows (B, 10) and per-query milliseconds."""
    rows, ms = [], []
    for i in range(len(q)):
        t0 = time.perf_counter()
        rows.append(search(q[i : i + 1]))
        ms.append(1000 * (time.perf_counter() - t0))
    return torch.cat(rows), ms


def bench_search(
    n: int, n_mem: int, hidden: int, n_queries: int, storage: str, ann_dim: int, nprobes: list[int],
    reranks: list[int], out_dir: Path | None, kind: str, exact_timed: int = 3,
) -> dict:
    """Exact vs ANN search latency and recall@10 on n synthetic documents written through MemoryIndex.

    Ground truth is one batched exact pass over all queries; exact latency is timed on the
    first ``exact_timed`` queries alone; ANN latency on every query alone, per nprobe.
    """
    from clara.data.corpus import Document

    tmp = Path(tempfile.mkdtemp(dir=out_dir))
    try:
        fp = {"n_mem": n_mem, "hidden_size": hidden, "backbone": {}, "adapters_sha256": "synthetic", "config": {}}
        index = MemoryIndex.create(tmp / "idx", fp, storage=storage, shard_size=65536)
        gen = SyntheticStates(n, n_mem, hidden, kind)
        t0 = time.perf_counter()
        for s in range(0, n, 65536):
            x = gen.docs(s, min(65536, n - s))
            index.add([Document(id=str(s + i), text="-") for i in range(len(x))], x.reshape(len(x), n_mem, hidden))
        write_s = time.perf_counter() - t0
        q = torch.from_numpy(gen.queries(n_queries)).reshape(n_queries, n_mem, hidden)
        ex_rows = exact_search(index, q, 10)[1]
        _, exact_ms = _time_queries(lambda x: exact_search(index, x, 10)[1], q[:exact_timed])
        t0 = time.perf_counter()
        info = build_ann(index, AnnConfig(dim=ann_dim))
        ann_build_s = time.perf_counter() - t0
        ann = {}
        for nprobe in nprobes:
            for rerank in reranks:
                searcher = Searcher(index, "ann", nprobe=nprobe, rerank=rerank)
                searcher.search(q[:1], 10)  # warm-up: first touches of the ANN's pages
                rows, ms = _time_queries(lambda x: searcher.search(x, 10)[1], q)
                ann[f"nprobe={nprobe},rerank={rerank}"] = {
                    "recall_at_10": round(recall_at_k(ex_rows, rows), 4),
                    "ms_per_query_median": round(float(np.median(ms)), 2),
                    "ms_per_query_p95": round(float(np.percentile(ms, 95)), 2),
                }
        probe = gen.docs(0, min(n, 300))
        return {
            "n": n, "n_mem": n_mem, "hidden": hidden, "dim": n_mem * hidden, "storage": storage, "synthetic": kind,
            "synthetic_calibration": calibration(probe, gen.queries(min(n_queries, 80))),
            "real_calibration": REAL_CALIBRATION.get(kind),
            "queries": n_queries, "bytes_per_document": index.stats()["bytes_per_document"], "write_s": round(write_s, 1),
            "exact_ms_per_query": round(float(np.median(exact_ms)), 1), "exact_queries_timed": len(exact_ms),
            "ann": info, "ann_build_s": round(ann_build_s, 1), "ann_by_setting": ann,
            "note": "rerank r: r*k candidates from the IVF are re-scored exactly (k=10)",
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["compress", "query", "search", "readout"])
    p.add_argument("--model", default=None, help="CLaRa checkpoint (default: fresh adapters on the default backbone)")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--corpus", default="nq", choices=["nq", "nq-long", "2wiki"],
                   help="`query`: NQ 100-word passages, two of them joined, or 2Wiki passages")
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each measured run")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--n", type=int, default=100_000, help="synthetic documents for `search`")
    p.add_argument("--n-mem", type=int, default=8, help="memory tokens per synthetic document (ratio 16: 8; the shipped ratio-4 default: 32)")
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--storage", default="float16", choices=["float16", "int8"])
    p.add_argument("--ann-dim", type=int, default=256)
    p.add_argument("--nprobe", default="16,64,128", help="comma-separated IVF probes to measure (`search`)")
    p.add_argument("--rerank", default="10,30", help="comma-separated re-scored candidates per result (`search`)")
    p.add_argument("--synthetic", default="spread", choices=["anisotropic", "spread", "clusters"],
                   help="synthetic states for `search` (see SyntheticStates; `clusters` is the old, unrealistic one)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and FAISS threads")
    p.add_argument("--tmp", type=Path, default=None, help="where synthetic indexes are written")
    p.add_argument("--no-premerge", action="store_true",
                   help="`query`: CLaRa with unmerged LoRA branches, and neither system caching its prompt head")
    p.add_argument("--no-readout", action="store_true",
                   help="`query`: index without stored readout rows (CLaRa reads memory at every question)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default=None, help="result file name (default: from the benchmark)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    set_threads(args.threads)
    if args.what == "search":
        nprobes = [int(x) for x in args.nprobe.split(",")]
        reranks = [int(x) for x in args.rerank.split(",")]
        result = bench_search(
            args.n, args.n_mem, args.hidden, args.queries, args.storage, args.ann_dim, nprobes, reranks, args.tmp, args.synthetic
        )
        name = f"search_{args.n}_{args.storage}_{args.synthetic}.json"
    else:
        model = load_model(args.model)
        if args.what == "compress":
            result = bench_compress(model, args.docs, args.batch_size, args.reps)
        elif args.what == "readout":
            result = bench_readout(model, args.corpus, args.docs, args.queries, args.k, args.max_new_tokens)
        else:
            result = bench_query(
                model, args.corpus, args.docs, args.queries, args.k, args.max_new_tokens,
                premerge=not args.no_premerge, prefix_cache=not args.no_premerge,
                readout=False if args.no_readout else None,
            )
        name = {"compress": "compress.json", "readout": f"readout_{args.corpus}.json"}.get(args.what, f"query_{args.corpus}.json")
    result = {"benchmark": args.what, "machine": machine(), "model": args.model or "default backbone, fresh adapters", **result}
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or name
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
