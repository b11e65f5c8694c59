"""Search a MemoryIndex: exact cosine over flattened states, or an approximate FAISS path.

Exact: the flattened query (n_mem*H) is normalised once; stored rows are scanned in
blocks (float32 copies of at most ``block_rows`` rows), each block scored by one matrix
product and folded into a running top-k. Memory is bounded whatever the corpus size.

Approximate (``method="ann"``): flattened states are normalised and projected to ``dim``
dimensions by an uncentred PCA (inner products are preserved where the data varies), an
IVF index over the projections proposes ``rerank * k`` candidates, and those are re-scored
exactly. Rows added after the ANN was built are scanned exactly, so new documents are
always found.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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


def _flat_queries(index: MemoryIndex, queries: torch.Tensor) -> torch.Tensor:
    """(B, n_mem, H) -> unit-norm float32 (B, n_mem*H), checked against the index's shape."""
    if queries.dim() != 3 or tuple(queries.shape[1:]) != (index.n_mem, index.hidden_size):
        raise ValueError(
            f"queries must be (B, {index.n_mem}, {index.hidden_size}) for this index, got {tuple(queries.shape)}"
        )
    return F.normalize(queries.detach().to("cpu", torch.float32).flatten(1), dim=-1)


def exact_search(
    index: MemoryIndex, queries: torch.Tensor, k: int, block_rows: int = 16384, start_row: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k over rows >= ``start_row``: scores (B, k') float32 and rows (B, k') int64, best first.

    k' = min(k, rows searched).
    """
    q = _flat_queries(index, queries)  # (B, D)
    best_s = torch.empty(len(q), 0)
    best_r = torch.empty(len(q), 0, dtype=torch.long)
    for first, block, inv_norm in index.iter_blocks(block_rows):
        if first + len(block) <= start_row:
            continue
        skip = max(0, start_row - first)
        rows = torch.from_numpy(np.asarray(block[skip:], dtype=np.float32))  # (n, D), the bounded copy
        scores = (q @ rows.T) * torch.from_numpy(np.array(inv_norm[skip:], dtype=np.float32))  # (B, n)
        ids = torch.arange(first + skip, first + len(block)).expand(len(q), -1)
        best_s, best_r = _merge_topk(best_s, best_r, scores, ids, k)
    return best_s, best_r


def rescore(index: MemoryIndex, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Exact cosine of each query with its own candidate rows: (B, m) -> (B, m); -inf where row < 0."""
    q = _flat_queries(index, queries)
    out = torch.full(rows.shape, -math.inf)
    for b in range(len(q)):
        valid = rows[b] >= 0
        if valid.any():
            d = F.normalize(index.states(rows[b][valid].tolist()).flatten(1), dim=-1)  # (m, D)
            out[b, valid] = d @ q[b]
    return out


# ---------------------------------------------------------------------- approximate path
@dataclass
class AnnConfig:
    """Approximate search settings."""

    dim: int = 256  # projected dimensions (<= n_mem*H)
    nlist: int = 0  # IVF cells; 0 = about 4*sqrt(N), at least 39 training rows per cell
    train_rows: int = 50_000  # rows sampled to fit the projection and the IVF centroids
    seed: int = 0


def _project(block: np.ndarray, inv_norm: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Normalised rows (n, D) projected to (n, dim) float32."""
    x = np.asarray(block, dtype=np.float32) * np.asarray(inv_norm, dtype=np.float32)[:, None]
    return np.ascontiguousarray(x @ proj)


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


def build_ann(index: MemoryIndex, config: AnnConfig | None = None, block_rows: int = 16384) -> dict[str, Any]:
    """Fit the projection and IVF on a sample, add every row, save under ``<index>/ann/``.

    Returns the description recorded in the manifest's ``ann`` field.
    """
    import faiss

    config = config or AnnConfig()
    n, full_dim = len(index), index.n_mem * index.hidden_size
    if n == 0:
        raise MemoryIndexError(f"{index.path} is empty: nothing to build an approximate index over")
    rng = np.random.default_rng(config.seed)
    sample_rows = np.sort(rng.choice(n, size=min(n, config.train_rows), replace=False))
    sample = F.normalize(index.states(sample_rows.tolist()).flatten(1), dim=-1)  # (m, D)
    dim = min(config.dim, full_dim, len(sample))
    # uncentred PCA: the top right-singular vectors of the sample keep its inner products best
    _, _, v = torch.pca_lowrank(sample, q=dim, center=False, niter=4)
    proj = v[:, :dim].contiguous().numpy().astype(np.float32)  # (D, dim)
    nlist = config.nlist or int(4 * math.sqrt(n))
    nlist = max(1, min(nlist, len(sample) // 39))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(np.ascontiguousarray(sample.numpy() @ proj))
    for first, block, inv_norm in index.iter_blocks(block_rows):
        ivf.add_with_ids(_project(block, inv_norm, proj), np.arange(first, first + len(block), dtype=np.int64))
    folder = index.path / ANN_DIR
    folder.mkdir(exist_ok=True)
    _atomic_faiss_write(ivf, folder / "ivf.faiss")
    np.save(folder / "projection.tmp.npy", proj)
    os.replace(folder / "projection.tmp.npy", folder / "projection.npy")
    info = {"kind": "pca-ivf-flat", "dim": dim, "nlist": nlist, "rows": n}
    index.set_manifest_field("ann", info)  # commit: the manifest now points at a complete ANN
    return info


class Searcher:
    """Top-k search over one index; ``method`` 'exact' or 'ann' (the ANN is loaded once)."""

    def __init__(
        self, index: MemoryIndex, method: str = "exact", nprobe: int = 16, rerank: int = 10, block_rows: int = 16384
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.index, self.method, self.nprobe, self.rerank, self.block_rows = index, method, nprobe, rerank, block_rows
        self._ann: tuple[Any, np.ndarray, int] | None = None
        if method == "ann":
            info = index.manifest.get("ann")
            if not info:
                raise MemoryIndexError(
                    f"{index.path} has no approximate index; run `clara index ann {index.path}` first"
                )
            import faiss

            ivf = faiss.read_index(str(index.path / ANN_DIR / "ivf.faiss"))
            ivf.nprobe = nprobe
            self._ann = (ivf, np.load(index.path / ANN_DIR / "projection.npy"), int(info["rows"]))

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B, k') and rows (B, k'), best first; k' = min(k, len(index)).

        On the ANN path a query with fewer than k candidates gets row -1 (score -inf) in the tail slots.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self._ann is None:
            return exact_search(self.index, queries, k, self.block_rows)
        ivf, proj, covered = self._ann
        q = _flat_queries(self.index, queries).numpy()
        _, cand = ivf.search(np.ascontiguousarray(q @ proj), max(k * self.rerank, k))  # (B, m), -1 = none
        cand_t = torch.from_numpy(cand)
        scores, rows = self._topk_valid(rescore(self.index, queries, cand_t), cand_t, k)
        if covered < len(self.index):  # rows added after the ANN was built: scan them exactly
            tail_s, tail_r = exact_search(self.index, queries, k, self.block_rows, start_row=covered)
            scores, rows = _merge_topk(scores, rows, tail_s, tail_r, k)
        return scores, rows

    @staticmethod
    def _topk_valid(scores: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        s, r = top.values, rows.gather(1, top.indices)
        return s, r.masked_fill(~torch.isfinite(s), -1)  # -1: fewer candidates than k for that query


def recall_at_k(exact_rows: torch.Tensor, approx_rows: torch.Tensor) -> float:
    """Mean fraction of the exact top-k rows that the approximate top-k also returns."""
    hits = [len(set(e.tolist()) & set(a.tolist())) / max(1, len(e)) for e, a in zip(exact_rows, approx_rows)]
    return float(np.mean(hits)) if hits else 0.0
