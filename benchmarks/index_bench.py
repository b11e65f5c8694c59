"""Benchmark the memory index and RAG path on CPU; writes JSON to benchmarks/results/.

    python benchmarks/index_bench.py compress --docs 64           # compressor vs plain forward
    python benchmarks/index_bench.py query --docs 200 --queries 8  # encode/search/generate vs full text
    python benchmarks/index_bench.py search --n 100000            # exact vs ANN on synthetic states

Model: --model CKPT, else fresh adapters on the default backbone (timings do not depend on
training). Real text comes from ../shared/data/2wikimultihopqa.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clara import ClaraConfig, ClaraModel, ClaraRAG
from clara.data.corpus import read_corpus
from clara.index import AnnConfig, MemoryIndex, Searcher, add_documents, build_ann, exact_search, open_or_create, recall_at_k
from clara.model import left_pad, positions
from clara import tokens

log = logging.getLogger("index_bench")
ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "2wikimultihopqa" / "corpus_6119.json"
QUESTIONS = ROOT.parent / "shared" / "data" / "2wikimultihopqa" / "questions_1000.json"


def load_model(path: str | None) -> ClaraModel:
    if path:
        return ClaraModel.from_pretrained(path, device="cpu").eval()
    return ClaraModel.from_backbone(ClaraConfig(device="cpu")).eval()


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}


@torch.no_grad()
def bench_compress(model: ClaraModel, n_docs: int, batch_size: int) -> dict:
    """docs/s of model.compress vs the plain backbone forward over the very same token ids."""
    texts = [d.full_text() for d in list(read_corpus(CORPUS))[:n_docs]]
    model.compress(texts[:batch_size], batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    model.compress(texts, batch_size=batch_size)
    clara_s = time.perf_counter() - t0
    ids, _ = tokens.compressor_ids(model.tokenizer, texts, model.config.doc_max_len, model.special)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # same length bucketing as compress
    t0 = time.perf_counter()
    with model.adapter(None):
        for b in range(0, len(order), batch_size):
            input_ids, mask = left_pad([ids[i] for i in order[b : b + batch_size]], model.tokenizer.pad_token_id, model.device)
            # plain forward: ordinary ids only (memory ids replaced by an ordinary token), no LoRA
            safe = input_ids.masked_fill(input_ids >= model.special.first_new, 0)
            model.lm.get_decoder()(input_ids=safe, attention_mask=mask, position_ids=positions(mask))
    plain_s = time.perf_counter() - t0
    tokens_total = sum(len(x) for x in ids)
    return {
        "docs": n_docs, "batch_size": batch_size, "tokens": tokens_total,
        "clara_docs_per_s": round(n_docs / clara_s, 2), "plain_forward_docs_per_s": round(n_docs / plain_s, 2),
        "ratio": round(plain_s / clara_s, 3),
    }


@torch.no_grad()
def bench_query(model: ClaraModel, n_docs: int, n_queries: int, k: int, max_new_tokens: int) -> dict:
    """Per-query latency of CLaRa (encode, search, generate from states) vs full-text RAG (same backbone, k docs)."""
    docs = list(read_corpus(CORPUS))[:n_docs]
    questions = [q["question"] for q in json.loads(QUESTIONS.read_text())[:n_queries]]
    tmp = Path(tempfile.mkdtemp())
    try:
        index = open_or_create(model, tmp / "idx")
        add_documents(model, index, docs, progress=False)
        rag = ClaraRAG(model, index, k=k, max_new_tokens=max_new_tokens)
        rag.ask(questions[0])  # warm-up
        clara = {"encode": [], "search": [], "generate": [], "total": [], "new_tokens": []}
        full = {"retrieve": [], "generate": [], "total": [], "prompt_tokens": [], "new_tokens": []}
        for q in questions:
            t0 = time.perf_counter()
            a = rag.ask(q)
            clara["total"].append(time.perf_counter() - t0)
            for key in ("encode", "search", "generate"):
                clara[key].append(a.timings[key])
            clara["new_tokens"].append(len(model.tokenizer(a.answer, add_special_tokens=False)["input_ids"]))
            # full-text RAG: same retrieved documents, their text in the prompt, plain backbone, greedy
            t0 = time.perf_counter()
            sources = rag.retrieve([q], k=k)[0]
            t1 = time.perf_counter()
            background = "\n\n".join(f"Document {i + 1}: {s.title}\n{s.text}" for i, s in enumerate(sources))
            msgs = [{"role": "user", "content": f"Background:\n{background}\n\nQuestion: {q}"}]
            ids = model.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            with model.adapter(None):
                gen = model.lm.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
            t2 = time.perf_counter()
            full["retrieve"].append(t1 - t0)
            full["generate"].append(t2 - t1)
            full["total"].append(t2 - t0)
            full["prompt_tokens"].append(int(ids["input_ids"].shape[1]))
            full["new_tokens"].append(int(gen.shape[1] - ids["input_ids"].shape[1]))
        ms = lambda xs: round(1000 * float(np.median(xs)), 1)  # noqa: E731
        out = {
            "docs": n_docs, "queries": n_queries, "k": k, "max_new_tokens": max_new_tokens,
            "n_mem": model.config.n_mem, "compression_ratio": model.config.compression_ratio,
            "clara_ms": {key: ms(v) for key, v in clara.items() if key != "new_tokens"},
            "fulltext_ms": {key: ms(v) for key, v in full.items() if key not in ("prompt_tokens", "new_tokens")},
            "clara_new_tokens_median": float(np.median(clara["new_tokens"])),
            "fulltext_new_tokens_median": float(np.median(full["new_tokens"])),
            "fulltext_prompt_tokens_median": int(np.median(full["prompt_tokens"])),
            "bytes_per_document": index.stats()["bytes_per_document"],
            "note": "full-text generate time only (its retrieval is CLaRa's encode+search): "
                    "speedup = fulltext generate / clara generate",
        }
        out["speedup_generate"] = round(out["fulltext_ms"]["generate"] / out["clara_ms"]["generate"], 2)
        out["speedup_end_to_end"] = round(
            (out["clara_ms"]["encode"] + out["clara_ms"]["search"] + out["fulltext_ms"]["generate"]) / out["clara_ms"]["total"], 2)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def synthetic_states(n: int, n_mem: int, hidden: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered random states (n, n_mem, H) fp32 generator output and 1/norm-free queries near some rows."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, n_mem * hidden)).astype(np.float32)
    return centers, rng.integers(0, clusters, size=n)


def bench_search(n: int, n_mem: int, hidden: int, n_queries: int, storage: str, ann_dim: int, nprobe: int, out_dir: Path | None) -> dict:
    """Exact vs ANN search latency and recall@10 on n synthetic documents written through MemoryIndex."""
    tmp = Path(tempfile.mkdtemp(dir=out_dir))
    try:
        fp = {"n_mem": n_mem, "hidden_size": hidden, "backbone": {}, "adapters_sha256": "synthetic", "config": {}}
        index = MemoryIndex.create(tmp / "idx", fp, storage=storage, shard_size=65536)
        centers, assign = synthetic_states(n, n_mem, hidden, clusters=max(16, n // 200), seed=0)
        rng = np.random.default_rng(1)
        from clara.data.corpus import Document

        t0 = time.perf_counter()
        step = 65536
        for s in range(0, n, step):
            m = min(step, n - s)
            x = centers[assign[s : s + m]] + 0.8 * rng.standard_normal((m, n_mem * hidden), dtype=np.float32)
            index.add([Document(id=str(s + i), text="-") for i in range(m)], x.reshape(m, n_mem, hidden))
        write_s = time.perf_counter() - t0
        qrows = rng.choice(n, n_queries, replace=False)
        q = torch.from_numpy(centers[assign[qrows]] + 0.8 * rng.standard_normal((n_queries, n_mem * hidden), dtype=np.float32)).reshape(n_queries, n_mem, hidden)
        t0 = time.perf_counter()
        ex_rows = torch.cat([exact_search(index, q[i : i + 1], 10)[1] for i in range(n_queries)])
        exact_ms = 1000 * (time.perf_counter() - t0) / n_queries
        t0 = time.perf_counter()
        info = build_ann(index, AnnConfig(dim=ann_dim))
        ann_build_s = time.perf_counter() - t0
        searcher = Searcher(index, "ann", nprobe=nprobe)
        t0 = time.perf_counter()
        ann_rows = torch.cat([searcher.search(q[i : i + 1], 10)[1] for i in range(n_queries)])
        ann_ms = 1000 * (time.perf_counter() - t0) / n_queries
        return {
            "n": n, "n_mem": n_mem, "hidden": hidden, "dim": n_mem * hidden, "storage": storage,
            "bytes_per_document": index.stats()["bytes_per_document"], "write_s": round(write_s, 1),
            "exact_ms_per_query": round(exact_ms, 1), "ann_ms_per_query": round(ann_ms, 1),
            "ann": info, "ann_build_s": round(ann_build_s, 1), "nprobe": nprobe,
            "recall_at_10": round(recall_at_k(ex_rows, ann_rows), 4),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["compress", "query", "search"])
    p.add_argument("--model", default=None, help="CLaRa checkpoint (default: fresh adapters on the default backbone)")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--n", type=int, default=100_000, help="synthetic documents for `search`")
    p.add_argument("--n-mem", type=int, default=16)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--storage", default="float16", choices=["float16", "int8"])
    p.add_argument("--ann-dim", type=int, default=256)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--tmp", type=Path, default=None, help="where synthetic indexes are written")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.what == "search":
        result = bench_search(args.n, args.n_mem, args.hidden, args.queries, args.storage, args.ann_dim, args.nprobe, args.tmp)
        name = f"search_{args.n}_{args.storage}.json"
    else:
        model = load_model(args.model)
        if args.what == "compress":
            result = bench_compress(model, args.docs, args.batch_size)
        else:
            result = bench_query(model, args.docs, args.queries, args.k, args.max_new_tokens)
        name = f"{args.what}.json"
    result = {"benchmark": args.what, "machine": machine(), "model": args.model or "default backbone, fresh adapters", **result}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
