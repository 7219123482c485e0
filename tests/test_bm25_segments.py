"""BM25 postings as a base, tombstones and a delta (search/text/bm25.py ``Postings``), on disk as a memory-mapped base
and appended segment files: every answer is the single rebuilt segment's, bit for bit, and the files survive a crash
at any moment."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.update import add_articles, delete_articles, optimize
from search.models import Article
from search.settings import Settings
from search.storage.index import check_index, open_index
from search.text import bm25, unicode61
from search.text.bm25 import LEXICAL_STATE, LexicalPostings, MemoryBM25, Postings, Segment, load_postings

Rows = list[tuple[int, tuple[str, ...]]]


class Corpus:
    """Random Zipfian rows (a few very common words, many rare ones, repeated rows, empty rows) under random adds and
    deletes, with rowids as SQLite gives them: a new row takes the largest live rowid plus one, so the rowid of a
    deleted last row is given again."""

    def __init__(self, seed: int, columns: int, vocabulary: int = 300) -> None:
        self.rng = np.random.default_rng(seed)
        self.columns = columns
        p = 1 / np.arange(1, vocabulary + 1) ** 1.1
        self.p = p / p.sum()
        self.vocabulary = vocabulary
        self.live: dict[int, tuple[str, ...]] = {}
        self.fresh = 0  # words no earlier row held, for new vocabulary in deltas

    def text(self, n: int) -> str:
        words = [f"w{i}" for i in self.rng.choice(self.vocabulary, size=n, p=self.p)]
        if self.rng.random() < 0.2:
            self.fresh += 1
            words.append(f"new{self.fresh}")
        return " ".join(words)

    def rows(self, n: int) -> Rows:
        start = max(self.live, default=0) + 1
        out: Rows = []
        for i in range(n):
            if self.live and self.rng.random() < 0.05:
                texts = self.live[int(self.rng.choice(list(self.live)))]  # a duplicate row: tied scores
            else:
                texts = tuple(self.text(int(self.rng.integers(0, 30 if c else 8))) for c in range(self.columns))
            out.append((start + i, texts))
        self.live.update(out)
        return out

    def delete(self, share: float) -> list[int]:
        keys = sorted(self.live)
        n = int(self.rng.binomial(len(keys), share))
        gone = [int(k) for k in self.rng.choice(keys, size=n, replace=False)] if n else []
        if keys and self.rng.random() < 0.3:
            gone.append(keys[-1])  # the last row: its rowid is given again to the next added row
        for key in gone:
            self.live.pop(key, None)
        return [*gone, 10**9]  # an unknown rowid is ignored

    def oracle(self) -> Segment:
        return Segment.build(sorted(self.live.items()), self.columns)

    def queries(self, n: int) -> Iterator[list[str]]:
        for _ in range(n):
            size = int(self.rng.integers(1, 7))
            top = 10 if self.rng.random() < 0.4 else self.vocabulary + 20
            query = [f"w{i}" for i in self.rng.integers(0, top, size=size)]
            if self.rng.random() < 0.3:
                query += query[:1]  # a repeated term adds again
            if self.fresh and self.rng.random() < 0.3:
                query.append(f"new{int(self.rng.integers(1, self.fresh + 1))}")
            yield query


@pytest.fixture(params=["exhaustive", "pruned"])
def pruning(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Small blocks and no size floors, so that the block-max path runs on these small tables."""
    if request.param == "pruned":
        monkeypatch.setattr(bm25, "BLOCK", 8)
        monkeypatch.setattr(bm25, "_PRUNE_MIN_POSTINGS", 0)
        monkeypatch.setattr(bm25, "_PRUNE_MIN_ROWS", 0)
        monkeypatch.setattr(bm25, "_SKIP_MIN_BLOCKS", 2)
    return bool(request.param == "pruned")


def assert_same(live: Postings, oracle: Segment, corpus: Corpus, prune: bool) -> None:
    """Every scorer of ``live`` against the exhaustive scorer of the one rebuilt segment, bit for bit."""
    assert live.rows == oracle.rows
    np.testing.assert_array_equal(live.rowids, oracle.rowids)
    weights = (2.5, 1.0)[: corpus.columns]
    rng = corpus.rng
    for query in corpus.queries(12):
        want = oracle.scores(query, weights)
        np.testing.assert_array_equal(live.scores(query, weights), want)
        rows = rng.choice(max(oracle.rows, 1), size=min(oracle.rows, 20), replace=False)
        np.testing.assert_array_equal(live.score_rows(query, weights, rows), want[rows])
        matches = int(np.count_nonzero(want > 0))
        for k in (1, 3, 10, matches, matches + 5):
            allowed = rng.random(oracle.rows) < rng.choice([0.05, 0.5]) if rng.random() < 0.4 else None
            got = live.top(query, weights, k, allowed, prune=prune)
            rows_want, scores_want = oracle.top_exhaustive(query, weights, k, allowed)
            np.testing.assert_array_equal(live.rowids_of(got.rows), oracle.rowids[rows_want])
            np.testing.assert_array_equal(got.scores, scores_want)
        np.testing.assert_array_equal(
            live.holding(query),
            np.isin(
                np.arange(oracle.rows),
                oracle.docs[
                    np.concatenate(
                        [np.arange(oracle.indptr[t], oracle.indptr[t + 1]) for t in oracle._terms(query)[0]]
                        or [np.zeros(0, np.int64)]
                    )
                ],
            ),
        )
        for term in query:
            t = oracle.vocab.get(term)
            df = 0 if t is None else int(oracle.indptr[t + 1] - oracle.indptr[t])
            assert live.term_idf(term) == (bm25.idf(oracle.rows, df) if df else None)


@pytest.mark.parametrize("seed", range(4))
def test_base_tombstones_and_delta_answer_as_one_rebuilt_segment(seed: int, pruning: bool) -> None:
    corpus = Corpus(seed, columns=2 if seed % 2 else 1)
    live = Postings.build(corpus.rows(300), corpus.columns)
    for step in range(8):
        live = live.without(corpus.delete(0.05 if step % 3 else 0.2))
        live = live.extended(corpus.rows(int(corpus.rng.integers(0, 25))))
        assert len(live.dead) or step == 0 or live.delta.rows  # the base itself is never rewritten
        assert_same(live, corpus.oracle(), corpus, pruning)
        merged = live.merged_with_forward()
        assert_same(Postings(merged), corpus.oracle(), corpus, pruning)  # what a merge writes answers the same
        ptr, terms = merged.forward()  # carried over from the base and the delta: each row's terms, as a sort gives
        plain = Segment(merged.rowids, merged.lengths, merged.vocab, merged.indptr, merged.docs, merged.tfs).forward()
        np.testing.assert_array_equal(ptr, plain[0])
        for row in range(merged.rows):
            assert sorted(terms[ptr[row] : ptr[row + 1]]) == sorted(plain[1][plain[0][row] : plain[0][row + 1]])


def test_statistics_are_exact_over_live_rows() -> None:
    """Deleting every row that holds a term takes it out of the document frequencies (FTS5 counts live rows)."""
    live = Postings.build([(1, ("alpha beta",)), (2, ("alpha",)), (3, ("gamma",))], 1)
    live = live.without([1, 2]).extended([(4, ("alpha alpha delta",))])
    t = live.vocab["alpha"]
    assert (live.rows, live.df(t), live.df(live.vocab["beta"]), live.total) == (2, 1, 0, 4.0)
    oracle = Segment.build([(3, ("gamma",)), (4, ("alpha alpha delta",))], 1)
    np.testing.assert_array_equal(live.scores(["alpha", "gamma"], (1.0,)), oracle.scores(["alpha", "gamma"], (1.0,)))


def test_memory_bm25_over_segments_answers_as_over_a_rebuild() -> None:
    corpus_a, corpus_p = Corpus(11, 2), Corpus(12, 1)
    arts = Postings.build(corpus_a.rows(200), 2)
    pas = Postings.build(corpus_p.rows(400), 1)
    for _ in range(3):
        arts = arts.without(corpus_a.delete(0.1)).extended(corpus_a.rows(15))
        pas = pas.without(corpus_p.delete(0.1)).extended(corpus_p.rows(30))

    class Holder:
        def __init__(self, lexical: LexicalPostings) -> None:
            self.lexical = lexical

    live = MemoryBM25(Holder(LexicalPostings(pas, arts, 1)), title_weight=2.0)
    rebuilt = MemoryBM25(
        Holder(LexicalPostings(Postings(corpus_p.oracle()), Postings(corpus_a.oracle()), 1)), title_weight=2.0
    )
    keys = np.array(sorted(corpus_a.live))
    for words in corpus_a.queries(20):
        query = " ".join(words)
        assert live.search_articles(query, 7) == rebuilt.search_articles(query, 7)
        assert live.search_articles(query, 5, keys[::3]) == rebuilt.search_articles(query, 5, keys[::3])
        assert live.search_passages(query, 9) == rebuilt.search_passages(query, 9)
        assert live.score_articles(query, keys[::2]) == rebuilt.score_articles(query, keys[::2])
        pids = sorted(corpus_p.live)[::5]
        assert live.score_passages(query, pids) == rebuilt.score_passages(query, pids)
        np.testing.assert_array_equal(live.matching_articles(query), rebuilt.matching_articles(query))
        assert live.term_weights(query) == rebuilt.term_weights(query)


# -- on disk ---------------------------------------------------------------------------------------------------


def lexical(corpus_p: Corpus, corpus_a: Corpus, generation: int) -> LexicalPostings:
    return LexicalPostings(
        Postings.build(corpus_p.rows(300), 1), Postings.build(corpus_a.rows(100), 2), generation=generation
    )


def write(held: LexicalPostings, corpus_p: Corpus, corpus_a: Corpus, n: int = 4) -> LexicalPostings:
    return LexicalPostings(
        held.passages.without(corpus_p.delete(0.005)).extended(corpus_p.rows(n)),
        held.articles.without(corpus_a.delete(0.005)).extended(corpus_a.rows(1)),
        held.generation + 1,
        stamp=held.stamp,
    )


def assert_loads_as(directory: Path, held: LexicalPostings, corpus_p: Corpus, corpus_a: Corpus) -> None:
    loaded = LexicalPostings.load(directory, held.generation)
    for got, corpus in ((loaded.passages, corpus_p), (loaded.articles, corpus_a)):
        oracle = corpus.oracle()
        np.testing.assert_array_equal(got.rowids, oracle.rowids)
        weights = (1.5, 1.0)[: corpus.columns]
        for query in corpus.queries(10):
            np.testing.assert_array_equal(got.scores(query, weights), oracle.scores(query, weights))
    assert isinstance(loaded.passages.base.docs.base, np.memmap)  # the base is mapped (a plain view of it), not read


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".seg-" in p.name)


def test_saves_append_segments_and_reload_to_the_same_postings(tmp_path: Path) -> None:
    corpus_p, corpus_a = Corpus(1, 1), Corpus(2, 2)
    held = lexical(corpus_p, corpus_a, 1)
    held.save(tmp_path)
    bases = {p.name for p in tmp_path.iterdir() if ".base-" in p.name}
    assert len(bases) == 2 * 8  # one file per array per table
    for i in range(3):
        held = write(held, corpus_p, corpus_a)
        held.save(tmp_path)
        assert len(segment_files(tmp_path)) == 2 * (i + 1)  # one per table per save
        assert {p.name for p in tmp_path.iterdir() if ".base-" in p.name} == bases  # the bases are never rewritten
        assert_loads_as(tmp_path, held, corpus_p, corpus_a)
    # a reloaded index keeps appending where the files left off
    held = LexicalPostings.load(tmp_path, held.generation)
    held = write(held, corpus_p, corpus_a)
    held.save(tmp_path)
    assert len(segment_files(tmp_path)) == 8
    assert_loads_as(tmp_path, held, corpus_p, corpus_a)


def test_merge_policy_merges_segments_into_one_or_writes_a_new_base(tmp_path: Path) -> None:
    corpus_p, corpus_a = Corpus(3, 1), Corpus(4, 2)
    held = lexical(corpus_p, corpus_a, 1)
    held.save(tmp_path)
    with pytest.MonkeyPatch.context() as patch:  # the fraction lifted: only the count merges
        patch.setattr(bm25, "MERGE_FRACTION", 10.0)
        bases = {p.name for p in tmp_path.iterdir() if ".base-" in p.name}
        for _ in range(bm25.MERGE_SEGMENTS + 1):
            held = write(held, corpus_p, corpus_a, n=1)
            held.save(tmp_path)
            stamp = json.loads((tmp_path / LEXICAL_STATE).read_text())
            assert len(stamp["tables"]["passages"]["segments"]) <= bm25.MERGE_SEGMENTS
        assert len(stamp["tables"]["passages"]["segments"]) < bm25.MERGE_SEGMENTS  # the count merged at least once
        assert {p.name for p in tmp_path.iterdir() if ".base-" in p.name} == bases  # into one segment, the base kept
        assert_loads_as(tmp_path, held, corpus_p, corpus_a)
        for _ in range(bm25.MERGE_SEGMENTS + 1):  # again, over a merged segment (writes delete base and delta rows)
            held = write(held, corpus_p, corpus_a, n=1)
            held.save(tmp_path)
            assert_loads_as(tmp_path, held, corpus_p, corpus_a)
        assert {p.name for p in tmp_path.iterdir() if ".base-" in p.name} == bases
    # a large write (above MERGE_FRACTION of the base) merges at once
    held = write(held, corpus_p, corpus_a, n=int(0.2 * held.passages.rows))
    held.save(tmp_path)
    assert json.loads((tmp_path / LEXICAL_STATE).read_text())["tables"]["passages"]["segments"] == []
    assert_loads_as(tmp_path, held, corpus_p, corpus_a)
    held = write(held, corpus_p, corpus_a)
    held.save(tmp_path)
    listed = json.loads((tmp_path / LEXICAL_STATE).read_text())["tables"]
    assert held.merge(tmp_path) == sum(len(t["segments"]) for t in listed.values()) >= 2
    assert segment_files(tmp_path) == []
    assert len([p for p in tmp_path.iterdir() if ".base-" in p.name]) == 2 * 8  # merged-away bases are removed
    assert held.merge(tmp_path) == 0
    assert_loads_as(tmp_path, held, corpus_p, corpus_a)


def test_a_segment_written_without_its_stamp_leaves_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus_p, corpus_a = Corpus(5, 1), Corpus(6, 2)
    held = lexical(corpus_p, corpus_a, 1)
    held.save(tmp_path)
    held = write(held, corpus_p, corpus_a)
    held.save(tmp_path)
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.iterdir()}
    saved = (held.generation, dict(corpus_p.live), dict(corpus_a.live))
    nxt = write(held, corpus_p, corpus_a)
    real = os.replace

    def dies_at_the_stamp(src: Any, dst: Any) -> None:
        if Path(dst).name == LEXICAL_STATE:
            raise OSError("killed before the stamp")
        real(src, dst)

    monkeypatch.setattr(os, "replace", dies_at_the_stamp)
    with pytest.raises(OSError):
        nxt.save(tmp_path)
    monkeypatch.setattr(os, "replace", real)
    assert len(segment_files(tmp_path)) == 4  # the new segments are there, unlisted
    old = LexicalPostings.load(tmp_path, saved[0])
    for got, live in ((old.passages, saved[1]), (old.articles, saved[2])):
        np.testing.assert_array_equal(got.rowids, sorted(live))
    assert all(p.read_bytes() == data for p, data in before.items() if data is not None)
    # the next save (the failed one's changes included; not knowing what the disk holds, it writes new bases)
    # writes what the stamp must list and removes the garbage
    nxt.save(tmp_path)
    assert segment_files(tmp_path) == []
    assert len([p for p in tmp_path.iterdir() if ".base-" in p.name]) == 2 * 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert_loads_as(tmp_path, nxt, corpus_p, corpus_a)


# -- through the index ----------------------------------------------------------------------------------------------

NEWS = [
    Article(id=f"feed/{i:03d}", title=title, paragraphs=(body, f"Report {i} on {title.lower()}."))
    for i, (title, body) in enumerate(
        [
            ("Lighthouse keepers strike over pay", "Keepers of the northern lighthouses walked out on Monday."),
            ("Comet seen over the harbour", "Astronomers say the comet will be visible for a week."),
            ("Chip shortage hits carmakers", "Carmakers cut output again as semiconductor supplies run short."),
            ("Derby ends in a draw", "The striker scored twice but the derby ended level."),
            ("Central bank holds interest rates", "Inflation eased, so the bank kept interest rates unchanged."),
            ("Ferry service resumes", "The island ferry sails again after the storm."),
        ]
    )
]


@pytest.fixture
def copy(tmp_path: Path, corpus_index: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(corpus_index, target, symlinks=False)
    return target


def assert_equals_a_rebuild(postings: LexicalPostings, index: Any) -> None:
    rebuilt = LexicalPostings.build(index.sqlite)
    for table, weights in (("passages", (1.0,)), ("articles", (1.7, 1.0))):
        got, want = getattr(postings, table), getattr(rebuilt, table)
        np.testing.assert_array_equal(got.rowids, want.rowids)
        for query in (["lighthous", "keeper"], ["comet"], ["interest", "rate", "rate"], ["the"], ["chip", "derbi"]):
            np.testing.assert_array_equal(got.scores(query, weights), want.scores(query, weights))


def test_reopen_after_many_writes_equals_a_fresh_build(copy: Path, embedder: Any) -> None:
    index = open_index(copy, embedder)
    settings = Settings(index_dir=copy)
    for i, article in enumerate(NEWS):
        add_articles(index, [article], embedder, settings)
        if i % 2:
            delete_articles(index, [NEWS[i - 1].id])
    stamp = json.loads((copy / LEXICAL_STATE).read_text())
    assert stamp["tables"]["passages"]["segments"]  # the writes appended segments
    assert check_index(copy) == []
    reopened = open_index(copy, embedder)
    assert reopened.lexical.stamp == stamp  # loaded from the files, not rebuilt
    assert_equals_a_rebuild(reopened.lexical, reopened)
    assert_equals_a_rebuild(index.lexical, index)
    assert optimize(index) >= 2
    assert not json.loads((copy / LEXICAL_STATE).read_text())["tables"]["passages"]["segments"]
    assert check_index(copy) == []
    assert_equals_a_rebuild(open_index(copy, embedder).lexical, index)


def test_a_damaged_segment_is_refused_by_check_and_rebuilt_on_open(copy: Path, embedder: Any) -> None:
    index = open_index(copy, embedder)
    add_articles(index, NEWS[:1], embedder, Settings(index_dir=copy))  # small enough to append a segment
    stamp = json.loads((copy / LEXICAL_STATE).read_text())
    segment = copy / stamp["tables"]["passages"]["segments"][-1]["name"]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert any("BM25 postings cache is damaged" in p for p in check_index(copy))
    reopened = load_postings(*index.writable)
    assert reopened.stamp is not None and reopened.stamp != stamp  # rebuilt and saved again
    assert_equals_a_rebuild(reopened, index)
    assert check_index(copy) == []


def test_a_same_size_damaged_base_is_caught_by_check(copy: Path, embedder: Any) -> None:
    """An open checks the base by size and headers only; ``newsdesk check`` reads it whole (its CRC-32)."""
    open_index(copy, embedder)
    stamp = json.loads((copy / LEXICAL_STATE).read_text())
    docs = copy / f"{stamp['tables']['passages']['base']}.lengths.npy"
    data = bytearray(docs.read_bytes())
    data[-1] ^= 0x01
    docs.write_bytes(bytes(data))
    assert any("BM25 postings cache is damaged" in p for p in check_index(copy))


def test_an_old_format_cache_is_rebuilt(copy: Path, embedder: Any) -> None:
    index = open_index(copy, embedder)
    directory, store = index.writable
    (directory / LEXICAL_STATE).write_text(json.dumps({"generation": store.generation(), "version": 1}))
    (directory / "lexical-passages.npz").write_bytes(b"an old whole-table file")
    assert check_index(copy) == []  # rebuilt on open, not a problem
    reopened = load_postings(directory, store)
    assert reopened.stamp is not None and reopened.stamp["version"] == bm25.POSTINGS_VERSION
    assert not (directory / "lexical-passages.npz").exists()  # the old files are garbage once the stamp is new
    assert_equals_a_rebuild(reopened, index)


def _row_by_row(
    rows: Rows, columns: int, vocab: bm25.Vocab
) -> tuple[dict[str, int], dict[tuple[int, int], list[float]]]:
    """The reference ``Segment.build`` is held to: each row's stem counts per column, one row at a time, with new
    terms numbered in the order they first occur (the build before it counted tokens in numpy)."""
    from search.text.fts import fts_term_counts

    words = vocab.copy()
    postings: dict[tuple[int, int], list[float]] = {}
    for index, (_, texts) in enumerate(rows):
        for c, text in enumerate(texts):
            for term, tf in fts_term_counts(text)[1].items():
                postings.setdefault((words.add(term), index), [0.0] * columns)[c] += tf
    return dict(words.extra), postings


@pytest.mark.parametrize("columns", [1, 2])
def test_build_counts_every_row_as_a_row_by_row_loop_would(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Term ids, postings, term frequencies per column, row lengths and the forward index of the numpy build equal a
    plain row-by-row count, on Zipfian rows, unicode (folded, accented, astral, CJK) and empty texts, with a base
    vocabulary, across the chunk boundary of a build's counting."""
    monkeypatch.setattr(bm25, "_BUILD_CHUNK", 7)
    corpus = Corpus(11, columns)
    rows = corpus.rows(40)
    odd = ("Café-style ÉCOLE naïve U.S. 2024", "", "東京 𝔘𝔫𝔦 emoji 😀 — Straße", "w1 w1 w1 W1")
    rows += [(rows[-1][0] + 1 + i, tuple(odd[(i + c) % len(odd)] for c in range(columns))) for i in range(9)]
    base = bm25.Vocab({"w0": 0, "w3": 1, "caf": 2})
    segment = Segment.build(rows, columns, base)
    extra, expected = _row_by_row(rows, columns, base)
    assert isinstance(segment.vocab, bm25.Vocab) and segment.vocab.extra == extra
    assert list(segment.vocab.extra) == list(extra)  # numbered in order of first occurrence
    got: dict[tuple[int, int], list[float]] = {}
    for term in range(len(segment.indptr) - 1):
        for p in range(int(segment.indptr[term]), int(segment.indptr[term + 1])):
            got[(term, int(segment.docs[p]))] = [float(segment.tfs[c, p]) for c in range(columns)]
        assert np.all(np.diff(segment.docs[segment.indptr[term] : segment.indptr[term + 1]]) > 0)
    assert got == expected
    lengths = [float(sum(len(unicode61.tokens(t)) for t in texts)) for _, texts in rows]
    assert segment.lengths.tolist() == lengths
    assert segment.rowids.tolist() == [r for r, _ in rows]
    ptr, terms = segment.forward()
    fresh = replace_forward(segment)
    assert np.array_equal(ptr, fresh[0]) and np.array_equal(np.sort(terms), np.sort(fresh[1]))
    for row in range(segment.rows):
        assert sorted(terms[ptr[row] : ptr[row + 1]].tolist()) == sorted(t for t, r in expected if r == row)


def replace_forward(segment: Segment) -> tuple[np.ndarray, np.ndarray]:
    """The forward index recomputed from the postings (what a loaded segment derives)."""
    plain = Segment(segment.rowids, segment.lengths, segment.vocab, segment.indptr, segment.docs, segment.tfs)
    return plain.forward()


def test_build_refuses_a_row_with_more_texts_than_columns() -> None:
    with pytest.raises(ValueError, match="2 texts for 1 columns"):
        Segment.build([(1, ("a", "b"))], 1)


def test_a_save_lists_the_new_terms_without_walking_the_base_vocabulary() -> None:
    """The terms a segment file names are those numbered since the last save, in id order, read from the
    vocabulary's ``extra`` alone: a base vocabulary that cannot be iterated is never walked."""

    class Unwalkable(dict[str, int]):
        def __iter__(self) -> Any:
            raise AssertionError("the base vocabulary was walked")

    vocab = bm25.Vocab(Unwalkable({"a": 0, "b": 1}), {"c": 2, "d": 3, "e": 4})
    assert bm25._terms_from(vocab, 3) == ["d", "e"]
    assert bm25._terms_from(vocab, 2) == ["c", "d", "e"]
    assert bm25._terms_from({"a": 0, "b": 1, "c": 2}, 1) == ["b", "c"]
