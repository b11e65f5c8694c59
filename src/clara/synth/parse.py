"""Parsing teacher replies: tolerant of the usual noise, strict about content.

Small and mid-size teachers wrap JSON in code fences, add a sentence before it, leave a
trailing comma, or answer with "Question: ... Answer: ..." lines instead. These functions
accept those forms and raise :class:`ParseError` when nothing usable is left, so the
pipeline can retry the request and count it if it keeps failing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


class ParseError(ValueError):
    """A teacher reply that holds nothing usable in the requested format."""


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")


def _json_candidates(text: str) -> list[str]:
    """Substrings that may be the JSON value: fenced blocks first, then each balanced {...} / [...]."""
    out = [m.group(1) for m in _FENCE.finditer(text)]
    out.append(text)
    for opener, closer in (("{", "}"), ("[", "]")):
        start = text.find(opener)
        while start != -1:
            depth, in_str, esc = 0, False, False
            for i in range(start, len(text)):
                c = text[i]
                if in_str:
                    esc = c == "\\" and not esc
                    if c == '"' and not esc:
                        in_str = False
                    continue
                if c == '"':
                    in_str = True
                elif c == opener:
                    depth += 1
                elif c == closer:
                    depth -= 1
                    if depth == 0:
                        out.append(text[start : i + 1])
                        break
            start = text.find(opener, start + 1) if depth else -1
    return out


def extract_json(text: str) -> Any:
    """The first JSON value found in ``text`` (fenced, bare, or embedded in prose); ParseError if none."""
    for cand in _json_candidates(text):
        cand = cand.strip()
        if not cand:
            continue
        for attempt in (cand, _TRAILING_COMMA.sub(r"\1", cand)):
            try:
                return json.loads(attempt)
            except json.JSONDecodeError:
                continue
    raise ParseError("no JSON value in the reply")


def _clean(s: Any) -> str:
    return re.sub(r"\s+", " ", str(s)).strip() if s is not None else ""


def _pair_from(obj: Any) -> QAPair | None:
    """A pair from {"question","answer"} (also q/a, answers lists) or a [question, answer] list."""
    if isinstance(obj, dict):
        low = {str(k).lower(): v for k, v in obj.items()}
        q = next((low[k] for k in ("question", "q") if k in low), None)
        a = next((low[k] for k in ("answer", "a", "answers") if k in low), None)
        if isinstance(a, list):
            a = a[0] if a else None
        q, a = _clean(q), _clean(a)
    elif isinstance(obj, (list, tuple)) and len(obj) == 2:
        q, a = _clean(obj[0]), _clean(obj[1])
    else:
        return None
    return QAPair(q, a) if q and a else None


_LINE_QA = re.compile(
    r"(?:^|\n)\s*(?:\d+[.)]\s*)?\**(?:Q|Question)\s*\d*\**\s*[:.]\s*(?P<q>.+?)\s*\n\s*\**(?:A|Answer)\s*\d*\**\s*[:.]\s*(?P<a>[^\n]+)",
    re.I,
)


def parse_qa_pairs(text: str) -> tuple[list[QAPair], int]:
    """(pairs, dropped): the usable pairs of a QA reply and how many items were empty or ill-formed.

    Accepts {"pairs": [...]}, any object holding one list of pairs, a bare list, or
    "Question: ... / Answer: ..." lines. Raises ParseError when no usable pair is found.
    """
    items: list[Any] | None = None
    try:
        data = extract_json(text)
    except ParseError:
        data = None
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if "pairs" in data and isinstance(data["pairs"], list):
            items = data["pairs"]
        elif lists:
            items = lists[0]
        elif _pair_from(data):
            items = [data]
    if items is None:
        found = [QAPair(_clean(m.group("q")), _clean(m.group("a"))) for m in _LINE_QA.finditer(text)]
        pairs = [p for p in found if p.question and p.answer]
        if not pairs:
            raise ParseError("no question-answer pairs in the reply")
        return dedupe(pairs), 0
    pairs = [p for p in (_pair_from(x) for x in items) if p is not None]
    if not pairs:
        raise ParseError(f"none of the {len(items)} items is a question with a non-empty answer")
    unique = dedupe(pairs)
    return unique, len(items) - len(pairs)


def normalize_question(q: str) -> str:
    """The dedup key of a question: case-folded letters, digits and spaces of any script."""
    return " ".join(re.sub(r"[^\w ]|_", " ", q.casefold()).split())


def dedupe(pairs: list[QAPair], seen: set[str] | None = None) -> list[QAPair]:
    """Pairs whose question (normalised) is not in ``seen`` nor repeated; ``seen`` is updated."""
    seen = set() if seen is None else seen
    out = []
    for p in pairs:
        key = normalize_question(p.question)
        if key and key not in seen:
            seen.add(key)
            out.append(p)
    return out


_TRUE = {"true", "yes", "correct", "faithful", "right", "valid", "1"}
_FALSE = {"false", "no", "incorrect", "unfaithful", "wrong", "invalid", "0"}


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        w = v.strip().strip(".!\"'").lower()
        if w in _TRUE:
            return True
        if w in _FALSE:
            return False
    return None


def _verdict_of(obj: Any) -> bool | None:
    if isinstance(obj, dict):
        low = {str(k).lower(): v for k, v in obj.items()}
        for k in ("correct", "verdict", "valid", "is_correct", "label", "judgement", "judgment"):
            if k in low:
                return _as_bool(low[k])
        return None
    return _as_bool(obj)


_LINE_VERDICT = re.compile(r"(?:^|\n)\s*(?:pair\s*)?(\d+)\s*[.):\-]\s*\**\s*(\w+)", re.I)


def parse_verdicts(text: str, n: int) -> dict[int, bool]:
    """Verdicts for pairs numbered 1..n: {number: correct}. Numbers outside 1..n are ignored.

    Accepts {"verdicts": [{"id": i, "correct": b}]}, a list of such objects or of booleans /
    "correct"/"incorrect" strings (in order), or "1: correct" lines. Pairs without a verdict are
    absent from the result; ParseError if none has one.
    """
    out: dict[int, bool] = {}
    try:
        data = extract_json(text)
    except ParseError:
        data = None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        data = data.get("verdicts", lists[0] if lists else None)
    if isinstance(data, list):
        for pos, item in enumerate(data, 1):
            idx = pos
            if isinstance(item, dict):
                raw = {str(k).lower(): v for k, v in item.items()}.get("id", pos)
                try:
                    idx = int(raw)
                except (TypeError, ValueError):
                    continue
            verdict = _verdict_of(item)
            if verdict is not None and 1 <= idx <= n:
                out[idx] = verdict
    if not out:
        for m in _LINE_VERDICT.finditer(text):
            verdict = _as_bool(m.group(2))
            if verdict is not None and 1 <= int(m.group(1)) <= n:
                out[int(m.group(1))] = verdict
    if not out:
        raise ParseError(f"no verdict for any of the {n} pairs")
    return out


def parse_faithful(text: str) -> bool:
    """A yes/no judgement: {"faithful": b} (or similar key), or a reply starting with yes/no."""
    try:
        data = extract_json(text)
    except ParseError:
        data = None
    if isinstance(data, dict):
        low = {str(k).lower(): v for k, v in data.items()}
        values = [low[k] for k in ("faithful", "verdict", "correct", "answer", "result") if k in low]
        for v in values:
            verdict = _as_bool(v)
            if verdict is None and isinstance(v, str):  # "no, it adds a date"
                first_word = re.findall(r"[A-Za-z]+", v)[:1]
                verdict = _as_bool(first_word[0]) if first_word else None
            if verdict is not None:
                return verdict
        if values:  # judged by its value only: the reply's first word would be the key, "faithful"
            raise ParseError(f"no yes/no faithfulness verdict in {values[0]!r}")
    elif data is not None and _as_bool(data) is not None:
        return bool(_as_bool(data))
    words = re.findall(r"[A-Za-z]+", text)
    first = _as_bool(words[0]) if words else None
    if first is None:
        raise ParseError("no faithful yes/no judgement in the reply")
    return first


_PREAMBLE = re.compile(r"^\s*(?:sure[,!.]?\s*)?(?:here(?:'s| is)[^\n:]*|(?:rewritten|paraphrased) (?:text|document)[^\n:]*):\s*", re.I)


def parse_paraphrase(text: str, document: str, min_ratio: float = 0.3) -> str:
    """The paraphrase without fences or a "Here is ...:" preamble.

    ParseError if it is empty, shorter than ``min_ratio`` of the document's words (a truncated
    or summarised reply), or a verbatim copy of the document.
    """
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    body = _PREAMBLE.sub("", body).strip().strip('"').strip()
    if not body:
        raise ParseError("empty paraphrase")
    if len(body.split()) < min_ratio * len(document.split()):
        raise ParseError(f"paraphrase has {len(body.split())} words for a {len(document.split())}-word document")
    if _clean(body).lower() == _clean(document).lower():
        raise ParseError("paraphrase is a verbatim copy of the document")
    return body


def parse_coverage(text: str) -> tuple[bool, list[QAPair]]:
    """(complete, supplementary pairs). Without an explicit flag, complete means no new pair."""
    data = extract_json(text)
    if isinstance(data, list):
        data = {"pairs": data}
    if not isinstance(data, dict):
        raise ParseError("coverage reply is not a JSON object")
    low = {str(k).lower(): v for k, v in data.items()}
    items = low.get("pairs", low.get("questions", []))
    if not isinstance(items, list):
        raise ParseError("coverage 'pairs' is not a list")
    pairs = dedupe([p for p in (_pair_from(x) for x in items) if p is not None])
    flag = _as_bool(low["complete"]) if "complete" in low else None
    if flag is None and "complete" in low:
        raise ParseError(f"coverage 'complete' is not a boolean: {low['complete']!r}")
    if items and not pairs and not flag:
        raise ParseError("coverage reply lists supplementary items but none is a usable pair")
    complete = flag if flag is not None else not pairs
    return complete and not pairs, pairs
