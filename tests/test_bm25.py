"""The in-memory BM25 gives FTS5's scores, survives updates without re-tokenizing, and caches by generation."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.update import add_articles, delete_articles
from search.models import Article
from search.service import SearchService
from search.settings import Settings
from search.storage.index import check_index, open_index
from search.text import bm25
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
    base = json.loads((directory / LEXICAL_STATE).read_text(encoding="utf-8"))["tables"]["passages"]["base"]
    (directory / f"{base}.docs.npy").write_bytes(b"not a numpy file")
    assert "BM25 postings cache is damaged" in " ".join(check_index(directory))
    assert load_postings(directory, store).passages.rows == store.counts()[1]
    assert check_index(directory) == []


# -- top-k pruning: the pruned top k is the exhaustive one ---------------------------------------------------------


def zipf_postings(seed: int, rows: int = 3000, vocabulary: int = 400, columns: int = 2) -> Postings:
    """Rows whose words follow a Zipf law (a few words in most rows, most words in few), with some rows repeated
    word for word (equal scores, so ties cross the k-th place) and some empty ones."""
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, vocabulary + 1) ** 1.1
    p /= p.sum()

    def text(n: int) -> str:
        return " ".join(f"w{i}" for i in rng.choice(vocabulary, size=n, p=p))

    built: list[tuple[int, tuple[str, ...]]] = []
    for i in range(rows):
        if built and rng.random() < 0.05:
            texts = built[int(rng.integers(len(built)))][1]  # a duplicate row
        else:
            texts = tuple(text(int(rng.integers(0, 40 if c else 8))) for c in range(columns))
        built.append((3 * i + 1, texts))
    return Postings.build(built, columns)


def random_queries(seed: int, n: int, vocabulary: int = 400) -> Iterator[list[str]]:
    """Queries of 1 to 8 terms: very common ones, rare ones, repeated ones, and words no row holds."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        size = int(rng.integers(1, 9))
        top = 12 if rng.random() < 0.5 else vocabulary + 20  # the commonest words only, or any (some unknown)
        ids = rng.integers(0, top, size=size)
        query = [f"w{i}" for i in ids]
        if rng.random() < 0.3:
            query += query[: int(rng.integers(1, len(query) + 1))]  # repeated terms add again, as in FTS5
        yield query


@pytest.fixture(params=["default", "forced"])
def pruning(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``forced``: small blocks, a threshold for every query and block skipping on every term, so that small
    corpora take every pruning step that 1.1M passages take."""
    if request.param == "forced":
        monkeypatch.setattr(bm25, "BLOCK", 8)
        monkeypatch.setattr(bm25, "_PRUNE_MIN_POSTINGS", 0)
        monkeypatch.setattr(bm25, "_PRUNE_MIN_ROWS", 0)
        monkeypatch.setattr(bm25, "_SKIP_MIN_BLOCKS", 2)
    return str(request.param)


def mismatches(seed: int, queries: int = 60) -> list[str]:
    """Queries (with k and filter) whose pruned top k differs from the exhaustive one in rows, scores or order."""
    postings = zipf_postings(seed)
    rng = np.random.default_rng(seed + 1000)
    weights = (float(rng.choice([1.0, 2.5, 0.5])), 1.0)
    found = []
    for query in random_queries(seed, queries):
        k = int(rng.choice([1, 2, 5, 10, 37, 100, 1000, 10_000]))
        allowed = None
        if rng.random() < 0.4:
            allowed = rng.random(postings.rows) < float(rng.choice([0.0, 0.002, 0.05, 0.5, 1.0]))
        want_rows, want_scores = postings.top_exhaustive(query, weights, k, allowed)
        got = postings.top(query, weights, k, allowed)
        if not (np.array_equal(got.rows, want_rows) and np.array_equal(got.scores, want_scores)):
            found.append(f"{query} k={k} filtered={allowed is not None}")
    return found


@pytest.mark.parametrize("seed", range(6))
def test_pruned_top_k_is_the_exhaustive_top_k(seed: int, pruning: str) -> None:
    assert mismatches(seed) == []


def test_the_comparison_catches_a_bound_that_is_too_low(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property test has teeth: with every bound halved (a wrong pruning), pruned and exhaustive differ."""
    monkeypatch.setattr(bm25, "BLOCK", 8)
    monkeypatch.setattr(bm25, "_PRUNE_MIN_POSTINGS", 0)
    monkeypatch.setattr(bm25, "_PRUNE_MIN_ROWS", 0)
    monkeypatch.setattr(bm25, "_SKIP_MIN_BLOCKS", 2)
    monkeypatch.setattr(bm25, "_SLACK", 0.5)
    assert sum(len(mismatches(seed)) for seed in range(3)) > 0


def test_exhaustive_top_k_ranks_by_score_then_rowid() -> None:
    """The oracle itself, against a plain sort of every row's score: ties at the k-th place go to the lower row."""
    postings = zipf_postings(11)
    for query in random_queries(11, 40):
        scores = postings.scores(query, (1.0, 1.0))
        ranked = sorted((i for i in range(postings.rows) if scores[i] > 0), key=lambda i: (-scores[i], i))
        for k in (1, 3, 50, 5000):
            rows, got = postings.top_exhaustive(query, (1.0, 1.0), k)
            assert rows.tolist() == ranked[:k]
            np.testing.assert_array_equal(got, scores[ranked[:k]])


def test_scores_of_given_rows_are_the_exhaustive_scores_bit_for_bit() -> None:
    postings = zipf_postings(5)
    rng = np.random.default_rng(5)
    for query in random_queries(5, 40):
        every = postings.scores(query, (2.0, 1.0))
        rows = rng.integers(0, postings.rows, size=int(rng.integers(0, 300)))  # any order, repeats allowed
        np.testing.assert_array_equal(postings.score_rows(query, (2.0, 1.0), rows), every[rows])


def test_pruning_scores_fewer_postings_of_common_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rare word beside very common ones: the pruned search scores a fraction of the common words' postings."""
    monkeypatch.setattr(bm25, "_PRUNE_MIN_ROWS", 0)
    rows = [(i + 1, (f"w0 w1 w2 filler{i % 50}" + (" rare" if i % 97 == 0 else ""),)) for i in range(60_000)]
    postings = Postings.build(rows, 1)
    query = ["w0", "w1", "w2", "rare"]
    top = postings.top(query, (1.0,), 10)
    want_rows, want_scores = postings.top_exhaustive(query, (1.0,), 10)
    np.testing.assert_array_equal(top.rows, want_rows)
    np.testing.assert_array_equal(top.scores, want_scores)
    assert top.scored < 0.1 * 3 * 60_000


def test_memory_bm25_answers_as_the_exhaustive_scorer(pruning: str) -> None:
    """The service's lexical index: matches, top k with and without a filter of article keys, given rows."""
    postings = zipf_postings(3)
    rng = np.random.default_rng(3)

    @dataclass
    class Holder:
        lexical: LexicalPostings

    memory = MemoryBM25(Holder(LexicalPostings(passages=postings, articles=postings, generation=0)), prune=True)
    for query in random_queries(3, 30):
        text = " ".join(query)
        phrases = bm25._phrases(text)  # as the query's text is read: tokenized, stemmed, each term once
        matched = postings.rowids[postings.scores(phrases, (1.0, 1.0)) > 0]
        np.testing.assert_array_equal(memory.matching_articles(text), matched)
        got = memory.search_articles(text, 7)
        rows, scores = postings.top_exhaustive(phrases, (1.0, 1.0), 7)
        assert got == [(int(postings.rowids[r]), float(s)) for r, s in zip(rows, scores, strict=True)]
        mask = rng.random(postings.rows) < 0.3
        got = memory.search_articles(text, 12, postings.rowids[mask])
        rows, scores = postings.top_exhaustive(phrases, (1.0, 1.0), 12, mask)
        assert got == [(int(postings.rowids[r]), float(s)) for r, s in zip(rows, scores, strict=True)]
        keys = [int(k) for k in postings.rowids[rng.integers(0, postings.rows, size=50)]] + [0, 10**9]
        every = postings.scores(phrases, (1.0, 1.0))
        want = {int(postings.rowids[r]): float(every[r]) for r in postings.positions(keys)[1] if every[r] > 0}
        assert memory.score_articles(text, keys) == want


def test_idf_keeps_fts5s_small_positive_values() -> None:
    # FTS5's bm25(): idf = log((N - n + 0.5) / (n + 0.5)), and 1e-6 only where that is not positive
    rows, df = 20_000_001, 10_000_000
    assert bm25.idf(rows, df) == math.log((rows - df + 0.5) / (df + 0.5)) < 1e-6
    assert bm25.idf(10, 5) == bm25.idf(10, 9) == 1e-6


def test_pruned_top_10_is_the_exhaustive_one_on_the_bundled_corpus(service: SearchService, pruning: str) -> None:
    """Real text (the fixture corpus, its headlines weighted): ``forced`` makes its small tables take every pruning
    step; the pruned top 10 has the exhaustive one's keys, scores and order."""
    pruned = MemoryBM25(service.index, 2.5, prune=True)
    exhaustive = MemoryBM25(service.index, 2.5, prune=False)
    for query in [*QUERIES, "chips", "central bank rates rates", "the"]:
        for search in ("search_articles", "search_passages"):
            assert getattr(pruned, search)(query, 10) == getattr(exhaustive, search)(query, 10), (search, query)
