"""Parsing of teacher replies (well-formed and broken), prompt overrides, and retry/backoff."""

from __future__ import annotations

import json

import pytest

from clara.io import DataError
from clara.synth.parse import (
    ParseError,
    QAPair,
    extract_json,
    parse_coverage,
    parse_faithful,
    parse_paraphrase,
    parse_qa_pairs,
    parse_verdicts,
)
from clara.synth.prompts import Prompts, load_prompts, render
from clara.synth.teacher import OpenAITeacher, TeacherConfig, TeacherRejected, TeacherUnavailable, with_retries


def test_extract_json_from_fences_prose_and_trailing_commas():
    assert extract_json('Sure! ```json\n{"a": [1, 2,],}\n```') == {"a": [1, 2]}
    assert extract_json('Here you go: {"pairs": [{"q": "x {y}"}]} hope it helps') == {"pairs": [{"q": "x {y}"}]}
    assert extract_json('noise [1, 2] tail') == [1, 2]
    with pytest.raises(ParseError):
        extract_json("no json here at all")
    with pytest.raises(ParseError):
        extract_json('{"pairs": [{"question": "cut off')


def test_qa_pairs_formats():
    obj = {"pairs": [{"question": " Who  built it? ", "answer": "Eiffel"}, {"question": "When?", "answer": "1889"}]}
    pairs, dropped = parse_qa_pairs(json.dumps(obj))
    assert pairs == [QAPair("Who built it?", "Eiffel"), QAPair("When?", "1889")] and dropped == 0
    # bare list, Q/A keys, answers given as a list
    pairs, _ = parse_qa_pairs('[{"Q": "Where?", "A": "Paris"}, {"question": "What?", "answers": ["tower", "x"]}]')
    assert pairs == [QAPair("Where?", "Paris"), QAPair("What?", "tower")]
    # another key holding the list; a [q, a] pair
    assert parse_qa_pairs('{"qa": [["Where?", "Paris"]]}')[0] == [QAPair("Where?", "Paris")]
    # plain "Question:/Answer:" lines when there is no JSON
    text = "1. Question: Where is it?\nAnswer: Paris\n2. Question: When?\nAnswer: 1889\n"
    assert parse_qa_pairs(text)[0] == [QAPair("Where is it?", "Paris"), QAPair("When?", "1889")]


def test_questions_in_any_script_are_kept_and_deduplicated():
    pairs, dropped = parse_qa_pairs(json.dumps([
        {"question": "Кто написал Гамлета?", "answer": "Шекспир"},
        {"question": "кто написал гамлета", "answer": "Шекспир"},  # the same question, case and punctuation aside
        {"question": "谁写了哈姆雷特？", "answer": "莎士比亚"},
        {"question": "In 1917?", "answer": "yes"},
        {"question": "What happened in 1917?", "answer": "a revolution"},
    ], ensure_ascii=False))
    assert [p.question for p in pairs] == ["Кто написал Гамлета?", "谁写了哈姆雷特？", "In 1917?", "What happened in 1917?"]
    assert dropped == 0


def test_qa_pairs_broken():
    # empty answers and non-pairs are dropped and counted; duplicates (after normalising) removed
    reply = '{"pairs": [{"question": "A?", "answer": ""}, {"question": "B?", "answer": "b"}, 7, {"question": "b ?", "answer": "c"}]}'
    pairs, dropped = parse_qa_pairs(reply)
    assert pairs == [QAPair("B?", "b")] and dropped == 2
    for bad in ["", "I cannot help with that.", '{"pairs": []}', '{"pairs": [{"question": "A?", "answer": "  "}]}',
                "Question: What is the name of the person?"]:
        with pytest.raises(ParseError):
            parse_qa_pairs(bad)


def test_verdicts():
    assert parse_verdicts('{"verdicts": [{"id": 1, "correct": true}, {"id": 2, "correct": false}]}', 2) == {1: True, 2: False}
    assert parse_verdicts('[true, "incorrect", "yes"]', 3) == {1: True, 2: False, 3: True}
    assert parse_verdicts("1: correct\n2. incorrect\n9: correct", 2) == {1: True, 2: False}
    # ids out of range are ignored; missing ones are simply absent
    assert parse_verdicts('{"verdicts": [{"id": 5, "correct": true}, {"id": 2, "correct": "no"}]}', 3) == {2: False}
    for bad in ["looks fine to me", '{"verdicts": [{"id": 1, "correct": "maybe"}]}', '{"verdicts": []}']:
        with pytest.raises(ParseError):
            parse_verdicts(bad, 2)


def test_faithful():
    assert parse_faithful('{"faithful": false}') is False
    assert parse_faithful('```json\n{"faithful": "yes"}\n```') is True
    assert parse_faithful("Yes, it keeps every fact.") is True
    assert parse_faithful("No. It adds a date.") is False
    assert parse_faithful('{"faithful": "no, it adds a date"}') is False
    for unsure in ('{"faithful": "partially"}', '{"faithful": null}', '{"verdict": "mostly"}'):
        with pytest.raises(ParseError):  # not a yes: re-asked, never read as the key's first word
            parse_faithful(unsure)
    with pytest.raises(ParseError):
        parse_faithful("The text is mostly similar.")


def test_paraphrase():
    doc = "The Eiffel Tower is in Paris. It was completed in 1889 for the World's Fair."
    para = "Completed in 1889 for the World's Fair, the Eiffel Tower stands in Paris."
    assert parse_paraphrase("Here is the rewritten text:\n" + para, doc) == para
    assert parse_paraphrase("```\n" + para + "\n```", doc) == para
    for bad in ["", "   ", "Paris.", doc, "Here is the rewritten text:"]:
        with pytest.raises(ParseError):
            parse_paraphrase(bad, doc)


def test_coverage():
    assert parse_coverage('{"complete": true, "pairs": []}') == (True, [])
    complete, pairs = parse_coverage('{"complete": false, "pairs": [{"question": "Why?", "answer": "fair"}]}')
    assert complete is False and pairs == [QAPair("Why?", "fair")]
    # "complete" with new pairs is not complete: the pairs still need judging
    assert parse_coverage('{"complete": true, "pairs": [{"question": "Why?", "answer": "fair"}]}')[0] is False
    assert parse_coverage("[]") == (True, [])
    for bad in ["all covered", '{"complete": "perhaps"}', '{"complete": false, "pairs": [{"question": "Q?"}]}',
                '{"pairs": "none"}']:
        with pytest.raises(ParseError):
            parse_coverage(bad)


def test_render_leaves_other_braces():
    assert render('{document} -> {"pairs": []} {pairs}', document="D {x}", pairs="P") == 'D {x} -> {"pairs": []} P'


def test_prompt_overrides(tmp_path):
    assert load_prompts(None) == Prompts()
    y = tmp_path / "p.yaml"
    y.write_text("simple_qa: |\n  Facts of {document}, JSON please.\nsystem: Be brief.\n")
    p = load_prompts(y)
    assert p.simple_qa.startswith("Facts of {document}") and p.system == "Be brief." and p.paraphrase == Prompts().paraphrase
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"verify_qa": "{document} only"}))
    with pytest.raises(DataError, match="pairs"):
        load_prompts(j)
    j.write_text(json.dumps({"simple_qs": "{document}"}))
    with pytest.raises(DataError, match="unknown"):
        load_prompts(j)
    j.write_text("[1]")
    with pytest.raises(DataError, match="mapping"):
        load_prompts(j)


def test_with_retries_backoff_then_gives_up():
    waits, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    assert with_retries(flaky, (ConnectionError,), max_retries=5, backoff=1.0, sleep=waits.append) == "ok"
    assert len(waits) == 2 and 0.75 <= waits[0] <= 1.25 and 1.5 <= waits[1] <= 2.5

    waits.clear()
    with pytest.raises(TeacherUnavailable):
        with_retries(lambda: (_ for _ in ()).throw(ConnectionError("down")), (ConnectionError,), 2, 0.5, sleep=waits.append)
    assert len(waits) == 2
    # an error that is not retryable goes straight through
    with pytest.raises(ValueError):
        with_retries(lambda: (_ for _ in ()).throw(ValueError("bad request")), (ConnectionError,), 3, 0.5, sleep=waits.append)
    assert len(waits) == 2


def test_openai_teacher_maps_refusals_to_one_document_and_bad_keys_to_the_run():
    import httpx
    import openai

    def reply(request: httpx.Request) -> httpx.Response:
        status = int(request.headers["x-status"])
        return httpx.Response(status, json={"error": {"message": f"status {status}", "type": "x"}})

    teacher = OpenAITeacher(TeacherConfig(base_url="http://teacher.invalid/v1", model="m", max_retries=0))
    for status, raised in ((400, TeacherRejected), (413, TeacherRejected), (422, TeacherRejected),
                           (401, openai.AuthenticationError), (404, openai.NotFoundError)):
        teacher.client = openai.OpenAI(
            base_url="http://teacher.invalid/v1", api_key="x", max_retries=0,
            http_client=httpx.Client(transport=httpx.MockTransport(reply)), default_headers={"x-status": str(status)},
        )
        with pytest.raises(raised):
            teacher.complete([{"role": "user", "content": "hi"}], 4, 0)
