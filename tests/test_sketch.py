"""The int8 sketch a range search scans first (search/vectors/sketch.py): its candidates hold every vector at the
floor (a numpy oracle in float64, adversarial vectors included), and a mapped exact base searched through it gives
FAISS's own range search, float for float, through removals and additions; a search service gives the same pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import search.vectors.faiss as faiss_backend
from search.vectors.base import Matches, best_of, matches_of
from search.vectors.faiss import FaissVectorStore
from search.vectors.sketch import Int8Sketch
from tests.conftest import make_service


def _unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return out


def _vectors(n: int, d: int, seed: int) -> np.ndarray:
    """Unit vectors with structure (a few topics, as embeddings have) and, among them, the shapes that stress a
    quantiser: every component at the same magnitude (all codes at +-127, which with a query of the same shape
    puts each pair of int8 products at the edge of int16), one spike, a zero vector and near-duplicates."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(8, d))
    x = topics[rng.integers(0, 8, n)] + rng.normal(scale=1.2, size=(n, d))
    x[0] = np.sign(rng.normal(size=d))
    x[1] = -x[0]
    x[2] = 0.0
    x[2, 3] = 1.0
    x[4] = x[5] + 1e-4
    x[20:40] = x[40]  # copies: equal scores, whose ties the best of the matches must break by id
    out = _unit(x)
    out[3] = 0.0
    return out


def _queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = vectors[rng.choice(len(vectors), n)] + rng.normal(scale=0.05, size=(n, vectors.shape[1]))
    return np.vstack([vectors[0], vectors[1], _unit(picked)]).astype(np.float32)


@pytest.mark.parametrize("floor", [-0.2, 0.0, 0.22, 0.5, 0.95])
def test_candidates_hold_every_vector_at_the_floor_and_prune_the_rest(floor: float) -> None:
    vectors = _vectors(3000, 48, seed=1)
    sketch = Int8Sketch.of(vectors)
    pruned = 0.0
    for q in _queries(vectors, 40, seed=2):
        exact = vectors.astype(np.float64) @ q.astype(np.float64)
        found = sketch.candidates(q, floor)
        assert np.all(np.diff(found) > 0)
        at_floor = np.flatnonzero(exact >= floor - 1e-4)  # what a float32 score at the floor can be, and more
        missing = np.setdiff1d(at_floor, found)
        assert not len(missing), (floor, missing[:5], exact[missing[:5]])
        pruned += 1 - len(found) / len(vectors)
    if floor >= 0.22:  # the bound is tight: the candidates are the hits and a thin shell, not the whole base
        assert pruned / 42 > 0.5


def test_the_bound_is_tight_on_the_edge_of_int16() -> None:
    """A query and a vector whose every component sits at the largest code score 1.0: were a pair of products
    saturated (AVX2's ``vpmaddubsw``), the sketch's score would be far off and the bound would miss it."""
    d = 384
    x = _unit(np.ones((1, d)))
    x = np.vstack([x, -x, _unit(np.random.default_rng(0).normal(size=(100, d)))])
    sketch = Int8Sketch.of(x)
    assert sketch.candidates(x[0], 0.999).tolist() == [0]
    assert sketch.candidates(x[1], 0.999).tolist() == [1]
    assert sketch.candidates(x[0], -0.999).tolist() == list(range(len(x)))[:1] + list(range(2, len(x)))


def test_chunks_and_the_memory_they_report(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = _vectors(1000, 16, seed=3)
    whole = Int8Sketch.of(vectors)
    monkeypatch.setattr("search.vectors.sketch.CHUNK_ROWS", 128)
    chunked = Int8Sketch.of(vectors)
    for q in _queries(vectors, 10, seed=4):
        assert chunked.candidates(q, 0.3).tolist() == whole.candidates(q, 0.3).tolist()
    assert whole.nbytes == 1000 * (16 + 12)


def _loaded(vectors: np.ndarray, path: Path) -> FaissVectorStore:
    ids = np.arange(len(vectors), dtype=np.int64) * 7 + 3
    FaissVectorStore.build(vectors.shape[1], "IDMap2,Flat", [(ids, vectors)]).save(path)
    return FaissVectorStore.load(path, "IDMap2,Flat")


def _faiss_range(store: FaissVectorStore, q: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """The store's range search as it is without a sketch."""
    saved = store._sketch
    store._sketch = None
    try:
        return store.range(q, floor)
    finally:
        store._sketch = saved


def _same_matches(got: Matches, want: Matches) -> None:
    assert sorted(got.ids.tolist()) == sorted(want.ids.tolist())
    assert got.best_ids.tolist() == want.best_ids.tolist()
    assert got.best_scores.tobytes() == want.best_scores.tobytes()


def test_the_best_of_many_hits_breaks_ties_by_id_whatever_their_order() -> None:
    rng = np.random.default_rng(9)
    for _ in range(200):
        n = int(rng.integers(0, 60))
        scores = rng.choice(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32), n)  # many ties
        ids = rng.permutation(1000)[:n].astype(np.int64)
        for best in (0, 1, 5, n, n + 3):
            order = np.lexsort((ids, -scores))[:best]
            got = best_of(scores, ids, best)
            assert got[1].tolist() == ids[order].tolist() and got[0].tolist() == scores[order].tolist()


def test_a_mapped_exact_base_answers_range_searches_as_faiss_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faiss_backend, "SKETCH_FROM", 1000)
    vectors = _vectors(4000, 64, seed=5)
    store = _loaded(vectors, tmp_path / "p.faiss")
    assert store.mapped
    queries = np.vstack([_queries(vectors, 30, seed=6), vectors[40:41]])
    before = store.memory_bytes()
    first = store.range(queries[0], 0.22)  # scanned in float32; starts the sketch
    assert store.wait_for_sketch()
    assert store.memory_bytes() >= before + 4000 * (64 + 12)

    def same(floor: float) -> None:
        for q in queries:
            got, want = store.range(q, floor), _faiss_range(store, q, floor)
            assert got[1].tolist() == want[1].tolist()
            assert got[0].tobytes() == want[0].tobytes()  # the very floats FAISS gives
            assert len(want[1])  # the queries are near vectors: never an empty answer
            for best in (0, 1, 7, 200, len(want[1]), len(want[1]) + 5):
                _same_matches(store.matches(q, floor, best), matches_of(*want, best))

    for floor in (0.22, 0.5, 0.9):
        same(floor)
    # reconstruct gathers the same floats FAISS copies, and an id not held is still a KeyError
    keys = np.array([3, 7 * 3999 + 3, 7 * 17 + 3, 3], dtype=np.int64)
    assert store._sketch is not None and store._sketch.gather(keys) is not None
    assert store.reconstruct_batch(keys).tobytes() == store._index.reconstruct_batch(keys).tobytes()
    with pytest.raises(KeyError):
        store.reconstruct_batch(np.array([3, 4], dtype=np.int64))
    assert store.range(queries[0], 0.22)[1].tolist() == first[1].tolist()
    # removed and replaced vectors (the layer's ``gone``) are left out, added ones scored beside the base
    store.remove(np.arange(0, 4000, 3, dtype=np.int64) * 7 + 3)
    store.add(np.array([5 * 7 + 3, 10**6], dtype=np.int64), vectors[:2] * 0.5 + vectors[6:8] * 0.5)
    assert store.wait_for_sketch()  # the same base: still served
    same(0.22)
    store.save(tmp_path / "p2.faiss")
    store.add(np.array([10**6 + 1], dtype=np.int64), vectors[9:10])  # now the base just written is mapped
    assert not store.wait_for_sketch() or store._sketch is None  # a new base: its sketch is built anew
    store.range(queries[0], 0.22)
    assert store.wait_for_sketch()
    same(0.22)


def test_a_base_whose_ids_are_not_in_row_order_is_read_through_faiss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faiss_backend, "SKETCH_FROM", 100)
    vectors = _vectors(500, 16, seed=10)
    ids = np.arange(500, dtype=np.int64)[::-1].copy()
    FaissVectorStore.build(16, "IDMap2,Flat", [(ids, vectors)]).save(tmp_path / "r.faiss")
    store = FaissVectorStore.load(tmp_path / "r.faiss", "IDMap2,Flat")
    store.range(vectors[0], 0.3)
    assert store.wait_for_sketch() and store._sketch is not None and not store._sketch.ascending
    keys = np.array([0, 499, 250], dtype=np.int64)
    assert store._sketch.gather(keys) is None
    assert store.reconstruct_batch(keys).tobytes() == vectors[[499, 0, 249]].tobytes()
    _same_matches(store.matches(vectors[7], 0.3, 20), matches_of(*_faiss_range(store, vectors[7], 0.3), 20))


def test_small_bases_and_approximate_indexes_keep_no_sketch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = _vectors(2000, 16, seed=7)
    store = _loaded(vectors[:500], tmp_path / "small.faiss")
    store.range(vectors[10], 0.2)
    assert store._sketching == (store._index, None) and not store.wait_for_sketch()  # decided once: no build
    monkeypatch.setattr(faiss_backend, "_flat_ip", lambda index: pytest.fail("asked again at a later search"))
    store.range(vectors[10], 0.2)
    monkeypatch.setattr(faiss_backend, "SKETCH_FROM", 1)
    ids = np.arange(len(vectors), dtype=np.int64)
    FaissVectorStore.build(16, "IVF16,Flat", [(ids, vectors)]).save(tmp_path / "ivf.faiss")
    ivf = FaissVectorStore.load(tmp_path / "ivf.faiss", "IVF16,Flat")
    ivf.range(vectors[10], 0.2)
    assert ivf._sketching == (ivf._index, None)


def test_a_service_pages_alike_with_and_without_the_sketch(
    corpus_index: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real model's vectors, whole pages (dense and hybrid: ranks, scores, passages, highlights, totals)."""
    monkeypatch.setattr(faiss_backend, "SKETCH_FROM", 1)
    svc = make_service(corpus_index, embedder)
    questions = ["why are markets falling", "a new vaccine trial", "who won the final", "storm damage on the coast"]

    def pages() -> list[Any]:
        out = []
        for q in questions:
            for mode in ("dense", "hybrid"):
                page = svc.search(q, k=5, mode=mode)
                out.append((page.total, [(r.article.id, r.scores, r.passages) for r in page.results]))
        return out

    unsketched = pages()
    store = svc.index.passages
    assert isinstance(store, FaissVectorStore) and store.wait_for_sketch()
    assert pages() == unsketched


def test_a_sketch_that_cannot_be_built_leaves_faiss_scanning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(faiss_backend, "SKETCH_FROM", 100)

    def fail(vectors: np.ndarray) -> Int8Sketch:
        raise MemoryError("no room")

    monkeypatch.setattr(Int8Sketch, "of", staticmethod(fail))
    vectors = _vectors(500, 16, seed=11)
    store = _loaded(vectors, tmp_path / "f.faiss")
    with caplog.at_level("WARNING"):
        first = store.range(vectors[7], 0.3)
        assert not store.wait_for_sketch()
    assert "no int8 sketch" in caplog.text and "MemoryError" in caplog.text
    again = store.range(vectors[7], 0.3)  # not retried at every search: one build per base
    assert again[1].tolist() == first[1].tolist() and len(first[1])
    assert store._sketching is not None and store._sketch is None
