"""Memory index: storage, resumable builds (killed for real), exact and approximate search, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clara import ClaraModel
from clara.cli import app
from clara.data.corpus import Document, read_corpus
from clara.index import (
    AnnConfig,
    MemoryIndex,
    MemoryIndexError,
    Searcher,
    add_documents,
    build_ann,
    exact_search,
    model_fingerprint,
    open_or_create,
    recall_at_k,
)
from clara.index.search import rescore
from clara.io import DataError
from clara.index.store import STORAGE_DTYPES
from clara.score import SCORES, score

from .conftest import SHARED, perturb_lora, tiny_config

CORPUS_2WIKI = SHARED / "2wikimultihopqa" / "corpus_6119.json"


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """Run the real `clara` command line (`python -m clara`, the console script's entry) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "clara", *args],
        capture_output=True, text=True, timeout=300, **kw,
    )


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    out = []
    for d in read_corpus(CORPUS_2WIKI):
        out.append(d)
        if len(out) == 120:
            return out
    return out


def write_jsonl(path: Path, docs: list[Document]) -> Path:
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n")
    return path


def test_store_roundtrip_fp16_and_int8(model, docs, tmp_path):
    with torch.no_grad():
        states = model.compress([d.full_text() for d in docs[:20]])  # (20, n_mem, H)
    for storage, tol in (("float16", 2e-3), ("int8", 2e-2)):
        index = MemoryIndex.create(tmp_path / storage, model_fingerprint(model), storage=storage, shard_size=8)
        index.add(docs[:20], states)
        reopened = MemoryIndex.open(tmp_path / storage)
        assert len(reopened) == 20 and len(reopened.shards) == 3  # 8 + 8 + 4
        assert reopened.ids == [d.id for d in docs[:20]]
        assert reopened.document(13).text == docs[13].text and reopened.document(13).title == docs[13].title
        got = reopened.states(list(range(20)))
        rel = (got - states).norm() / states.norm()
        assert rel < tol, (storage, rel)
        assert reopened.verify() == []
    # int8 takes about half the bytes of fp16
    assert MemoryIndex.open(tmp_path / "int8").stats()["state_bytes"] < 0.6 * MemoryIndex.open(tmp_path / "float16").stats()["state_bytes"]


def test_duplicates_refused_and_checksums_detect_corruption(model, docs, tmp_path):
    index = open_or_create(model, tmp_path / "idx", shard_size=16)
    add_documents(model, index, docs[:10], progress=False)
    with pytest.raises(MemoryIndexError, match="already in the index"):
        index.add(docs[3:4], torch.zeros(1, index.n_mem, index.hidden_size))
    # add_documents skips known ids instead: the resume path
    report = add_documents(model, index, docs[:12], progress=False)
    assert (report.added, report.skipped, report.total) == (2, 10, 12)
    shard = tmp_path / "idx" / "shards" / "00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert any("00000.safetensors" in p for p in MemoryIndex.open(tmp_path / "idx").verify())


def test_uncommitted_shard_is_invisible_and_overwritten(model, docs, tmp_path):
    index = open_or_create(model, tmp_path / "idx", shard_size=10)
    add_documents(model, index, docs[:10], progress=False)
    # what a kill between writing shard 00001 and committing the manifest leaves behind
    (tmp_path / "idx" / "shards" / "00001.safetensors").write_bytes(b"half a shard")
    (tmp_path / "idx" / "shards" / "00001.docs.jsonl").write_text('{"id": "ghost", "text": "x"}\n')
    (tmp_path / "idx" / "shards" / ".00001.safetensors.abc.tmp").write_bytes(b"torn")
    reopened = MemoryIndex.open(tmp_path / "idx")
    assert len(reopened) == 10 and "ghost" not in reopened
    add_documents(model, reopened, docs[10:20], progress=False)
    again = MemoryIndex.open(tmp_path / "idx")
    assert again.ids == [d.id for d in docs[:20]] and again.verify() == []


def test_documents_are_read_from_disk_by_offset_and_damage_is_named(model, docs, tmp_path):
    index = open_or_create(model, tmp_path / "idx", shard_size=4)
    add_documents(model, index, docs[:10], progress=False)
    reopened = MemoryIndex.open(tmp_path / "idx")
    assert [reopened.document(r) for r in range(10)] == [index.document(r) for r in range(10)]
    assert [reopened.document(r).id for r in range(10)] == [d.id for d in docs[:10]]
    (tmp_path / "idx" / "shards" / "00001.docs.jsonl").write_text('{"id": "x", "text": "y"}\n{not json\n')
    with pytest.raises(MemoryIndexError, match=r"00001.docs.jsonl:2: not a document record"):
        MemoryIndex.open(tmp_path / "idx")
    (tmp_path / "idx" / "shards" / "00001.docs.jsonl").unlink()  # gone, and no compaction explains it
    with pytest.raises(MemoryIndexError, match=r"00001.docs.jsonl listed in the manifest is missing"):
        MemoryIndex.open(tmp_path / "idx")


def test_build_report_counts_documents_cut_to_doc_max_len(model, tmp_path, caplog):
    index = open_or_create(model, tmp_path / "idx")
    long_doc = Document(id="long", text=" ".join(f"word{i}" for i in range(4 * model.config.doc_max_len)))
    short = [Document(id=f"s{i}", text=t) for i, t in enumerate(["Paris is in France.", "Ice is cold."])]
    with caplog.at_level("WARNING"):
        report = add_documents(model, index, [*short, long_doc], progress=False)
    assert (report.added, report.truncated) == (3, 1) and "were cut" in caplog.text
    assert add_documents(model, index, [Document(id="s3", text="Rome is old.")], progress=False).truncated == 0


def test_two_writers_take_turns_and_keep_each_others_documents(model, docs, tmp_path):
    index = open_or_create(model, tmp_path / "idx", shard_size=10)
    add_documents(model, index, docs[:5], progress=False)
    # two writers that opened the same index (a server and `clara index add`) add in turn
    server, cli_writer = MemoryIndex.open(tmp_path / "idx"), MemoryIndex.open(tmp_path / "idx")
    add_documents(model, cli_writer, docs[5:8], progress=False)
    with pytest.raises(MemoryIndexError, match="already in the index"):
        add_documents(model, server, docs[6:7], progress=False)  # the other writer's document is seen
    add_documents(model, server, docs[8:12], progress=False)
    assert server.ids == [d.id for d in docs[:12]]
    again = MemoryIndex.open(tmp_path / "idx")
    assert again.ids == [d.id for d in docs[:12]] and again.verify() == []
    assert [s.name for s in again.shards] == ["00000", "00001", "00002"]
    # a reader (a running server's RAG) takes in what a writer added, with no restart
    from clara import ClaraRAG

    rag = ClaraRAG(model, again, k=3)
    add_documents(model, cli_writer, docs[12:13], progress=False)
    assert docs[12].id not in again
    hits = rag.retrieve([docs[12].text], k=20)[0]
    assert docs[12].id in again and docs[12].id in [h.id for h in hits]


def test_compact_merges_one_row_shards_keeping_rows_and_readers(backbones, docs, tmp_path):
    torch.manual_seed(4)
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"], mem_readout="soft_tokens"))
    index = open_or_create(model, tmp_path / "idx", shard_size=8, storage="int8", readout=True)
    for d in docs[:11]:  # what a server fed one POST /v1/documents at a time leaves: 11 one-row shards
        add_documents(model, index, [d], progress=False)
    with torch.no_grad():
        q = model.encode_query(["Who was Teutberga?", "Which country?"])
    before_hits = exact_search(index, q, 5)
    before_states, before_readout = index.states(list(range(11))), index.readout(list(range(11)))
    reader = MemoryIndex.open(tmp_path / "idx")  # another process that read the index before
    reader.states([0])  # and has shard 00000 memory-mapped
    (tmp_path / "idx" / "shards" / "00050.safetensors").write_bytes(b"cut by a killed writer")
    assert MemoryIndex.open(tmp_path / "idx").compact() == 11 - 2  # 8 + 3 rows
    compacted = MemoryIndex.open(tmp_path / "idx")
    assert [s.count for s in compacted.shards] == [8, 3] and compacted.verify() == []
    assert compacted.ids == [d.id for d in docs[:11]] and compacted.document(9).text == docs[9].text
    assert torch.equal(compacted.states(list(range(11))), before_states)  # int8 codes and scales as stored
    assert torch.equal(compacted.readout(list(range(11))), before_readout)
    scores, rows = exact_search(compacted, q, 5)  # other blocks: the same ranking, scores to rounding
    assert torch.equal(rows, before_hits[1]) and torch.allclose(scores, before_hits[0], atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "idx" / "shards").iterdir()) == [
        "00011.docs.jsonl", "00011.safetensors", "00012.docs.jsonl", "00012.safetensors"
    ]  # merged-away and orphaned files deleted, new names never reuse a listed one
    # the stale reader finds its shards gone and takes in the compacted manifest: same rows, by
    # every path (a search pass over the blocks, gathered states, a document)
    scores, rows = exact_search(reader, q, 5)
    assert torch.equal(rows, before_hits[1]) and [s.name for s in reader.shards] == ["00011", "00012"]
    stale = [MemoryIndex.open(tmp_path / "idx") for _ in range(2)]  # nothing of theirs memory-mapped
    add_documents(model, stale[0], docs[11:12], progress=False)  # shard 00013, then another compaction
    MemoryIndex.open(tmp_path / "idx").compact(shard_size=100)
    assert torch.equal(stale[0].states(list(range(11))), before_states) and stale[0].count == 12
    assert stale[1].document(9).id == docs[9].id and stale[1].count == 12
    assert [s.name for s in stale[1].shards] == ["00014"]
    blocks = list(stale[0].iter_blocks(4, end=10))  # a pass bounded below the merged shard's end
    assert [b[0] for b in blocks] == [0, 4, 8] and sum(len(b[1]) for b in blocks) == 10
    reader = stale[0]
    add_documents(model, reader, docs[12:14], progress=False)  # a later commit names shard 00015
    assert [s.name for s in MemoryIndex.open(tmp_path / "idx").shards] == ["00014", "00015"]
    r = CliRunner().invoke(app, ["index", "compact", str(tmp_path / "idx"), "--shard-size", "100"])
    assert r.exit_code == 0 and "2 shards -> 1 (14 documents)" in " ".join(r.output.split()), r.output
    assert MemoryIndex.open(tmp_path / "idx").ids == [d.id for d in docs[:14]]
    assert MemoryIndex.open(tmp_path / "idx").compact() == 0  # nothing left to merge
    with pytest.raises(ValueError, match="shard_size"):
        index.compact(shard_size=0)


def test_index_refuses_another_model(model, backbones, docs, tmp_path):
    index = open_or_create(model, tmp_path / "idx")
    add_documents(model, index, docs[:4], progress=False)
    torch.manual_seed(7)
    other = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    perturb_lora(other)
    with pytest.raises(MemoryIndexError, match="different model.*adapter weights differ"):
        MemoryIndex.open(tmp_path / "idx").check_model(other)
    with pytest.raises(MemoryIndexError, match="different model"):
        open_or_create(other, tmp_path / "idx")
    other_arch = ClaraModel.from_backbone(tiny_config(backbones["qwen2"]))
    with pytest.raises(MemoryIndexError, match="backbone differs"):
        index.check_model(other_arch)
    index.check_model(model)  # the builder itself is accepted


@pytest.mark.parametrize("kind", SCORES)
@pytest.mark.parametrize("storage", STORAGE_DTYPES)
def test_exact_search_matches_brute_force_and_blocks(model, docs, tmp_path, kind, storage):
    index = open_or_create(model, tmp_path / "idx", shard_size=25, storage=storage)
    add_documents(model, index, docs, progress=False)
    with torch.no_grad():
        q = model.encode_query(["Who was Teutberga?", "When was the film released?", "Which country?"])
        full = index.states(list(range(len(index))))
    want = score(q, full, kind).topk(10)
    for block in (7, 16384):  # blocks smaller than a shard and larger than the index
        scores, rows = exact_search(index, q, 10, block_rows=block, score=kind)
        assert rows.tolist() == want.indices.tolist()
        torch.testing.assert_close(scores, want.values, atol=1e-5, rtol=1e-5)
    assert exact_search(index, q, 1000, score=kind)[1].shape == (3, len(docs))  # k larger than the index
    # the searcher and ClaraRAG use the model's retrieval_score
    assert Searcher(index, score=kind).search(q, 10)[1].tolist() == want.indices.tolist()


def test_maxsim_ann_holds_slots_and_serves_only_its_score(backbones, docs, tmp_path):
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"], retrieval_score="maxsim"))
    perturb_lora(model)
    index = open_or_create(model, tmp_path / "idx", shard_size=50)
    add_documents(model, index, docs[:100], progress=False)
    # `clara index ann` without --score serves the score of the model that built the index
    result = CliRunner().invoke(app, ["index", "ann", str(index.path), "--dim", "32"])
    assert result.exit_code == 0, result.output
    index = MemoryIndex.open(index.path)
    assert index.manifest["ann"]["score"] == "maxsim" and index.manifest["ann"]["kind"].endswith("slots")
    with torch.no_grad():
        q = model.encode_query([d.title for d in docs[:20]])
    cos_rows = exact_search(index, q, 10)[1]
    ms_rows = exact_search(index, q, 10, score="maxsim")[1]
    assert cos_rows.tolist() != ms_rows.tolist()  # a different score, a different ranking
    ann_s, ann_rows = Searcher(index, "ann", score="maxsim").search(q, 10)
    torch.testing.assert_close(ann_s, rescore(index, q, ann_rows, "maxsim"))  # exact max-sim of the rows returned
    assert recall_at_k(ms_rows, ann_rows) >= 0.9
    assert recall_at_k(ms_rows, Searcher(index, "ann", score="maxsim", nprobe=1, rerank=1).search(q, 10)[1]) < 0.9
    # rows added after the ANN are scanned exactly
    add_documents(model, index, docs[100:], progress=False)
    with torch.no_grad():
        q_new = model.encode_query([docs[110].full_text()])
    assert Searcher(index, "ann", score="maxsim").search(q_new, 5)[1].tolist() == exact_search(
        index, q_new, 5, score="maxsim")[1].tolist()
    with pytest.raises(MemoryIndexError, match="serves the maxsim score, the model retrieves by cosine"):
        Searcher(index, "ann", score="cosine")
    with pytest.raises(ValueError, match="retrieval score must be one of"):
        Searcher(index, score="dot")


def test_ann_recall_and_rows_added_after_it(model, docs, tmp_path):
    index = open_or_create(model, tmp_path / "idx", shard_size=50)
    add_documents(model, index, docs[:100], progress=False)
    info = build_ann(index, AnnConfig(dim=64))
    assert MemoryIndex.open(tmp_path / "idx").manifest["ann"] == info
    with torch.no_grad():
        q = model.encode_query([d.title for d in docs[:20]])
    exact = exact_search(index, q, 10)[1]
    approx = Searcher(index, "ann", nprobe=4).search(q, 10)[1]
    assert recall_at_k(exact, approx) >= 0.9
    # documents added after the ANN are scanned exactly and found
    add_documents(model, index, docs[100:], progress=False)
    with torch.no_grad():
        q_new = model.encode_query([docs[110].full_text()])
    ex_rows = exact_search(index, q_new, 5)[1]
    ann_rows = Searcher(index, "ann").search(q_new, 5)[1]
    assert ex_rows[0, 0].item() == ann_rows[0, 0].item()
    assert recall_at_k(ex_rows, ann_rows) >= 0.8


def test_int8_recall_against_fp16(model, docs, tmp_path):
    with torch.no_grad():
        states = model.compress([d.full_text() for d in docs])
        q = model.encode_query([d.title for d in docs[:30]])
    fp = MemoryIndex.create(tmp_path / "fp", model_fingerprint(model), storage="float16")
    i8 = MemoryIndex.create(tmp_path / "i8", model_fingerprint(model), storage="int8")
    fp.add(docs, states)
    i8.add(docs, states)
    assert recall_at_k(exact_search(fp, q, 10)[1], exact_search(i8, q, 10)[1]) >= 0.9


def test_folder_corpus_chunk_ids_trace_to_file_and_offset(model, tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    text = " ".join(f"word{i}" for i in range(200))
    (folder / "sub" / "a.txt").write_text(text)
    (folder / "b.md").write_text("# Title\nShort note about Paris.")
    index = open_or_create(model, tmp_path / "idx")
    from clara.cli.index import corpus_documents

    chunks, _ = corpus_documents(model, folder, overlap=4)
    add_documents(model, index, chunks, progress=False)
    ids = MemoryIndex.open(tmp_path / "idx").ids
    assert "b.md#0" in ids and "sub/a.txt#0" in ids and len(ids) > 3
    # every chunk fits the compressor whole, title included (nothing truncated)
    lengths = [len(model.tokenizer(index.document(index.row_of(i)).full_text(), add_special_tokens=False)["input_ids"])
               for i in ids]
    assert max(lengths) <= model.config.doc_max_len and max(lengths) >= model.config.doc_max_len - 8, lengths
    for doc_id in ids:
        if doc_id.startswith("sub/a.txt#"):
            offset = int(doc_id.split("#")[1])
            assert text[offset:].startswith(index.document(index.row_of(doc_id)).text.split()[0])


def test_long_jsonl_records_are_chunked_with_chunk_and_short_ones_keep_their_id(model, tmp_path):
    text = " ".join(f"word{i}" for i in range(200))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        json.dumps({"id": "long", "title": "Long page", "text": text, "source": "wiki"}) + "\n"
        + json.dumps({"id": "short", "title": "Paris", "text": "Paris is in France."}) + "\n"
    )
    from clara.cli.index import corpus_documents

    whole, total = corpus_documents(model, corpus, overlap=4)
    assert [d.id for d in whole] == ["long", "short"] and total == 2  # off by default: ids as written
    pieces = list(corpus_documents(model, corpus, overlap=4, chunk=True)[0])
    assert pieces[-1].id == "short" and len(pieces) > 3
    for d in pieces[:-1]:
        offset = int(d.id.removeprefix("long#"))
        assert text[offset:].startswith(d.text.split()[0])
        assert d.title == "Long page" and d.meta == {"source": "wiki", "parent": "long", "offset": offset}
        n = len(model.tokenizer(d.full_text(), add_special_tokens=False)["input_ids"])
        assert n <= model.config.doc_max_len  # whole, title included: nothing truncated
    index = open_or_create(model, tmp_path / "idx")
    assert add_documents(model, index, pieces, progress=False).truncated == 0
    checkpoint = tmp_path / "ckpt"
    model.save_pretrained(checkpoint)
    r = CliRunner().invoke(app, ["index", "build", str(corpus), "--out", str(tmp_path / "cli"), "-m", str(checkpoint),
                                 "--device", "cpu", "--chunk", "--chunk-overlap", "4"])
    assert r.exit_code == 0, r.output
    assert MemoryIndex.open(tmp_path / "cli").ids == [d.id for d in pieces]
    r = CliRunner().invoke(app, ["index", "build", str(corpus), "--out", str(tmp_path / "bad"), "-m", str(checkpoint),
                                 "--device", "cpu", "--chunk", "--chunk-overlap", str(model.config.doc_max_len)])
    assert r.exit_code == 2 and "chunk-overlap" in r.output and not (tmp_path / "bad").exists()
    from clara.data.corpus import chunk_document
    from clara.tokens import document_length

    wordy = Document(id="w", title=" ".join(["Title"] * 40), text=text)  # a title that fills doc_max_len
    with pytest.raises(DataError, match="'w': its title leaves 0 of 32 tokens"):
        chunk_document(wordy, model.config.doc_max_len, 4, document_length(model.tokenizer))


def test_text_without_spaces_is_cut_inside_and_folder_titles_are_checked(model, tmp_path):
    from clara.data.corpus import chunk_document
    from clara.tokens import document_length

    count = document_length(model.tokenizer)
    size = model.config.doc_max_len
    # a CJK paragraph and a long URL hold no space to cut at: pieces must still fit the compressor
    cjk = "巴黎是法国的首都和最大城市位于塞纳河畔" * 12
    text = f"See https://example.org/{'a1b2c3' * 40} and then {cjk} end."
    pieces = chunk_document(Document(id="x", text=text), size, 4, count)
    assert len(pieces) > 3
    for d in pieces:
        assert count(d.full_text()) <= size, d.text
        assert text[d.meta["offset"]:].startswith(d.text[:10])
    # the pieces of one run are glued back without spaces: the run's text is all there, in order
    joined = "".join(d.text.replace(" ", "") for d in pieces)
    assert cjk in joined
    # a folder file whose name (its title) fills the budget is refused, naming the file
    folder = tmp_path / "notes"
    folder.mkdir()
    long_name = "_".join(["Title"] * 30)
    (folder / f"{long_name}.txt").write_text("Some words to index. " * 20)
    with pytest.raises(DataError, match=f"{long_name}.txt: its title leaves"):
        list(read_corpus(folder, size, 4, count))


def test_cli_build_killed_midway_then_resumed(checkpoint, tmp_path):
    """kill -9 a real `clara index build`, rerun it: every document once, none missing."""
    docs = []
    for d in read_corpus(CORPUS_2WIKI):
        docs.append(d)
        if len(docs) == 600:
            break
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    out = tmp_path / "idx"
    args = ["index", "build", str(corpus), "--out", str(out), "--model", str(checkpoint),
            "--batch-size", "4", "--shard-size", "8", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-c", "from clara.cli import app; app()", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.json"
    deadline = time.time() + 120
    count = 0
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists():
            count = json.loads(manifest.read_text())["count"]
            if count >= 40:
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    cut = MemoryIndex.open(out)
    assert 0 < len(cut) < len(docs), "the build should have been cut mid-way"
    assert cut.ids == [d.id for d in docs[: len(cut)]]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stdout and f"holds {len(docs)}" in result.stdout
    done = MemoryIndex.open(out)
    assert done.ids == [d.id for d in docs]  # complete, in order, no duplicates
    assert done.verify() == []
    assert done.manifest["model_path"] == str(checkpoint.resolve())


def test_cli_stats_search_and_refusal(checkpoint, model, docs, backbones, tmp_path):
    out = tmp_path / "idx"
    corpus = write_jsonl(tmp_path / "c.jsonl", docs[:30])
    r = cli("index", "build", str(corpus), "--out", str(out), "--model", str(checkpoint), "--device", "cpu", "--ann")
    assert r.returncode == 0, r.stderr
    r = cli("index", "stats", str(out), "--json", "--verify")
    info = json.loads(r.stdout)
    assert info["documents"] == 30 and info["problems"] == [] and info["ann"]["rows"] == 30
    # search with the checkpoint recorded in the manifest (no --model)
    r = cli("index", "search", str(out), docs[5].title, "-k", "3", "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    with torch.no_grad():
        want = exact_search(MemoryIndex.open(out), model.encode_query([docs[5].title]), 3)[1][0].tolist()
    assert [h["id"] for h in hits] == [docs[i].id for i in want]
    r2 = cli("index", "search", str(out), docs[5].title, "-k", "3", "--json", "--ann", "--device", "cpu")
    assert json.loads(r2.stdout)[0]["id"] == hits[0]["id"]
    # another checkpoint is refused with a clear message
    torch.manual_seed(3)
    other = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    perturb_lora(other)
    other.save_pretrained(tmp_path / "other")
    r = cli("index", "search", str(out), "x", "--model", str(tmp_path / "other"), "--device", "cpu")
    assert r.returncode == 2 and "different model" in r.stdout
    r = cli("index", "stats", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "not a CLaRa index" in r.stdout


def test_cli_build_readout_flag(backbones, docs, tmp_path):
    """Soft-token checkpoints store readout rows by default; --no-readout leaves them out."""
    torch.manual_seed(4)
    soft = ClaraModel.from_backbone(tiny_config(backbones["llama"], mem_readout="soft_tokens"))
    soft.save_pretrained(tmp_path / "soft")
    corpus = write_jsonl(tmp_path / "c.jsonl", docs[:10])
    sizes = {}
    for flag in ("--readout", "--no-readout"):
        out = tmp_path / flag
        r = cli("index", "build", str(corpus), "--out", str(out), "--model", str(tmp_path / "soft"), "--device", "cpu", flag)
        assert r.returncode == 0, r.stderr
        info = json.loads(cli("index", "stats", str(out), "--json").stdout)
        assert info["readout"] is (flag == "--readout") and info["documents"] == 10
        sizes[flag] = info["bytes_per_document"]
    assert sizes["--no-readout"] < 0.6 * sizes["--readout"]


def test_cli_user_errors_are_one_line_not_tracebacks(tmp_path):
    not_a_checkpoint = tmp_path / "empty"
    not_a_checkpoint.mkdir()
    for args in (["inspect", "query", "who?", "--checkpoint", str(not_a_checkpoint), "--device", "cpu"],
                 ["convert", "--from-apple", str(not_a_checkpoint), "--out", str(tmp_path / "out"), "--device", "cpu"]):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert "error:" in r.stderr and str(not_a_checkpoint) in r.stderr.replace("\n", "") and "Traceback" not in r.stderr
    r = cli("-v", "inspect", "query", "who?", "--checkpoint", str(not_a_checkpoint), "--device", "cpu")
    assert r.returncode != 0 and "Traceback" in r.stderr  # -v keeps it
