"""Every instruction the teacher receives, in one place.

Templates name their inputs as ``{document}``, ``{pairs}``, ``{paraphrase}``; only those names
are substituted, so a template may contain literal JSON braces without escaping. A YAML or
JSON file can replace any subset of the fields (``clara synth run --prompts FILE``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..io import DataError

_SHORT = (
    "Answers must be as short as possible: a name, number, date or short phrase taken from the "
    "document, never a full sentence."
)


@dataclass
class Prompts:
    """The teacher's instructions. Fields are plain strings; see :func:`render` for placeholders."""

    system: str = field(
        default="You are a careful annotator who writes training data from a document. Use only facts stated "
        "in the document. Reply with exactly the requested format and nothing else.",
        metadata={"help": "System message of every request (merged into the user turn if the template lacks one)."},
    )
    simple_qa: str = field(
        default="Document:\n{document}\n\n"
        "Write one question per atomic fact of the document, covering every fact once and without overlap. "
        "Each question must be answerable from the document alone. " + _SHORT + "\n"
        'Reply with JSON: {"pairs": [{"question": "...", "answer": "..."}]}',
        metadata={"help": "Simple QA: atomic, non-overlapping facts. Input: {document}."},
    )
    complex_qa: str = field(
        default="Document:\n{document}\n\n"
        "Write questions that each need two or more facts of the document joined together (bridging, "
        "comparison, aggregation or temporal reasoning). Each must be answerable from the document alone. "
        + _SHORT + "\n"
        'Reply with JSON: {"pairs": [{"question": "...", "answer": "..."}]}',
        metadata={"help": "Complex QA: questions joining several facts. Input: {document}."},
    )
    paraphrase: str = field(
        default="Document:\n{document}\n\n"
        "Rewrite the document with its sentences reorganised and reworded. Keep every fact, add no new "
        "fact, opinion or explanation. Reply with the rewritten text only.",
        metadata={"help": "Paraphrase: same facts, new wording and order. Input: {document}. Plain-text reply."},
    )
    verify_qa: str = field(
        default="Document:\n{document}\n\nQuestion-answer pairs:\n{pairs}\n\n"
        "For each numbered pair, judge whether the question is answerable from the document and the answer "
        "is correct and complete according to the document.\n"
        'Reply with JSON: {"verdicts": [{"id": 1, "correct": true}, {"id": 2, "correct": false}]}',
        metadata={"help": "Judge QA pairs against the document. Inputs: {document}, {pairs} (numbered)."},
    )
    verify_paraphrase: str = field(
        default="Document:\n{document}\n\nRewritten text:\n{paraphrase}\n\n"
        "Is the rewritten text faithful: does it keep the document's facts and add no fact that is not in "
        "the document?\n"
        'Reply with JSON: {"faithful": true} or {"faithful": false}',
        metadata={"help": "Judge a paraphrase's faithfulness. Inputs: {document}, {paraphrase}."},
    )
    coverage: str = field(
        default="Document:\n{document}\n\nQuestions already asked:\n{pairs}\n\n"
        "List the facts of the document that no question above covers, and write one supplementary question "
        "per missing fact. " + _SHORT + " If every fact is covered, say so with an empty list.\n"
        'Reply with JSON: {"complete": false, "pairs": [{"question": "...", "answer": "..."}]} '
        'or {"complete": true, "pairs": []}',
        metadata={"help": "Coverage check + supplementary questions. Inputs: {document}, {pairs} (numbered)."},
    )


#: Placeholders each template must contain (an override that drops one is a mistake).
REQUIRED = {
    "simple_qa": ("document",),
    "complex_qa": ("document",),
    "paraphrase": ("document",),
    "verify_qa": ("document", "pairs"),
    "verify_paraphrase": ("document", "paraphrase"),
    "coverage": ("document", "pairs"),
}


def render(template: str, **values: str) -> str:
    """Substitute ``{name}`` for each given value; other braces are left alone."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def load_prompts(path: str | Path | None = None) -> Prompts:
    """The default prompts, with fields replaced by those in a YAML or JSON file (a mapping)."""
    prompts = Prompts()
    if path is None:
        return prompts
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot parse prompts file: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a prompts file must be a mapping of field name to template")
    known = {f.name for f in dataclasses.fields(Prompts)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DataError(f"{path}: unknown prompt fields {unknown}; known: {sorted(known)}")
    for name, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{path}: prompt {name!r} must be a non-empty string")
        missing = [p for p in REQUIRED.get(name, ()) if "{" + p + "}" not in value]
        if missing:
            raise DataError(f"{path}: prompt {name!r} lacks placeholder(s) {', '.join('{' + m + '}' for m in missing)}")
    return dataclasses.replace(prompts, **data)
