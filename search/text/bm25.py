"""BM25 in memory: the lexical side of every query, scored with numpy over postings arrays.

SQLite FTS5 keeps the transactional, persistent full-text index (updated by triggers in the same transaction as
the rows), but answering from it costs a full pass over every row that matches any query term: 10-75 ms per query
on 100k passages, more than the rest of a search. Here the same BM25 (FTS5's formula, tokenizer and constants,
column weights included; tests compare both) is computed from term-frequency postings in numpy, in well under a
millisecond per term. The postings are a cache derived from the stored rows, like the FAISS files: saved beside
them, stamped with the store's generation, and rebuilt from SQLite when stale.

Measured against FTS5 and ``bm25s`` in ``bench/quality.py`` (section ``lexical``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from search.memory import deep_size
from search.storage.files import DAMAGED_CACHE, discarded_on_failure
from search.storage.store import Store
from search.text.fts import K1, B, fts_term_counts, query_terms, stem

LEXICAL_STATE = "lexical.json"
LEXICAL_FILES = {"passages": "lexical-passages.npz", "articles": "lexical-articles.npz"}
POSTINGS_VERSION = 1  # part of the cache stamp: bump when tokenization or layout changes


def idf(rows: int, df: int) -> float:
    """FTS5's BM25 inverse document frequency, floored just above zero as FTS5 floors it."""
    return max(math.log((rows - df + 0.5) / (df + 0.5)), 1e-6)


@dataclass
class Postings:
    """One table's inverted index: term -> (row, term frequency per column), plus each row's length in tokens."""

    rowids: np.ndarray  # int64[rows], ascending: the table's rowid of each row index
    lengths: np.ndarray  # float32[rows]: tokens in the row, all columns (FTS5's document length)
    vocab: dict[str, int]
    indptr: np.ndarray  # int64[terms + 1]: term t's postings are [indptr[t], indptr[t + 1])
    docs: np.ndarray  # int32[postings]: row index
    tfs: np.ndarray  # float32[columns, postings]: occurrences in each column

    @property
    def rows(self) -> int:
        return len(self.rowids)

    @classmethod
    def build(
        cls, rows: Iterable[tuple[int, Sequence[str]]], columns: int, vocab: dict[str, int] | None = None
    ) -> Postings:
        """From (rowid, column texts) in ascending rowid order, tokenized exactly as the FTS5 tables are.

        ``vocab`` (copied, then extended) lets new rows share term ids with existing postings."""
        vocab = dict(vocab or {})
        rowids = array("q")
        lengths = array("f")
        terms, docs = array("i"), array("i")
        tfs = [array("f") for _ in range(columns)]
        for index, (rowid, texts) in enumerate(rows):
            rowids.append(rowid)
            per_term: dict[int, list[int]] = {}
            total = 0
            for c, text in enumerate(texts):
                n, counts = fts_term_counts(text)
                total += n
                for term, tf in counts.items():
                    t = vocab.setdefault(term, len(vocab))
                    per_term.setdefault(t, [0] * columns)[c] += tf
            lengths.append(total)
            for t, per_column in per_term.items():
                terms.append(t)
                docs.append(index)
                for c in range(columns):
                    tfs[c].append(per_column[c])
        term_arr = np.frombuffer(terms, dtype=np.int32) if terms else np.zeros(0, np.int32)
        order = np.argsort(term_arr, kind="stable")  # rows stay ascending inside each term's postings
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(term_arr, minlength=len(vocab)), out=indptr[1:])
        doc_arr = np.frombuffer(docs, dtype=np.int32) if docs else np.zeros(0, np.int32)
        tf_arr = np.stack([np.frombuffer(a, dtype=np.float32) if a else np.zeros(0, np.float32) for a in tfs])
        return cls(
            rowids=np.frombuffer(rowids, dtype=np.int64).copy() if rowids else np.zeros(0, np.int64),
            lengths=np.frombuffer(lengths, dtype=np.float32).copy() if lengths else np.zeros(0, np.float32),
            vocab=vocab,
            indptr=indptr,
            docs=doc_arr[order],
            tfs=np.ascontiguousarray(tf_arr[:, order]),
        )

    def scores(self, phrases: Sequence[str], weights: Sequence[float]) -> np.ndarray:
        """FTS5's ``bm25()`` of every row (0 where no phrase occurs): for each phrase, IDF times the saturated,
        length-normalised, column-weighted frequency, summed."""
        out = np.zeros(self.rows, dtype=np.float32)
        if not self.rows:
            return out
        avgdl = float(self.lengths.sum()) / self.rows
        norm = K1 * (1 - B + B * self.lengths / avgdl) if avgdl > 0 else np.full(self.rows, K1, np.float32)
        w = np.asarray(weights, dtype=np.float32)[: self.tfs.shape[0], None]
        for phrase in phrases:
            t = self.vocab.get(phrase)
            if t is None:
                continue
            lo, hi = int(self.indptr[t]), int(self.indptr[t + 1])
            docs = self.docs[lo:hi]
            freq = (self.tfs[:, lo:hi] * w).sum(axis=0)
            out[docs] += np.float32(idf(self.rows, hi - lo)) * freq * (K1 + 1) / (freq + norm[docs])
        return out

    def _term_of_postings(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int32), np.diff(self.indptr))

    def without(self, rowids: Iterable[int]) -> Postings:
        """A copy without the given rows (a numpy filter over the postings: nothing is re-tokenized)."""
        _, idx = self.positions(rowids)
        if not len(idx):
            return self
        keep_rows = np.ones(self.rows, dtype=bool)
        keep_rows[idx] = False
        new_index = (np.cumsum(keep_rows) - 1).astype(np.int32)
        keep = keep_rows[self.docs]
        counts = np.bincount(self._term_of_postings()[keep], minlength=len(self.indptr) - 1)
        indptr = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return Postings(
            rowids=self.rowids[keep_rows],
            lengths=self.lengths[keep_rows],
            vocab=self.vocab,
            indptr=indptr,
            docs=new_index[self.docs[keep]],
            tfs=np.ascontiguousarray(self.tfs[:, keep]),
        )

    def extended(self, rows: Iterable[tuple[int, Sequence[str]]]) -> Postings:
        """A copy with new rows appended; only they are tokenized. Their rowids must be above every present one
        (SQLite gives a new row the largest rowid plus one, and deleted rows are removed first)."""
        new = Postings.build(rows, self.tfs.shape[0], self.vocab)
        if not new.rows:
            return self
        if self.rows and int(new.rowids[0]) <= int(self.rowids[-1]):
            raise ValueError("new rows must come after the existing ones")
        old_terms = self._term_of_postings()
        new_terms = new._term_of_postings()
        terms = np.concatenate([old_terms, new_terms])
        order = np.argsort(terms, kind="stable")  # old rows before new ones inside each term: still ascending
        counts = np.bincount(terms, minlength=len(new.vocab))
        indptr = np.zeros(len(new.vocab) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return Postings(
            rowids=np.concatenate([self.rowids, new.rowids]),
            lengths=np.concatenate([self.lengths, new.lengths]),
            vocab=new.vocab,
            indptr=indptr,
            docs=np.concatenate([self.docs, new.docs + self.rows]).astype(np.int32)[order],
            tfs=np.ascontiguousarray(np.concatenate([self.tfs, new.tfs], axis=1)[:, order]),
        )

    def positions(self, rowids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(rowids present here, their row indexes)."""
        wanted = np.fromiter((int(r) for r in rowids), dtype=np.int64)
        idx = np.searchsorted(self.rowids, wanted)
        ok = (
            (idx < self.rows) & (self.rowids[np.minimum(idx, max(self.rows - 1, 0))] == wanted)
            if self.rows
            else idx < 0
        )
        return wanted[ok], idx[ok]

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        terms = sorted(self.vocab, key=self.vocab.__getitem__)
        with discarded_on_failure(tmp):
            np.savez(
                tmp,
                rowids=self.rowids,
                lengths=self.lengths,
                vocab=np.frombuffer("\n".join(terms).encode("utf-8"), dtype=np.uint8),
                indptr=self.indptr,
                docs=self.docs,
                tfs=self.tfs,
            )
            os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Postings:
        """The saved postings; ``ValueError`` if the arrays do not fit together (a damaged or foreign file), so a
        cache that loads is one a search cannot index out of bounds with."""
        with np.load(path) as data:
            text = data["vocab"].tobytes().decode("utf-8")
            terms = text.split("\n") if text else []
            postings = cls(
                rowids=data["rowids"],
                lengths=data["lengths"],
                vocab={t: i for i, t in enumerate(terms)},
                indptr=data["indptr"],
                docs=data["docs"],
                tfs=data["tfs"],
            )
        postings.validate()
        return postings

    def validate(self) -> None:
        """Raise ``ValueError`` unless the arrays are one consistent inverted index."""
        n, postings = self.rows, len(self.docs)
        consistent = (
            self.lengths.shape == (n,)
            and self.indptr.shape == (len(self.vocab) + 1,)
            and self.tfs.ndim == 2
            and self.tfs.shape[1] == postings
            and (not len(self.indptr) or (int(self.indptr[0]) == 0 and int(self.indptr[-1]) == postings))
            and bool(np.all(np.diff(self.indptr) >= 0))
            and bool(np.all(np.diff(self.rowids) > 0))
            and (not postings or (int(self.docs.min()) >= 0 and int(self.docs.max()) < n))
        )
        if not consistent:
            raise ValueError("BM25 postings arrays do not fit together")


@dataclass
class LexicalPostings:
    """Postings of both tables, stamped with the store generation they were built from."""

    passages: Postings
    articles: Postings
    generation: int

    @classmethod
    def build(cls, store: Store) -> LexicalPostings:
        generation = store.generation()
        return cls(
            passages=Postings.build(_passage_rows(store), 1),
            articles=Postings.build(_article_rows(store), 2),
            generation=generation,
        )

    def updated(
        self,
        store: Store,
        deleted: tuple[Sequence[int], Sequence[int]],
        added: tuple[Sequence[int], Sequence[int]],
        generation: int,
    ) -> LexicalPostings:
        """After a write of (article keys, passage ids) ``deleted`` and ``added``: new postings, re-tokenizing only
        the added rows, stamped with ``generation``, the one that write committed (not the store's generation now,
        which may count another process's later write that these postings lack)."""
        del_aids, del_pids = deleted
        new_aids, new_pids = added
        return LexicalPostings(
            passages=self.passages.without(del_pids).extended(_passage_rows(store, new_pids)),
            articles=self.articles.without(del_aids).extended(_article_rows(store, new_aids)),
            generation=generation,
        )

    @classmethod
    def load(cls, directory: Path, generation: int) -> LexicalPostings:
        return cls(
            passages=Postings.load(directory / LEXICAL_FILES["passages"]),
            articles=Postings.load(directory / LEXICAL_FILES["articles"]),
            generation=generation,
        )

    def save(self, directory: Path) -> None:
        """Both files, then the stamp (last, so a crash in between leaves the cache stale, never wrong)."""
        self.passages.save(directory / LEXICAL_FILES["passages"])
        self.articles.save(directory / LEXICAL_FILES["articles"])
        tmp = directory / f".{LEXICAL_STATE}.tmp"
        with discarded_on_failure(tmp):
            tmp.write_text(json.dumps({"generation": self.generation, "version": POSTINGS_VERSION}), encoding="utf-8")
            os.replace(tmp, directory / LEXICAL_STATE)

    def memory_bytes(self) -> int:
        """What both tables' postings hold in memory (arrays and vocabularies): ``postings`` in the memory report."""
        return deep_size((self.passages, self.articles))


def load_postings(directory: Path, store: Store) -> LexicalPostings:
    """The saved postings if they match the store's generation, else rebuilt from the rows (and saved if writable)."""
    generation = store.generation()
    try:
        state = json.loads((directory / LEXICAL_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    if state == {"generation": generation, "version": POSTINGS_VERSION}:
        try:
            loaded = LexicalPostings.load(directory, generation)
            if (loaded.articles.rows, loaded.passages.rows) == store.counts():
                return loaded
        except DAMAGED_CACHE:
            pass  # a damaged cache is rebuilt like a stale one
    postings = LexicalPostings.build(store)
    # a read-only index still serves from the rebuilt in-memory copy; one written meanwhile saves its own
    with contextlib.suppress(OSError), store.saving(postings.generation) as ok:
        if ok:
            postings.save(directory)
    return postings


def _passage_rows(store: Store, ids: Sequence[int] | None = None) -> Iterator[tuple[int, Sequence[str]]]:
    for pid, text in store.passage_text_rows(ids):
        yield pid, (text,)


def _article_rows(store: Store, ids: Sequence[int] | None = None) -> Iterator[tuple[int, Sequence[str]]]:
    # the body as the articles_fts trigger indexes it: paragraphs joined by newlines
    for aid, title, paragraphs in store.article_text_rows(ids):
        yield aid, (title, "\n".join(paragraphs))


class HasPostings(Protocol):
    """Anything with a ``lexical`` attribute holding ``LexicalPostings`` (an open ``Index``)."""

    lexical: LexicalPostings


class MemoryBM25:
    """The ``LexicalIndex`` over in-memory postings; reads ``holder.lexical`` on every call, so an index updated in
    place (which swaps in new postings) is searched as it now is."""

    def __init__(self, holder: HasPostings, title_weight: float = 1.0) -> None:
        self._holder = holder
        self._weights = (float(title_weight), 1.0)
        self._local = threading.local()

    def _scores(self, table: str, query: str) -> tuple[Postings, np.ndarray]:
        """Scores of every row for ``query``; the last query per table and thread is kept, since one search asks
        for candidates and then for the scores of other rows with the same query."""
        postings: Postings = getattr(self._holder.lexical, table)
        key = (table, query, id(postings))
        cached = getattr(self._local, table, None)
        if cached is not None and cached[0] == key:
            return postings, cached[1]
        phrases = [s for s in (stem(t) for t in query_terms(query)) if s]
        scores = postings.scores(phrases, self._weights if table == "articles" else (1.0,))
        setattr(self._local, table, (key, scores))
        return postings, scores

    def _top(self, table: str, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        postings, scores = self._scores(table, query)
        matched = np.flatnonzero(scores > 0)
        if allowed is not None:  # a filter: only rows whose key is allowed (sorted keys) compete for the top k
            matched = matched[np.isin(postings.rowids[matched], allowed, assume_unique=True)]
        if k <= 0 or not len(matched):
            return []
        if len(matched) > k:
            part = np.argpartition(-scores[matched], k - 1)[:k]
            matched = matched[part]
        order = np.lexsort((postings.rowids[matched], -scores[matched]))  # best first, ties by rowid
        return [(int(postings.rowids[i]), float(scores[i])) for i in matched[order]]

    def _given(self, table: str, query: str, keys: Iterable[int]) -> dict[int, float]:
        postings, scores = self._scores(table, query)
        rowids, idx = postings.positions(keys)
        got = scores[idx]
        return {int(r): float(s) for r, s in zip(rowids, got, strict=True) if s > 0}

    def matching_articles(self, query: str) -> np.ndarray:
        """Keys of every article holding at least one query term (after tokenising and stemming): the lexical
        side's real match count, not its top k."""
        postings, scores = self._scores("articles", query)
        matched: np.ndarray = postings.rowids[scores > 0]
        return matched

    def search_articles(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        return self._top("articles", query, k, allowed)

    def term_weights(self, query: str) -> dict[str, float]:
        """The query's stemmed terms with their passage-level IDF (terms no passage holds are left out): what a
        highlight weighs a sentence's shared words by."""
        postings: Postings = self._holder.lexical.passages
        out: dict[str, float] = {}
        for term in (stem(t) for t in query_terms(query)):
            t = postings.vocab.get(term)
            if t is not None:
                out[term] = idf(postings.rows, int(postings.indptr[t + 1] - postings.indptr[t]))
        return out

    def score_articles(self, query: str, aids: Iterable[int]) -> dict[int, float]:
        return self._given("articles", query, aids)

    def search_passages(self, query: str, k: int) -> list[tuple[int, float]]:
        return self._top("passages", query, k)

    def score_passages(self, query: str, ids: Iterable[int]) -> dict[int, float]:
        return self._given("passages", query, ids)
