"""More like this by shared neighbours: two articles are alike when the same articles resemble both.

First-order similarity (the cosine of two article vectors, or of their tf-idf vectors) puts a borderline article
next to whatever shares its surface: a business story about a strike sits among political strike stories. Read
from the company each article keeps, it sits among business stories. Each article gets a *profile*: its ``k``
nearest other articles under a fused similarity (``dense_weight`` × article-vector cosine + the rest × tf-idf
cosine, each first divided by the row's best, so the weight means the same whatever each side's range), weighted
by that similarity, itself at 1, L2-normalised. Two articles score the cosine of their profiles (second-order or
shared-nearest-neighbour similarity, as in Jarvis-Patrick clustering and the k-reciprocal re-ranking of image
retrieval). Copies of one event share almost all their neighbours, so they still come first.

Measured on BBC News by ``bench/mlt.py`` (category precision@5, the article and its duplicates excluded):
article-vector cosine 0.924, tf-idf 0.928, the fused first-order score 0.938, profiles over it 0.964 (k=160,
dense weight 0.3, terms in more than 30% of articles dropped from tf-idf, as Elasticsearch's ``max_doc_freq``).

The graph is a cache derived from the stored article vectors and the BM25 article postings, saved beside them and
stamped with the store's generation. A write updates it in place of a rebuild: deleted articles leave it, new
ones get profiles computed against every article (exactly as a build computes them), and older profiles are kept
until articles added or deleted since the last full build reach ``REBUILD_SHARE`` of the corpus. Memory: about
``(k + 1) × 16`` bytes an article for the profiles and their transpose, plus the tf-idf rows.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from search.memory import deep_size
from search.storage.files import DAMAGED_CACHE, discarded_on_failure, stamped
from search.storage.store import Store
from search.text.bm25 import Postings
from search.vectors.base import VectorStore

GRAPH_FILE = "neighbours.npz"
GRAPH_STATE = "neighbours.json"
GRAPH_VERSION = 1  # part of the cache stamp: bump when the scoring or the layout changes
REBUILD_SHARE = 0.2  # rebuild every profile once this share of the articles was added or deleted since the last build
MIN_SHARE = 10  # a profile holds at most 1/MIN_SHARE of the articles: past that, every profile holds nearly every
# article and they stop telling articles apart (a small corpus gets shorter profiles; BBC's 2,225 keep k=160)
# Building every profile costs all pairs of articles: 1.0 s for BBC's 2,225, 37.5 s for Reuters' 21,577 (2 cores),
# growing with the square. Above this many articles there is no graph and more-like-this ranks by cosine.
MAX_ARTICLES = 50_000
# Below this many articles, more like this ranks by cosine whatever the scoring asked: a profile holds n / MIN_SHARE
# neighbours, so under 20 articles it holds one, most articles share none (the 18-article sample: 13 of 17 results
# scored 0) and precision@5 is no better than cosine's. Measured by bench/mlt_sizes.py on random BBC News draws of
# 10-1,000 articles (bench/README.md): from 50 articles on, profiles beat cosine in every draw.
MIN_ARTICLES = 50
BLOCK = 512  # rows of the all-pairs products computed at once: BLOCK × articles floats per side


@dataclass(frozen=True)
class NeighbourConfig:
    """How profiles are made; chosen on BBC News by ``bench/mlt.py`` (two-fold estimate reported there)."""

    k: int = 160
    dense_weight: float = 0.3
    max_df: float = 0.3


DEFAULT_NEIGHBOURS = NeighbourConfig()


@dataclass
class NeighbourGraph:
    """Profiles of the articles ``keys`` (ascending article keys), as sparse rows over the same positions."""

    keys: np.ndarray  # int64[n], ascending
    profiles: sp.csr_matrix  # (n, n) float32, rows L2-normalised
    inverse: sp.csr_matrix  # profiles.T: row j lists the articles whose profile holds j
    terms: sp.csr_matrix  # (n, vocabulary) tf-idf rows, L2-normalised
    idf: np.ndarray  # float32 per vocabulary term id at the last build (0: a dropped, too common term)
    changed: int  # articles added or deleted since the last full build
    generation: int
    config: NeighbourConfig = DEFAULT_NEIGHBOURS

    # -- building -----------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls, keys: np.ndarray, vectors: np.ndarray, postings: Postings, generation: int, config: NeighbourConfig
    ) -> NeighbourGraph:
        """Every article's profile, from its vector (rows of ``vectors`` in ``keys`` order) and its postings."""
        keys = np.asarray(keys, dtype=np.int64)
        idf = _idf(postings, config.max_df)
        terms = _term_rows(postings, keys, idf)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        profiles = _profiles(np.arange(len(keys)), vectors, terms, config)
        return cls(keys, profiles, profiles.T.tocsr(), terms, idf, 0, generation, config)

    @classmethod
    def of(
        cls, articles: VectorStore, postings: Postings, generation: int, config: NeighbourConfig
    ) -> NeighbourGraph | None:
        """Every profile of the articles in ``articles`` (their terms in ``postings``); None above ``MAX_ARTICLES``."""
        if articles.count() > MAX_ARTICLES:
            return None
        keys = np.sort(articles.ids())
        return cls.build(keys, _vectors(articles, keys), postings, generation, config)

    def updated(
        self, deleted: Sequence[int], added: Sequence[int], articles: VectorStore, postings: Postings, generation: int
    ) -> NeighbourGraph | None:
        """After a write: without the ``deleted`` article keys, with profiles for the ``added`` ones (their vectors
        already in ``articles``, their terms in ``postings``). Rebuilt whole once changes reach ``REBUILD_SHARE``, or
        when an added key is not above every kept one (SQLite reused a deleted article's key across writes the
        profiles missed); None once the index outgrows ``MAX_ARTICLES``."""
        changed = self.changed + len(deleted) + len(added)
        if articles.count() > MAX_ARTICLES:
            return None
        keep = ~np.isin(self.keys, np.asarray(list(deleted), dtype=np.int64))
        keys = np.concatenate([self.keys[keep], np.asarray(sorted(added), dtype=np.int64)])
        if len(keys) and np.any(np.diff(keys) <= 0):
            return NeighbourGraph.of(articles, postings, generation, self.config)
        vectors = _vectors(articles, keys)
        if changed >= REBUILD_SHARE * len(keys):  # an empty index included
            return NeighbourGraph.build(keys, vectors, postings, generation, self.config)
        idf = self.idf
        if len(postings.vocab) > len(idf):  # terms first seen now: rarest possible, as an unseen term's idf
            rare = np.float32(np.log((1 + len(keys)) / 2) + 1)
            idf = np.concatenate([idf, np.full(len(postings.vocab) - len(idf), rare, np.float32)])
        old = np.flatnonzero(keep)
        terms = sp.vstack([_widen(self.terms[old], len(idf)), _term_rows(postings, keys[len(old) :], idf)]).tocsr()
        kept = _widen(self.profiles[old][:, old], len(keys))
        new = _profiles(np.arange(len(old), len(keys)), vectors, terms, self.config)
        profiles = sp.vstack([kept, new]).tocsr()
        return NeighbourGraph(keys, profiles, profiles.T.tocsr(), terms, idf, changed, generation, self.config)

    # -- reading ------------------------------------------------------------------------------------------------

    def __contains__(self, key: int) -> bool:
        i = int(np.searchsorted(self.keys, key))
        return i < len(self.keys) and int(self.keys[i]) == key

    def rank(self, key: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(article keys, scores) of every article sharing a neighbour with ``key``, best first (ties: lower key),
        never ``key`` itself; ``allowed`` (sorted keys) limits them. KeyError if ``key`` has no profile."""
        i = int(np.searchsorted(self.keys, key))
        if i >= len(self.keys) or int(self.keys[i]) != key:
            raise KeyError(key)
        row = (self.profiles[i] @ self.inverse).tocoo()  # sparse: cost ~ k² however large the corpus
        cols, scores = row.col, row.data.astype(np.float32)
        keep = cols != i
        if allowed is not None:
            keep &= np.isin(self.keys[cols], allowed)
        cols, scores = cols[keep], scores[keep]
        order = np.lexsort((cols, -scores))
        return self.keys[cols[order]], scores[order]

    # -- persistence --------------------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """The arrays, then the stamp (last, so a crash in between leaves the cache stale, never wrong)."""
        tmp = directory / f".{GRAPH_FILE}.{os.getpid()}.tmp.npz"
        p, t = self.profiles, self.terms
        state = directory / f".{GRAPH_STATE}.tmp"
        with discarded_on_failure(tmp, state):
            np.savez(
                tmp,
                keys=self.keys,
                p_indptr=p.indptr, p_indices=p.indices, p_data=p.data,
                t_indptr=t.indptr, t_indices=t.indices, t_data=t.data, t_width=np.int64(t.shape[1]),
                idf=self.idf,
            )  # fmt: skip
            os.replace(tmp, directory / GRAPH_FILE)
            stamp = _stamp(self.generation, self.config) | {"changed": self.changed}
            state.write_text(json.dumps(stamp), encoding="utf-8")
            os.replace(state, directory / GRAPH_STATE)

    @classmethod
    def load(cls, directory: Path, generation: int | None, config: NeighbourConfig) -> NeighbourGraph | None:
        """The saved graph if it was made with ``config`` for ``generation`` (None: for any generation), else None."""
        try:
            state = json.loads((directory / GRAPH_STATE).read_text(encoding="utf-8"))
            changed = int(state.pop("changed"))
            saved_at = int(state["generation"])
            if state != _stamp(saved_at if generation is None else generation, config):
                return None
            generation = saved_at
            with np.load(directory / GRAPH_FILE) as data:
                keys = data["keys"]
                n = len(keys)
                profiles = sp.csr_matrix((data["p_data"], data["p_indices"], data["p_indptr"]), shape=(n, n))
                width = int(data["t_width"])
                terms = sp.csr_matrix((data["t_data"], data["t_indices"], data["t_indptr"]), shape=(n, width))
                profiles.check_format(full_check=True)  # ValueError for indices out of range: a damaged file
                terms.check_format(full_check=True)
                if np.any(np.diff(keys) <= 0):
                    raise ValueError("article keys out of order")
                return cls(keys, profiles, profiles.T.tocsr(), terms, data["idf"], changed, generation, config)
        except DAMAGED_CACHE:
            return None  # missing, stale or damaged: rebuilt by the caller

    def memory_bytes(self) -> int:
        """What the profiles, their transpose, the term rows and the idf hold: ``profiles`` in the memory report."""
        return deep_size((self.keys, self.profiles, self.inverse, self.terms, self.idf))


def graph_problems(directory: Path, generation: int, config: NeighbourConfig) -> list[str]:
    """What ``newsdesk check`` says of the saved profiles: a damaged stamp, or a damaged file stamped with the store's
    generation, is a problem (an open rebuilds it); a missing or stale one is not."""
    wanted = _stamp(generation, config)
    try:
        current = stamped(directory / GRAPH_STATE, lambda state: state | {"changed": 0} == wanted | {"changed": 0})
    except DAMAGED_CACHE:
        return [f"{GRAPH_STATE} is unreadable; the profiles are rebuilt on open"]
    if current and NeighbourGraph.load(directory, generation, config) is None:
        return [f"{GRAPH_FILE} is unreadable; it is rebuilt on open"]
    return []


def _stamp(generation: int, config: NeighbourConfig) -> dict[str, object]:
    return {"generation": generation, "version": GRAPH_VERSION, "config": asdict(config)}


def load_graph(
    directory: Path,
    store: Store,
    articles: VectorStore,
    postings: Postings,
    config: NeighbourConfig,
    generation: int | None = None,
) -> NeighbourGraph | None:
    """The saved graph if it matches the store's generation, else built from the stored vectors and postings (and
    saved if the directory is writable); None above ``MAX_ARTICLES``. ``generation``: the one ``articles`` and
    ``postings`` reflect (default: the store's now), which the graph is stamped with."""
    if articles.count() > MAX_ARTICLES:
        return None
    if generation is None:
        generation = store.generation()
    graph = NeighbourGraph.load(directory, None, config)
    if graph is not None and graph.generation == generation and len(graph.keys) == articles.count():
        return graph
    if graph is not None and graph.generation >= generation:
        graph = None  # stamped with this generation (or a later one) yet not of these articles: damaged, rebuilt
    if graph is not None:
        # Saved before the last write(s): another process wrote and has not saved its graph yet, or died first.
        # Brought up to the store by the articles that came and went (an article that reused a deleted article's
        # key keeps that article's profile until the next rebuild), not rebuilt: a rebuild is all pairs.
        current = np.sort(articles.ids())
        gone = np.setdiff1d(graph.keys, current)
        return graph.updated(gone.tolist(), np.setdiff1d(current, graph.keys).tolist(), articles, postings, generation)
    graph = NeighbourGraph.of(articles, postings, generation, config)
    if graph is not None:
        # a read-only index still serves from the in-memory graph; one written meanwhile saves its own
        with contextlib.suppress(OSError), store.saving(generation) as ok:
            if ok:
                graph.save(directory)
    return graph


def _vectors(articles: VectorStore, keys: np.ndarray) -> np.ndarray:
    return articles.reconstruct_batch(keys) if len(keys) else np.zeros((0, articles.dimension), np.float32)


# -- the scoring ----------------------------------------------------------------------------------------------------


def _idf(postings: Postings, max_df: float) -> np.ndarray:
    """Smoothed idf per term (``ln((1 + n) / (1 + df)) + 1``, scikit-learn's); 0 for terms in more than
    ``max_df`` of the articles, which say nothing about a topic (the, said, year...)."""
    n = postings.rows
    df = np.diff(postings.indptr)
    idf = (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)
    idf[df > max_df * n] = 0
    return idf


def _term_rows(postings: Postings, keys: np.ndarray, idf: np.ndarray) -> sp.csr_matrix:
    """L2-normalised tf-idf rows of the articles ``keys`` (headline and body counted alike, sublinear tf)."""
    present, rows = postings.positions(keys.tolist())
    if len(present) != len(keys):
        raise ValueError("every article needs its BM25 postings")
    width = len(idf)
    terms = np.repeat(np.arange(len(postings.indptr) - 1, dtype=np.int64), np.diff(postings.indptr))
    position = np.full(postings.rows, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    mine = position[postings.docs] >= 0
    tf = postings.tfs[:, mine].sum(axis=0)
    t = terms[mine]
    weight = idf[t] * (1 + np.log(np.maximum(tf, 1)))  # idf covers the whole vocabulary (see updated)
    matrix = sp.csr_matrix((weight.astype(np.float32), (position[postings.docs[mine]], t)), shape=(len(keys), width))
    matrix.eliminate_zeros()
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    scaled: sp.csr_matrix = sp.diags(1 / np.where(norms > 0, norms, 1)).astype(np.float32) @ matrix
    return scaled.tocsr()


def _widen(matrix: sp.csr_matrix, width: int) -> sp.csr_matrix:
    """The same rows with ``width`` columns (more terms, or more articles, since they were made)."""
    m = matrix.tocsr()
    return sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], width))


def _profiles(rows: np.ndarray, vectors: np.ndarray, terms: sp.csr_matrix, config: NeighbourConfig) -> sp.csr_matrix:
    """Profiles of the articles at positions ``rows`` against all ``len(vectors)`` articles, ``BLOCK`` at a time."""
    n = len(vectors)
    k = min(config.k, n // MIN_SHARE)
    parts = []
    terms_t = terms.T.tocsc()
    for lo in range(0, len(rows), BLOCK):
        block = rows[lo : lo + BLOCK]
        local = np.arange(len(block))
        fused = np.zeros((len(block), n), dtype=np.float32)
        for weight, sim in (
            (config.dense_weight, vectors[block] @ vectors.T),
            (1 - config.dense_weight, np.asarray((terms[block] @ terms_t).todense(), dtype=np.float32)),
        ):
            sim[local, block] = -np.inf
            best = sim.max(axis=1, keepdims=True) if n > 1 else np.ones((len(block), 1), np.float32)
            sim[local, block] = 0
            fused += np.float32(weight) * sim / np.where(best > 0, best, 1)
        fused[local, block] = -np.inf
        if k > 0:
            top = np.argpartition(-fused, k - 1, axis=1)[:, :k]
            weights = np.maximum(np.take_along_axis(fused, top, axis=1), 0)
        else:
            top, weights = np.zeros((len(block), 0), np.int64), np.zeros((len(block), 0), np.float32)
        cols = np.concatenate([top, block[:, None]], axis=1)
        data = np.concatenate([weights, np.ones((len(block), 1), np.float32)], axis=1)
        data /= np.linalg.norm(data, axis=1, keepdims=True)
        indptr = np.arange(0, cols.size + 1, cols.shape[1])
        part = sp.csr_matrix((data.ravel(), cols.ravel(), indptr), shape=(len(block), n))
        part.sum_duplicates()
        part.eliminate_zeros()
        parts.append(part)
    if not parts:
        return sp.csr_matrix((0, n), dtype=np.float32)
    stacked: sp.csr_matrix = sp.vstack(parts).tocsr().astype(np.float32)
    return stacked
