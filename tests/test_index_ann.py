"""Approximate search on synthetic states shaped like real CLaRa states: recall, persistence, old layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clara.cli import index as cli_index
from clara.data.corpus import Document
from clara.index import AnnConfig, MemoryIndex, Searcher, build_ann, exact_search, recall_at_k
from clara.index import search as search_mod

N_MEM, HIDDEN = 2, 48  # flattened D = 96


def anisotropic(n: int, seed: int, residual_scale: float = 1.0) -> np.ndarray:
    """Rows like real states (see benchmarks/index_bench.py SyntheticStates): one shared mean
    direction (pairwise cosine 0.999+) plus a residual with a decaying spectrum."""
    rng = np.random.default_rng(seed)
    d = N_MEM * HIDDEN
    axes, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))
    var = np.arange(1, d + 1, dtype=np.float64) ** -1.5
    mean = 2.4 * np.random.default_rng(1).standard_normal(d)
    residual = rng.standard_normal((n, d)) @ (np.sqrt(var)[:, None] * axes.T)
    residual *= 0.0173 * np.linalg.norm(mean) / np.sqrt(var.sum()) * residual_scale
    return (mean + residual).astype(np.float32).reshape(n, N_MEM, HIDDEN)


def synthetic_index(path, n: int) -> MemoryIndex:
    fp = {"n_mem": N_MEM, "hidden_size": HIDDEN, "backbone": {}, "adapters_sha256": "synthetic", "config": {}}
    index = MemoryIndex.create(path, fp, shard_size=1000)
    index.add([Document(id=str(i), text="-") for i in range(n)], anisotropic(n, seed=2))
    return index


@pytest.fixture
def index(tmp_path) -> MemoryIndex:
    return synthetic_index(tmp_path / "idx", 3000)


def queries(n: int = 40) -> torch.Tensor:
    return torch.from_numpy(anisotropic(n, seed=3, residual_scale=1.94))


def test_centred_ann_recall_against_exact(index):
    info = build_ann(index, AnnConfig(dim=32))
    assert info["kind"] == "centred-pca-ivf-flat" and info["rows"] == 3000 and info["nlist"] == 76
    q = queries()
    exact_s, exact_r = exact_search(index, q, 10)
    assert (exact_s > 0.999).all()  # the anisotropy this ANN is built for
    scores, rows = Searcher(index, "ann").search(q, 10)  # default nprobe
    assert recall_at_k(exact_r, rows) >= 0.95
    # candidates are re-scored exactly: the scores of rows found by both paths agree
    torch.testing.assert_close(scores[:, 0], exact_s[:, 0], atol=1e-6, rtol=0)
    assert recall_at_k(exact_r, Searcher(index, "ann", nprobe=1).search(q, 10)[1]) < recall_at_k(exact_r, rows)


def test_projection_distance_is_exact_for_queries_inside_the_kept_axes():
    """|docs(x) - queries(q)|^2 = |q - x|^2 exactly when q - mean lies in the kept axes: the
    extra coordinate accounts for all of x's discarded energy, with no per-document bias."""
    rng = np.random.default_rng(0)
    d, dim = 40, 6
    proj, _ = np.linalg.qr(rng.standard_normal((d, dim)))
    mean = rng.standard_normal(d).astype(np.float32)
    p = search_mod.AnnProjection(mean, proj.astype(np.float32))
    x = rng.standard_normal((50, d)).astype(np.float32)
    q = (mean + rng.standard_normal((3, dim)) @ proj.T).astype(np.float32)
    approx = ((p.queries(q)[:, None, :] - p.docs(x)[None]) ** 2).sum(-1)
    exact = ((q[:, None, :] - x[None]) ** 2).sum(-1)
    np.testing.assert_allclose(approx, exact, rtol=1e-4)
    assert p.docs(x).shape == (50, dim + 1) and p.out_dim == dim + 1


def test_ann_files_persist_and_a_rebuild_replaces_them(index):
    info = build_ann(index, AnnConfig(dim=16))
    folder = index.path / "ann" / info["folder"]
    assert sorted(p.name for p in folder.iterdir()) == ["ivf.faiss", "mean.npy", "projection.npy"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
    mean = np.load(folder / "mean.npy")
    assert mean.shape == (N_MEM * HIDDEN,) and np.linalg.norm(mean) > 0.99  # normalised rows' mean
    assert np.load(folder / "projection.npy").shape == (N_MEM * HIDDEN, 16)
    q = queries(8)
    want = Searcher(index, "ann").search(q, 5)
    reopened = MemoryIndex.open(index.path)
    assert reopened.manifest["ann"] == info
    got = Searcher(reopened, "ann").search(q, 5)
    assert torch.equal(got[1], want[1])
    # a build killed before its manifest commit leaves a folder nobody points at; the next build removes it
    (index.path / "ann" / "killed-build").mkdir()
    (index.path / "ann" / "killed-build" / "ivf.faiss").write_bytes(b"torn")
    assert Searcher(MemoryIndex.open(index.path), "ann").search(q, 5)[1].tolist() == want[1].tolist()
    info2 = build_ann(reopened, AnnConfig(dim=16, seed=1))
    assert info2["folder"] != info["folder"]
    assert [p.name for p in (index.path / "ann").iterdir()] == [info2["folder"]]
    assert recall_at_k(exact_search(index, q, 5)[1], Searcher(MemoryIndex.open(index.path), "ann").search(q, 5)[1]) >= 0.9


def test_ann_of_the_older_flat_layout_still_loads(index):
    """Indexes whose ann/ was written before centring: uncentred projection, inner-product IVF, no folder."""
    import faiss

    rows = torch.nn.functional.normalize(index.states(list(range(len(index)))).flatten(1), dim=-1)
    _, _, v = torch.pca_lowrank(rows, q=16, center=False)
    proj = v.numpy().astype(np.float32)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.train(rows.numpy() @ proj)
    ivf.add_with_ids(rows.numpy() @ proj, np.arange(len(rows), dtype=np.int64))
    (index.path / "ann").mkdir()
    faiss.write_index(ivf, str(index.path / "ann" / "ivf.faiss"))
    np.save(index.path / "ann" / "projection.npy", proj)
    index.set_manifest_field("ann", {"kind": "pca-ivf-flat", "dim": 16, "nlist": 8, "rows": len(index)})
    q = queries(20)
    rows_ann = Searcher(MemoryIndex.open(index.path), "ann", nprobe=8).search(q, 10)[1]
    assert recall_at_k(exact_search(index, q, 10)[1], rows_ann) >= 0.9


def test_cli_default_nprobe_matches_the_library():
    assert cli_index.DEFAULT_NPROBE == search_mod.DEFAULT_NPROBE
