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


def test_a_bare_string_is_not_a_list_of_questions(rag):
    with pytest.raises(TypeError, match="list of strings"):
        rag.retrieve("Who was Teutberga?")
    with pytest.raises(TypeError, match="list of strings"):
        rag.ask_batch("Who was Teutberga?")


def test_cli_prints_questions_answers_and_sources_verbatim():
    from clara.cli import ask_serve
    from clara.rag import Answer, Source

    # Rich markup in data would vanish ("[film]") or raise ("[/INST]")
    answer = Answer("What does [/INST] mean?", "It ends [b]an instruction", [Source("id[1]", "Hamlet [film]", 0.5)])
    with ask_serve.console.capture() as cap:
        ask_serve.print_answer(answer, gold="[red]x")
    out = cap.get()
    for text in ("What does [/INST] mean?", "It ends [b]an instruction", "id[1]", "Hamlet [film]", "expected: [red]x"):
        assert text in out, out


def test_cli_ask_refuses_options_it_would_ignore():
    from typer.testing import CliRunner

    from clara.cli import app

    r = CliRunner().invoke(app, ["ask", "Who was Teutberga?", "--demo"])
    assert r.exit_code == 2 and "not both" in r.output
    r = CliRunner().invoke(app, ["ask", "Who was Teutberga?", "--stream", "--json"])
    assert r.exit_code == 2 and "choose one" in r.output


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
    new = [Document(id="new-1", title="Zorbland", text="Zorbland is a fictional island in the Quiet Sea.",
                    meta={"source": "atlas", "page": 3})]
    report = rag.add_documents(new)
    assert (report.added, report.total) == (1, len(docs) + 1)
    with torch.no_grad():
        all_states = model.compress([d.full_text() for d in docs + new])
        q = model.encode_query(["Where is Zorbland?"])
    want = model.score(q, all_states).topk(len(docs) + 1).indices[0].tolist()
    found = rag.retrieve(["Where is Zorbland?"], k=len(docs) + 1)[0]
    assert [s.id for s in found] == [(docs + new)[i].id for i in want]
    assert "new-1" in MemoryIndex.open(rag.index.path)
    assert next(s for s in found if s.id == "new-1").meta == {"source": "atlas", "page": 3}  # sources carry it
    assert rag.ask("Where is Zorbland?", k=len(docs) + 1).to_dict()["sources"][want.index(len(docs))]["meta"] == {
        "source": "atlas", "page": 3}


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
    # the demo questions belong to the demo corpus: another index needs a question
    r = _clara("ask", "--index", str(tmp_path / "my-index"), "--checkpoint", str(ckpt), cache=cache)  # = --model
    assert r.returncode == 2 and "give a QUESTION" in r.stderr + r.stdout


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


@pytest.fixture(scope="module")
def soft_model(backbones) -> ClaraModel:
    """A tiny llama reading memory through its output head (the shipped default's readout)."""
    torch.manual_seed(2)
    m = ClaraModel.from_backbone(tiny_config(backbones["llama"], mem_readout="soft_tokens"))
    perturb_lora(m)
    return m.eval()


def test_index_stores_readout_rows_for_soft_token_models(soft_model, docs, tmp_path):
    index = open_or_create(soft_model, tmp_path / "idx", shard_size=16)
    assert index.has_readout  # default for soft-token models
    add_documents(soft_model, index, docs[:20], progress=False)
    rows = [0, 7, 19]
    with torch.no_grad():
        want = soft_model.read_memory(index.states(rows).flatten(0, 1)).view(3, index.n_mem, -1)
    reopened = MemoryIndex.open(tmp_path / "idx")
    got = reopened.readout(rows)
    assert (got - want).norm() / want.norm() < 2e-3  # fp16 storage of the same rows
    # the generator's inputs from stored rows equal those computed from the states at question time
    prompt = soft_model._tokenize_prompts(soft_model.answer_prompts(["Who?"], [3]))
    from_rows, _, _ = soft_model._inputs(prompt, [got], pre_read=True)
    from_states, _, _ = soft_model._inputs(prompt, [reopened.states(rows)])
    torch.testing.assert_close(from_rows, from_states, atol=1e-3, rtol=1e-2)
    assert not torch.equal(from_rows, soft_model._inputs(prompt, [got])[0])  # pre_read really skips read_memory
    # ClaraRAG generates from the stored rows
    rag = ClaraRAG(soft_model, reopened, k=3, max_new_tokens=5)
    question = "Who was Teutberga?"
    result = rag.ask(question)
    top = [reopened.row_of(s.id) for s in result.sources]
    with torch.no_grad():
        direct = soft_model.generate([question], [reopened.readout(top)], max_new_tokens=5, pre_read=True)
    assert result.answer == direct[0]
    assert rag.ask_batch([question])[0].answer == result.answer
    # rows are twice the bytes of states alone; new documents (server path) get rows too
    assert rag.add_documents(docs[20:25]).added == 5 and reopened.readout([24]).abs().sum() > 0
    lean = open_or_create(soft_model, tmp_path / "lean", readout=False)
    add_documents(soft_model, lean, docs[:20], progress=False)
    assert not lean.has_readout and lean.stats()["bytes_per_document"] < 0.6 * index.stats()["bytes_per_document"]
    with pytest.raises(MemoryIndexError, match="no readout rows"):
        lean.readout([0])
    with pytest.raises(ValueError, match="stores readout rows"):
        reopened.add([Document(id="new", text="x")], torch.zeros(1, index.n_mem, index.hidden_size))
    with pytest.raises(ValueError, match="without readout rows"):
        lean.add([Document(id="new", text="x")], *[torch.zeros(1, index.n_mem, index.hidden_size)] * 2)


def test_index_without_readout_field_still_answers(soft_model, docs, tmp_path):
    """An index written before readout rows existed: the generator reads its states."""
    index = open_or_create(soft_model, tmp_path / "old", readout=False)
    add_documents(soft_model, index, docs[:12], progress=False)
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    del manifest["readout"]
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    old = MemoryIndex.open(tmp_path / "old")
    assert not old.has_readout
    result = ClaraRAG(soft_model, old, k=2, max_new_tokens=4).ask("Who?")
    rows = [old.row_of(s.id) for s in result.sources]
    with torch.no_grad():
        assert result.answer == soft_model.generate(["Who?"], [old.states(rows)], max_new_tokens=4)[0]


def test_reopening_keeps_the_index_readout_setting(soft_model, docs, tmp_path, caplog):
    add_documents(soft_model, open_or_create(soft_model, tmp_path / "idx", readout=False), docs[:4], progress=False)
    with caplog.at_level("WARNING"):
        again = open_or_create(soft_model, tmp_path / "idx", readout=True)
    assert not again.has_readout and "ignoring readout=True" in caplog.text
    assert add_documents(soft_model, again, docs[:6], progress=False).added == 2


def test_readout_index_refuses_a_model_with_another_mem_scale(soft_model, docs, tmp_path):
    rows = open_or_create(soft_model, tmp_path / "rows", readout=True)
    lean = open_or_create(soft_model, tmp_path / "lean", readout=False)
    for index in (rows, lean):
        add_documents(soft_model, index, docs[:3], progress=False)
    scale = soft_model.config.mem_scale
    try:
        soft_model.config.mem_scale = scale * 2  # the stored rows were scaled by the old value
        with pytest.raises(MemoryIndexError, match="mem_scale"):
            MemoryIndex.open(tmp_path / "rows").check_model(soft_model)
        MemoryIndex.open(tmp_path / "lean").check_model(soft_model)  # states alone do not depend on it
    finally:
        soft_model.config.mem_scale = scale
    MemoryIndex.open(tmp_path / "rows").check_model(soft_model)


def test_top_token_models_read_states_not_stored_rows(soft_model, backbones, docs, tmp_path):
    """Readout rows are stored for the soft-token readouts only: a top_tokens index stores none
    (and refuses to), and the same soft-token index read by a model overridden to another readout
    serves that model its states, never the soft rows."""
    torch.manual_seed(5)
    top = ClaraModel.from_backbone(tiny_config(backbones["llama"], mem_readout="top_tokens", readout_tokens=2))
    perturb_lora(top)
    top.eval()
    with pytest.raises(ValueError, match="readout rows do not serve"):
        open_or_create(top, tmp_path / "bad", readout=True)
    index = open_or_create(top, tmp_path / "top")
    assert not index.has_readout
    add_documents(top, index, docs[:12], progress=False)
    result = ClaraRAG(top, index, k=2, max_new_tokens=4).ask("Who?")
    rows = [index.row_of(s.id) for s in result.sources]
    with torch.no_grad():
        assert result.answer == top.generate(["Who?"], [index.states(rows)], max_new_tokens=4)[0]

    soft_index = open_or_create(soft_model, tmp_path / "soft")
    add_documents(soft_model, soft_index, docs[:12], progress=False)
    assert soft_index.has_readout
    soft_model.config.mem_readout = "states"  # same adapters, so the same fingerprint
    try:
        rag = ClaraRAG(soft_model, MemoryIndex.open(tmp_path / "soft"), k=2, max_new_tokens=4)
        result = rag.ask("Who?")
        rows = [soft_index.row_of(s.id) for s in result.sources]
        with torch.no_grad():
            assert result.answer == soft_model.generate(["Who?"], [soft_index.states(rows)], max_new_tokens=4)[0]
    finally:
        soft_model.config.mem_readout = "soft_tokens"


def test_rag_retrieves_by_the_models_retrieval_score(backbones, docs, tmp_path):
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"], retrieval_score="maxsim"))
    perturb_lora(model)
    index = open_or_create(model, tmp_path / "idx", shard_size=16)
    add_documents(model, index, docs, progress=False)
    rag = ClaraRAG(model, index, k=5, max_new_tokens=2)
    question = "When did Lothair II's mother die?"
    with torch.no_grad():
        q, states = model.encode_query([question]), index.states(list(range(len(index))))
    top = model.score(q, states).topk(5)
    sources = rag.retrieve([question], k=5)[0]
    assert [s.id for s in sources] == [docs[i].id for i in top.indices[0].tolist()]
    assert [s.score for s in sources] == pytest.approx(top.values[0].tolist(), abs=1e-3)
