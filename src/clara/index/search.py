"""Search a MemoryIndex: exact scoring of every row, or an approximate FAISS path.

Exact: the query is normalised once for the model's retrieval score (``clara.score``:
cosine of flattened states, or max-sim over slots); stored rows are scanned in blocks
(float32 copies of at most ``block_rows`` rows), each block scored by one matrix product
and folded into a running top-k. Memory is bounded whatever the corpus size.

Approximate (``method="ann"``): flattened states are normalised, centred on their mean
and projected to ``dim`` dimensions by PCA, plus one coordinate holding the norm of what the
projection drops (see AnnProjection); an IVF index (L2) over those vectors proposes
``rerank * k`` candidates, and those are re-scored exactly. For unit vectors L2 distance
ranks exactly like cosine and is translation invariant, so centring changes no ranking; it
matters because CLaRa states share a mean direction (pairwise cosine of different documents
is 0.66 for the ratio-16 default of sessions 6-31, 0.9996 for its collapsed predecessor): uncentred, the first
principal axis is spent on it. Rows added after the ANN was built are scanned exactly, so new documents are
always found.

For a max-sim model the ANN holds every memory slot instead (``AnnConfig.score="maxsim"``, as
ColBERT does): each normalised slot is one IVF vector, each question slot fetches its nearest
``rerank * k`` document slots, and the documents they belong to are re-scored exactly. One
vector per document cannot propose max-sim's top-k: on real states even the exact flattened
cosine's top 100 holds 53% of max-sim's top 10, while the slot ANN's recall@10 is 0.97 at the
default settings (benchmarks/results/maxsim_ann.json).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import score as scoring
from .store import MemoryIndex, MemoryIndexError

log = logging.getLogger(__name__)

METHODS = ("exact", "ann")
ANN_DIR = "ann"


def _merge_topk(
    best_s: torch.Tensor, best_r: torch.Tensor, s: torch.Tensor, r: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold candidate scores/rows (B, m) into the running best (B, k)."""
    all_s, all_r = torch.cat([best_s, s], 1), torch.cat([best_r, r], 1)
    top = all_s.topk(min(k, all_s.shape[1]), dim=1)
    return top.values, all_r.gather(1, top.indices)


def _check_queries(index: MemoryIndex, queries: torch.Tensor) -> torch.Tensor:
    """(B, n_mem, H) float32 on the CPU, checked against the index's shape."""
    if queries.dim() != 3 or tuple(queries.shape[1:]) != (index.n_mem, index.hidden_size):
        raise ValueError(
            f"queries must be (B, {index.n_mem}, {index.hidden_size}) for this index, got {tuple(queries.shape)}"
        )
    return queries.detach().to("cpu", torch.float32)


def _block_scores(q: torch.Tensor, rows: torch.Tensor, inv_norm: torch.Tensor, kind: str) -> torch.Tensor:
    """Scores of unit queries q (B, M, H) against raw stored rows (n, M*H) -> (B, n)."""
    if kind == "cosine":  # the stored inverse norms normalise the rows without another pass
        return (q.flatten(1) @ rows.T) * inv_norm
    return scoring.score_unit(q, scoring.unit(rows.view(len(rows), *q.shape[1:]), kind), kind)


def exact_search(
    index: MemoryIndex,
    queries: torch.Tensor,
    k: int,
    block_rows: int = 16384,
    start_row: int = 0,
    score: str = "cosine",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by ``score`` (clara.score) over rows >= ``start_row``: scores (B, k') float32 and
    rows (B, k') int64, best first. k' = min(k, rows searched).
    """
    q = scoring.unit(_check_queries(index, queries), score)  # (B, M, H)
    if score == "maxsim":  # its (B*M, n*M) slot-pair matrix is M^2 times a block's rows: keep it near 64 MB
        block_rows = max(1, min(block_rows, (1 << 24) // (len(q) * index.n_mem**2)))
    best_s = torch.empty(len(q), 0)
    best_r = torch.empty(len(q), 0, dtype=torch.long)
    for first, block, inv_norm in index.iter_blocks(block_rows):
        if first + len(block) <= start_row:
            continue
        skip = max(0, start_row - first)
        rows = torch.from_numpy(np.asarray(block[skip:], dtype=np.float32))  # (n, D), the bounded copy
        inv = torch.from_numpy(np.array(inv_norm[skip:], dtype=np.float32))
        scores = _block_scores(q, rows, inv, score)  # (B, n)
        ids = torch.arange(first + skip, first + len(block)).expand(len(q), -1)
        best_s, best_r = _merge_topk(best_s, best_r, scores, ids, k)
    return best_s, best_r


def rescore(index: MemoryIndex, queries: torch.Tensor, rows: torch.Tensor, score: str = "cosine") -> torch.Tensor:
    """Exact ``score`` of each query with its own candidate rows: (B, m) -> (B, m); -inf where row < 0."""
    q = scoring.unit(_check_queries(index, queries), score)  # (B, M, H)
    out = torch.full(rows.shape, -math.inf)
    for b in range(len(q)):
        valid = rows[b] >= 0
        if valid.any():
            d = scoring.unit(index.states(rows[b][valid].tolist()), score)  # (m, M, H)
            out[b, valid] = scoring.score_unit(q[b : b + 1], d, score)[0]
    return out


# ---------------------------------------------------------------------- approximate path
ANN_KIND = "centred-pca-ivf-flat"  # + the discarded-norm coordinate (AnnProjection)
ANN_KIND_SLOTS = "centred-pca-ivf-flat-slots"  # the same over single memory slots (max-sim)
# of ~1300 cells at 1M: recall@10 0.97 at ~8 ms/query on states shaped like the ratio-16 default's
# (benchmarks/results/search_NOTES.md)
DEFAULT_NPROBE = 128


@dataclass
class AnnConfig:
    """Approximate search settings."""

    dim: int = 256  # projected dimensions (<= the vector's: n_mem*H, or H for slots)
    nlist: int = 0  # IVF cells; 0 = about 4*sqrt(vectors), at least 39 training vectors per cell
    train_rows: int = 50_000  # vectors sampled to fit the projection and the IVF centroids
    seed: int = 0
    score: str = "cosine"  # the retrieval score served: cosine (a vector per document) or maxsim (per slot)

    def __post_init__(self) -> None:
        scoring.check_kind(self.score)


@dataclass
class AnnProjection:
    """The map from normalised states (n, D) to the vectors the IVF index holds.

    Documents: ``[(x - mean) @ proj, |discarded|]``, where the last coordinate is the norm
    of the part of ``x - mean`` the projection drops; queries: ``[(q - mean) @ proj, 0]``.
    Squared L2 between the two is then ``|P(q-x)|^2 + |discarded_x|^2``, which equals the
    exact ``|q - x|^2`` (i.e. cosine, for unit vectors) up to a per-query constant and the
    dropped cross term. Without the extra coordinate, documents whose energy lies mostly
    outside the kept axes would look closer than they are.
    """

    mean: np.ndarray  # (D,) float32; zeros for the older uncentred layout
    proj: np.ndarray  # (D, dim) float32, orthonormal columns
    residual: bool = True  # the discarded-norm coordinate (absent in the older layout)

    def docs(self, x: np.ndarray) -> np.ndarray:
        centred = np.asarray(x, dtype=np.float32) - self.mean
        y = centred @ self.proj
        if not self.residual:
            return np.ascontiguousarray(y)
        dropped = np.maximum(np.einsum("ij,ij->i", centred, centred) - np.einsum("ij,ij->i", y, y), 0.0)
        return np.ascontiguousarray(np.hstack([y, np.sqrt(dropped)[:, None]]), dtype=np.float32)

    def queries(self, q: np.ndarray) -> np.ndarray:
        y = (np.asarray(q, dtype=np.float32) - self.mean) @ self.proj
        if not self.residual:
            return np.ascontiguousarray(y)
        return np.ascontiguousarray(np.hstack([y, np.zeros((len(y), 1), dtype=np.float32)]))

    @property
    def out_dim(self) -> int:
        return self.proj.shape[1] + int(self.residual)

    @classmethod
    def fit(cls, sample: torch.Tensor, dim: int, seed: int) -> "AnnProjection":
        """PCA of normalised sample rows (m, D) about their mean: the top ``dim`` axes."""
        mean = sample.mean(0)
        with torch.random.fork_rng():  # pca_lowrank is randomised: seed it without touching the caller's RNG
            torch.manual_seed(seed)
            _, _, v = torch.pca_lowrank(sample - mean, q=dim, center=False, niter=4)
        return cls(mean.numpy().astype(np.float32), v[:, :dim].contiguous().numpy().astype(np.float32))

    def save(self, folder: Path) -> None:
        _atomic_npy_write(self.proj, folder / "projection.npy")
        _atomic_npy_write(self.mean, folder / "mean.npy")

    @classmethod
    def load(cls, folder: Path, ivf_dim: int) -> "AnnProjection":
        proj = np.load(folder / "projection.npy")
        mean_file = folder / "mean.npy"
        if not mean_file.is_file():  # the older layout: uncentred projection, inner-product IVF
            return cls(np.zeros(proj.shape[0], dtype=np.float32), proj, residual=False)
        return cls(np.load(mean_file), proj, residual=ivf_dim == proj.shape[1] + 1)


def _atomic_npy_write(array: np.ndarray, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_faiss_write(index: Any, path: Path) -> None:
    import faiss

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ann_vectors(states: torch.Tensor, score: str) -> np.ndarray:
    """States (n, n_mem, H) -> what the IVF holds: unit rows (n, n_mem*H), or unit slots (n*n_mem, H).

    int8 rows may come in as raw codes: their per-document scale cancels in either normalisation.
    """
    unit = scoring.unit(states, score)
    return (unit.flatten(1) if score == "cosine" else unit.flatten(0, 1)).numpy()


def build_ann(index: MemoryIndex, config: AnnConfig | None = None, block_rows: int = 16384) -> dict[str, Any]:
    """Fit the projection and IVF on a sample, add every row, save under ``<index>/ann/``.

    Returns the description recorded in the manifest's ``ann`` field. Each build writes a
    fresh ``ann/<build>/`` folder and the manifest, written last, names it: a build killed at
    any point leaves the previous ANN in use, never a mix of old and new files.
    """
    import faiss

    config = config or AnnConfig()
    n = len(index)
    if n == 0:
        raise MemoryIndexError(f"{index.path} is empty: nothing to build an approximate index over")
    per_row = index.n_mem if config.score == "maxsim" else 1  # IVF vectors per document
    rng = np.random.default_rng(config.seed)
    sample_rows = np.sort(rng.choice(n, size=min(n, max(1, config.train_rows // per_row)), replace=False))
    sample = torch.from_numpy(_ann_vectors(index.states(sample_rows.tolist()), config.score))  # (m*per_row, dims)
    dim = min(config.dim, sample.shape[1], len(sample))
    projection = AnnProjection.fit(sample, dim, config.seed)
    nlist = config.nlist or int(4 * math.sqrt(n * per_row))
    nlist = max(1, min(nlist, len(sample) // 39))
    d = projection.out_dim
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist, faiss.METRIC_L2)
    ivf.train(projection.docs(sample.numpy()))
    for first, block, _ in index.iter_blocks(block_rows, end=n):  # the rows the manifest will record
        ids = np.arange(first * per_row, (first + len(block)) * per_row, dtype=np.int64)  # slot id = row*n_mem + j
        states = torch.from_numpy(np.asarray(block, dtype=np.float32)).view(len(block), index.n_mem, -1)
        ivf.add_with_ids(projection.docs(_ann_vectors(states, config.score)), ids)
    build = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(4)}"
    folder = index.path / ANN_DIR / build
    folder.mkdir(parents=True)
    _atomic_faiss_write(ivf, folder / "ivf.faiss")
    projection.save(folder)
    kind = ANN_KIND_SLOTS if config.score == "maxsim" else ANN_KIND
    info = {"kind": kind, "score": config.score, "dim": dim, "nlist": nlist, "rows": n, "folder": build}
    index.set_manifest_field("ann", info)  # commit: the manifest now points at a complete ANN
    _remove_other_builds(index.path / ANN_DIR, keep=build)
    return info


def _remove_other_builds(root: Path, keep: str) -> None:
    """Delete superseded ANN files (older builds, the pre-versioned flat layout); best effort."""
    for entry in root.iterdir():
        if entry.name == keep:
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError as e:  # a reader on another process may still hold it open: harmless
            log.warning("could not remove old ANN file %s: %s", entry, e)


def _load_ann(index: MemoryIndex, nprobe: int, score: str) -> tuple[Any, AnnProjection, int]:
    import faiss

    info = index.manifest.get("ann")
    if not info:
        raise MemoryIndexError(f"{index.path} has no approximate index; run `clara index ann {index.path}` first")
    built_for = info.get("score", "cosine")  # ANNs written before max-sim existed serve cosine
    if built_for != score:
        raise MemoryIndexError(
            f"the approximate index of {index.path} serves the {built_for} score, the model retrieves by {score}: "
            f"rebuild it with `clara index ann {index.path} --score {score}`"
        )
    folder = index.path / ANN_DIR / info.get("folder", "")  # no "folder": the older flat layout
    ivf = faiss.read_index(str(folder / "ivf.faiss"))
    ivf.nprobe = nprobe
    return ivf, AnnProjection.load(folder, ivf.d), int(info["rows"])


class Searcher:
    """Top-k search over one index; ``method`` 'exact' or 'ann' (the ANN is loaded once).

    ``score`` is the model's ``retrieval_score``; an ANN serves only the score it was built
    for (one vector per document for cosine, one per slot for max-sim), and its candidates are
    re-scored exactly by ``score``.
    """

    def __init__(
        self,
        index: MemoryIndex,
        method: str = "exact",
        nprobe: int = DEFAULT_NPROBE,
        rerank: int = 10,
        block_rows: int = 16384,
        score: str = "cosine",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.index, self.method, self.nprobe, self.rerank, self.block_rows = index, method, nprobe, rerank, block_rows
        self.score = scoring.check_kind(score)
        self._ann: tuple[Any, AnnProjection, int] | None = _load_ann(index, nprobe, score) if method == "ann" else None

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B, k') and rows (B, k'), best first; k' = min(k, len(index)).

        On the ANN path a query with fewer than k candidates gets row -1 (score -inf) in the tail slots.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self._ann is None:
            return exact_search(self.index, queries, k, self.block_rows, score=self.score)
        ivf, proj, covered = self._ann
        cand_t = self._candidates(ivf, proj, queries, max(k * self.rerank, k))  # (B, m) rows, -1 = none
        scores, rows = self._topk_valid(rescore(self.index, queries, cand_t, self.score), cand_t, k)
        if covered < len(self.index):  # rows added after the ANN was built: scan them exactly
            tail_s, tail_r = exact_search(
                self.index, queries, k, self.block_rows, start_row=covered, score=self.score
            )
            scores, rows = _merge_topk(scores, rows, tail_s, tail_r, k)
        return scores, rows

    def _candidates(self, ivf: Any, proj: AnnProjection, queries: torch.Tensor, m: int) -> torch.Tensor:
        """Rows the IVF proposes: (B, m') int64, -1 = none (cosine: m per query; maxsim: the
        distinct documents of each question slot's m nearest slots)."""
        q = scoring.unit(_check_queries(self.index, queries), self.score)  # (B, M, H)
        if self.score == "cosine":
            _, cand = ivf.search(proj.queries(q.flatten(1).numpy()), m)
            return torch.from_numpy(cand)
        b, n_mem, h = q.shape
        _, slots = ivf.search(proj.queries(q.reshape(b * n_mem, h).numpy()), m)  # (B*M, m) slot ids
        slots = torch.from_numpy(slots).view(b, -1)
        rows = [torch.unique(s[s >= 0] // n_mem) for s in slots]
        out = torch.full((b, max(1, max(len(r) for r in rows))), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    @staticmethod
    def _topk_valid(scores: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        s, r = top.values, rows.gather(1, top.indices)
        return s, r.masked_fill(~torch.isfinite(s), -1)  # -1: fewer candidates than k for that query


def recall_at_k(exact_rows: torch.Tensor, approx_rows: torch.Tensor) -> float:
    """Mean fraction of the exact top-k rows that the approximate top-k also returns."""
    hits = [len(set(e.tolist()) & set(a.tolist())) / max(1, len(e)) for e, a in zip(exact_rows, approx_rows)]
    return float(np.mean(hits)) if hits else 0.0
