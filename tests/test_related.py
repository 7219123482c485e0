"""RelatedFinder mechanics on synthetic vectors, against a brute-force numpy oracle; its per-generation cache.

Each test runs on both vector stores: FAISS in memory and a Milvus Lite collection."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search.news.neighbours import NeighbourConfig, NeighbourGraph
from search.news.related import RelatedFinder
from search.text.bm25 import Postings
from search.vectors.base import VectorStore
from search.vectors.faiss import FaissVectorStore
from search.vectors.milvus.vectors import MilvusConnection, MilvusVectorStore
from tests.conftest import BACKENDS
from tests.test_neighbours import synthetic

NewStore = Callable[[int], VectorStore]


@pytest.fixture(params=BACKENDS)
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NewStore]:
    """An empty article-vector store of a given dimension on the backend under test."""
    if request.param == "faiss":
        yield FaissVectorStore
        return
    connection = MilvusConnection("related.db", tmp_path)
    yield lambda dim: MilvusVectorStore.create(connection, "articles", dim)
    connection.close()


class FakeStore:
    """The two store calls RelatedFinder makes: content hashes (all distinct here) and the write generation."""

    def __init__(self) -> None:
        self.gen = 1
        self.hash_calls = 0

    def content_hashes(self, aids: Iterable[int]) -> dict[int, str]:
        self.hash_calls += 1
        return {a: f"h{a}" for a in aids}

    def generation(self) -> int:
        return self.gen


def _finder(
    new_store: NewStore, n: int = 200, dim: int = 16
) -> tuple[RelatedFinder, FakeStore, VectorStore, np.ndarray]:
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = FakeStore()
    articles = new_store(dim)
    articles.add(np.arange(n, dtype=np.int64), vecs)
    return RelatedFinder(store, articles, duplicate_threshold=0.999), store, articles, vecs  # type: ignore[arg-type]


def _oracle(vecs: np.ndarray, aid: int, k: int) -> list[int]:
    scores = vecs @ vecs[aid]
    order = [int(i) for i in np.argsort(-scores, kind="stable") if i != aid]
    return order[:k]


def test_nearest_matches_brute_force(new_store: NewStore) -> None:
    finder, _, _, vecs = _finder(new_store)
    for aid, got in zip([0, 5, 17], finder.nearest([0, 5, 17], 5), strict=True):
        assert [a for a, _ in got] == _oracle(vecs, aid, 5)


def test_cached_answers_equal_fresh_ones_and_skip_the_search(new_store: NewStore) -> None:
    finder, store, _, _ = _finder(new_store)
    first = finder.nearest([3, 4], 5)
    calls = store.hash_calls
    again = finder.nearest([4, 3], 5)
    assert again == [first[1], first[0]]
    assert store.hash_calls == calls  # served from the cache: no search, no hash lookups
    # another k is its own entry, computed fresh (scores to float32 rounding: Milvus scores a batch of queries as one
    # matrix product, a single query as a vector product)
    fresh = finder.nearest([3], 2)[0]
    assert [a for a, _ in fresh] == [a for a, _ in first[0][:2]]
    assert [s for _, s in fresh] == pytest.approx([s for _, s in first[0][:2]], abs=1e-6)


def test_a_new_generation_drops_the_cache(new_store: NewStore) -> None:
    finder, store, articles, vecs = _finder(new_store)
    before = finder.nearest([0], 3)[0]
    nearest = before[0][0]
    articles.remove(np.asarray([nearest], dtype=np.int64))  # a write: the store's generation moves with it
    store.gen += 1
    after = finder.nearest([0], 3)[0]
    assert nearest not in [a for a, _ in after]
    assert [a for a, _ in after] == [a for a in _oracle(vecs, 0, 4) if a != nearest][:3]


class CountingStore(FaissVectorStore):
    """FAISS in memory, counting the searches (scans) made through it."""

    scans = 0

    def search(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        self.scans += 1
        return super().search(*args, **kwargs)


def _profiled(n: int = 300, k: int = 20) -> tuple[RelatedFinder, FakeStore, CountingStore, NeighbourGraph, np.ndarray]:
    """A finder over synthetic articles (keys 1..n) with their shared-neighbour graph, re-ranking from it always."""
    keys, vecs, rows = synthetic(n, seed=3)
    graph = NeighbourGraph.build(keys, vecs, Postings.build(rows, 2), generation=1, config=NeighbourConfig(k=k))
    articles = CountingStore(vecs.shape[1])
    articles.add(keys, vecs)
    store = FakeStore()
    finder = RelatedFinder(store, articles, 0.999, graph=lambda: graph, graph_from=0)  # type: ignore[arg-type]
    return finder, store, articles, graph, vecs


def test_from_profiles_related_stories_are_the_profile_neighbours_ranked_by_cosine() -> None:
    finder, _, articles, graph, vecs = _profiled()
    for key in (1, 50, 222):
        got = finder.nearest([key], 5)[0]
        candidates = graph.neighbours(key)
        assert len(candidates) == 20 and key not in candidates
        cosines = vecs[candidates - 1] @ vecs[key - 1]
        oracle = [int(candidates[i]) for i in np.argsort(-cosines, kind="stable")[:5]]
        assert [a for a, _ in got] == oracle
        assert [s for _, s in got] == pytest.approx(sorted(cosines.tolist(), reverse=True)[:5], abs=1e-5)
    assert articles.scans == 0  # no article vector was scanned (what they keep of the scan: bench/archive.py)


def test_from_profiles_falls_back_to_the_scan_where_the_graph_cannot_answer() -> None:
    finder, store, articles, graph, vecs = _profiled()
    exact = [a + 1 for a in _oracle(vecs, 9, 5)]
    candidates = graph.neighbours(10)
    by_profile = [int(a) for a in candidates[np.argsort(-(vecs[candidates - 1] @ vecs[9]), kind="stable")]]
    assert [a for a, _ in finder.nearest([10], 5)[0]] == by_profile[:5]
    gone = by_profile[0]
    articles.remove(np.asarray([gone], dtype=np.int64))
    store.gen = 2  # a write the graph does not have yet (another process's, followed): its deleted neighbour skipped
    assert [a for a, _ in finder.nearest([10], 5)[0]] == by_profile[1:6]
    assert articles.scans == 0  # the profiles answered both times
    articles.add(np.asarray([gone], dtype=np.int64), vecs[gone - 1 : gone])
    store.gen = 1
    wide = RelatedFinder(store, articles, 0.999, graph=lambda: graph, graph_from=301)  # type: ignore[arg-type]
    assert [a for a, _ in wide.nearest([10], 5)[0]] == exact  # fewer articles than the rule's threshold: a scan
    assert articles.scans == 1
    wider = [a + 1 for a in _oracle(vecs, 9, 25)]
    assert [a for a, _ in finder.nearest([10], 25)[0]] == wider  # more than its profile holds: the scan
    assert articles.scans == 2
    assert [a for a, _ in finder.nearest([10], 3, np.arange(1, 200, dtype=np.int64))[0]] == [
        a for a in exact if a < 200
    ][:3]  # a filter: the scan over the allowed articles
