"""The in-memory BM25 gives FTS5's scores, survives updates without re-tokenizing, and caches by generation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.update import add_articles, delete_articles
from search.models import Article
from search.service import SearchService
from search.settings import Settings
from search.storage.index import check_index, open_index
from search.text.bm25 import LEXICAL_STATE, LexicalPostings, MemoryBM25, Postings, load_postings
from search.text.fts import Fts5Lexical

QUERIES = [
    "interest rates inflation",
    "U.S. carmaker chips shortage",
    "striker goals derby",
    "the striker scored goals",
    "battery electric cars cheaper",
    "battery chemistry cheaper electric cars",
    "Ünïcödé café",
    "Ünïcödé café résumé",
    '"quoted" AND NEAR(x) OR *',
]


def assert_same_as_fts5(memory: MemoryBM25, fts: Fts5Lexical, query: str) -> None:
    for search in ("search_articles", "search_passages"):
        want = dict(getattr(fts, search)(query, 1000))
        got = dict(getattr(memory, search)(query, 1000))
        assert set(got) == set(want), (search, query)
        for key, score in want.items():
            assert got[key] == pytest.approx(score, rel=1e-5), (search, query, key)


@pytest.mark.parametrize("title_weight", [1.0, 2.5])
def test_scores_equal_fts5_bm25(service: SearchService, title_weight: float) -> None:
    memory = MemoryBM25(service.index, title_weight)
    fts = Fts5Lexical(service.index.sqlite, title_weight)
    for query in QUERIES:
        assert_same_as_fts5(memory, fts, query)


def test_top_k_given_rows_and_all_matches_agree(service: SearchService) -> None:
    memory = MemoryBM25(service.index)
    query = "central bank interest rates"
    aids = [int(a) for (a,) in service.index.sqlite.connection().execute("SELECT aid FROM articles")]
    every = memory.score_articles(query, aids)
    top = memory.search_articles(query, 2)
    assert [a for a, _ in top] == sorted(every, key=lambda a: (-every[a], a))[:2]
    assert memory.score_articles(query, [a for a, _ in top] + [10**9]) == dict(top)  # unknown keys are left out
    passages = memory.search_passages(query, 3)
    assert memory.score_passages(query, [p for p, _ in passages]) == pytest.approx(dict(passages))
    assert memory.search_articles("zzzz-no-such-word", 5) == []
    assert memory.search_articles("", 5) == [] and memory.score_articles("   ", aids) == {}


def test_allowed_articles_compete_alone_for_the_top_k(service: SearchService) -> None:
    memory = MemoryBM25(service.index)
    query = "central bank interest rates"
    every = dict(memory.search_articles(query, 1000))
    assert len(every) >= 3
    ranked = sorted(every, key=lambda a: (-every[a], a))
    allowed = np.asarray(sorted(ranked[1:]), dtype=np.int64)  # the best article filtered out
    got = memory.search_articles(query, 2, allowed)
    assert [a for a, _ in got] == ranked[1:3]
    assert memory.search_articles(query, 5, np.zeros(0, dtype=np.int64)) == []


def test_postings_without_and_extended_equal_a_rebuild() -> None:
    """Synthetic rows: removing and appending rows gives the postings a full rebuild of the result would."""
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(40)]

    def text() -> str:
        return " ".join(rng.choice(words, size=int(rng.integers(1, 12))))

    rows = [(i, (text(), text())) for i in range(1, 60)]
    base = Postings.build(rows, 2)
    removed = {3, 10, 11, 58, 59}
    extra = [(i, (text(), text() + " brandnew")) for i in range(60, 70)]
    updated = base.without(removed).extended(extra)
    expected = Postings.build([r for r in rows if r[0] not in removed] + extra, 2)
    np.testing.assert_array_equal(updated.rowids, expected.rowids)
    for query in (["w1", "w2"], ["brandnew"], ["w5", "w5", "w39"], ["missing"]):
        np.testing.assert_allclose(updated.scores(query, (2.0, 1.0)), expected.scores(query, (2.0, 1.0)), rtol=1e-6)
    with pytest.raises(ValueError):
        updated.extended([(5, ("w1", "w2"))])  # a rowid below the present ones cannot be appended


@pytest.fixture
def writable(tmp_path: Path, corpus_index: Path, embedder: Any) -> SearchService:
    copy = tmp_path / "copy"
    shutil.copytree(corpus_index, copy, symlinks=False)
    return SearchService(open_index(copy, embedder), embedder, Settings(index_dir=copy))


def test_updates_keep_postings_equal_to_fts5_and_to_a_rebuild(writable: SearchService, embedder: Any) -> None:
    index = writable.index
    delete_articles(index, ["business/002"])
    new = Article(
        id="science/042",
        title="Astronomers spot a comet heading for the inner solar system",
        paragraphs=("The icy comet will pass closest to the Sun in March and may be visible to the naked eye.",),
    )
    add_articles(index, [new], embedder, writable.settings)
    assert index.lexical.generation == index.store.generation()
    fts = Fts5Lexical(index.sqlite)
    for query in [*QUERIES, "comet sun naked eye", "semiconductor chips"]:
        assert_same_as_fts5(writable.lexical, fts, query)
    assert writable.lexical.search_passages("semiconductor", 5) == []
    rebuilt = LexicalPostings.build(index.sqlite)
    np.testing.assert_array_equal(index.lexical.passages.rowids, rebuilt.passages.rowids)
    assert check_index(index.writable[0]) == []
    # the saved cache is the updated one: a fresh open loads it instead of rebuilding
    reopened = load_postings(*index.writable)
    np.testing.assert_array_equal(reopened.articles.rowids, rebuilt.articles.rowids)


def test_stale_or_damaged_cache_is_rebuilt(writable: SearchService) -> None:
    directory, store = writable.index.writable
    (directory / LEXICAL_STATE).write_text('{"generation": -1, "version": 1}', encoding="utf-8")
    assert load_postings(directory, store).passages.rows == store.counts()[1]
    assert check_index(directory) == []  # load_postings saved a fresh cache
    (directory / "lexical-passages.npz").write_bytes(b"not a numpy file")
    assert "unreadable" in " ".join(check_index(directory))
    assert load_postings(directory, store).passages.rows == store.counts()[1]
    assert check_index(directory) == []
