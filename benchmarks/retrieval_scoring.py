"""How query and document memory states are compared, measured as Recall@5 (issue 7).

CLaRa scores a candidate by the cosine of the flattened states (the paper: slot i of the query
against slot i of the document). Memory slots need not line up between a question and a
document, so this also measures slot-order-free scores on the same states, with no training:

- ``cosine``: cosine of the flattened (n_mem*H) states (the paper; ``retrieval_score="cosine"``);
- ``pooled``: cosine of the mean state over slots;
- ``maxsim``: late interaction (ColBERT-style): for each query slot the best cosine with any
  document slot, averaged over query slots (``retrieval_score="maxsim"``, clara.score).

- ``maxsim_pool{G}`` (``--pool G``): max-sim over states averaged in groups of G consecutive
  slots on both sides: a low-ratio model (many narrow slots) scored like one with G times
  fewer, wider slots.

- ``maxsim_filled`` (``--filled``): max-sim averaged only over the question slots whose span holds
  a token. The anchoring loss gives slot i of a text with L tokens the tokens j with
  ``j * n_mem // L == i``, so a question shorter than n_mem tokens (most, at ratio 4: 32 slots)
  leaves slots with no target in stage 1; plain max-sim averages them in.

- ``--vocab``: scores in the output head's vocabulary instead of the hidden space. Each slot's
  next-token distribution is what the soft-token readout shows the generator (a bag of its
  span's words under the anchoring loss), so a document (or question) becomes one bag, the
  most each word gets over its slots. ``vocab_cos``: cosine of the two bags; ``vocab_idf``:
  their product weighted by each word's inverse document frequency, the bags' soft counts over
  the ranked documents (BM25's corpus statistic, here over the candidates being ranked).

Each with the query reasoner encoding the question (CLaRa) and with the compressor encoding it
(the query reasoner's initialisation). By default the HotpotQA dev split, oracle candidates (10
per question, 2 gold: a random ranking has R@5 = 50); ``--data`` and ``--setting normal``
measure any other split the way ``clara eval`` does (normal: every question ranks the pooled,
deduplicated documents of the split).

``--teacher`` also ranks each question's candidates by the generator's loss on the gold answer
when it reads that document alone: the label-free signal an Atlas-style "perplexity
distillation" would train the query reasoner towards (it needs the answer, so it is a teacher,
never a retriever). If it ranks worse than the query reasoner already does, distilling it
cannot help. ``--teacher question`` ranks by the loss of writing the question instead (stage 1's
question-writing prompt; needs no answer), ``question_answer`` by both, ``question_text`` by the
plain backbone writing the question after the document's text (UPR).

    python benchmarks/retrieval_scoring.py [--model CKPT] [--limit 100] [--teacher [answer question question_answer question_text]] [--pool 4]
        [--data ../shared/data/nq/nq_open_oracle.jsonl.gz --setting normal]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from clara import ClaraModel
from clara.data.qa import load_qa
from clara.eval.metrics import mean, recall_at_k
from clara.eval.retrievers import top_k
from clara.eval.runner import SETTINGS, candidates
from clara.score import score, score_candidates
from clara.train.e2e import TEACHERS, candidate_losses

ROOT = Path(__file__).resolve().parents[1]
HOTPOT = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_500.jsonl"

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # query (M, H), docs (n, M, H) -> (n,)


def cosine(q: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    return score(q.unsqueeze(0), docs, "cosine")[0]  # the paper's, ClaraConfig(retrieval_score="cosine")


def pooled(q: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    return F.normalize(docs.mean(1), dim=-1) @ F.normalize(q.mean(0), dim=0)


def maxsim(q: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    return score(q.unsqueeze(0), docs, "maxsim")[0]  # ClaraConfig(retrieval_score="maxsim")


def maxsim_any(q: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """max-sim for a question with any number of slots: q (m, H), docs (n, M, H) -> (n,)."""
    return score_candidates(q.unsqueeze(0), docs.unsqueeze(0), "maxsim")[0]  # allows m != M, unlike score()


def pooled_maxsim(group: int) -> Score:
    def fn(q: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        m, h = q.shape
        if m % group:
            raise SystemExit(f"--pool {group} does not divide the {m} memory slots")
        return maxsim(q.view(m // group, group, h).mean(1), docs.view(len(docs), m // group, group, h).mean(2))

    return fn


def filled_slots(model: ClaraModel, question: str) -> list[int]:
    """The question slots that the anchoring loss gives at least one token (clara.train.bow.span_targets)."""
    n = model.config.n_mem
    length = min(len(model.tokenizer(question, add_special_tokens=False).input_ids), model.config.query_max_len)
    return sorted({j * n // length for j in range(length)}) if length else list(range(n))


def vocab_bags(model: ClaraModel, states: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(n, M, H) states -> (n, V): per word, its highest probability over the slots' next-token distributions."""
    out = [torch.softmax(model.logits(states[i : i + chunk]), dim=-1).amax(1) for i in range(0, len(states), chunk)]
    return torch.cat(out)


def vocab_cos(q: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    return F.normalize(docs, dim=-1) @ F.normalize(q, dim=0)  # q (V,), docs (n, V)


def vocab_idf(idf: torch.Tensor) -> Score:
    def fn(q: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        return docs @ (q * idf * idf)  # one idf for each side, as tf-idf dot products weigh them

    return fn


def recall_at(
    cands: list[list[str]], golds: list[set[str]], queries: Sequence[torch.Tensor], docs: list[torch.Tensor], score: Score, k: int
) -> float:
    """Mean Recall@k over questions, in percent (as `clara eval` computes it)."""
    values = [recall_at_k([ids[j] for j in top_k(score(q, d), k)], gold, k) for ids, gold, q, d in zip(cands, golds, queries, docs)]
    return round(100 * mean(values), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="CLaRa checkpoint (default: the shipped one)")
    ap.add_argument("--limit", type=int, default=100, help="dev questions")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--teacher", nargs="*", choices=TEACHERS, default=None,
                    help="also rank by the generator's loss reading each document alone: on the answer (the "
                         "default), the question (stage 1's question-writing task), both, or the plain backbone writing the question after the text (question_text; clara.train.e2e.candidate_losses)")
    ap.add_argument("--pool", type=int, default=0, help="also max-sim over groups of this many consecutive slots")
    ap.add_argument("--filled", action="store_true", help="also max-sim over the question slots that hold a token")
    ap.add_argument("--vocab", action="store_true", help="also score bags of words in the output head's vocabulary")
    ap.add_argument("--data", type=Path, default=HOTPOT, help="QA dataset (any format clara reads)")
    ap.add_argument("--setting", choices=SETTINGS, default="oracle")
    ap.add_argument("--splits", type=Path, default=ROOT / "splits" / "dev.json")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "retrieval_scoring.json")
    args = ap.parse_args()
    if args.teacher == []:  # a bare --teacher
        args.teacher = ["answer"]
    if args.teacher and args.setting != "oracle":
        ap.error("--teacher reads every candidate of every question: use it with --setting oracle")

    model = ClaraModel.from_pretrained(args.model, device="cpu").eval()
    keep = {i for entry in json.loads(args.splits.read_text()).values() for i in entry.get("ids", [])}
    examples = [e for e in load_qa(args.data) if e.id in keep][: args.limit]
    lists, golds = candidates(examples, args.setting)
    cands = [[d.id for d in docs] for docs in lists]
    start = time.perf_counter()
    with torch.no_grad():
        if args.setting == "normal":  # one pooled corpus: compress it once
            docs = [model.compress([d.full_text() for d in lists[0]], batch_size=16, progress=True)] * len(examples)
        else:
            docs = [model.compress([d.full_text() for d in e.docs], batch_size=16) for e in examples]  # (n_i, M, H) each
        questions = [e.question for e in examples]
        encoders = {"query_reasoner": model.encode_query(questions), "compressor": model.compress(questions)}
    scores: dict[str, Score] = {"cosine": cosine, "pooled": pooled, "maxsim": maxsim}
    if args.pool:
        scores[f"maxsim_pool{args.pool}"] = pooled_maxsim(args.pool)
    table = {
        enc: {name: recall_at(cands, golds, q, docs, fn, args.k) for name, fn in scores.items()}
        for enc, q in encoders.items()
    }
    if args.filled:
        keep = [filled_slots(model, q) for q in questions]
        for enc, q in encoders.items():
            table[enc]["maxsim_filled"] = recall_at(cands, golds, [s[i] for s, i in zip(q, keep)], docs, maxsim_any, args.k)
        table["filled_slots_mean"] = round(sum(map(len, keep)) / len(keep), 1)
    if args.vocab:
        with torch.no_grad():
            pool = {i: s for ids, states in zip(cands, docs) for i, s in zip(ids, states)}  # each distinct document once
            bag_of = dict(zip(pool, vocab_bags(model, torch.stack(list(pool.values())))))
            doc_bags = [torch.stack([bag_of[i] for i in ids]) for ids in cands]  # (n_i, V) each
            df = torch.stack(list(bag_of.values())).sum(0)  # (V,) soft document frequency
            idf = torch.log1p(len(bag_of) / (df + 0.5))
            for enc, q in encoders.items():
                q_bags = vocab_bags(model, q)
                table[enc]["vocab_cos"] = recall_at(cands, golds, q_bags, doc_bags, vocab_cos, args.k)
                table[enc]["vocab_idf"] = recall_at(cands, golds, q_bags, doc_bags, vocab_idf(idf), args.k)
    for kind in args.teacher or []:
        with torch.no_grad():
            losses = [candidate_losses(model, e, d, kind, [x.full_text() for x in e.docs]) for e, d in zip(examples, docs)]
        # the "query" is the per-document loss itself: a lower loss ranks higher
        table[f"generator_{kind}_loss"] = {"teacher": recall_at(cands, golds, losses, docs, lambda loss, _: -loss, args.k)}
    result = {
        "model": args.model or "default", "data": args.data.name, "setting": args.setting,
        "questions": len(examples), "k": args.k,
        f"recall@{args.k}": table, "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
