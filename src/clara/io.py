"""Small file helpers shared by every module: JSONL with line-numbered errors, atomic writes."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataError(ValueError):
    """Bad input data; the message names the file and line (or field)."""


def open_text(path: Path):
    """A text file for reading, gzip-compressed when its name ends in ``.gz``."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_jsonl(path: str | Path, torn_tail_ok: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) for each non-blank line (gzip or not); malformed lines raise DataError.

    With ``torn_tail_ok`` an unterminated, unparsable last line (a write cut by a kill) is
    skipped instead: resumable jobs read their own output this way.
    """
    path = Path(path)
    with open_text(path) as f:  # streamed: a corpus may be larger than memory
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                # only the last line can lack its newline: a write cut by a kill
                if torn_tail_ok and not line.endswith("\n"):
                    return
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def require(obj: dict[str, Any], field: str, kind: type | tuple[type, ...], where: str) -> Any:
    """Return obj[field] if present and of the right type, else a DataError naming ``where`` and the field."""
    if field not in obj:
        raise DataError(f"{where}: missing field {field!r}")
    value = obj[field]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {field!r} must be {names}, got {type(value).__name__}")
    return value


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows and fsync: after a kill the file holds whole lines (a torn last line is skipped on read)."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
