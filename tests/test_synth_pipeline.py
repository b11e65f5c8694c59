"""The generate -> verify -> coverage loop and resumability, driven by a rule-based teacher.

The teacher here is a deterministic stand-in that reads the prompts the pipeline sends and
answers like a (sometimes sloppy) LLM would: it is the pipeline's bookkeeping under test, the
real server is exercised in test_synth_server.py.
"""

from __future__ import annotations

import json
import re
import threading

import pytest

from clara.data.corpus import Document
from clara.io import read_jsonl
from clara.synth.pipeline import SynthConfig, cut_words, done_ids, log_path, run_synth, summary_path
from clara.synth.prompts import Prompts
from clara.synth.teacher import TeacherRejected, TeacherUnavailable

P = Prompts()
DOCS = [
    Document("d1", "The Eiffel Tower is in Paris. It was completed in 1889.", "Eiffel Tower"),
    Document("d2", "Photosynthesis happens in chloroplasts. It produces glucose.", "Photosynthesis"),
    Document("d3", "Mount Everest is 8849 metres high. It lies in Nepal.", "Everest"),
]


class RuleTeacher:
    """Answers each kind of prompt by rule; the judge accepts a pair iff its answer occurs in the document."""

    def __init__(self, garbage_first: int = 0, unfaithful_first: int = 1, cover_rounds: int = 1) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.garbage_first = garbage_first  # QA requests answered with garbage before a good reply
        self.unfaithful_first = unfaithful_first  # paraphrases written with an invented fact first
        self.cover_rounds = cover_rounds  # coverage checks that still find a missing fact

    def _count(self, key: str) -> int:
        with self.lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            return self.calls[key]

    def complete(self, messages, max_tokens, temperature):
        prompt = messages[-1]["content"]
        doc = prompt.split("Document:\n", 1)[1].split("\n\n", 1)[0]
        title = doc.split("\n")[0]
        if "atomic fact" in prompt:
            if self._count("qa:" + title) <= self.garbage_first:
                return "Sorry, here are some questions: Question: what"
            return json.dumps({"pairs": [{"question": f"What is {title}?", "answer": title},
                                         {"question": f"Who owns {title}?", "answer": "Napoleon"},  # wrong
                                         {"question": f"what is {title}", "answer": "dup"}]})  # duplicate
        if "two or more facts" in prompt:
            return '```json\n{"pairs": [{"question": "Q complex?", "answer": "%s"}],}\n```' % doc.split()[-1].strip(".")
        if "Rewrite the document" in prompt:
            n = self._count("para:" + title)
            extra = " It was painted red by aliens." if n <= self.unfaithful_first else ""
            return "Here is the rewritten text:\n" + " ".join(reversed(doc.split(". "))) + extra
        if "faithful" in prompt:
            return '{"faithful": %s}' % ("false" if "aliens" in prompt else "true")
        if "For each numbered pair" in prompt:
            pairs = re.findall(r"(\d+)\. Question: .*\n   Answer: (.*)", prompt)
            return json.dumps({"verdicts": [{"id": int(i), "correct": a in doc} for i, a in pairs]})
        if "supplementary question" in prompt:
            if self._count("cov:" + title) <= self.cover_rounds:
                return json.dumps({"complete": False, "pairs": [{"question": f"Name of {title} doc?", "answer": title.split()[0]}]})
            return '{"complete": true, "pairs": []}'
        raise AssertionError("unexpected prompt: " + prompt[:80])

    def close(self):
        pass


def rows_by_doc(path):
    out = {}
    for _, r in read_jsonl(path):
        out.setdefault(r["doc_id"], {})[r["data_type"]] = r
    return out


def test_rounds_rejections_and_rows(tmp_path):
    out = tmp_path / "scp.jsonl"
    summary = run_synth(DOCS, RuleTeacher(garbage_first=1), out, SynthConfig(workers=2, parse_retries=1), P)
    rows = rows_by_doc(out)
    assert set(rows) == {"d1", "d2", "d3"}
    for doc in DOCS:
        qa, cx, para = rows[doc.id]["qa"], rows[doc.id]["complex_qa"], rows[doc.id]["paraphrase"]
        text = f"{doc.title}\n{doc.text}"
        # the wrong answer is rejected, the duplicate never judged, the supplementary one kept
        assert qa["question"] == [f"What is {doc.title}?", f"Name of {doc.title} doc?"]
        assert qa["answers"] == [doc.title, doc.title.split()[0]]
        assert cx["question"] == ["Q complex?"] and cx["answers"][0] in text
        assert para["question"] == [] and len(para["answers"]) == 1 and "aliens" not in para["answers"][0]
        assert all(r["docs"] == [text] for r in rows[doc.id].values())
    stats = {o["doc_id"]: o["stats"] for _, o in read_jsonl(log_path(out))}
    for s in stats.values():
        assert s["rejected_qa"] == 1 and s["rejected_paraphrase"] == 1 and s["malformed_replies"] == 1
        # round 1: judge + coverage finds a gap; round 2: judge the supplement, rewritten paraphrase
        # accepted, coverage complete; stop
        assert s["rounds"] == 2 and s["coverage_complete"] == 1
    assert summary.documents == 3 and summary.kept == {"qa": 6, "complex_qa": 3, "paraphrase": 3}
    assert summary.rejected == {"qa": 3, "complex_qa": 0, "paraphrase": 3}
    assert summary.pairs_per_document == 3.0 and summary.rounds_histogram == {2: 3}
    assert json.loads(summary_path(out).read_text())["kept"]["qa"] == 6


def test_round_limit_drops_what_still_fails(tmp_path):
    out = tmp_path / "scp.jsonl"
    teacher = RuleTeacher(unfaithful_first=99, cover_rounds=99)
    summary = run_synth(DOCS[:1], teacher, out, SynthConfig(max_rounds=3, workers=1), P)
    s = next(read_jsonl(log_path(out)))[1]["stats"]
    assert s["rounds"] == 3 and s["coverage_complete"] == 0
    assert s["rejected_paraphrase"] == 3 and s["paraphrase_dropped"] == 1
    # coverage is asked in rounds 1 and 2 only (a supplement from round 3 could not be judged);
    # each supplement repeats the same question, so the second is a duplicate and dropped
    assert teacher.calls["cov:Eiffel Tower"] == 2
    assert set(rows_by_doc(out)["d1"]) == {"qa", "complex_qa"}
    assert summary.dropped["paraphrase_dropped"] == 1


def test_malformed_everything_is_counted_not_fatal(tmp_path):
    class Garbage(RuleTeacher):
        def complete(self, messages, max_tokens, temperature):
            self._count("all")
            return "Turtles!"  # no JSON, no verdict, too short for a paraphrase

    out = tmp_path / "scp.jsonl"
    t = Garbage()
    summary = run_synth(DOCS[:2], t, out, SynthConfig(max_rounds=2, parse_retries=1, workers=2), P)
    assert out.read_text() == "" and summary.documents == 2
    assert summary.malformed_replies == summary.requests == t.calls["all"]
    assert done_ids(out) == {"d1", "d2"}  # logged as done: a rerun does not redo them


def test_resume_skips_done_and_repairs_torn_tail(tmp_path):
    out = tmp_path / "scp.jsonl"
    cfg = SynthConfig(workers=1)
    run_synth(DOCS, RuleTeacher(), out, SynthConfig(workers=1, limit=1), P)
    assert set(rows_by_doc(out)) == {"d1"}
    # a kill in the middle of writing d2: a torn line without newline at the end
    with open(out, "a") as f:
        f.write('{"data_type": "qa", "question": ["x"], "ans')
    t = RuleTeacher()
    summary = run_synth(DOCS, t, out, cfg, P)
    assert summary.skipped_documents == 1 and summary.new_documents == 2 and summary.documents == 3
    assert not any(k.endswith("Eiffel Tower") for k in t.calls)  # d1 was not asked again
    lines = out.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # torn line gone, every line whole
    assert sorted({json.loads(line)["doc_id"] for line in lines}) == ["d1", "d2", "d3"]
    again = run_synth(DOCS, RuleTeacher(), out, cfg, P)
    assert again.new_documents == 0 and again.skipped_documents == 3 and out.read_text().splitlines() == lines


def test_teacher_down_leaves_documents_undone(tmp_path):
    class Down(RuleTeacher):
        def complete(self, messages, max_tokens, temperature):
            raise TeacherUnavailable("connection refused")

    out = tmp_path / "scp.jsonl"
    with pytest.raises(TeacherUnavailable, match="in a row"):
        run_synth(DOCS, Down(), out, SynthConfig(workers=1, max_failed_docs=2), P)
    assert done_ids(out) == set()
    # documents already in flight when the second failure stops the run still finish (and fail):
    # with one worker the window holds two, so d3 was submitted when d1 failed
    assert json.loads(summary_path(out).read_text())["failed_documents"] == 3


def test_a_rejected_request_fails_its_document_not_the_run(tmp_path):
    class Picky(RuleTeacher):
        def complete(self, messages, max_tokens, temperature):
            if "Everest" in messages[-1]["content"]:  # e.g. a server's 400: over its context length
                raise TeacherRejected("teacher refused the request (400): too long")
            return super().complete(messages, max_tokens, temperature)

    out = tmp_path / "scp.jsonl"
    summary = run_synth(DOCS, Picky(), out, SynthConfig(workers=2), P)
    assert done_ids(out) == {"d1", "d2"} and summary.failed_documents == 1 and summary.new_documents == 2
    # a rerun tries the refused document again, and only it
    t = RuleTeacher()
    again = run_synth(DOCS, t, out, SynthConfig(workers=2), P)
    assert again.new_documents == 1 and done_ids(out) == {"d1", "d2", "d3"}
    assert all("Everest" in k for k in t.calls)


def test_a_fatal_teacher_error_stops_the_run_and_keeps_the_summary(tmp_path):
    class BadKey(RuleTeacher):
        def complete(self, messages, max_tokens, temperature):
            raise PermissionError("401: invalid API key")

    out = tmp_path / "scp.jsonl"
    with pytest.raises(PermissionError, match="invalid API key"):
        run_synth(DOCS, BadKey(), out, SynthConfig(workers=1), P)
    assert done_ids(out) == set() and summary_path(out).is_file()


def test_ctrl_c_finishes_the_documents_in_flight_and_drops_the_queued(tmp_path, monkeypatch):
    import clara.synth.pipeline as pipeline

    release = threading.Event()

    class Slow(RuleTeacher):
        def complete(self, messages, max_tokens, temperature):
            release.wait(30)  # d1 is in flight when Ctrl-C comes
            return super().complete(messages, max_tokens, temperature)

    real_wait, calls = pipeline.wait, []

    def wait(fs, return_when):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as if Ctrl-C arrived while the main thread waits
        release.set()
        return real_wait(fs, return_when=return_when)

    monkeypatch.setattr(pipeline, "wait", wait)
    out = tmp_path / "scp.jsonl"
    t = Slow()
    with pytest.raises(KeyboardInterrupt):
        run_synth(DOCS, t, out, SynthConfig(workers=1), P)
    assert done_ids(out) == {"d1"}  # its work was kept
    assert not any("Photosynthesis" in k or "Everest" in k for k in t.calls)  # d2 (queued) never ran
    assert json.loads(summary_path(out).read_text())["new_documents"] == 1


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "scp.jsonl"
    run_synth(DOCS, RuleTeacher(), out, SynthConfig(workers=1, limit=1), P)
    run_synth(DOCS, RuleTeacher(), out, SynthConfig(workers=2, limit=1), P)  # workers and limit change no row
    with pytest.raises(ValueError, match=r"max_doc_words: 400 -> 50"):
        run_synth(DOCS, RuleTeacher(), out, SynthConfig(max_doc_words=50), P)
    with pytest.raises(ValueError, match="the prompts"):
        run_synth(DOCS, RuleTeacher(), out, SynthConfig(), Prompts(system="Be terse."))
    assert done_ids(out) == {"d1", "d2"}  # the refused runs added nothing


def test_config_validation():
    with pytest.raises(ValueError):
        SynthConfig(data_types=("qa", "summary"))
    with pytest.raises(ValueError):
        SynthConfig(max_rounds=0)


def test_documents_are_cut_by_words_and_cjk_characters():
    assert cut_words("one  two\nthree four", 3) == "one two three"
    assert cut_words("one  two\nthree", 3) == "one  two\nthree"  # within the limit: untouched
    # CJK text has no spaces: each character counts, else a whole document is one "word"
    assert cut_words("東京は日本の首都です", 4) == "東京は日"
    assert cut_words("Tokyo 東京は capital", 3) == "Tokyo 東京"


def test_the_teacher_reads_the_cut_document(tmp_path):
    seen = []

    class Recording(RuleTeacher):
        def complete(self, messages, max_tokens, temperature):
            seen.append(messages[-1]["content"])
            return super().complete(messages, max_tokens, temperature)

    doc = Document("cjk", "東京は日本の首都です。" * 50, "東京")
    run_synth([doc], Recording(), tmp_path / "out.jsonl", SynthConfig(max_doc_words=20, max_rounds=1), P)
    body = seen[0].split("Document:\n", 1)[1].split("\n\n", 1)[0]
    assert "東京は日本の首都です。" in body and len(body) < 60  # 20 characters kept of 550, not all
