"""ClaraRAG over a real corpus slice with a tiny model; `clara ask` and the demo index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from clara import ClaraModel, ClaraRAG, MemoryIndex
from clara.data.corpus import Document, read_corpus
from clara.demo import CORPUS, demo_questions
from clara.index import MemoryIndexError, add_documents, exact_search, open_or_create

from .conftest import SHARED, perturb_lora, tiny_config


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return list(read_corpus(CORPUS))[:60]


@pytest.fixture()
def rag(model, docs, tmp_path) -> ClaraRAG:
    index = open_or_create(model, tmp_path / "idx", shard_size=16)
    add_documents(model, index, docs, progress=False)
    return ClaraRAG(model, index, k=3, max_new_tokens=6)


def test_ask_returns_answer_and_the_exact_top_k(rag, model, docs):
    question = "When did Lothair II's mother die?"
    result = rag.ask(question)
    assert isinstance(result.answer, str) and result.question == question
    with torch.no_grad():
        scores, rows = exact_search(rag.index, model.encode_query([question]), 3)
    assert [s.id for s in result.sources] == [docs[r].id for r in rows[0].tolist()]
    assert [s.title for s in result.sources] == [docs[r].title for r in rows[0].tolist()]
    assert [s.score for s in result.sources] == pytest.approx(scores[0].tolist(), abs=1e-5)
    assert set(result.timings) == {"encode", "search", "generate"}
    # the answer is generated from exactly those documents' stored states
    with torch.no_grad():
        direct = model.generate([question], [rag.index.states(rows[0].tolist())], max_new_tokens=6)
    assert result.answer == direct[0]
    assert "text" not in result.to_dict()["sources"][0]


def test_ask_batch_matches_single_asks_and_per_question_k(rag):
    questions = ["Who was Teutberga?", "Where was Nicki Minaj born?", "Which film was released first?"]
    batch = rag.ask_batch(questions, k=[1, 3, 2])
    assert [len(a.sources) for a in batch] == [1, 3, 2]
    for q, a, k in zip(questions, batch, [1, 3, 2]):
        single = rag.ask(q, k=k)
        assert a.answer == single.answer
        assert [s.id for s in a.sources] == [s.id for s in single.sources]
    with pytest.raises(ValueError, match="values of k"):
        rag.ask_batch(questions, k=[1, 2])


def test_streamer_receives_the_answer(rag):
    class Collect(BaseStreamer):
        def __init__(self) -> None:
            self.ids: list[int] = []

        def put(self, value: torch.Tensor) -> None:
            self.ids += value.flatten().tolist()

        def end(self) -> None:
            pass

    streamer = Collect()
    result = rag.ask("Who was Teutberga?", streamer=streamer)
    assert streamer.ids
    text = rag.model.tokenizer.decode(streamer.ids, skip_special_tokens=True).strip()
    assert text == result.answer


def test_added_documents_are_searched_and_persisted(rag, model, docs):
    new = [Document(id="new-1", title="Zorbland", text="Zorbland is a fictional island in the Quiet Sea.")]
    report = rag.add_documents(new)
    assert (report.added, report.total) == (1, len(docs) + 1)
    with torch.no_grad():
        all_states = model.compress([d.full_text() for d in docs + new])
        q = model.encode_query(["Where is Zorbland?"])
    want = ClaraModel.score(q, all_states).topk(len(docs) + 1).indices[0].tolist()
    found = rag.retrieve(["Where is Zorbland?"], k=len(docs) + 1)[0]
    assert [s.id for s in found] == [(docs + new)[i].id for i in want]
    assert "new-1" in MemoryIndex.open(rag.index.path)


def test_rag_refuses_index_of_another_model(rag, backbones):
    torch.manual_seed(5)
    other = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    perturb_lora(other)
    with pytest.raises(MemoryIndexError, match="different model"):
        ClaraRAG(other, rag.index)


def test_demo_corpus_holds_the_evidence_of_every_demo_question():
    titles = {d.title for d in read_corpus(CORPUS)}
    items = demo_questions()
    assert len(items) == 5 and len(titles) >= 250
    for item in items:
        assert set(item["evidence_titles"]) <= titles, item["question"]


def _clara(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLARA_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-c", "from clara.cli import app; app()", *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_cli_ask_demo_builds_once_then_reuses(model, tmp_path):
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    cache = tmp_path / "cache"
    r = _clara("ask", "--demo", "--model", str(ckpt), "--json", "--device", "cpu", "-k", "2",
               "--max-new-tokens", "4", cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["question"] for o in out] == [q["question"] for q in demo_questions()]
    assert all(len(o["sources"]) == 2 and {"id", "title", "score"} <= set(o["sources"][0]) for o in out)
    assert "building the demo index" in r.stderr
    [folder] = list((cache / "demo-index").iterdir())
    assert MemoryIndex.open(folder).count == 300
    # second use: no rebuild; a single question without --index also uses the demo index
    r = _clara("ask", "Who was Teutberga?", "--model", str(ckpt), "--json", "--device", "cpu", cache=cache)
    assert r.returncode == 0, r.stderr
    assert "building the demo index" not in r.stderr
    one = json.loads(r.stdout)
    assert one["question"] == "Who was Teutberga?" and len(one["sources"]) == 5
    assert all(s["id"].startswith("2wiki-") for s in one["sources"])


@pytest.mark.integration
def test_real_smollm2_rag_end_to_end(tmp_path):
    """The real backbone (fresh adapters): index 12 passages, ask, sources are exact top-k."""
    from clara import ClaraConfig

    if not os.environ.get("CLARA_CACHE"):
        pytest.skip("set CLARA_CACHE to the folder with the converted SmolLM2 backbone")
    model = ClaraModel.from_backbone(ClaraConfig(device="cpu")).eval()
    docs = list(read_corpus(SHARED / "2wikimultihopqa" / "corpus_6119.json"))[:12]
    index = open_or_create(model, tmp_path / "idx")
    add_documents(model, index, docs, progress=False)
    result = ClaraRAG(model, index, k=2, max_new_tokens=4).ask("Who was Teutberga?")
    assert len(result.sources) == 2 and isinstance(result.answer, str)
