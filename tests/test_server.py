"""The HTTP server as a real process (`clara serve` under uvicorn on loopback), hit with httpx."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from clara import ClaraModel, ClaraRAG, MemoryIndex
from clara.data.corpus import Document, read_corpus
from clara.index import add_documents, open_or_create

from .conftest import SHARED, perturb_lora, tiny_config

QUESTIONS = [f"Who was born in city number {i}?" for i in range(12)] + [
    "When did Lothair II's mother die?", "Which film was released first?", "Where is Paris?", "Who was Teutberga?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`clara serve` in a subprocess; stopped with SIGTERM (uvicorn shuts down cleanly)."""

    def __init__(self, index: Path, ckpt: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from clara.cli import app; app()", "serve", "--index", str(index),
             "--model", str(ckpt), "--port", str(self.port), "--device", "cpu", "-k", "3", "--max-new-tokens", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def setup(backbones, tmp_path_factory):
    torch.manual_seed(1)
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    perturb_lora(model)
    model.eval()
    root = tmp_path_factory.mktemp("server")
    model.save_pretrained(root / "ckpt")
    docs = list(read_corpus(SHARED / "2wikimultihopqa" / "corpus_6119.json"))[:80]
    index = open_or_create(model, root / "idx", shard_size=32)
    add_documents(model, index, docs, progress=False)
    server = Server(root / "idx", root / "ckpt")
    yield model, root, server
    server.stop()


def test_health_and_openapi(setup):
    _, _, server = setup
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["documents"] >= 80
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"/v1/ask", "/v1/retrieve", "/v1/documents", "/health"} <= set(paths)


def test_ask_and_retrieve_match_in_process_rag(setup):
    model, root, server = setup
    rag = ClaraRAG(model, MemoryIndex.open(root / "idx"), k=3, max_new_tokens=5)
    r = httpx.post(server.url + "/v1/ask", json={"question": "Who was Teutberga?"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    want = rag.ask("Who was Teutberga?")
    assert body["answer"] == want.answer
    assert [s["id"] for s in body["sources"]] == [s.id for s in want.sources]
    assert body["sources"][0]["score"] == pytest.approx(want.sources[0].score, abs=1e-5)
    r = httpx.post(server.url + "/v1/retrieve", json={"query": "Who was Teutberga?", "k": 4}, timeout=60)
    assert r.status_code == 200
    hits = r.json()["sources"]
    assert [h["id"] for h in hits] == [s.id for s in rag.retrieve(["Who was Teutberga?"], k=4)[0]]
    assert hits[0]["text"]


def test_bad_requests_get_clear_4xx(setup):
    _, _, server = setup
    url = server.url
    r = httpx.post(url + "/v1/ask", content=b'{"question": "unterminated', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
    r = httpx.post(url + "/v1/ask", json={"k": 3})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "question"
    r = httpx.post(url + "/v1/ask", json={"question": "q", "k": 0})
    assert r.status_code == 422
    r = httpx.post(url + "/v1/ask", json={"question": "q", "k": 1000})
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    r = httpx.post(url + "/v1/ask", json={"question": "   "})
    assert r.status_code == 422 and "blank" in r.json()["detail"]
    r = httpx.post(url + "/v1/ask", json={"question": "what is <MEM0>?"})
    assert r.status_code == 422 and "control tokens" in r.json()["detail"]
    r = httpx.post(url + "/v1/retrieve", json={"query": "x" * 5000})
    assert r.status_code == 422 and "characters" in r.json()["detail"]
    r = httpx.post(url + "/v1/ask", json={"question": "q", "max_new_tokens": 100000})
    assert r.status_code == 422
    big = json.dumps({"question": "x" * 2_000_000})
    r = httpx.post(url + "/v1/ask", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = httpx.post(url + "/v1/documents", json={"documents": []})
    assert r.status_code == 422
    r = httpx.get(url + "/v1/nothing")
    assert r.status_code == 404


def test_sixteen_concurrent_asks_are_batched_and_correct(setup):
    model, root, server = setup
    before = httpx.get(server.url + "/health").json()

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[
                client.post(server.url + "/v1/ask", json={"question": q}) for q in QUESTIONS])

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 16
    after = httpx.get(server.url + "/health").json()
    assert after["asks"] - before["asks"] == 16
    calls = after["generate_calls"] - before["generate_calls"]
    assert calls < 16 and after["largest_batch"] > 1, (calls, after)
    # each answer is the one this question gets alone
    rag = ClaraRAG(model, MemoryIndex.open(root / "idx"), k=3, max_new_tokens=5)
    for q, r in zip(QUESTIONS, responses):
        assert r.json()["question"] == q
        assert r.json()["answer"] == rag.ask(q).answer


def test_one_id_added_twice_at_once_or_by_another_process_is_409(setup):
    model, root, server = setup
    url = server.url + "/v1/documents"
    doc = {"id": "race-1", "text": "Racing documents arrive together."}

    async def two_at_once() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            rs = await asyncio.gather(*[client.post(url, json={"documents": [doc]}) for _ in range(2)])
        return sorted(r.status_code for r in rs)

    assert asyncio.run(two_at_once()) == [200, 409]  # the second must not be a silent {"added": 0}
    # committed by another writer (`clara index add`) since the server last looked: 409, not a 500
    other = {"id": "other-1", "title": "", "text": "Added beside the server."}
    add_documents(model, MemoryIndex.open(root / "idx"), [Document(**other)], progress=False)
    r = httpx.post(url, json={"documents": [other]}, timeout=60)
    assert r.status_code == 409 and "other-1" in r.json()["detail"]


def test_read_only_server_refuses_documents_and_sources_carry_meta(setup, tmp_path):
    from fastapi.testclient import TestClient

    from clara.server import ServerConfig, create_app

    model, _, _ = setup
    index = open_or_create(model, tmp_path / "idx")
    add_documents(model, index, [Document("a", "Zorbland is an island.", "Zorbland", {"source": "atlas", "page": 3}),
                                 Document("b", "Paris is in France.", "Paris")], progress=False)
    rag = ClaraRAG(model, MemoryIndex.open(tmp_path / "idx"), k=2, max_new_tokens=5)
    with TestClient(create_app(rag, ServerConfig(read_only=True))) as client:
        r = client.post("/v1/documents", json={"documents": [{"id": "ro-1", "text": "Not to be kept."}]})
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        r = client.post("/v1/retrieve", json={"query": "Where is Zorbland?", "k": 2})
        assert r.status_code == 200
        assert {h["id"]: h["meta"] for h in r.json()["sources"]} == {"a": {"source": "atlas", "page": 3}, "b": {}}
    assert "ro-1" not in MemoryIndex.open(tmp_path / "idx")


def test_added_documents_searchable_and_survive_restart(setup):
    model, root, server = setup
    doc = {"id": "zorb-1", "title": "Zorbland", "text": "Zorbland is a fictional island in the Quiet Sea."}
    n = httpx.get(server.url + "/health").json()["documents"]
    r = httpx.post(server.url + "/v1/documents", json={"documents": [doc]}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"added": 1, "total": n + 1, "truncated": 0}
    r = httpx.post(server.url + "/v1/documents", json={"documents": [doc]}, timeout=60)
    assert r.status_code == 409 and "zorb-1" in r.json()["detail"]
    # a long document: kept whole (its start in memory, counted) or, with chunk, cut into pieces
    long_doc = {"id": "long-1", "text": " ".join(f"word{i}" for i in range(200))}
    url = server.url + "/v1/documents"
    r = httpx.post(url, json={"documents": [long_doc], "chunk": True, "chunk_overlap": 99}, timeout=60)
    assert r.status_code == 422 and "chunk_overlap" in r.json()["detail"]
    clash = [{"id": "c", "text": long_doc["text"]}, {"id": "c#0", "text": "A short one."}]  # c's first piece is c#0
    r = httpx.post(url, json={"documents": clash, "chunk": True, "chunk_overlap": 4}, timeout=60)
    assert r.status_code == 409 and "c#0" in r.json()["detail"]
    r = httpx.post(url, json={"documents": [long_doc], "chunk": True, "chunk_overlap": 4}, timeout=60)
    assert r.status_code == 200 and r.json()["added"] > 3 and r.json()["truncated"] == 0, r.text
    r = httpx.post(url, json={"documents": [long_doc], "chunk": True, "chunk_overlap": 4}, timeout=60)
    assert r.status_code == 409 and "long-1#0" in r.json()["detail"]
    r = httpx.post(url, json={"documents": [long_doc]}, timeout=60)
    assert r.status_code == 200 and r.json()["added"] == 1 and r.json()["truncated"] == 1
    n = r.json()["total"] - 1  # the restart below must find n + 1 documents

    def ranked_ids(url: str) -> list[str]:
        r = httpx.post(url + "/v1/retrieve", json={"query": "Where is Zorbland?", "k": 20}, timeout=60)
        return [h["id"] for h in r.json()["sources"]]

    # searchable without restart, ranked as the in-process exact search ranks it
    want = [s.id for s in ClaraRAG(model, MemoryIndex.open(root / "idx")).retrieve(["Where is Zorbland?"], k=20)[0]]
    assert ranked_ids(server.url) == want
    assert "zorb-1" in MemoryIndex.open(root / "idx")
    # and still there after a restart
    server.stop()
    restarted = Server(root / "idx", root / "ckpt")
    try:
        assert httpx.get(restarted.url + "/health").json()["documents"] == n + 1
        assert ranked_ids(restarted.url) == want
    finally:
        restarted.stop()
        setup[2].__dict__.update(restarted.__dict__)  # the fixture's teardown stops the live one


def test_one_failing_question_does_not_fail_its_batch():
    """The micro-batcher answers a failed batch one question at a time: only the bad one errs."""
    from clara.server import MicroBatcher

    class Rag:  # ask_batch is all the batcher calls
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def ask_batch(self, questions: list[str], ks: list[int], max_new: int) -> list[str]:
            self.calls.append(list(questions))
            if any(q.startswith("bad") for q in questions):
                raise ValueError("bad question")
            return [q.upper() for q in questions]

    async def run() -> list[object]:
        from concurrent.futures import ThreadPoolExecutor

        rag = Rag()
        batcher = MicroBatcher(rag, ThreadPoolExecutor(1), max_batch=8, max_wait_s=0.2)  # type: ignore[arg-type]
        batcher.start()
        try:
            results = await asyncio.gather(*[batcher.ask(q, 3, 5) for q in ("a", "bad b", "c")], return_exceptions=True)
        finally:
            await batcher.stop()
        assert rag.calls[0] == ["a", "bad b", "c"] and sorted(rag.calls[1:]) == [["a"], ["bad b"], ["c"]]
        assert batcher.stats["asks"] == 2 and batcher.stats["generate_calls"] == 4  # the batch, then one by one
        return results

    a, b, c = asyncio.run(run())
    assert (a, c) == ("A", "C")
    assert isinstance(b, ValueError) and "bad question" in str(b)


def test_server_refuses_defaults_over_its_limits(setup):
    from clara.server import ServerConfig, create_app

    model, root, _ = setup
    rag = ClaraRAG(model, MemoryIndex.open(root / "idx"), k=30, max_new_tokens=5)
    with pytest.raises(ValueError, match=r"k=30.*max_k=20"):
        create_app(rag, ServerConfig())
    assert create_app(rag, ServerConfig(max_k=30)) is not None
