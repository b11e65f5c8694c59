"""Corpus readers: JSONL (``id``/``title``/``text`` or FlashRAG's ``contents``), JSON lists,
and folders of .txt/.md files chunked into overlapping pieces.

Every reader yields :class:`Document`; ids are stable so that indexes and synthetic data
can resume and refer back to their source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..io import DataError, read_jsonl


@dataclass
class Document:
    """One retrievable unit of text."""

    id: str
    text: str
    title: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def full_text(self) -> str:
        """What the compressor reads: title and text, as Wikipedia-style passages are usually given."""
        return f"{self.title}\n{self.text}" if self.title else self.text


def document_from_record(obj: dict[str, Any], where: str, fallback_id: str) -> Document:
    """Build a Document from a record with ``text`` (+``title``) or FlashRAG ``contents``."""
    doc_id = str(obj.get("id", obj.get("_id", fallback_id)))
    title = obj.get("title", "") or ""
    if "text" in obj:
        text = obj["text"]
    elif "contents" in obj:
        # FlashRAG: contents = '"Title"\ntext'
        contents = obj["contents"]
        if not isinstance(contents, str):
            raise DataError(f"{where}: field 'contents' must be a string")
        head, sep, rest = contents.partition("\n")
        title, text = (head.strip().strip('"'), rest) if sep and not title else (title, contents)
    else:
        raise DataError(f"{where}: a document needs a 'text' or 'contents' field")
    if not isinstance(text, str) or not isinstance(title, str):
        raise DataError(f"{where}: 'text' and 'title' must be strings")
    if not text.strip():
        raise DataError(f"{where}: document {doc_id!r} has empty text")
    meta = {k: v for k, v in obj.items() if k not in {"id", "_id", "title", "text", "contents"}}
    return Document(id=doc_id, text=text.strip(), title=title.strip(), meta=meta)


def chunk_words(text: str, size: int, overlap: int, count: Callable[[str], int] | None = None) -> list[tuple[int, str]]:
    """Split ``text`` into pieces of about ``size`` tokens with ``overlap`` tokens shared.

    Tokens are counted by ``count`` (a tokenizer's length) when given, else by words. Returns
    (character offset, piece) pairs so each chunk is traceable to its place in the file.
    """
    if overlap >= size:
        raise ValueError(f"overlap ({overlap}) must be smaller than size ({size})")
    words: list[tuple[int, str, str]] = []  # (offset, word, what joins it to the previous word)
    cost: list[int] = []  # tokens per word, measured once: pieces are cut at word boundaries
    pos = 0
    for w in text.split():
        pos = text.index(w, pos)
        c = max(1, count(" " + w)) if count else 1
        if c <= size:
            words.append((pos, w, " "))
            cost.append(c)
        else:  # an unbroken run longer than a piece (CJK text, a URL, base64): cut inside it
            for i, (off, part) in enumerate(_cut_run(w, size, count)):
                words.append((pos + off, part, " " if i == 0 else ""))
                cost.append(max(1, count(" " + part)))
        pos += len(w)
    if not words:
        return []
    chunks, start = [], 0
    while start < len(words):
        end, total = start, 0
        while end < len(words) and (total + cost[end] <= size or end == start):
            total += cost[end]
            end += 1
        chunks.append((words[start][0], words[start][1] + "".join(sep + w for _, w, sep in words[start + 1 : end])))
        if end >= len(words):
            break
        back, kept = end, 0  # step back so the next chunk starts `overlap` tokens early
        while back > start + 1 and kept + cost[back - 1] <= overlap:
            back -= 1
            kept += cost[back]
        start = back
    return chunks


def _cut_run(word: str, size: int, count: Callable[[str], int]) -> list[tuple[int, str]]:
    """Cut one whitespace-free run into (offset, part) pieces of at most ``size`` tokens each."""
    parts, i = [], 0
    while i < len(word):
        rest = word[i:]
        n = max(1, len(rest) * size // max(1, count(" " + rest)))  # characters per token, estimated
        while n > 1 and count(" " + rest[:n]) > size:
            n = max(1, n * 7 // 8)
        parts.append((i, rest[:n]))
        i += n
    return parts


def read_corpus(
    path: str | Path,
    chunk_size: int = 256,
    chunk_overlap: int = 32,
    count_tokens: Callable[[str], int] | None = None,
    chunk_records: bool = False,
) -> Iterator[Document]:
    """Read a corpus file or folder.

    - ``*.jsonl``: one record per line (``id``, ``title``, ``text`` or ``contents``);
    - ``*.json``: a list of such records;
    - a folder: every ``.txt``/``.md`` file below it, chunked to ``chunk_size`` tokens with
      ``chunk_overlap`` overlap; chunk ids are ``<relative path>#<char offset>``.

    With ``chunk_records``, a JSONL/JSON record longer than ``chunk_size`` tokens (title
    included) is cut the same way into ``<id>#<char offset>`` pieces that keep its title and
    meta (plus ``parent`` and ``offset``); records that fit keep their id.
    Records without an id get ``<file stem>:<line or position>``. Duplicate ids are an error.
    """
    path = Path(path)
    seen: set[str] = set()
    docs = _read(path, chunk_size, chunk_overlap, count_tokens)
    if chunk_records and not path.is_dir():
        docs = (piece for doc in docs for piece in chunk_document(doc, chunk_size, chunk_overlap, count_tokens))
    for doc in docs:
        if doc.id in seen:
            raise DataError(f"{path}: duplicate document id {doc.id!r}")
        seen.add(doc.id)
        yield doc


def _text_budget(title: str, size: int, overlap: int, count: Callable[[str], int] | None, what: str) -> int:
    """Tokens left for text once the compressor has read the title ("title\ntext", Document.full_text)."""
    budget = size - (count(f"{title}\n") if count else 1) if title else size
    if budget <= overlap:  # each piece would advance by a word or two: thousands of near-copies
        raise DataError(
            f"{what}: its title leaves {max(budget, 0)} of {size} tokens for text, not more than the "
            f"{overlap}-token chunk overlap; shorten the title or lower the overlap"
        )
    return budget


def chunk_document(
    doc: Document, size: int, overlap: int, count: Callable[[str], int] | None = None
) -> list[Document]:
    """``doc`` itself if its full text fits in ``size`` tokens, else its text cut into overlapping pieces."""
    if (count(doc.full_text()) if count else len(doc.full_text().split())) <= size:
        return [doc]
    budget = _text_budget(doc.title, size, overlap, count, f"document {doc.id!r}")
    return [
        Document(
            id=f"{doc.id}#{offset}", text=piece, title=doc.title, meta={**doc.meta, "parent": doc.id, "offset": offset}
        )
        for offset, piece in chunk_words(doc.text, budget, overlap, count)
    ]


def _read(path: Path, chunk_size: int, overlap: int, count: Callable[[str], int] | None) -> Iterator[Document]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in {".txt", ".md"} and p.is_file())
        if not files:
            raise DataError(f"{path}: folder holds no .txt or .md files")
        for f in files:
            rel = f.relative_to(path).as_posix()
            text = f.read_text(encoding="utf-8", errors="replace")
            budget = _text_budget(f.stem, chunk_size, overlap, count, str(f))
            for offset, piece in chunk_words(text, budget, overlap, count):
                yield Document(id=f"{rel}#{offset}", text=piece, title=f.stem, meta={"file": rel, "offset": offset})
        return
    if not path.is_file():
        raise DataError(f"{path}: no such corpus file or folder")
    if path.suffix == ".jsonl":
        for lineno, obj in read_jsonl(path):
            yield document_from_record(obj, f"{path}:{lineno}", f"{path.stem}:{lineno}")
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: a JSON corpus must be a list of documents")
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise DataError(f"{path}: item {i} is not an object")
            yield document_from_record(obj, f"{path}: item {i}", f"{path.stem}:{i}")
    else:
        raise DataError(f"{path}: unsupported corpus format (use .jsonl, .json, or a folder of .txt/.md)")
