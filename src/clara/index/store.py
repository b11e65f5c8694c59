"""MemoryIndex: a corpus's memory states on disk, opened memory-mapped.

Layout of an index folder::

    manifest.json              counts, shard list with sha256, model fingerprint, storage dtype
    shards/00000.safetensors   "states" (n, n_mem, H) float16 or int8, "inv_norm" (n,) float32,
                               for int8 "scale" (n,) float32 (state = code * scale), and when
                               the manifest says ``"readout": true`` also "readout" (n, n_mem, H)
                               float16: the generator's input rows (ClaraModel.read_memory of
                               the states), computed once here instead of at every question
    shards/00000.docs.jsonl    one line per row: {"id", "title", "text", "meta"}

Writes are crash-safe by ordering: a shard's two files are written to temporary names and
renamed into place, and only then is the manifest (atomically) rewritten to list them.
Readers trust only the manifest, so a shard cut by a kill is never visible; the next
writer reuses its number and overwrites it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..data.corpus import Document
from ..io import DataError, atomic_write_json
from .fingerprint import fingerprint_mismatch, model_fingerprint

try:  # POSIX: writers from several processes (a server, `clara index add`) take turns
    import fcntl
except ImportError:  # pragma: no cover - Windows: writers must not overlap
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FORMAT = "clara-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORAGE_DTYPES = ("float16", "int8")


class MemoryIndexError(DataError):
    """An index folder that cannot be used as asked (missing, corrupt, or from another model)."""


class DuplicateIdError(MemoryIndexError):
    """Documents whose ids the index already holds, or that repeat an id among themselves."""

    def __init__(self, ids: Sequence[str], path: str | Path) -> None:
        self.ids = sorted(set(ids))
        shown = ", ".join(repr(i) for i in self.ids[:10]) + (" ..." if len(self.ids) > 10 else "")
        super().__init__(f"document ids already in the index {path} or repeated: {shown}")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """An index folder's manifest, checked to be one this version reads (errors name the file and line)."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise MemoryIndexError(f"{path} is not a CLaRa index (no {MANIFEST}); build one with `clara index build`")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MemoryIndexError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MemoryIndexError(f"{file} is not a {FORMAT} manifest")
    if int(manifest.get("format_version", -1)) > FORMAT_VERSION:
        raise MemoryIndexError(f"{file}: format_version {manifest['format_version']} is newer than this clara-rag reads")
    return manifest


@dataclass
class Shard:
    """One committed shard as the manifest records it."""

    name: str  # "00000": files shards/<name>.safetensors and shards/<name>.docs.jsonl
    count: int
    first_row: int
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> hex digest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic_bytes(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then fsync and rename over ``path``: never a half-written file under that name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _safetensors_memmap(path: Path) -> dict[str, np.ndarray]:
    """Open every tensor of a safetensors file as a read-only numpy memmap (no copy, no pickle)."""
    dtypes = {"F16": np.float16, "F32": np.float32, "I8": np.int8}
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == start:  # empty tensor: np.memmap refuses zero length
            out[name] = np.zeros(shape, dtype=dtypes[info["dtype"]])
            continue
        out[name] = np.memmap(path, dtype=dtypes[info["dtype"]], mode="r", offset=base + start, shape=shape)
    return out


def quantize_int8(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-document symmetric int8: (n, n_mem, H) float -> codes int8 and scale (n,) float32."""
    flat = states.reshape(len(states), -1).astype(np.float32)
    scale = np.abs(flat).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    codes = np.clip(np.rint(flat / scale[:, None]), -127, 127).astype(np.int8)
    return codes.reshape(states.shape), scale.astype(np.float32)


def _as_float32(values: torch.Tensor | np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    if torch.is_tensor(values):
        values = values.detach().to("cpu", torch.float32).numpy()
    values = np.asarray(values, dtype=np.float32)
    if values.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {values.shape}")
    return values


class MemoryIndex:
    """Documents and their memory states (N, n_mem, H), stored in shards on disk.

    Create with :meth:`create`, open with :meth:`open`; :meth:`add` appends documents with
    their states. Search lives in :mod:`clara.index.search`.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._arrays_cache: dict[str, dict[str, np.ndarray]] = {}
        for attempt in range(3):
            self.shards: list[Shard] = []
            # per shard, the byte offset of each document's line: one document is one seek and one
            # line parsed, and no document text stays in memory (an index may hold millions)
            self._offsets: dict[str, list[int]] = {}
            self._ids: list[str] = []
            self._row_of: dict[str, int] = {}
            try:
                for s in manifest["shards"]:
                    self._take_in(Shard(**s))
                break
            except FileNotFoundError as missing:
                # another process compacted the index while this one read it: read the newer manifest
                fresh = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
                if fresh["shards"] == manifest["shards"] or attempt == 2:
                    raise MemoryIndexError(
                        f"{path}: {Path(str(missing.filename)).name} listed in the manifest is missing (index damaged?)"
                    ) from None
                self.manifest = manifest = fresh
        if len(self._ids) != self.count:
            raise MemoryIndexError(f"{path}: manifest counts {self.count} documents but the shards hold {len(self._ids)}")
        self._stamp = self._manifest_stamp()  # which manifest this object holds (refresh)

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | Path,
        fingerprint: dict[str, Any],
        storage: str = "float16",
        shard_size: int = 4096,
        model_path: str | None = None,
        readout: bool = False,
    ) -> "MemoryIndex":
        """Make an empty index folder; ``fingerprint`` comes from :func:`model_fingerprint`.

        ``readout`` stores each document's generator input rows beside its states (twice the
        bytes per document, one output-head pass less per question for soft-token models).
        """
        if storage not in STORAGE_DTYPES:
            raise ValueError(f"storage must be one of {STORAGE_DTYPES}, got {storage!r}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        path = Path(path)
        if (path / MANIFEST).exists():
            raise MemoryIndexError(f"{path} already holds an index; open it or choose another folder")
        (path / "shards").mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "count": 0,
            "n_mem": fingerprint["n_mem"],
            "hidden_size": fingerprint["hidden_size"],
            "storage": storage,
            "readout": bool(readout),
            "shard_size": shard_size,
            "model_fingerprint": fingerprint,
            "model_path": model_path,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "shards": [],
        }
        atomic_write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | Path) -> "MemoryIndex":
        """Open an existing index folder (states stay on disk, memory-mapped)."""
        return cls(Path(path), read_manifest(path))

    # ------------------------------------------------------------------ properties
    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    def __len__(self) -> int:
        return self.count

    @property
    def n_mem(self) -> int:
        return int(self.manifest["n_mem"])

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    @property
    def storage(self) -> str:
        return str(self.manifest["storage"])

    @property
    def has_readout(self) -> bool:
        """Whether shards store the generator's input rows (:meth:`readout`); older indexes do not."""
        return bool(self.manifest.get("readout", False))

    @property
    def ids(self) -> list[str]:
        """Document ids in row order."""
        return list(self._ids)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._row_of

    def row_of(self, doc_id: str) -> int:
        return self._row_of[doc_id]

    def duplicate_ids(self, ids: Iterable[str]) -> list[str]:
        """The ids among ``ids`` that this index already holds (as last refreshed) or that repeat, sorted."""
        seen: set[str] = set()
        dup = set()
        for i in ids:
            if i in self._row_of or i in seen:
                dup.add(i)
            seen.add(i)
        return sorted(dup)

    # ------------------------------------------------------------------ model check
    def check_model(self, model: Any) -> None:
        """Raise MemoryIndexError if ``model`` did not produce this index's states."""
        problem = fingerprint_mismatch(self.manifest["model_fingerprint"], model_fingerprint(model), self.has_readout)
        if problem:
            built = self.manifest.get("model_path") or "an unrecorded checkpoint"
            raise MemoryIndexError(
                f"index {self.path} was built with a different model ({problem}); it was built with "
                f"{built}. Load that checkpoint (--model) or rebuild the index with this one."
            )

    # ------------------------------------------------------------------ reading
    def _shard_file(self, shard: Shard, kind: str) -> Path:
        return self.path / "shards" / (f"{shard.name}.safetensors" if kind == "states" else f"{shard.name}.docs.jsonl")

    def _take_in(self, shard: Shard) -> None:
        """Append a committed shard: its rows' ids and where its lines start."""
        self.shards.append(shard)
        for row, doc_id in enumerate(self._shard_ids(shard), start=shard.first_row):
            self._row_of[doc_id] = row
            self._ids.append(doc_id)

    def _shard_ids(self, shard: Shard) -> list[str]:
        """The shard's document ids in row order; records where each line starts."""
        file = self._shard_file(shard, "docs")
        ids, offsets, pos = [], [], 0
        with open(file, "rb") as f:  # FileNotFoundError: __init__ tells a compaction from damage
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        ids.append(json.loads(line)["id"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise MemoryIndexError(f"{file}:{lineno}: not a document record (index damaged?)") from None
                    offsets.append(pos)
                pos += len(line)
        self._offsets[shard.name] = offsets
        return ids

    def _shard_arrays(self, name: str) -> dict[str, np.ndarray]:
        if name in self._arrays_cache:
            return self._arrays_cache[name]
        file = self.path / "shards" / f"{name}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(file)  # callers recover (_recover) if a compaction replaced it
        arrays = _safetensors_memmap(file)  # memmaps: pages load on demand, the OS may drop them
        self._arrays_cache[name] = arrays
        return arrays

    def _locate(self, row: int) -> tuple[Shard, int]:
        if not 0 <= row < self.count:
            raise IndexError(f"row {row} out of range for an index of {self.count} documents")
        lo, hi = 0, len(self.shards)
        while hi - lo > 1:  # binary search over first_row
            mid = (lo + hi) // 2
            if self.shards[mid].first_row <= row:
                lo = mid
            else:
                hi = mid
        shard = self.shards[lo]
        return shard, row - shard.first_row

    def document(self, row: int) -> Document:
        shard, i = self._locate(row)
        try:
            with open(self._shard_file(shard, "docs"), "rb") as f:
                f.seek(self._offsets[shard.name][i])
                o = json.loads(f.readline())
        except FileNotFoundError:
            self._recover(shard)
            return self.document(row)
        return Document(id=o["id"], text=o["text"], title=o.get("title", ""), meta=o.get("meta", {}))

    def _recover(self, shard: Shard) -> None:
        """A listed shard's file is gone: another process compacted the index after this one read
        it. Compaction keeps every row's number, so taking in the new manifest is enough."""
        if not self.refresh():
            raise MemoryIndexError(
                f"{self.path}: shard {shard.name} listed in the manifest is missing (index damaged?)"
            )

    def _gather(self, rows: Sequence[int], name: str) -> torch.Tensor:
        """Rows of one per-document tensor of the shards as float32 (len(rows), n_mem, H)."""
        out = torch.empty(len(rows), self.n_mem, self.hidden_size)
        for j, row in enumerate(rows):
            shard, i = self._locate(int(row))
            try:
                arrays = self._shard_arrays(shard.name)
            except FileNotFoundError:
                self._recover(shard)
                return self._gather(rows, name)
            value = np.asarray(arrays[name][i], dtype=np.float32)
            if name == "states" and "scale" in arrays:
                value = value * arrays["scale"][i]
            out[j] = torch.from_numpy(value)
        return out

    def states(self, rows: Sequence[int]) -> torch.Tensor:
        """Memory states of ``rows`` as float32 (len(rows), n_mem, H), dequantized if int8."""
        return self._gather(rows, "states")

    def readout(self, rows: Sequence[int]) -> torch.Tensor:
        """The generator's input rows of ``rows`` (len(rows), n_mem, H) float32; needs :attr:`has_readout`."""
        if not self.has_readout:
            raise MemoryIndexError(f"index {self.path} stores no readout rows (built with readout off or by an older clara-rag)")
        return self._gather(rows, "readout")

    def iter_blocks(
        self, block_rows: int = 16384, end: int | None = None
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (first_row, flat states (n, n_mem*H) memmap view, inv_norm (n,)) for rows [0, end) in order.

        Blocks never cross a shard, and hold at most ``block_rows`` rows: search memory is bounded.
        ``end`` defaults to the rows committed when the pass starts (later ones are not part of it).
        """
        row = 0
        end = self.count if end is None else end
        while row < end:
            shard, i = self._locate(row)
            try:
                arrays = self._shard_arrays(shard.name)
            except FileNotFoundError:
                self._recover(shard)  # compacted meanwhile: same rows, other shards
                continue
            flat = arrays["states"].reshape(shard.count, -1)
            last = min(shard.count, end - shard.first_row)  # a merged shard may reach past `end`
            for start in range(i, last, block_rows):
                stop = min(start + block_rows, last)
                yield shard.first_row + start, flat[start:stop], arrays["inv_norm"][start:stop]
            row = shard.first_row + last

    # ------------------------------------------------------------------ writing
    def add(
        self, docs: Sequence[Document], states: torch.Tensor | np.ndarray, readout: torch.Tensor | np.ndarray | None = None
    ) -> int:
        """Append documents with their states (n, n_mem, H); returns the number added.

        ``readout`` (same shape: the generator's input rows) is required exactly when the
        index stores it. Ids must be new (duplicates in the index or in ``docs`` raise). Each
        call commits shards of at most ``shard_size`` rows; a kill leaves the index as it was
        before the shard being written. Another process may write the same index: the two take
        turns (a lock file), and each first takes in what the other committed.
        """
        expect = (len(docs), self.n_mem, self.hidden_size)
        states = _as_float32(states, expect, "states")
        if self.has_readout and readout is None:
            raise ValueError(f"index {self.path} stores readout rows: pass readout= (ClaraModel.read_memory of the states)")
        if readout is not None and not self.has_readout:
            raise ValueError(f"index {self.path} was created without readout rows: do not pass readout=")
        readout = None if readout is None else _as_float32(readout, expect, "readout")
        with self._write_lock():
            self.refresh()
            dup = self.duplicate_ids(d.id for d in docs)
            if dup:
                raise DuplicateIdError(dup, self.path)
            size = int(self.manifest["shard_size"])
            for start in range(0, len(docs), size):
                part = slice(start, start + size)
                self._commit_shard(list(docs[part]), states[part], None if readout is None else readout[part])
        return len(docs)

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """Hold the index's writer lock (``.write.lock``, waiting for another writer's commit)."""
        if fcntl is None:
            yield
            return
        with open(self.path / ".write.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _manifest_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.path / MANIFEST).stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def refresh(self) -> bool:
        """Take in the shards another process (a server, `clara index add`) committed since this
        index was read; True if there were any. One ``stat`` when nothing changed. Writers call
        it under the lock, so a commit here neither reuses their shard names nor drops them."""
        stamp = self._manifest_stamp()
        if stamp == self._stamp:
            return False
        on_disk = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        known = [Shard(**s) for s in on_disk["shards"][: len(self.shards)]]
        if known != self.shards:  # not appended to but replaced (rebuilt): read it afresh
            self.__init__(self.path, on_disk)  # type: ignore[misc]
            return True
        new = on_disk["shards"][len(self.shards) :]
        if new:  # only the shards added since are read
            log.info("%s: %d documents committed by another process", self.path, int(on_disk["count"]) - self.count)
            try:
                for s in new:
                    self._take_in(Shard(**s))
            except FileNotFoundError:  # compacted since: read it afresh
                self.__init__(self.path, json.loads((self.path / MANIFEST).read_text(encoding="utf-8")))  # type: ignore[misc]
                return True
        self.manifest, self._stamp = on_disk, stamp
        return bool(new)

    def _next_shard_name(self) -> str:
        # not len(shards): after a compaction the listed names have gaps
        return f"{max((int(s.name) for s in self.shards), default=-1) + 1:05d}"

    def _commit_shard(self, docs: list[Document], states: np.ndarray, readout: np.ndarray | None) -> None:
        if self.storage == "int8":
            codes, scale = quantize_int8(states)
            tensors = {"states": codes, "scale": scale}
            norm = np.linalg.norm(codes.reshape(len(docs), -1).astype(np.float32), axis=1)
        else:
            fp16 = states.astype(np.float16)
            tensors = {"states": fp16}
            # norms of the stored (rounded) values, so exact search scores what is on disk
            norm = np.linalg.norm(fp16.reshape(len(docs), -1).astype(np.float32), axis=1)
        tensors["inv_norm"] = (1.0 / np.maximum(norm, 1e-12)).astype(np.float32)
        if readout is not None:
            tensors["readout"] = readout.astype(np.float16)
        records = ({"id": d.id, "title": d.title, "text": d.text, "meta": d.meta} for d in docs)
        lines = [json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records]
        shard = self._write_shard(self._next_shard_name(), self.count, tensors, lines)
        shards = [*self.manifest["shards"], shard.__dict__]
        self._write_manifest(shards=shards, count=self.count + len(docs))  # the commit point
        self._take_in(shard)

    def _write_shard(self, name: str, first_row: int, tensors: dict[str, np.ndarray], lines: Sequence[bytes]) -> Shard:
        """Write a shard's two files (atomically, not yet listed anywhere) and describe it."""
        folder = self.path / "shards"
        docs_file, states_file = folder / f"{name}.docs.jsonl", folder / f"{name}.safetensors"

        def write_docs(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.writelines(lines)

        _write_atomic_bytes(docs_file, write_docs)
        _write_atomic_bytes(states_file, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
        return Shard(
            name=name,
            count=len(lines),
            first_row=first_row,
            sha256={docs_file.name: _sha256(docs_file), states_file.name: _sha256(states_file)},
        )

    def _write_manifest(self, **fields: Any) -> None:
        """Atomically rewrite the manifest with ``fields`` changed (writers hold the lock)."""
        manifest = {**self.manifest, **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(self.path / MANIFEST, manifest)
        self.manifest, self._stamp = manifest, self._manifest_stamp()

    # ------------------------------------------------------------------ compaction
    def compact(self, shard_size: int | None = None) -> int:
        """Merge runs of consecutive shards into shards of at most ``shard_size`` rows (default:
        the index's); returns how many shards fewer the index has.

        Every ``add`` commits at least one shard, so an index fed one document at a time (the
        server's POST /v1/documents) ends up with thousands of one-row files. Merging keeps each
        row's number and order, so search results and an approximate index stay valid, and
        another process reading the old shards takes in the new manifest when it finds them gone.
        Crash-safe like ``add``: merged shards are written under new names, listed by one manifest
        write, and only then are the old files (and any a killed writer left) deleted.
        """
        size = int(self.manifest["shard_size"]) if shard_size is None else shard_size
        if size < 1:
            raise ValueError(f"shard_size must be >= 1, got {size}")
        with self._write_lock():
            self.refresh()
            groups: list[list[Shard]] = []
            rows = 0  # in the last group
            for shard in self.shards:  # greedy runs of consecutive shards that fit in `size` rows
                if groups and rows + shard.count <= size:
                    groups[-1].append(shard)
                    rows += shard.count
                else:
                    groups.append([shard])
                    rows = shard.count
            before = len(self.shards)
            if len(groups) < before:
                next_name = int(self._next_shard_name())
                listed: list[dict[str, Any]] = []
                for group in groups:
                    if len(group) == 1:
                        listed.append(group[0].__dict__)
                        continue
                    # read, not memory-mapped: a map holds a file descriptor per tensor, and a group may
                    # be thousands of one-row shards
                    parts = [load_file(str(self._shard_file(s, "states"))) for s in group]
                    tensors = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
                    lines = [
                        line
                        for s in group
                        for line in self._shard_file(s, "docs").read_bytes().splitlines(keepends=True)
                        if line.strip()
                    ]
                    merged = self._write_shard(f"{next_name:05d}", group[0].first_row, tensors, lines)
                    next_name += 1
                    listed.append(merged.__dict__)
                self._write_manifest(shards=listed)  # the commit point
                self.__init__(self.path, self.manifest)  # type: ignore[misc]
            self._remove_unlisted()
        return before - len(self.shards)

    def _remove_unlisted(self) -> None:
        """Delete shard files the manifest does not list (merged away, or cut by a killed writer).
        Only under the writer lock: no commit is then half-way."""
        listed = {name for s in self.shards for name in s.sha256}
        for file in (self.path / "shards").iterdir():
            if file.is_file() and file.name not in listed:
                file.unlink()

    # ------------------------------------------------------------------ checks
    def verify(self) -> list[str]:
        """Recompute every shard checksum; returns the problems found (empty when intact)."""
        problems = []
        for shard in self.shards:
            for file_name, digest in shard.sha256.items():
                file = self.path / "shards" / file_name
                if not file.is_file():
                    problems.append(f"{file_name}: missing")
                elif _sha256(file) != digest:
                    problems.append(f"{file_name}: checksum mismatch (file changed or corrupt)")
        return problems

    def stats(self) -> dict[str, Any]:
        """Counts and sizes, for ``clara index stats``."""
        state_bytes = sum(self._shard_file(s, "states").stat().st_size for s in self.shards)
        text_bytes = sum(self._shard_file(s, "docs").stat().st_size for s in self.shards)
        fp = self.manifest["model_fingerprint"]
        return {
            "path": str(self.path),
            "documents": self.count,
            "shards": len(self.shards),
            "storage": self.storage,
            "readout": self.has_readout,
            "n_mem": self.n_mem,
            "hidden_size": self.hidden_size,
            "state_bytes": state_bytes,
            "text_bytes": text_bytes,
            "bytes_per_document": round(state_bytes / self.count, 1) if self.count else 0,
            "model_path": self.manifest.get("model_path"),
            "adapters_sha256": fp["adapters_sha256"][:16],
            "backbone": fp.get("config", {}).get("backbone"),
            "ann": self.manifest.get("ann"),
        }

    def set_manifest_field(self, key: str, value: Any) -> None:
        """Atomically record an extra manifest field (e.g. the approximate index's description).

        Under the writer lock and on the manifest as it is now: a field written from a stale copy
        would drop the shards another process committed or compacted meanwhile."""
        with self._write_lock():
            self.refresh()
            self._write_manifest(**{key: value})
