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
import json
import math
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from search.memory import deep_size
from search.storage.files import DAMAGED_CACHE, discarded_on_failure
from search.storage.store import ChangedRows, Store
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
    # derived on first use by ``block_max``: the bounds of top-k pruning, per column weights
    _bounds: dict[tuple[float, ...], BlockMax] = field(default_factory=dict, repr=False, compare=False)
    _avgdl_cache: float | None = field(default=None, repr=False, compare=False)
    _norm_cache: np.ndarray | None = field(default=None, repr=False, compare=False)

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
        avgdl = self._avgdl_cache
        if avgdl is None:
            avgdl = self._avgdl_cache = float(self.lengths.sum()) / self.rows if self.rows else 0.0
        return avgdl

    def _norm(self, rows: np.ndarray | None) -> np.ndarray:
        """BM25's length normalisation (K1 scaled by the row's length against the average) of ``rows`` (row
        indexes; None: every row), computed once per postings: a query reads the rows it scores from it."""
        norm = self._norm_cache
        if norm is None:
            avgdl = self._avgdl()
            norm = K1 * (1 - B + B * self.lengths / avgdl) if avgdl > 0 else np.full(self.rows, K1, np.float32)
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
            if t is not None and self.indptr[t + 1] > self.indptr[t]:
                lo, hi = int(self.indptr[t]), int(self.indptr[t + 1])
                yield t, lo, hi, np.float32(idf(self.rows, hi - lo))

    def _terms(self, phrases: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(term ids of the phrases the vocabulary holds, how many times each occurs): a repeated phrase adds its
        contribution once per occurrence, as FTS5 does."""
        ids = [t for t in (self.vocab.get(p) for p in phrases) if t is not None]
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
    def build(cls, postings: Postings, weights: Sequence[float], chunk: int = 1 << 22) -> BlockMax:
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
        n = max(postings.rows, 1)
        idfs = np.maximum(np.log((n - df + 0.5) / (df + 0.5)), 1e-6).astype(np.float32)
        terms = postings._term_of_postings()
        w = postings._column_weights(weights)
        total = len(postings.docs)
        contributions = np.empty(total, dtype=np.float32)
        for lo in range(0, total, chunk):
            hi = min(lo + chunk, total)
            contributions[lo:hi] = Postings._contributions(
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
    postings: Postings, bounds: BlockMax, t: int, terms: np.ndarray, counts: np.ndarray, threshold: float
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
    postings: Postings,
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
            acc[docs] += Postings._contributions(idf32, postings.tfs[:, lo:hi], w, postings._norm(docs))
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
        acc[sel] += Postings._contributions(idf32, postings.tfs[:, at], w, postings._norm(sel))
        scored += len(at)
    found_rows, found_scores = _best_positive(rows, acc[rows], k)
    return TopK(found_rows, found_scores, scored, checked)


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
        store: ChangedRows,
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
        return [(int(postings.rowids[i]), float(s)) for i, s in zip(top.rows, top.scores, strict=True)]

    def _given(self, table: str, query: str, keys: Iterable[int]) -> dict[int, float]:
        postings, weights = self._table(table)
        rowids, idx = postings.positions(keys)
        got = postings.score_rows(_phrases(query), weights, idx)
        return {int(r): float(s) for r, s in zip(rowids, got, strict=True) if s > 0}

    def matching_articles(self, query: str) -> np.ndarray:
        """Keys of every article holding at least one query term (after tokenising and stemming): the lexical
        side's real match count, not its top k. A union of postings, nothing scored (with a weight that is not
        positive a posting may score 0, so then the scores decide, as they always did)."""
        postings, weights = self._table("articles")
        phrases = _phrases(query)
        if min(weights) <= 0:
            matched: np.ndarray = postings.rowids[postings.scores(phrases, weights) > 0]
            return matched
        hit = np.zeros(postings.rows, dtype=bool)
        for t in postings._terms(phrases)[0]:
            hit[postings.docs[postings.indptr[t] : postings.indptr[t + 1]]] = True
        matched = postings.rowids[hit]
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
