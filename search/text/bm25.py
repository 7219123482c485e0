"""BM25 in memory: the lexical side of every query, scored with numpy over postings arrays.

SQLite FTS5 keeps the transactional, persistent full-text index (updated by triggers in the same transaction as
the rows), but answering from it costs a full pass over every row that matches any query term: 10-75 ms per query
on 100k passages, more than the rest of a search. Here the same BM25 (FTS5's formula, tokenizer and constants,
column weights included; tests compare both) is computed from term-frequency postings in numpy, in well under a
millisecond per term. The postings are a cache derived from the stored rows, like the FAISS files: saved beside
them, stamped with the store's generation, and rebuilt from SQLite when stale.

A top k (``Postings.top``) skips most postings of a large table's common terms by block-max MaxScore and gives
the exhaustive scorer's answer bit for bit; the scores of given rows (a hybrid search's fill-in for the dense
side's candidates) are looked up (``Postings.score_rows``). Both are held to the exhaustive ``Postings.scores``
by property tests (tests/test_bm25.py) and by ``bench/bm25_topk.py`` on 1.1M RealTime QA paragraphs.

Measured against FTS5 and ``bm25s`` in ``bench/quality.py`` (section ``lexical``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import mmap
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from search.arrays import member, sorted_lookup
from search.errors import IndexCorrupt
from search.jsontypes import JSONObject, JSONValue
from search.memory import deep_size
from search.storage.files import DAMAGED_CACHE, discarded_on_failure, file_crc32, fsync_path, prefetch
from search.storage.store import ChangedRows, Store
from search.text import unicode61
from search.text.fts import K1, B, query_terms, stem
from search.vectors.segments import MERGE_FRACTION as MERGE_FRACTION
from search.vectors.segments import MERGE_SEGMENTS as MERGE_SEGMENTS

LEXICAL_STATE = "lexical.json"
POSTINGS_VERSION = 3  # part of the cache stamp: bump when tokenization or layout changes (2: a base and segments;
# 3: FTS5's unicode61 tokens exactly, search/text/unicode61.py)


def idf(rows: int, df: int) -> float:
    """FTS5's BM25 inverse document frequency: one that is not positive (a term in half the rows or more) becomes
    1e-6, as FTS5 sets it; a positive one below 1e-6 (a term in just under half of millions of rows) is kept."""
    value = math.log((rows - df + 0.5) / (df + 0.5))
    return value if value > 0 else 1e-6


class Vocab(Mapping[str, int]):
    """Term -> id: an immutable ``base`` (a saved base segment's vocabulary, possibly a million terms) and the
    ``extra`` terms rows added since introduced, numbered after it. Copying one copies ``extra`` only."""

    def __init__(self, base: Mapping[str, int], extra: dict[str, int] | None = None) -> None:
        self.base = base
        self.extra = extra if extra is not None else {}

    def __getitem__(self, term: str) -> int:
        got = self.base.get(term)
        return self.extra[term] if got is None else got

    def get(self, term: str, default: int | None = None) -> int | None:  # type: ignore[override]
        got = self.base.get(term)
        return self.extra.get(term, default) if got is None else got

    def __contains__(self, term: object) -> bool:
        return term in self.base or term in self.extra

    def __len__(self) -> int:
        return len(self.base) + len(self.extra)

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        yield from self.extra

    def copy(self) -> Vocab:
        return Vocab(self.base, dict(self.extra))

    def ids(self, terms: Iterable[str]) -> dict[str, int]:
        """Each distinct term's id, new terms added in the order they first occur (``add`` for many terms at once:
        the lookups in the large base are one C-level pass)."""
        unique = list(dict.fromkeys(terms))
        found = list(map(self.base.get, unique))
        extra, size = self.extra, len(self.base)
        return {
            term: extra.setdefault(term, size + len(extra)) if got is None else got
            for term, got in zip(unique, found, strict=True)
        }

    def add(self, term: str) -> int:
        """The term's id, a new one (after every other) if it is new."""
        got = self.base.get(term)
        return self.extra.setdefault(term, len(self.base) + len(self.extra)) if got is None else got


@dataclass(frozen=True)
class TableStats:
    """BM25's statistics over a table's live rows, as FTS5 computes them: row count, average length, and each term's
    document frequency (``df``; ``df_array``: of the first ``n`` term ids at once)."""

    rows: int
    avgdl: float
    df: Callable[[int], int]
    df_array: Callable[[int], np.ndarray]


@dataclass
class Segment:
    """One immutable inverted index over some rows: term -> (row, term frequency per column), plus each row's length
    in tokens. A table's ``Postings`` are a base segment, its tombstones and a small segment of the rows added since.

    ``stats`` (None: the segment's own) gives the BM25 statistics of the whole table it is part of (row count,
    average length, each term's document frequency over the live rows), so that a segment's scores are the table's,
    bit for bit."""

    rowids: np.ndarray  # int64[rows], ascending: the table's rowid of each row index
    lengths: np.ndarray  # float32[rows]: tokens in the row, all columns (FTS5's document length)
    vocab: Mapping[str, int]
    indptr: np.ndarray  # int64[terms + 1]: term t's postings are [indptr[t], indptr[t + 1])
    docs: np.ndarray  # int32[postings]: row index
    tfs: np.ndarray  # float32[columns, postings]: occurrences in each column
    stats: TableStats | None = field(default=None, repr=False, compare=False)
    # derived on first use by ``block_max``: the bounds of top-k pruning, per column weights
    _bounds: dict[tuple[float, ...], BlockMax] = field(default_factory=dict, init=False, repr=False, compare=False)
    _avgdl_cache: float | None = field(default=None, init=False, repr=False, compare=False)
    _forward: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)
    _norm_cache: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def rows(self) -> int:
        return len(self.rowids)

    @classmethod
    def build(
        cls, rows: Iterable[tuple[int, Sequence[str]]], columns: int, vocab: Mapping[str, int] | None = None
    ) -> Segment:
        """From (rowid, column texts) in ascending rowid order, tokenized exactly as the FTS5 tables are.

        ``vocab`` (copied, then extended) lets new rows share term ids with existing postings: a ``Vocab`` is copied
        without its (large, immutable) base, so a write's few rows cost what they hold, not the table's vocabulary.

        Why not a dict per row: another process's write is followed by building this segment on a serving thread
        (search/storage/changes.py), where its Python cost holds the GIL against the searches. So Python touches
        each token once (the regex, then one dict lookup) and each distinct token of a chunk of rows once (its stem
        and term id); counting (row, term) pairs and laying out the postings is numpy. New terms are numbered in the
        order they first occur, as a row-by-row loop would number them."""
        words = vocab.copy() if isinstance(vocab, Vocab) else Vocab({}, dict(vocab or {}))
        rowid_list: list[int] = []
        # per chunk of rows: its (term, row) keys, their columns, and the rows' lengths
        keys: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        chunk: list[Sequence[str]] = []
        for rowid, texts in rows:
            rowid_list.append(rowid)
            chunk.append(texts)
            if len(chunk) == _BUILD_CHUNK:
                _count_chunk(chunk, columns, words, len(rowid_list) - len(chunk), keys, cols, lengths)
                chunk = []
        if chunk:
            _count_chunk(chunk, columns, words, len(rowid_list) - len(chunk), keys, cols, lengths)
        n = len(rowid_list)
        terms_count = len(words)
        if keys:
            # one key per (term, row) with the row below 2**31: term-major, rows ascending in each term's postings
            key = np.concatenate(keys)
            col = np.concatenate(cols)
            pairs, inverse = np.unique(key, return_inverse=True)
            tf = np.bincount(col * len(pairs) + inverse, minlength=columns * len(pairs))
            tfs = tf.reshape(columns, len(pairs)).astype(np.float32)
            term_arr = (pairs >> 31).astype(np.int32)
            doc_arr = (pairs & _ROW_MASK).astype(np.int32)
        else:
            tfs = np.zeros((columns, 0), np.float32)
            term_arr = doc_arr = np.zeros(0, np.int32)
        indptr = np.zeros(terms_count + 1, dtype=np.int64)
        np.cumsum(np.bincount(term_arr, minlength=terms_count), out=indptr[1:])
        segment = cls(
            rowids=np.array(rowid_list, dtype=np.int64),
            lengths=np.concatenate(lengths).astype(np.float32) if lengths else np.zeros(0, np.float32),
            vocab=words if isinstance(vocab, Vocab) else words.extra,
            indptr=indptr,
            docs=doc_arr,
            tfs=np.ascontiguousarray(tfs),
        )
        # the forward index (each row's terms), from the term of each posting already at hand rather than from
        # ``indptr`` (a delta's spans the whole vocabulary): what tombstones subtract from df
        fwd_ptr, order = _row_order(doc_arr, n)
        segment._forward = (fwd_ptr, term_arr[order])
        return segment

    def scores(self, phrases: Sequence[str], weights: Sequence[float]) -> np.ndarray:
        """FTS5's ``bm25()`` of every row (0 where no phrase occurs): for each phrase, IDF times the saturated,
        length-normalised, column-weighted frequency, summed. The exhaustive scorer: it touches every posting of
        every query term, and is the oracle ``top`` and ``score_rows`` are held to, bit for bit."""
        out = np.zeros(self.rows, dtype=np.float32)
        if not self.rows:
            return out
        norm = self._norm(None)
        w = self._column_weights(weights)
        for _, lo, hi, idf32 in self._phrase_postings(phrases):
            docs = self.docs[lo:hi]
            out[docs] += self._contributions(idf32, self.tfs[:, lo:hi], w, norm[docs])
        return out

    # -- the parts every scorer shares, so that each computes a row's score with the same float32 operations --

    def _avgdl(self) -> float:
        """The average row length, summed once per postings (they never change: an update makes new ones)."""
        if self.stats is not None:
            return self.stats.avgdl
        avgdl = self._avgdl_cache
        if avgdl is None:
            # an exact sum (lengths are whole numbers): the same whatever the order rows were added or removed in,
            # so a table kept as segments has the average a single rebuilt one has (a float32 sum drifts past 2**24)
            avgdl = self._avgdl_cache = float(self.lengths.sum(dtype=np.float64)) / self.rows if self.rows else 0.0
        return avgdl

    def _norm(self, rows: np.ndarray | None) -> np.ndarray:
        """BM25's length normalisation (K1 scaled by the row's length against the average) of ``rows`` (row
        indexes; None: every row), computed once per postings: a query reads the rows it scores from it."""
        norm = self._norm_cache
        if norm is None:
            avgdl = self._avgdl()
            norm = (
                K1 * (1 - B + B * np.asarray(self.lengths) / avgdl) if avgdl > 0 else np.full(self.rows, K1, np.float32)
            )
            self._norm_cache = norm
        return norm if rows is None else norm[rows]

    def _column_weights(self, weights: Sequence[float]) -> np.ndarray:
        return np.asarray(weights, dtype=np.float32)[: self.tfs.shape[0], None]

    @staticmethod
    def _contributions(idf32: np.float32 | np.ndarray, tfs: np.ndarray, w: np.ndarray, norm: np.ndarray) -> np.ndarray:
        """One term's BM25 contribution to each of some postings (``tfs``: their per-column frequencies)."""
        freq = (tfs * w).sum(axis=0)
        contributions: np.ndarray = idf32 * freq * (K1 + 1) / (freq + norm)
        return contributions

    def _phrase_postings(self, phrases: Sequence[str]) -> Iterator[tuple[int, int, int, np.float32]]:
        """(term, first posting, end, IDF) of each phrase the postings hold, in query order, repeats included: the
        order every scorer adds contributions in, so that their float32 sums agree."""
        for phrase in phrases:
            t = self.vocab.get(phrase)
            if t is not None and t + 1 < len(self.indptr) and self.indptr[t + 1] > self.indptr[t]:
                lo, hi = int(self.indptr[t]), int(self.indptr[t + 1])
                stats = self.stats
                yield t, lo, hi, np.float32(idf(self.rows, hi - lo) if stats is None else idf(stats.rows, stats.df(t)))

    def _terms(self, phrases: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(term ids of the phrases the vocabulary holds, how many times each occurs): a repeated phrase adds its
        contribution once per occurrence, as FTS5 does."""
        ids = [t for t in (self.vocab.get(p) for p in phrases) if t is not None and t + 1 < len(self.indptr)]
        terms, counts = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
        held = self.indptr[terms + 1] > self.indptr[terms]  # a term whose rows were all deleted has no postings
        return terms[held], counts[held]

    def score_rows(self, phrases: Sequence[str], weights: Sequence[float], rows: np.ndarray) -> np.ndarray:
        """``scores(phrases, weights)[rows]``, bit for bit, touching only the postings of ``rows``: each phrase's
        postings are looked up by binary search (they are in row order), and the contributions are added in the
        same phrase order. What fills in the exact lexical score of the dense side's candidates."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros(len(rows), dtype=np.float32)
        if not len(rows) or not self.rows:
            return out
        norm = self._norm(rows)
        w = self._column_weights(weights)
        for _, lo, hi, idf32 in self._phrase_postings(phrases):
            at = np.searchsorted(self.docs[lo:hi], rows)
            found = np.flatnonzero(at < hi - lo)
            found = found[self.docs[lo + at[found]] == rows[found]]
            if len(found):
                out[found] += self._contributions(idf32, self.tfs[:, lo + at[found]], w, norm[found])
        return out

    def top_exhaustive(
        self, phrases: Sequence[str], weights: Sequence[float], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` rows (row indexes, best first, ties by row) with a positive score among ``allowed`` (a
        boolean mask over rows; None: all), from every row's score: the oracle ``top`` must equal."""
        scores = self.scores(phrases, weights)
        matched = np.flatnonzero(scores > 0)
        if allowed is not None:
            matched = matched[allowed[matched]]
        return _best(matched, scores[matched], k)

    def block_max(self, weights: Sequence[float]) -> BlockMax:
        """The block-max bounds for these column weights, computed on first use and kept with the postings (they
        are immutable: an update makes new postings, whose IDFs and average length differ)."""
        key = tuple(float(x) for x in weights[: self.tfs.shape[0]])
        bounds = self._bounds.get(key)
        if bounds is None:
            bounds = self._bounds[key] = BlockMax.build(self, weights)
        return bounds

    def top(
        self,
        phrases: Sequence[str],
        weights: Sequence[float],
        k: int,
        allowed: np.ndarray | None = None,
        *,
        prune: bool = True,
    ) -> TopK:
        """``top_exhaustive``'s answer (same rows, same float32 scores bit for bit, same tie order), scoring only
        part of the postings of a large table's common terms: MaxScore (Turtle and Flood) with block-max bounds
        (Ding and Suel), as PISA's block-max MaxScore, cast as a few whole-array numpy passes rather than a walk
        row by row (which Python cannot afford; bench/README.md gives the measurements that chose it).

        1. A threshold from real scores: the rows of the best blocks (highest block max) of the three strongest
           terms are scored exactly; the k-th best allowed score is one that k rows reach (0 if fewer do).
        2. Non-essential terms: those whose maxima together stay below the threshold. A row holding only those
           cannot enter the top k, so the candidates are the rows of the essential terms.
        3. Block-max: an essential term's block whose bound (its own max plus, for each other term, the largest
           block max among that term's postings inside the block's rows) is below the threshold is skipped: its
           rows cannot enter the top k, so they need neither be candidates nor get this term's contribution.
        4. Every phrase, in query order, adds its contribution to the candidates (all the postings of an essential
           term's kept blocks; a non-essential term's postings of candidate rows only), so each candidate's sum is
           the exhaustive float32 sum; the best k of them, ties by row.

        Bounds are float64 sums of float32 maxima widened by ``_SLACK``, so the rounding of a real score never
        exceeds its bound; a row whose bound equals the threshold is kept (a tied row with a lower rowid wins).
        Below ``_PRUNE_MIN_POSTINGS`` postings or ``_PRUNE_MIN_ROWS`` rows, and for a filter allowing few rows,
        there is nothing worth pruning and the exhaustive scorer (or a lookup of the allowed rows) answers; so it
        does with ``prune=False`` (the service's default: the lexical_pruning setting)."""
        terms, counts = self._terms(phrases)
        if k <= 0 or not len(terms) or not self.rows:
            return TopK.empty()
        every = int((self.indptr[terms + 1] - self.indptr[terms]).sum())
        if allowed is not None and int(np.count_nonzero(allowed)) * len(terms) * 4 < every:
            # a narrow filter: looking up each allowed row costs less than any walk over the postings
            rows = np.flatnonzero(allowed)
            found, scores = _best_positive(rows, self.score_rows(phrases, weights, rows), k)
            return TopK(found, scores, 0, len(rows) * len(terms))
        if not prune or every < _PRUNE_MIN_POSTINGS or self.rows < _PRUNE_MIN_ROWS:
            found, scores = self.top_exhaustive(phrases, weights, k, allowed)
            return TopK(found, scores, every, 0)
        return _maxscore_top(self, phrases, weights, terms, counts, k, allowed)

    def _term_of_postings(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int32), np.diff(self.indptr))

    def without(self, rowids: Iterable[int]) -> Segment:
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
        return Segment(
            rowids=self.rowids[keep_rows],
            lengths=self.lengths[keep_rows],
            vocab=self.vocab,
            indptr=indptr,
            docs=new_index[self.docs[keep]],
            tfs=np.ascontiguousarray(self.tfs[:, keep]),
        )

    def extended(self, rows: Iterable[tuple[int, Sequence[str]]]) -> Segment:
        """A copy with new rows appended; only they are tokenized. Their rowids must be above every present one
        (SQLite gives a new row the largest rowid plus one, and deleted rows are removed first)."""
        return self.appended(Segment.build(rows, self.tfs.shape[0], self.vocab))

    def appended(self, new: Segment) -> Segment:
        """A copy with the rows of ``new`` (whose vocabulary extends this one's) after its own."""
        if not new.rows:
            return self
        if self.rows and int(new.rowids[0]) <= int(self.rowids[-1]):
            raise ValueError("new rows must come after the existing ones")
        terms = np.concatenate([self._term_of_postings(), new._term_of_postings()])
        order = np.argsort(terms, kind="stable")  # old rows before new ones inside each term: still ascending
        counts = np.bincount(terms, minlength=len(new.vocab))
        indptr = np.zeros(len(new.vocab) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return Segment(
            rowids=np.concatenate([self.rowids, new.rowids]),
            lengths=np.concatenate([self.lengths, new.lengths]),
            vocab=new.vocab,
            indptr=indptr,
            docs=np.concatenate([self.docs, new.docs + self.rows]).astype(np.int32)[order],
            tfs=np.ascontiguousarray(np.concatenate([self.tfs, new.tfs], axis=1)[:, order]),
        )

    def forward(self) -> tuple[np.ndarray, np.ndarray]:
        """(row pointer, term ids): each row's terms, the postings transposed. What a tombstone subtracts from the
        table's document frequencies without a pass over the postings; one sort, made by ``build`` for the rows it
        counts."""
        if self._forward is None:
            ptr, order = _row_order(self.docs, self.rows)
            self._forward = (ptr, self._term_of_postings()[order].astype(np.int32))
        return self._forward

    def with_stats(self, stats: TableStats | None) -> Segment:
        """The same arrays scored with a whole table's statistics (``stats``), nothing derived from them shared."""
        return Segment(self.rowids, self.lengths, self.vocab, self.indptr, self.docs, self.tfs, stats)

    def positions(self, rowids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(rowids present here, their row indexes)."""
        wanted = _keys(rowids)
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
    def load(cls, path: Path) -> Segment:
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


BLOCK = 128  # postings per block of the bounds (Lucene's and PISA's size)
_SLACK = 1 + 1e-5  # widens float64 sums of float32 maxima past any float32 rounding of the real score
_SKIP_MIN_BLOCKS = 256  # a term with fewer blocks is scored whole: bounding each costs more than it saves
# below either, every posting is scored (bench/bm25_topk.py): seeding a threshold and bounding blocks cost more
# than they save when the query has few postings, or when the table is small enough that a scatter over its rows
# stays in cache (the 26,671 RealTime QA articles: 1.3 ms exhaustive, 16 ms pruned)
_PRUNE_MIN_POSTINGS = 50_000
_PRUNE_MIN_ROWS = 200_000
_SEED_ROWS = 4  # seed blocks per strongest term hold about this many rows per row asked for
_SEED_TERMS = 3  # terms whose best block seeds the threshold (the highest scores hold the strongest terms)


_BUILD_CHUNK = 4096  # rows tokenized before their tokens are counted: bounds a full build's memory
_ROW_MASK = (1 << 31) - 1


def _count_chunk(
    chunk: Sequence[Sequence[str]],
    columns: int,
    words: Vocab,
    first_row: int,
    keys: list[np.ndarray],
    cols: list[np.ndarray],
    lengths: list[np.ndarray],
) -> None:
    """Tokenize a chunk of rows (their first row is ``first_row``) and append one (term << 31 | row) key and one
    column per token to ``keys`` and ``cols``, and the rows' lengths in tokens to ``lengths``; new terms get ids in
    ``words`` in the order they first occur."""
    flat: list[str] = []
    cells: list[int] = []
    for texts in chunk:
        if len(texts) > columns:
            raise ValueError(f"a row has {len(texts)} texts for {columns} columns")
        for c in range(columns):
            found = unicode61.tokens(texts[c]) if c < len(texts) else []
            cells.append(len(found))
            flat += found
    distinct = {token: i for i, token in enumerate(dict.fromkeys(flat))}  # in order of first occurrence
    ids = list(map(distinct.__getitem__, flat))
    stems = list(map(stem, distinct))
    term_of = np.fromiter(map(words.ids(stems).__getitem__, stems), dtype=np.int64, count=len(stems))
    per_cell = np.array(cells, dtype=np.int64)
    cell = np.repeat(np.arange(len(cells), dtype=np.int64), per_cell)
    keys.append((term_of[np.array(ids, dtype=np.int64)] << 31) | (cell // columns + first_row))
    cols.append(cell % columns)
    lengths.append(per_cell.reshape(len(chunk), columns).sum(axis=1))


def _best(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of (rows, scores), best first, ties by row (so by rowid): every row tied with the k-th score
    competes, so which tied row makes the cut never depends on the partition's order."""
    if len(rows) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]


def _best_positive(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    positive = scores > 0
    return _best(rows[positive], scores[positive], k)


@dataclass(frozen=True)
class TopK:
    """A pruned top k: row indexes best first, their exact scores, and the work it took (for the benchmark)."""

    rows: np.ndarray  # int64
    scores: np.ndarray  # float32
    scored: int = 0  # postings scored (the exhaustive scorer scores every posting of every query term)
    checked: int = 0  # postings of non-essential terms only tested for membership, or rows looked up in them

    @classmethod
    def empty(cls) -> TopK:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32))


@dataclass(frozen=True)
class BlockMax:
    """Each term's postings (in row order) cut into blocks of ``BLOCK``, with the largest BM25 contribution of any
    posting in each block and in each term, for one set of column weights. Derived from the postings in one
    vectorised pass (no file of its own: ``bench/bm25_topk.py`` measures the pass)."""

    bptr: np.ndarray  # int64[terms + 1]: term t's blocks are [bptr[t], bptr[t + 1])
    starts: np.ndarray  # int64[blocks + 1]: block b's postings are [starts[b], starts[b + 1])
    maxes: np.ndarray  # float32[blocks]: largest contribution in each block (IDF included)
    term_max: np.ndarray  # float64[terms]: largest contribution of each term

    @classmethod
    def build(cls, postings: Segment, weights: Sequence[float], chunk: int = 1 << 22) -> BlockMax:
        """Every posting's contribution computed as ``Postings.scores`` computes it (in chunks, to bound memory),
        then maxima per block and per term."""
        df = np.diff(postings.indptr)
        n_terms = len(df)
        per_term = (df + BLOCK - 1) // BLOCK
        bptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(per_term, out=bptr[1:])
        blocks = int(bptr[-1])
        term_of_block = np.repeat(np.arange(n_terms, dtype=np.int64), per_term)
        within = np.arange(blocks, dtype=np.int64) - bptr[term_of_block]  # a block's place in its term's list
        starts = np.empty(blocks + 1, dtype=np.int64)
        starts[:blocks] = postings.indptr[term_of_block] + within * BLOCK
        starts[blocks] = len(postings.docs)
        stats = postings.stats
        n = max(postings.rows, 1) if stats is None else max(stats.rows, 1)
        live_df = df if stats is None else stats.df_array(n_terms)
        idfs = np.maximum(np.log((n - live_df + 0.5) / (live_df + 0.5)), 1e-6).astype(np.float32)
        terms = postings._term_of_postings()
        w = postings._column_weights(weights)
        total = len(postings.docs)
        contributions = np.empty(total, dtype=np.float32)
        for lo in range(0, total, chunk):
            hi = min(lo + chunk, total)
            contributions[lo:hi] = Segment._contributions(
                idfs[terms[lo:hi]], postings.tfs[:, lo:hi], w, postings._norm(postings.docs[lo:hi])
            )
        maxes = np.maximum.reduceat(contributions, starts[:blocks]) if blocks else np.zeros(0, np.float32)
        term_max = np.zeros(n_terms, dtype=np.float64)
        if blocks:
            term_max[per_term > 0] = np.maximum.reduceat(maxes, bptr[:-1][per_term > 0])
        return cls(bptr=bptr, starts=starts, maxes=maxes, term_max=term_max)


def _slices(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The indexes of the concatenated slices [lo[i], hi[i])."""
    sizes = hi - lo
    return np.repeat(lo - np.cumsum(sizes) + sizes, sizes) + np.arange(int(sizes.sum()), dtype=np.int64)


def _kept_postings(
    postings: Segment, bounds: BlockMax, t: int, terms: np.ndarray, counts: np.ndarray, threshold: float
) -> np.ndarray | None:
    """Term ``t``'s postings in blocks whose bound reaches ``threshold`` (None: every block does). A row in a
    skipped block scores below the threshold, which k real rows reach, so it cannot enter the top k: leaving it
    out of the candidates, or without this term's contribution, changes nothing in the answer."""
    b0, b1 = int(bounds.bptr[t]), int(bounds.bptr[t + 1])
    if threshold <= 0 or b1 - b0 < _SKIP_MIN_BLOCKS:
        return None
    first = postings.docs[bounds.starts[b0:b1]]
    last = postings.docs[bounds.starts[b0 + 1 : b1 + 1] - 1]
    ceiling = bounds.maxes[b0:b1].astype(np.float64) * float(counts[np.searchsorted(terms, t)])
    for other, count in zip(terms, counts, strict=True):
        if other == t:
            continue
        lo, hi = int(postings.indptr[other]), int(postings.indptr[other + 1])
        docs = postings.docs[lo:hi]
        i0 = np.searchsorted(docs, first)
        i1 = np.searchsorted(docs, last, side="right")
        present = np.flatnonzero(i1 > i0)  # blocks whose rows hold postings of the other term
        if not len(present):
            continue
        values = bounds.maxes[int(bounds.bptr[other]) : int(bounds.bptr[other + 1])].astype(np.float64)
        # the other term's blocks holding those postings: [j0, j1), ascending with the blocks (rows ascend)
        j0 = i0[present] // BLOCK
        j1 = (i1[present] - 1) // BLOCK + 1
        spans = np.maximum.reduceat(np.append(values, 0.0), np.stack([j0, j1], axis=1).ravel())[::2]
        ceiling[present] += spans * float(count)
    keep = ceiling * _SLACK >= threshold
    if keep.all():
        return None
    return _slices(bounds.starts[b0:b1][keep], bounds.starts[b0 + 1 : b1 + 1][keep])


def _maxscore_top(
    postings: Segment,
    phrases: Sequence[str],
    weights: Sequence[float],
    terms: np.ndarray,
    counts: np.ndarray,
    k: int,
    allowed: np.ndarray | None,
) -> TopK:
    """``Postings.top``'s search (its docstring says why it is exact)."""
    # 1. a threshold from real scores: the rows of the best blocks of the strongest terms, scored exactly
    bounds = postings.block_max(weights)
    threshold = 0.0
    strongest = terms[np.argsort(-bounds.term_max[terms] * counts, kind="stable")[:_SEED_TERMS]]
    per_term = -(-_SEED_ROWS * k // BLOCK)  # enough blocks that k rows with several terms are likely among them
    best = np.concatenate(
        [
            bounds.bptr[t] + np.argsort(-bounds.maxes[bounds.bptr[t] : bounds.bptr[t + 1]], kind="stable")[:per_term]
            for t in strongest
        ]
    )
    seeds = np.unique(postings.docs[_slices(bounds.starts[best], bounds.starts[best + 1])])
    if allowed is not None:
        seeds = seeds[allowed[seeds]]
    _, seed_scores = _best_positive(seeds, postings.score_rows(phrases, weights, seeds), k)
    checked = len(seeds) * len(terms)
    if len(seed_scores) == k:
        threshold = float(seed_scores[-1])
    # 2. MaxScore: the terms whose bounds together stay below it are non-essential
    # 3. block-max: an essential term's block whose bound (its max plus, for each other term, the largest block
    #    max among that term's postings within the block's row range) is below the threshold is skipped
    non_essential: set[int] = set()
    kept: dict[int, np.ndarray | None] = {int(t): None for t in terms}  # essential term -> postings to score
    if threshold > 0:
        term_bounds = bounds.term_max[terms] * counts
        order = np.argsort(term_bounds, kind="stable")
        non_essential = set(terms[order[np.cumsum(term_bounds[order]) * _SLACK < threshold]].tolist())
        kept = {}
        for t in terms:
            if int(t) not in non_essential:
                kept[int(t)] = _kept_postings(postings, bounds, int(t), terms, counts, threshold)
                blocks = int(bounds.bptr[t + 1] - bounds.bptr[t])
                checked += len(terms) * blocks if blocks >= _SKIP_MIN_BLOCKS else 0
    # 4. the candidates: rows holding an essential term in a kept block (and allowed); every phrase is scored for
    #    them in query order, so each candidate's float32 sum is the exhaustive one
    candidate = np.zeros(postings.rows, dtype=bool)
    for t, at in kept.items():
        candidate[postings.docs[postings.indptr[t] : postings.indptr[t + 1]] if at is None else postings.docs[at]] = (
            True
        )
    if allowed is not None:
        candidate &= allowed
    rows = np.flatnonzero(candidate)
    acc = np.zeros(postings.rows, dtype=np.float32)
    w = postings._column_weights(weights)
    scored = 0
    for t, lo, hi, idf32 in postings._phrase_postings(phrases):
        docs = postings.docs[lo:hi]
        essential = t in kept
        at = kept.get(t)
        if essential and at is None:  # every posting: slices, as the exhaustive scorer reads them
            acc[docs] += Segment._contributions(idf32, postings.tfs[:, lo:hi], w, postings._norm(docs))
            scored += hi - lo
            continue
        if at is not None:
            pass
        elif len(rows) * 16 < hi - lo:  # few candidates: look each up in the term's row-ordered postings
            where = np.searchsorted(docs, rows)
            found = np.flatnonzero(where < hi - lo)
            found = found[docs[where[found]] == rows[found]]
            at = lo + where[found]
            checked += len(rows)
        else:
            at = lo + np.flatnonzero(candidate[docs])
            checked += hi - lo
        sel = postings.docs[at]
        acc[sel] += Segment._contributions(idf32, postings.tfs[:, at], w, postings._norm(sel))
        scored += len(at)
    found_rows, found_scores = _best_positive(rows, acc[rows], k)
    return TopK(found_rows, found_scores, scored, checked)


class Postings:
    """A table's BM25 postings kept as Lucene keeps an index: an immutable ``base`` segment (memory-mapped when
    loaded from disk), tombstones (``dead``: its rows deleted since, sorted row indexes) and one small ``delta``
    segment of the rows added since, rebuilt by each write from the previous delta and the new rows. A write costs
    what it changed (its rows, the tombstones' terms through the base's forward index), not the table.

    The statistics stay FTS5's over live rows, exactly: row count, total length (an exact sum) and each term's
    document frequency (the base's, less its tombstoned rows', plus the delta's). Every scorer runs on the base and
    the delta with those statistics, so each live row gets the float32 additions, in the same order, that the one
    merged segment (``merged()``) gives it: scores, top k and tie order (row order, which is rowid order: new rows
    take rowids above every live one) are the merged segment's bit for bit (tests/test_bm25_segments.py).

    Row indexes (``positions``, ``top``, ``score_rows``) count live rows: base rows not tombstoned, then delta rows.
    ``indptr``, ``docs``, ``tfs`` and ``lengths`` are the merged segment's, built on first use (for a reader that
    walks every posting; the scorers never need them)."""

    def __init__(
        self,
        base: Segment,
        dead: np.ndarray | None = None,
        delta: Segment | None = None,
        dead_df: dict[int, int] | None = None,
        total: float | None = None,
    ) -> None:
        self.base = base
        self.dead = dead if dead is not None else np.zeros(0, np.int64)
        vocab = base.vocab if isinstance(base.vocab, Vocab) else Vocab(base.vocab)
        self.delta = delta if delta is not None else Segment.build([], base.tfs.shape[0], vocab)
        self.dead_df = dead_df if dead_df is not None else {}
        self.total = float(base.lengths.sum(dtype=np.float64)) if total is None else total
        # what the next save appends (bookkeeping only, never read by a search): delta rows from ``persisted`` on,
        # base rows tombstoned and saved delta rows removed since the last save, terms numbered from ``saved_terms``
        self.persisted = 0
        self.unsaved_dead = np.zeros(0, np.int64)
        self.unsaved_gone = np.zeros(0, np.int64)
        self.saved_terms = len(self.vocab)
        self._views: tuple[Segment, Segment] | None = None
        self._merged: Segment | None = None
        self._rowids: np.ndarray | None = None
        self._alive: np.ndarray | None = None

    # -- shape and statistics ----------------------------------------------------------------------------------

    @property
    def vocab(self) -> Mapping[str, int]:
        return self.delta.vocab

    @property
    def columns(self) -> int:
        return int(self.base.tfs.shape[0])

    @property
    def base_live(self) -> int:
        return self.base.rows - len(self.dead)

    @property
    def rows(self) -> int:
        return self.base_live + self.delta.rows

    def df(self, t: int) -> int:
        """Live rows holding term ``t``."""
        n = 0
        base, delta = self.base.indptr, self.delta.indptr
        if t + 1 < len(base):
            n += int(base[t + 1] - base[t]) - self.dead_df.get(t, 0)
        if t + 1 < len(delta):
            n += int(delta[t + 1] - delta[t])
        return n

    def df_array(self, n: int) -> np.ndarray:
        """``df`` of term ids 0..n-1."""
        out = np.zeros(n, dtype=np.int64)
        for indptr in (self.base.indptr, self.delta.indptr):
            m = min(n, len(indptr) - 1)
            out[:m] += np.diff(np.asarray(indptr[: m + 1]))
        if self.dead_df:
            terms = np.fromiter(self.dead_df, np.int64, len(self.dead_df))
            counts = np.fromiter(self.dead_df.values(), np.int64, len(self.dead_df))
            inside = terms < n
            np.subtract.at(out, terms[inside], counts[inside])
        return out

    def stats(self) -> TableStats:
        rows = self.rows
        return TableStats(rows, self.total / rows if rows else 0.0, self.df, self.df_array)

    def _segments(self) -> tuple[Segment, Segment]:
        """The base and the delta scored with the table's statistics (made once per postings: they never change)."""
        if self._views is None:
            stats = self.stats()
            self._views = (self.base.with_stats(stats), self.delta.with_stats(stats))
        return self._views

    # -- row indexes ---------------------------------------------------------------------------------------------

    def _base_slots(self, live: np.ndarray) -> np.ndarray:
        """Base row indexes of live rows below ``base_live``."""
        if not len(self.dead):
            return live
        shifted = self.dead - np.arange(len(self.dead), dtype=np.int64)
        return live + np.searchsorted(shifted, live, side="right")

    def _live_of(self, slots: np.ndarray) -> np.ndarray:
        """Live row indexes of base rows that are not tombstoned."""
        return slots - np.searchsorted(self.dead, slots) if len(self.dead) else slots

    def _base_mask(self, allowed: np.ndarray | None) -> np.ndarray | None:
        """A filter over live rows as one over the base's rows, tombstoned rows never allowed (the mask of live
        base rows is made once per postings, not per query)."""
        if allowed is None and not len(self.dead):
            return None
        if self._alive is None:
            self._alive = np.ones(self.base.rows, dtype=bool)
            self._alive[self.dead] = False
        if allowed is None:
            return self._alive
        mask = self._alive.copy()
        mask[mask] = allowed[: self.base_live]
        return mask

    @property
    def rowids(self) -> np.ndarray:
        """Every live row's rowid, ascending (made on first use)."""
        if self._rowids is None:
            self._rowids = np.concatenate([np.delete(np.asarray(self.base.rowids), self.dead), self.delta.rowids])
        return self._rowids

    def rowids_of(self, rows: np.ndarray) -> np.ndarray:
        """The rowids of live row indexes."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty(len(rows), dtype=np.int64)
        in_base = rows < self.base_live
        out[in_base] = self.base.rowids[self._base_slots(rows[in_base])]
        out[~in_base] = self.delta.rowids[rows[~in_base] - self.base_live]
        return out

    def positions(self, rowids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(rowids present here, their live row indexes), in the order given."""
        wanted = _keys(rowids)
        live = np.full(len(wanted), -1, dtype=np.int64)
        slots, found = sorted_lookup(self.base.rowids, wanted)
        if len(self.dead):
            at = np.searchsorted(self.dead, slots)
            found &= ~((at < len(self.dead)) & (self.dead[np.minimum(at, len(self.dead) - 1)] == slots))
        live[found] = self._live_of(slots[found])
        rows, found = sorted_lookup(self.delta.rowids, wanted)
        live[found] = self.base_live + rows[found]
        keep = live >= 0
        return wanted[keep], live[keep]

    # -- scoring ---------------------------------------------------------------------------------------------------

    def scores(self, phrases: Sequence[str], weights: Sequence[float]) -> np.ndarray:
        """``Segment.scores`` of the merged postings: every live row's BM25 (the exhaustive scorer)."""
        base, delta = self._segments()
        return np.concatenate([np.delete(base.scores(phrases, weights), self.dead), delta.scores(phrases, weights)])

    def score_rows(self, phrases: Sequence[str], weights: Sequence[float], rows: np.ndarray) -> np.ndarray:
        """``scores(phrases, weights)[rows]`` bit for bit, by lookups in the base and the delta."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros(len(rows), dtype=np.float32)
        base, delta = self._segments()
        in_base = rows < self.base_live
        if in_base.any():
            out[in_base] = base.score_rows(phrases, weights, self._base_slots(rows[in_base]))
        if not in_base.all():
            out[~in_base] = delta.score_rows(phrases, weights, rows[~in_base] - self.base_live)
        return out

    def top_exhaustive(
        self, phrases: Sequence[str], weights: Sequence[float], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The oracle: the best ``k`` live rows from every row's score (``Segment.top_exhaustive``)."""
        scores = self.scores(phrases, weights)
        matched = np.flatnonzero(scores > 0)
        if allowed is not None:
            matched = matched[allowed[matched]]
        return _best(matched, scores[matched], k)

    def top(
        self,
        phrases: Sequence[str],
        weights: Sequence[float],
        k: int,
        allowed: np.ndarray | None = None,
        *,
        prune: bool = True,
    ) -> TopK:
        """``top_exhaustive``'s answer: the base's top k (block-max pruned with the table's statistics when
        ``prune``; tombstoned rows never allowed) and the small delta's, merged. A row of the top k is in the top k
        of its segment, so the best k of both lists are the table's, ties by row."""
        if k <= 0 or not self.rows:
            return TopK.empty()
        base, delta = self._segments()
        b = base.top(phrases, weights, k, self._base_mask(allowed), prune=prune)
        d = delta.top(phrases, weights, k, None if allowed is None else allowed[self.base_live :], prune=prune)
        rows, scores = _best(
            np.concatenate([self._live_of(b.rows), d.rows + self.base_live]), np.concatenate([b.scores, d.scores]), k
        )
        return TopK(rows, scores, b.scored + d.scored, b.checked + d.checked)

    def holding(self, phrases: Sequence[str]) -> np.ndarray:
        """A mask over live rows: those holding at least one of ``phrases`` (a union of postings, nothing scored)."""
        parts = []
        for segment in (self.base, self.delta):
            hit = np.zeros(segment.rows, dtype=bool)
            for t in segment._terms(phrases)[0]:
                hit[segment.docs[segment.indptr[t] : segment.indptr[t + 1]]] = True
            parts.append(hit)
        return np.concatenate([np.delete(parts[0], self.dead), parts[1]])

    def term_idf(self, term: str) -> float | None:
        """The IDF of a (stemmed) term, None for one no live row holds (as a table rebuilt from its rows lacks it)."""
        t = self.vocab.get(term)
        df = 0 if t is None else self.df(t)
        return idf(self.rows, df) if df else None

    # -- writes ----------------------------------------------------------------------------------------------------

    def without(self, rowids: Iterable[int]) -> Postings:
        """These postings without the given rows: base rows are tombstoned (their terms leave the document
        frequencies through the base's forward index), delta rows filtered out of the small delta."""
        wanted = np.unique(np.fromiter((int(r) for r in rowids), dtype=np.int64))
        present, live = self.positions(wanted)
        if not len(live):
            return self
        in_base = live < self.base_live
        slots = self._base_slots(live[in_base])
        gone = live[~in_base] - self.base_live
        dead_df = dict(self.dead_df)
        if len(slots):
            ptr, terms = self.base.forward()
            dead_terms, counts = np.unique(np.asarray(terms[_slices(ptr[slots], ptr[slots + 1])]), return_counts=True)
            for t, c in zip(dead_terms.tolist(), counts.tolist(), strict=True):
                dead_df[t] = dead_df.get(t, 0) + c
        removed = float(self.base.lengths[slots].sum(dtype=np.float64)) + float(
            self.delta.lengths[gone].sum(dtype=np.float64)
        )
        out = Postings(
            self.base,
            np.union1d(self.dead, slots),
            self.delta.without(present[~in_base]),
            dead_df,
            self.total - removed,
        )
        out._carry(self, slots, present[~in_base][gone < self.persisted], int(np.count_nonzero(gone < self.persisted)))
        return out

    def extended(self, rows: Iterable[tuple[int, Sequence[str]]]) -> Postings:
        """These postings with new rows after the live ones (SQLite gives a new row a rowid above every live one);
        only the new rows are tokenized, and only the delta is rebuilt."""
        new = Segment.build(rows, self.columns, self.delta.vocab)
        if not new.rows:
            return self
        if self.rows and int(new.rowids[0]) <= int(self.rowids_of(np.array([self.rows - 1]))[0]):
            raise ValueError("new rows must come after the existing ones")
        out = Postings(
            self.base,
            self.dead,
            self.delta.appended(new),
            self.dead_df,
            self.total + float(new.lengths.sum(dtype=np.float64)),
        )
        out._carry(self, np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
        return out

    def _carry(self, before: Postings, dead: np.ndarray, gone: np.ndarray, persisted_gone: int) -> None:
        self.persisted = before.persisted - persisted_gone
        self.unsaved_dead = np.concatenate([before.unsaved_dead, dead])
        self.unsaved_gone = np.concatenate([before.unsaved_gone, gone])
        self.saved_terms = before.saved_terms

    def mark_saved(self) -> None:
        """Everything so far is on disk: the next save appends only what changes after this."""
        self.persisted = self.delta.rows
        self.unsaved_dead = np.zeros(0, np.int64)
        self.unsaved_gone = np.zeros(0, np.int64)
        self.saved_terms = len(self.vocab)

    @property
    def changed(self) -> bool:
        """Whether anything happened since the last save (or load)."""
        return (
            bool(len(self.unsaved_dead) or len(self.unsaved_gone) or self.delta.rows > self.persisted)
            or len(self.vocab) > self.saved_terms
        )

    def merged(self) -> Segment:
        """One segment holding exactly the live rows (what a merge writes as the new base)."""
        if self._merged is None:
            if not len(self.dead) and not self.delta.rows and len(self.base.vocab) == len(self.vocab):
                self._merged = self.base
            else:
                vocab = dict(self.vocab)
                kept = self.base.without(self.base.rowids[self.dead]) if len(self.dead) else self.base
                kept = replace(kept, vocab=vocab)
                tail = replace(self.delta, vocab=vocab)
                self._merged = kept.appended(tail) if tail.rows else _widened(kept, len(vocab))
        return self._merged

    def merged_with_forward(self) -> Segment:
        """``merged()`` with its forward index (what a base on disk holds), carried over rather than sorted."""
        merged = self.merged()
        if merged._forward is None:
            merged._forward = self._forward_of_live()
        return merged

    def _forward_of_live(self) -> tuple[np.ndarray, np.ndarray]:
        """The merged segment's forward index from the base's (less its tombstoned rows) and the delta's: term ids
        are the same in both, so no sort over the table's postings is needed (a merge's largest cost otherwise)."""
        ptr, terms = self.base.forward()
        alive = np.delete(np.arange(self.base.rows, dtype=np.int64), self.dead)
        delta_ptr, delta_terms = self.delta.forward()
        counts = np.concatenate([(ptr[alive + 1] - ptr[alive]), np.diff(delta_ptr)])
        fwd_ptr = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=fwd_ptr[1:])
        kept = np.asarray(terms[_slices(ptr[alive], ptr[alive + 1])], dtype=np.int32)
        return fwd_ptr, np.concatenate([kept, np.asarray(delta_terms, dtype=np.int32)])

    def segment_holding(self, rowids: np.ndarray) -> Segment:
        """A segment holding every row of ``rowids`` with the table's term ids: the delta when they are all there
        (a write's new rows, so a reader of their postings walks the delta, not the table), else the merged one."""
        _, found = sorted_lookup(self.delta.rowids, np.asarray(rowids, dtype=np.int64))
        return self.delta if found.all() else self.merged()

    # -- the merged arrays, for readers that walk every posting ----------------------------------------------------

    @property
    def indptr(self) -> np.ndarray:
        return self.merged().indptr

    @property
    def docs(self) -> np.ndarray:
        return self.merged().docs

    @property
    def tfs(self) -> np.ndarray:
        return self.merged().tfs

    @property
    def lengths(self) -> np.ndarray:
        return self.merged().lengths

    @classmethod
    def build(
        cls, rows: Iterable[tuple[int, Sequence[str]]], columns: int, vocab: Mapping[str, int] | None = None
    ) -> Postings:
        """From (rowid, column texts) in ascending rowid order: one base segment (``Segment.build``)."""
        return cls(Segment.build(rows, columns, vocab))

    def save(self, path: Path) -> None:
        """The merged segment as one ``.npz`` (a benchmark's cache; an index saves base and segments)."""
        self.merged().save(path)

    @classmethod
    def load(cls, path: Path) -> Postings:
        return cls(Segment.load(path))

    def validate(self) -> None:
        """``Segment.validate`` of the merged postings: raise ``ValueError`` unless they are one consistent index."""
        self.merged().validate()

    def memory_bytes(self) -> int:
        """What these postings hold in memory: the delta, the tombstones and the base's arrays that are not
        memory-mapped (a mapped file is counted by the page cache, not here)."""
        base = self.base
        arrays = [a for a in (base.rowids, base.lengths, base.indptr, base.docs, base.tfs) if not _mapped(a)]
        return deep_size((arrays, base.vocab, self.delta, self.dead, self.dead_df))


def _row_order(docs: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Postings turned into a forward index: (row pointer over ``rows`` rows, the order that puts the postings in
    row order, stable, so each row's terms stay in term order)."""
    order = np.argsort(docs, kind="stable")
    ptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(docs, minlength=rows), out=ptr[1:])
    return ptr, order


def _keys(rowids: Iterable[int]) -> np.ndarray:
    """Row ids as int64, an int64 array as it is (no Python int per id)."""
    if isinstance(rowids, np.ndarray) and rowids.dtype == np.int64:
        return rowids
    return np.fromiter((int(r) for r in rowids), dtype=np.int64)


def _mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is a view of a memory-mapped file (its page cache is not this process's memory)."""
    base: object = array
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return isinstance(base, mmap.mmap)


def _widened(segment: Segment, terms: int) -> Segment:
    """``segment`` with room for ``terms`` term ids (the new ones without postings)."""
    if len(segment.indptr) == terms + 1:
        return segment
    indptr = np.concatenate([segment.indptr, np.full(terms + 1 - len(segment.indptr), segment.indptr[-1])])
    return replace(segment, indptr=indptr)


@dataclass
class LexicalPostings:
    """Postings of both tables, stamped with the store generation they were built from.

    On disk (``save``), as the vector segments (search/vectors/segments.py): each table's base is a set of
    uncompressed ``.npy`` files (``lexical-passages.base-<generation>.<tag>.<array>.npy``) written once, at a build
    or a merge, and opened memory-mapped, so an open reads their headers and the vocabulary only; each later save
    appends one small immutable segment file (``lexical-passages.seg-<generation>.<tag>.npz``: the rows added since
    the save before it, its tombstones, its new terms). ``lexical.json``, written last with a rename, lists each
    table's base (with its files' sizes and CRC-32) and segments (with their CRC-32), so a crash at any moment leaves
    the old list or the new one; a file it does not list is garbage, removed by a later save. Every file of a table
    is written as ``.lexical-<table>.tmp`` first (one at a time, under the caches lock), then renamed."""

    passages: Postings
    articles: Postings
    generation: int
    # the stamp on disk these postings were loaded from or last saved as, which their unsaved changes are relative to
    stamp: JSONObject | None = field(default=None, compare=False)

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
        store: ChangedRows,
        deleted: tuple[Sequence[int], Sequence[int]],
        added: tuple[Sequence[int], Sequence[int]],
        generation: int,
    ) -> LexicalPostings:
        """After a write of (article keys, passage ids) ``deleted`` and ``added``: new postings, re-tokenizing only
        the added rows and rebuilding only the small delta, stamped with ``generation``, the one that write committed
        (not the store's generation now, which may count another process's later write that these postings lack)."""
        del_aids, del_pids = deleted
        new_aids, new_pids = added
        return LexicalPostings(
            passages=self.passages.without(del_pids).extended(_passage_rows(store, new_pids)),
            articles=self.articles.without(del_aids).extended(_article_rows(store, new_aids)),
            generation=generation,
            stamp=self.stamp,
        )

    def tables(self) -> dict[str, Postings]:
        return {"passages": self.passages, "articles": self.articles}

    @staticmethod
    def stamp_of(directory: Path) -> JSONObject | None:
        """The stamp of the postings saved in ``directory`` (None: none readable), to compare with ``stamp``."""
        return _read_stamp(directory)

    @classmethod
    def saved(cls, directory: Path, generation: int) -> LexicalPostings | None:
        """The postings saved in ``directory`` for ``generation`` in this format, or None (missing, of another
        generation or format, damaged): what a process following another's write reads (search/storage/changes.py)
        rather than rebuild, nor ever rebuild whole on the reading path."""
        state = _read_stamp(directory)
        if state is None or state.get("generation") != generation or state.get("version") != POSTINGS_VERSION:
            return None
        try:
            return cls.load(directory, generation)
        except IndexCorrupt:
            return None
        except DAMAGED_CACHE:
            return None

    @classmethod
    def load(cls, directory: Path, generation: int, *, verify: bool = False) -> LexicalPostings:
        """The postings ``lexical.json`` describes; ``IndexCorrupt`` (or one of ``DAMAGED_CACHE``) when it is not
        for ``generation`` and this format, or a file is missing, of another size, or damaged. The bases are
        checked by size and their ``.npy`` headers (their arrays' shapes must fit together), the small segment files
        by CRC-32; ``verify`` (``newsdesk check``) reads the bases whole: their CRC-32 and every index in range.
        Lucene likewise verifies a segment's checksum on merge and in CheckIndex, not on every open: reading a
        1.1M-passage base to check it would cost what memory-mapping saves."""
        state = json.loads((directory / LEXICAL_STATE).read_text(encoding="utf-8"))
        if state.get("version") != POSTINGS_VERSION or state.get("generation") != generation:
            raise IndexCorrupt(f"{LEXICAL_STATE} is not for generation {generation} of this format")
        tables = {name: _load_table(directory, state["tables"][name], columns, verify) for name, columns in TABLES}
        return cls(tables["passages"], tables["articles"], generation, stamp=state)

    def save(self, directory: Path, *, merge: bool = False) -> int:
        """Append each table's changes since the last save as one segment file (nothing for a table without any),
        or write a new base when ``merge``, when the files on disk are not the ones the changes are relative to, or
        when the merge policy says so; then the stamp (last: a crash in between leaves the previous stamp, whose files
        are all still there), then remove the files no stamp lists. Returns how many segment files were merged away.
        Call under the caches lock (``Store.saving``): it replaces files another process may be about to list."""
        on_disk = _read_stamp(directory)
        appendable = self.stamp is not None and on_disk == self.stamp
        entries: dict[str, JSONValue] = {}
        merged = 0
        done: dict[str, Postings | None] = {}  # applied once the stamp is written: a table's new base, or None
        try:
            for name, _ in TABLES:
                postings = self.tables()[name]
                previous = _entry(self.stamp, name) if appendable else None
                segments = list(_segments_of(previous)) if previous is not None else []
                entry = dict(previous) if previous is not None else {}
                if previous is not None and merge and not segments and not postings.changed:
                    done[name] = None  # a merge with nothing to merge
                elif (
                    previous is None
                    or merge
                    or postings.delta.rows + len(postings.dead) > MERGE_FRACTION * max(postings.base.rows, 1)
                ):
                    base = postings.merged_with_forward()
                    entry = _write_base(directory, name, base, self.generation)
                    merged += len(segments)
                    done[name] = Postings(base)  # the same live rows, all in the base
                elif len(segments) + int(postings.changed) > MERGE_SEGMENTS:
                    # a tiered merge: everything since the base as one segment, the base kept (rewriting ~500 MB of
                    # base arrays every ninth write cost seconds at 924k passages; the delta is a few MB)
                    entry["segments"] = [_write_segment(directory, name, postings, self.generation, whole=True)]
                    merged += len(segments)
                    done[name] = None
                else:
                    if postings.changed:
                        entry["segments"] = [*segments, _write_segment(directory, name, postings, self.generation)]
                    done[name] = None
                entry["rows"] = postings.rows
                entries[name] = entry
            state: JSONObject = {"version": POSTINGS_VERSION, "generation": self.generation, "tables": entries}
            tmp = directory / f".{LEXICAL_STATE}.tmp"
            with discarded_on_failure(tmp):
                tmp.write_text(json.dumps(state), encoding="utf-8")
                os.replace(tmp, directory / LEXICAL_STATE)
        except BaseException:
            self.stamp = None  # whether the stamp was replaced is unknown: the next save writes new bases
            raise
        self.stamp = state
        for name, fresh in done.items():
            if fresh is None:
                self.tables()[name].mark_saved()
            else:
                setattr(self, name, fresh)
        for path in _garbage(directory, state):
            with contextlib.suppress(OSError):
                path.unlink()
        return merged

    def merge(self, directory: Path) -> int:
        """A save that writes a new base for every table holding segments or unsaved changes (``newsdesk
        optimize``); returns how many segment files it merged away."""
        return self.save(directory, merge=True)

    def memory_bytes(self) -> int:
        """What both tables' postings hold in memory (arrays and vocabularies): ``postings`` in the memory report."""
        return self.passages.memory_bytes() + self.articles.memory_bytes()


TABLES = (("passages", 1), ("articles", 2))
_BASE_ARRAYS = ("rowids", "lengths", "indptr", "docs", "tfs", "fwd_ptr", "fwd_terms")
_LEXICAL_FILE = re.compile(r"^(?P<stem>lexical-(passages|articles)\.(base|seg)-\d+\.[0-9a-f]+)(\.[a-z_]+\.npy|\.npz)?$")


def _read_stamp(directory: Path) -> JSONObject | None:
    try:
        state = json.loads((directory / LEXICAL_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _entry(state: JSONObject | None, table: str) -> JSONObject | None:
    tables = state.get("tables") if state is not None else None
    entry = tables.get(table) if isinstance(tables, dict) else None
    return entry if isinstance(entry, dict) else None


def _segments_of(entry: JSONObject) -> list[JSONObject]:
    segments = entry.get("segments")
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        raise IndexCorrupt(f"{LEXICAL_STATE} lists its segments wrongly")
    return [s for s in segments if isinstance(s, dict)]


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _write_base(directory: Path, table: str, base: Segment, generation: int) -> JSONObject:
    """A base segment as one ``.npy`` file per array (which ``np.load`` can memory-map; an ``.npz`` cannot be), each
    written beside its final name and renamed into place; returns its entry in the stamp (which lists the base only
    once every file is there)."""
    name = f"lexical-{table}.base-{generation}.{_tag()}"
    fwd_ptr, fwd_terms = base.forward()
    terms = sorted(base.vocab, key=base.vocab.__getitem__)
    arrays: dict[str, np.ndarray] = {
        "rowids": np.asarray(base.rowids, dtype=np.int64),
        "lengths": np.asarray(base.lengths, dtype=np.float32),
        "indptr": np.asarray(base.indptr, dtype=np.int64),
        "docs": np.asarray(base.docs, dtype=np.int32),
        "tfs": np.ascontiguousarray(base.tfs, dtype=np.float32),
        "fwd_ptr": np.asarray(fwd_ptr, dtype=np.int64),
        "fwd_terms": np.asarray(fwd_terms, dtype=np.int32),
        "vocab": np.frombuffer("\n".join(terms).encode("utf-8"), dtype=np.uint8),
    }
    sizes: dict[str, JSONValue] = {}
    sums: dict[str, JSONValue] = {}
    for key, values in arrays.items():
        path = directory / f"{name}.{key}.npy"
        tmp = directory / f".lexical-{table}.tmp"
        with discarded_on_failure(tmp):
            with tmp.open("wb") as fh:
                np.save(fh, values, allow_pickle=False)
            fsync_path(tmp)
            os.replace(tmp, path)
        sizes[key] = path.stat().st_size
        sums[key] = file_crc32(path)
    return {"base": name, "terms": len(terms), "sizes": sizes, "crc32": sums, "segments": []}


def _write_segment(
    directory: Path, table: str, postings: Postings, generation: int, *, whole: bool = False
) -> JSONObject:
    """One segment file: the delta rows added since the last save (their terms in row order: a forward index), the
    base rows tombstoned and the saved delta rows removed since, and the terms numbered since; returns its entry.
    ``whole``: everything since the base instead (every delta row, every tombstone, every term the base lacks), the
    one segment that replaces all those saved before it."""
    delta, start = postings.delta, postings.persisted
    dead, gone, saved_terms = postings.unsaved_dead, postings.unsaved_gone, postings.saved_terms
    if whole:
        start, dead, gone, saved_terms = 0, postings.dead, np.zeros(0, np.int64), len(postings.base.vocab)
    mine = delta.docs >= start
    docs = delta.docs[mine] - start
    fwd_ptr, order = _row_order(docs, delta.rows - start)
    new_terms = _terms_from(postings.vocab, saved_terms)
    name = f"lexical-{table}.seg-{generation}.{_tag()}.npz"
    path = directory / name
    tmp = directory / f".lexical-{table}.tmp"
    with discarded_on_failure(tmp):
        with tmp.open("wb") as fh:
            np.savez(
                fh,
                dead=np.sort(dead).astype(np.int64),
                gone=gone.astype(np.int64),
                rowids=delta.rowids[start:],
                lengths=delta.lengths[start:],
                fwd_ptr=fwd_ptr,
                fwd_terms=delta._term_of_postings()[mine][order].astype(np.int32),
                fwd_tfs=np.ascontiguousarray(delta.tfs[:, mine][:, order]),
                vocab_start=np.int64(saved_terms),
                vocab=np.frombuffer("\n".join(new_terms).encode("utf-8"), dtype=np.uint8),
            )
        fsync_path(tmp)
        os.replace(tmp, path)
    return {"name": name, "crc32": file_crc32(path)}


def _terms_from(vocab: Mapping[str, int], start: int) -> list[str]:
    """The terms numbered ``start`` and after, in id order. A ``Vocab``'s new terms are its ``extra`` (numbered after
    the base, in insertion order), so a save lists them without walking the base: a million terms at 924k passages,
    25 ms of the GIL per table on every write."""
    if isinstance(vocab, Vocab) and start >= len(vocab.base):
        return list(itertools.islice(vocab.extra, start - len(vocab.base), None))
    return list(vocab)[start:]


def _load_table(directory: Path, entry: JSONObject, columns: int, verify: bool) -> Postings:
    base = _load_base(directory, entry, columns, verify)
    postings = Postings(base)
    for segment in _segments_of(entry):
        name = str(segment["name"])
        path = directory / name
        if not _LEXICAL_FILE.match(name) or file_crc32(path) != segment.get("crc32"):
            raise IndexCorrupt(f"{name} is damaged or missing")
        postings = _applied(postings, path)
    if postings.rows != entry.get("rows"):
        raise IndexCorrupt(f"{LEXICAL_STATE} says {entry.get('rows')} rows, its files hold {postings.rows}")
    postings.mark_saved()
    return postings


def _load_base(directory: Path, entry: JSONObject, columns: int, verify: bool) -> Segment:
    name = str(entry["base"])
    sizes, sums = entry["sizes"], entry["crc32"]
    if not _LEXICAL_FILE.match(name) or not isinstance(sizes, dict) or not isinstance(sums, dict):
        raise IndexCorrupt(f"{LEXICAL_STATE} names its base wrongly")
    arrays: dict[str, np.ndarray] = {}
    for key in (*_BASE_ARRAYS, "vocab"):
        path = directory / f"{name}.{key}.npy"
        if path.stat().st_size != sizes.get(key) or (verify and file_crc32(path) != sums.get(key)):
            raise IndexCorrupt(f"{path.name} is damaged (its size or CRC-32 is not the one saved)")
        loaded = np.load(path, mmap_mode=None if key == "vocab" else "r", allow_pickle=False)
        # a plain view of the mapping: every slice of an np.memmap runs Python (memmap.__getitem__ and
        # __array_finalize__), a few hundred a search, 0.7 ms of its CPU; the view keeps the mapping alive
        arrays[key] = loaded.view(np.ndarray)
        if key != "vocab":  # mapped: read ahead into the page cache while the first searches run (files.prefetch)
            with path.open("rb") as fh:
                prefetch(fh.fileno())
    text = arrays["vocab"].tobytes().decode("utf-8")
    terms = text.split("\n") if text else []
    n, postings = len(arrays["rowids"]), len(arrays["docs"])
    shapes = (
        arrays["lengths"].shape == (n,)
        and arrays["indptr"].shape == (len(terms) + 1,)
        and arrays["tfs"].shape == (columns, postings)
        and arrays["fwd_ptr"].shape == (n + 1,)
        and arrays["fwd_terms"].shape == (postings,)
        and len(terms) == entry.get("terms")
    )
    if not shapes:
        raise IndexCorrupt(f"the arrays of {name} do not fit together")
    segment = Segment(
        arrays["rowids"],
        arrays["lengths"],
        {t: i for i, t in enumerate(terms)},
        arrays["indptr"],
        arrays["docs"],
        arrays["tfs"],
    )
    segment._forward = (arrays["fwd_ptr"], arrays["fwd_terms"])
    if verify:
        segment.validate()
    return segment


def _applied(postings: Postings, path: Path) -> Postings:
    """``postings`` with one segment file applied: its tombstones, then its rows."""
    with np.load(path, allow_pickle=False) as data:
        dead, gone = data["dead"], data["gone"]
        rowids, lengths = data["rowids"], data["lengths"]
        fwd_ptr, fwd_terms, fwd_tfs = data["fwd_ptr"], data["fwd_terms"], data["fwd_tfs"]
        start = int(data["vocab_start"])
        text = data["vocab"].tobytes().decode("utf-8")
    vocab = postings.delta.vocab
    if not isinstance(vocab, Vocab) or start != len(vocab) or fwd_tfs.shape != (postings.columns, len(fwd_terms)):
        raise IndexCorrupt(f"{path.name} does not follow the segments before it")
    if len(dead) and (int(dead.min()) < 0 or int(dead.max()) >= postings.base.rows):
        raise IndexCorrupt(f"{path.name} tombstones rows its base lacks")
    rows = len(rowids)
    if fwd_ptr.shape != (rows + 1,) or int(fwd_ptr[-1]) != len(fwd_terms) or lengths.shape != (rows,):
        raise IndexCorrupt(f"the arrays of {path.name} do not fit together")
    words = vocab.copy()
    for term in text.split("\n") if text else []:
        words.add(term)
    if len(fwd_terms) and (int(fwd_terms.min()) < 0 or int(fwd_terms.max()) >= len(words)):
        raise IndexCorrupt(f"{path.name} names terms it lacks")
    postings = postings.without(postings.base.rowids[dead]).without(gone) if len(dead) else postings.without(gone)
    docs = np.repeat(np.arange(rows, dtype=np.int32), np.diff(fwd_ptr))
    order = np.argsort(fwd_terms, kind="stable")
    indptr = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(np.bincount(fwd_terms, minlength=len(words)), out=indptr[1:])
    new = Segment(rowids, lengths, words, indptr, docs[order], np.ascontiguousarray(fwd_tfs[:, order]))
    if not rows:
        delta = replace(postings.delta, vocab=words, indptr=_widened(postings.delta, len(words)).indptr)
        return Postings(postings.base, postings.dead, delta, postings.dead_df, postings.total)
    return Postings(
        postings.base,
        postings.dead,
        postings.delta.appended(new),
        postings.dead_df,
        postings.total + float(lengths.sum(dtype=np.float64)),
    )


def _garbage(directory: Path, state: JSONObject) -> list[Path]:
    """The lexical files ``state`` does not list: bases and segments of saves that died before their stamp or were
    merged away, temporary files of killed saves, and the whole-table ``.npz`` files of the format before segments.
    Only safe to delete under the caches lock, where no other process is writing them."""
    listed: set[str] = set()
    for table, _ in TABLES:
        entry = _entry(state, table)
        if entry is not None:
            listed.add(str(entry["base"]))
            listed.update(str(s["name"]) for s in _segments_of(entry))
    found = []
    for path in directory.iterdir():
        name = path.name
        match = _LEXICAL_FILE.match(name)
        unlisted = match is not None and name not in listed and match["stem"] not in listed
        temporary = name.startswith(".lexical-") and name.endswith((".tmp", ".tmp.npz"))
        if unlisted or temporary or name in _OLD_FILES:
            found.append(path)
    return found


_OLD_FILES = {"lexical-passages.npz", "lexical-articles.npz"}


def load_postings(directory: Path, store: Store) -> LexicalPostings:
    """The saved postings if they match the store's generation and row counts, else rebuilt from the rows (and saved
    if writable). A stale, damaged or old-format cache is rebuilt the same way."""
    generation = store.generation()
    state = _read_stamp(directory)
    if state is not None and state.get("version") == POSTINGS_VERSION and state.get("generation") == generation:
        try:
            loaded = LexicalPostings.load(directory, generation)
            if (loaded.articles.rows, loaded.passages.rows) == store.counts():
                return loaded
        except IndexCorrupt:
            pass  # a damaged cache is rebuilt like a stale one
        except DAMAGED_CACHE:
            pass
    postings = LexicalPostings.build(store)
    # a read-only index still serves from the rebuilt in-memory copy; one written meanwhile saves its own
    with contextlib.suppress(OSError), store.saving(postings.generation) as ok:
        if ok:
            postings.save(directory)
    return postings


def _passage_rows(store: ChangedRows, ids: Sequence[int] | None = None) -> Iterator[tuple[int, Sequence[str]]]:
    for pid, text in store.passage_text_rows(ids):
        yield pid, (text,)


def _article_rows(store: ChangedRows, ids: Sequence[int] | None = None) -> Iterator[tuple[int, Sequence[str]]]:
    # the body as the articles_fts trigger indexes it: paragraphs joined by newlines
    for aid, title, paragraphs in store.article_text_rows(ids):
        yield aid, (title, "\n".join(paragraphs))


def _phrases(query: str) -> list[str]:
    """The query's terms as the postings hold them: FTS5's tokens, stemmed."""
    return [s for s in (stem(t) for t in query_terms(query)) if s]


class HasPostings(Protocol):
    """Anything with a ``lexical`` attribute holding ``LexicalPostings`` (an open ``Index``)."""

    lexical: LexicalPostings


class MemoryBM25:
    """The ``LexicalIndex`` over in-memory postings; reads ``holder.lexical`` on every call, so an index updated in
    place (which swaps in new postings) is searched as it now is. A top k is found by block-max pruning
    (``Postings.top``) and the scores of given rows by lookups (``Postings.score_rows``): neither scores every
    posting of a common term, and both give the exhaustive scorer's numbers bit for bit."""

    def __init__(self, holder: HasPostings, title_weight: float = 1.0, *, prune: bool = False) -> None:
        self._holder = holder
        self._weights = (float(title_weight), 1.0)
        self._prune = prune  # the lexical_pruning setting: off, the exhaustive scorer finds every top k

    def _table(self, table: str) -> tuple[Postings, tuple[float, ...]]:
        postings: Postings = getattr(self._holder.lexical, table)
        return postings, self._weights if table == "articles" else (1.0,)

    def _top(self, table: str, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        postings, weights = self._table(table)
        mask = None
        if allowed is not None:  # a filter: only rows whose key is allowed (sorted keys) compete for the top k
            mask = np.zeros(postings.rows, dtype=bool)
            mask[postings.positions(allowed)[1]] = True
        top = postings.top(_phrases(query), weights, k, mask, prune=self._prune)
        return [(int(r), float(s)) for r, s in zip(postings.rowids_of(top.rows), top.scores, strict=True)]

    def _given(self, table: str, query: str, keys: Iterable[int]) -> dict[int, float]:
        postings, weights = self._table(table)
        rowids, idx = postings.positions(keys)
        got = postings.score_rows(_phrases(query), weights, idx)
        return {int(r): float(s) for r, s in zip(rowids, got, strict=True) if s > 0}

    def given_scores(self, table: str, query: str, keys: np.ndarray) -> np.ndarray:
        """BM25 of the rows ``keys`` (distinct rowids) of ``table`` (``articles`` or ``passages``) as a float64
        array aligned with them, 0 for a key the postings lack or that does not score above 0: ``_given``'s numbers
        and its callers' default without a dict per search."""
        postings, weights = self._table(table)
        keys = np.asarray(keys, dtype=np.int64)
        rowids, idx = postings.positions(keys)
        out = np.zeros(len(keys), dtype=np.float64)
        if len(rowids):
            got = postings.score_rows(_phrases(query), weights, idx)
            out[member(keys, rowids)] = np.where(got > 0, got, 0)  # ``positions`` keeps the order given
        return out

    def matching_articles(self, query: str) -> np.ndarray:
        """Keys of every article holding at least one query term (after tokenising and stemming): the lexical
        side's real match count, not its top k. A union of postings, nothing scored (with a weight that is not
        positive a posting may score 0, so then the scores decide, as they always did)."""
        postings, weights = self._table("articles")
        phrases = _phrases(query)
        if min(weights) <= 0:
            matched: np.ndarray = postings.rowids[postings.scores(phrases, weights) > 0]
            return matched
        matched = postings.rowids[postings.holding(phrases)]
        return matched

    def search_articles(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        return self._top("articles", query, k, allowed)

    def term_weights(self, query: str) -> dict[str, float]:
        """The query's stemmed terms with their passage-level IDF (terms no passage holds are left out): what a
        highlight weighs a sentence's shared words by."""
        postings: Postings = self._holder.lexical.passages
        out: dict[str, float] = {}
        for term in (stem(t) for t in query_terms(query)):
            weight = postings.term_idf(term)
            if weight is not None:
                out[term] = weight
        return out

    def score_articles(self, query: str, aids: Iterable[int]) -> dict[int, float]:
        return self._given("articles", query, aids)

    def search_passages(self, query: str, k: int) -> list[tuple[int, float]]:
        return self._top("passages", query, k)

    def score_passages(self, query: str, ids: Iterable[int]) -> dict[int, float]:
        return self._given("passages", query, ids)

    def score_passages_weighted(self, terms: Mapping[str, float], ids: Iterable[int]) -> dict[int, float]:
        """BM25 of given passages for a weighted bag of stemmed terms (a query expanded by pseudo-relevance
        feedback, search/ranking/answers.py): each term's BM25 contribution times its weight, summed. Terms are
        taken as the postings hold them (not tokenised or stemmed again: a stem stemmed twice can change)."""
        postings, weights = self._table("passages")
        rowids, idx = postings.positions(ids)
        total = np.zeros(len(idx), dtype=np.float64)
        for term, weight in terms.items():
            if weight:
                total += weight * postings.score_rows([term], weights, idx).astype(np.float64)
        return {int(r): float(s) for r, s in zip(rowids, total, strict=True) if s > 0}
