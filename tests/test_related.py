"""RelatedFinder mechanics on synthetic vectors, against a brute-force numpy oracle; its per-generation cache.

Each test runs on both vector stores: FAISS in memory and a Milvus Lite collection."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from search.news.related import RelatedFinder
from search.vectors.base import VectorStore
from search.vectors.faiss import FaissVectorStore
from search.vectors.milvus.vectors import MilvusConnection, MilvusVectorStore
from tests.conftest import BACKENDS

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
