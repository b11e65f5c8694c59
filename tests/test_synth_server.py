"""``clara synth`` against a real OpenAI-compatible server on loopback.

The server is this project's teacher endpoint over the real SmolLM2-135M-Instruct. A model
this small writes mostly malformed or wrong data: the checks are on schema, ids, and that
every count in the log and summary agrees with the rows written, not on quality.
"""

from __future__ import annotations

import json
import socket

import httpx
import openai
import pytest
from typer.testing import CliRunner

from clara.cli import app
from clara.io import read_jsonl
from clara.synth.pipeline import log_path, summary_path
from clara.synth.teacher import LocalTeacher, OpenAITeacher, TeacherConfig, TeacherUnavailable
from clara.synth.teacher_server import BackgroundServer, create_app

from .conftest import SHARED

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server():
    # one thread: on a busy shared CPU, torch's spinning worker threads make generation much slower
    teacher = LocalTeacher(TeacherConfig(device="cpu", batch_size=4, threads=1))
    with BackgroundServer(create_app(teacher, "teacher")) as srv:
        yield srv
    teacher.close()


def test_endpoint_speaks_openai(server):
    models = httpx.get(server.url + "/models").json()
    assert [m["id"] for m in models["data"]] == ["teacher"]
    client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
    resp = client.chat.completions.create(
        model="teacher", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=8, temperature=0
    )
    assert resp.choices[0].message.role == "assistant" and resp.choices[0].message.content
    assert 1 <= resp.usage.completion_tokens <= 8
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="teacher", messages=[], max_tokens=4)
    # a bad model name is a configuration error: no retries, the error surfaces at once
    with pytest.raises(openai.NotFoundError):
        OpenAITeacher(TeacherConfig(base_url=server.url, model="other")).complete([{"role": "user", "content": "hi"}], 4, 0)


def test_connection_refused_is_retried_then_reported():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    teacher = OpenAITeacher(TeacherConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=2, backoff=0.01))
    with pytest.raises(TeacherUnavailable, match="3 attempts"):
        teacher.complete([{"role": "user", "content": "hi"}], 4, 0)


def test_synth_cli_on_real_documents(server, tmp_path):
    passages = json.loads((SHARED / "2wikimultihopqa" / "corpus_6119.json").read_text())
    short = [p for p in passages if 15 <= len(p["text"].split()) <= 40][:2]
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:  # one plain record, one in FlashRAG's "contents" form
        f.write(json.dumps({"id": "w0", "title": short[0]["title"], "text": short[0]["text"]}) + "\n")
        f.write(json.dumps({"id": "w1", "contents": f'"{short[1]["title"]}"\n{short[1]["text"]}'}) + "\n")
    out = tmp_path / "scp.jsonl"
    args = ["synth", "run", str(corpus), "--out", str(out), "--base-url", server.url, "--model", "teacher",
            "--max-rounds", "2", "--max-tokens", "64", "--parse-retries", "0", "--workers", "2", "--retries", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "pairs per document" in result.output

    logged = {o["doc_id"]: o["stats"] for _, o in read_jsonl(log_path(out))}
    assert set(logged) == {"w0", "w1"}
    texts = {"w0": f'{short[0]["title"]}\n{short[0]["text"]}', "w1": f'{short[1]["title"]}\n{short[1]["text"]}'}
    rows = [r for _, r in read_jsonl(out)]
    for r in rows:
        assert set(r) == {"data_type", "question", "answers", "docs", "doc_id"}
        assert r["data_type"] in ("qa", "complex_qa", "paraphrase") and r["docs"] == [texts[r["doc_id"]]]
        assert all(isinstance(a, str) and a.strip() for a in r["answers"])
        if r["data_type"] == "paraphrase":
            assert r["question"] == [] and len(r["answers"]) == 1
        else:
            assert len(r["question"]) == len(r["answers"]) >= 1
    for doc_id, s in logged.items():
        mine = {r["data_type"]: r for r in rows if r["doc_id"] == doc_id}
        for kind in ("qa", "complex_qa"):
            kept = len(mine[kind]["answers"]) if kind in mine else 0
            assert s[f"kept_{kind}"] == kept
            # every generated pair was kept, rejected by the judge, or left unjudged and dropped
        generated = s.get("generated_qa", 0) + s.get("generated_complex_qa", 0) + s.get("generated_supplementary", 0)
        judged_out = s.get("rejected_qa", 0) + s.get("rejected_complex_qa", 0) + s.get("unjudged_dropped", 0)
        assert generated == s["kept_qa"] + s["kept_complex_qa"] + judged_out
        assert s["kept_paraphrase"] == int("paraphrase" in mine)
        assert s["kept_paraphrase"] + s.get("paraphrase_dropped", 0) == 1
        assert 1 <= s["rounds"] <= 2 and 0 <= s.get("malformed_replies", 0) <= s["requests"]
    summary = json.loads(summary_path(out).read_text())
    assert summary["documents"] == 2 and summary["new_documents"] == 2
    assert summary["requests"] == sum(s["requests"] for s in logged.values())
    assert summary["kept"]["qa"] == sum(len(r["answers"]) for r in rows if r["data_type"] == "qa")

    # a rerun with settings that change the rows is refused before any teacher call
    refused = CliRunner().invoke(app, [*args[:-2], "--retries", "1", "--max-doc-words", "10"])
    assert refused.exit_code == 2 and "max_doc_words: 400 -> 10" in " ".join(refused.output.split())
    # a rerun finds both documents done and asks the teacher nothing
    before = out.read_text()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert out.read_text() == before
    assert json.loads(summary_path(out).read_text())["skipped_documents"] == 2
