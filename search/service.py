"""``SearchService``: the one query-side object the API and the CLI call.

It validates input, embeds the query once (with a small cache), takes dense candidates from FAISS and lexical ones
from BM25, fuses them at the article level, pages the ranked list, then scores every passage of the page's articles
on both sides, locates answering sentences and lists related stories, for the page only.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from search.bm25 import MemoryBM25
from search.catalog import Filter
from search.embedding import Embedder
from search.errors import InvalidInput, NotFound
from search.fusion import Fusion
from search.highlight import Highlighter
from search.index import Index
from search.models import (
    Article,
    PassageHit,
    RankedPassage,
    Related,
    Scores,
    SearchResponse,
    SearchResult,
    SimilarResponse,
    SimilarResult,
)
from search.paging import START as CURSOR_START
from search.paging import Cursor, diversify, fingerprint, resume
from search.related import RelatedFinder
from search.settings import MODES, Settings
from search.store import StoredPassage

MAX_OFFSET = 10_000
# Passage scores on a results page are normalised against the passages of the ranking's first articles.
ANCHOR_ARTICLES = 10


def _pin_blas(threads: int) -> None:
    """Limit numpy's BLAS pool (process-wide) to ``threads``.

    A query's matrix products are small (a few hundred vectors by one), yet OpenBLAS splits them over every core and
    its idle workers then spin: measured in process on a 110k-passage index, a hybrid search cost 68 ms of CPU for
    34 ms of wall time with the default pool and 33 ms with one thread, and under concurrent load that spinning
    takes the cores other requests need.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def _source_of_item(sources: dict[int, str | None], item: tuple[int, Scores]) -> str | None:
    return sources.get(item[0])


@dataclass(frozen=True)
class Ranking:
    """The best articles of a query, best first, and how many candidate articles were ranked."""

    items: list[tuple[int, Scores]]
    total: int
    candidates: list[int]  # every ranked candidate (facets count them), in no particular order


@dataclass(frozen=True)
class BatchResult:
    """One query of a batch run: ranked articles and ranked passages."""

    articles: list[tuple[str, float]]
    passages: list[RankedPassage]


class SearchService:
    def __init__(self, index: Index, embedder: Embedder, settings: Settings) -> None:
        self.index = index
        self.embedder = embedder
        self.settings = settings
        self.highlighter = Highlighter(embedder, index.store.sentence_vectors)
        self.related = RelatedFinder(index.store, index.articles, settings.duplicate_threshold)
        self.lexical = MemoryBM25(index, settings.title_weight)
        self.fusion = settings.fusion_config()
        self.passage_fusion = settings.fusion_config(passages=True)
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._threads = threading.local()
        _pin_blas(settings.search_threads)

    # -- validation ------------------------------------------------------------------------------------------

    def validate_query(self, query: str) -> str:
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("query must not be empty")
        if len(query) > self.settings.max_query_chars:
            raise InvalidInput(f"query is {len(query)} characters; the limit is {self.settings.max_query_chars}")
        if "\x00" in query:
            raise InvalidInput("query must not contain NUL characters")
        return query.strip()

    def validate_k(self, k: int, name: str = "k") -> int:
        if not 1 <= k <= self.settings.max_k:
            raise InvalidInput(f"{name} must be between 1 and {self.settings.max_k}, got {k}")
        return k

    # -- queries ---------------------------------------------------------------------------------------------

    def _pin_search_threads(self) -> None:
        """OpenMP's thread count is per calling thread: set it once in each request thread before FAISS runs."""
        if getattr(self._threads, "pinned", None) != self.settings.search_threads:
            import faiss

            faiss.omp_set_num_threads(self.settings.search_threads)
            self._threads.pinned = self.settings.search_threads

    def embed_query(self, query: str) -> np.ndarray:
        with self._lock:
            hit: np.ndarray | None = self._query_cache.get(query)
            if hit is not None:
                self._query_cache.move_to_end(query)
                return hit
        vec: np.ndarray = self.embedder.encode([query])[0]
        if self.settings.query_cache_size:
            with self._lock:
                self._query_cache[query] = vec
                while len(self._query_cache) > self.settings.query_cache_size:
                    self._query_cache.popitem(last=False)
        return vec

    def validate_mode(self, mode: str | None) -> str:
        mode = self.settings.mode if mode is None else mode
        if mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        return mode

    def search(
        self,
        query: str,
        k: int = 10,
        offset: int = 0,
        mode: str | None = None,
        *,
        filters: Filter | None = None,
        cursor: str | None = None,
        max_per_source: int | None = None,
        facets: bool = False,
    ) -> SearchResponse:
        """One page of ranked articles, each with its best passages, answering sentences and related stories.

        ``filters`` restrict the candidates before ranking (a filtered page is full whenever enough articles
        match). ``cursor`` (``*`` to start, then each response's ``next_cursor``) pages one fixed ranked list of
        up to ``cursor_depth`` articles; ``max_per_source`` caps the results of one source on a page; ``facets``
        counts the ranked candidates by source, category and month.
        """
        started = time.perf_counter()
        query = self.validate_query(query)
        self.validate_k(k)
        mode = self.validate_mode(mode)
        if not 0 <= offset <= MAX_OFFSET:
            raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET}, got {offset}")
        if max_per_source is not None:
            if not 1 <= max_per_source <= self.settings.max_k:
                raise InvalidInput(f"max_per_source must be between 1 and {self.settings.max_k}, got {max_per_source}")
            if offset % k:
                raise InvalidInput("with max_per_source, offset must be a multiple of k (pages are cut together)")
        depth = max(offset + k, ANCHOR_ARTICLES)
        walk: Cursor | None = None
        if cursor is not None:
            if offset:
                raise InvalidInput("give either offset or cursor, not both")
            mark = fingerprint(query, mode, filters.key() if filters else None, k, max_per_source)
            generation = self.index.store.generation()
            if cursor == CURSOR_START:
                walk = Cursor(0, max(self.settings.cursor_depth, k), generation, mark)
            else:
                walk = resume(cursor, mark, generation)
            offset, depth = walk.offset, walk.depth
        allowed = self.index.catalog.allowed(filters)
        qvec = self.embed_query(query)  # also needed in lexical mode, to locate the answering sentence
        if max_per_source is None:
            ranked = self.rank_articles(query, qvec, depth, mode, allowed)
            page = ranked.items[offset : offset + k]
            end = len(ranked.items)
        else:
            ranked, page, end = self._diverse_page(query, qvec, depth, mode, allowed, k, offset, max_per_source, walk)
        next_cursor = None
        if walk is not None and offset + k < end:
            next_cursor = Cursor(offset + k, walk.depth, walk.generation, walk.fingerprint).encode()
        page_aids = [aid for aid, _ in page]
        anchors = [aid for aid, _ in ranked.items[:ANCHOR_ARTICLES]]
        passages = self._best_passages(query, qvec, page_aids, mode, anchors)
        shown = [(sp, sc) for aid in page_aids for sp, sc in passages[aid]]
        highlights = iter(self.highlighter.locate(qvec, [(sp.passage.id, sp.passage.text) for sp, _ in shown]))
        related = self.related.nearest(page_aids, self.settings.related_per_result)
        refs = self.index.store.article_refs(page_aids + [a for rel in related for a, _ in rel])
        results: list[SearchResult] = []
        for (aid, scores), rel in zip(page, related, strict=True):
            hits = [
                PassageHit(sp.passage.id, sp.passage.text, sc.fused, sp.passage.field, next(highlights), sc)
                for sp, sc in passages[aid]
            ]
            results.append(
                SearchResult(
                    article=refs[aid],
                    score=scores.fused,
                    scores=scores,
                    passages=hits,
                    related=[Related(refs[a].id, refs[a].title, round(s, 6)) for a, s in rel],
                )
            )
        took = (time.perf_counter() - started) * 1000
        return SearchResponse(
            query=query,
            mode=mode,
            total=ranked.total,
            results=results,
            took_ms=round(took, 2),
            facets=self.index.catalog.facets(ranked.candidates) if facets else None,
            next_cursor=next_cursor,
        )

    def _diverse_page(
        self,
        query: str,
        qvec: np.ndarray,
        depth: int,
        mode: str,
        allowed: np.ndarray | None,
        k: int,
        offset: int,
        cap: int,
        walk: Cursor | None,
    ) -> tuple[Ranking, list[tuple[int, Scores]], int]:
        """The page at ``offset`` of the ranked list cut into per-source-capped pages; the ranking is deepened
        (unless a cursor fixed its depth) until that page is full or the candidates run out.
        Returns the ranking, the page, and the item position where the pages end (for a cursor's next page)."""
        while True:
            ranked = self.rank_articles(query, qvec, depth, mode, allowed)
            aids = [a for a, _ in ranked.items]
            sources = dict(zip(aids, self.index.catalog.source_of(aids), strict=True))
            pages = diversify(ranked.items, partial(_source_of_item, sources), k, cap)
            index = offset // k
            page = pages[index] if index < len(pages) else []
            exhausted = len(ranked.items) >= ranked.total
            if walk is not None or exhausted or (len(page) == k and index + 1 < len(pages)):
                return ranked, page, k * len(pages)
            depth *= 2

    def rank_articles(
        self, query: str, qvec: np.ndarray, need: int, mode: str, allowed: np.ndarray | None = None
    ) -> Ranking:
        """The best ``need`` articles by ``mode`` (fewer only if the candidates hold fewer), with both component
        scores, and how many candidates there were (a response's ``total``).

        Dense candidates come from FAISS (an article scores as its best passage), lexical ones from BM25 over whole
        articles. In hybrid mode each candidate's missing side is computed exactly before fusing, so an article
        found by one side only is not penalised by a guess. ``allowed`` (sorted article keys) is a filter applied
        before ranking on both sides.
        """
        self._pin_search_threads()
        dense = self._dense_articles(qvec, need, allowed) if mode != "lexical" else {}
        lexical: dict[int, float] = {}
        if mode != "dense":
            lexical = dict(self.lexical.search_articles(query, max(self.settings.lexical_candidates, need), allowed))
        if mode == "hybrid":
            dense.update(self._dense_scores_of(qvec, [a for a in lexical if a not in dense]))
            missing = [a for a in dense if a not in lexical]
            lexical.update({a: 0.0 for a in missing} | self.lexical.score_articles(query, missing))
            fused = self.fusion.fuse(dense, lexical)
        else:
            fused = dict(dense if mode == "dense" else lexical)
        head = heapq.nsmallest(need, fused, key=lambda a: (-fused[a], a))
        # the side a single-mode ranking did not use is filled for the returned articles only (it explains them)
        if mode == "dense":
            lexical = {a: 0.0 for a in head} | self.lexical.score_articles(query, head)
        elif mode == "lexical":
            dense = self._dense_scores_of(qvec, head)
        items = [
            (a, Scores(round(dense.get(a, 0.0), 6), round(lexical.get(a, 0.0), 6), round(fused[a], 6))) for a in head
        ]
        return Ranking(items, len(fused), list(fused))

    def _dense_articles(self, qvec: np.ndarray, need: int, allowed: np.ndarray | None = None) -> dict[int, float]:
        """Best passage cosine per article, from a FAISS candidate pool grown until ``need`` articles appear."""
        pids = None if allowed is None else self.index.owners.passages_of_set(allowed)
        count = self.index.passages.count() if pids is None else len(pids)
        if count == 0:
            return {}
        n = min(count, max(self.settings.candidates, need * 4))
        while True:
            scores, ids = self.index.passages.search(qvec[None, :], n, allowed=pids)
            owners = self.index.owners.articles_of(ids[0])
            best: dict[int, float] = {}
            for aid, score in zip(owners.tolist(), scores[0].tolist(), strict=True):
                if aid >= 0 and aid not in best:
                    best[aid] = score  # hits come best first
            if len(best) >= need or n >= count:
                return best
            n = min(count, n * 4)

    def _passage_vectors(self, aids: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(article, passage id, vector) of every passage of the given articles, grouped by article in id order.

        Vectors come from FAISS memory; if FAISS lags the store (another process wrote since it was loaded), from
        the stored copies."""
        owners, pids = self.index.owners.passages_of(aids)
        try:
            vectors = self.index.passages.reconstruct_batch(pids)
        except KeyError:
            stored = self.index.store.passage_vectors(pids.tolist())
            keep = np.asarray([int(p) in stored for p in pids], dtype=bool)
            owners, pids = owners[keep], pids[keep]
            vectors = (
                np.stack([stored[int(p)] for p in pids])
                if len(pids)
                else np.zeros((0, self.embedder.dimension), dtype=np.float32)
            )
        return owners, pids, vectors

    def _dense_scores_of(self, qvec: np.ndarray, aids: list[int]) -> dict[int, float]:
        """Exact best-passage cosine for given articles (no FAISS search)."""
        owners, _, vectors = self._passage_vectors(aids)
        if not len(owners):
            return {}
        scores = vectors @ qvec
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        best = np.maximum.reduceat(scores, starts)
        return {int(owners[i]): float(b) for i, b in zip(starts, best, strict=True)}

    def _best_passages(
        self, query: str, qvec: np.ndarray, aids: list[int], mode: str, anchors: list[int]
    ) -> dict[int, list[tuple[StoredPassage, Scores]]]:
        """Each article's best passages: every passage of the page's articles scored on both sides and fused.

        Scores are normalised against the best passage of the ranking's first articles (``anchors``), the same
        articles for every page of one query, so a passage's fused score does not depend on which page shows it.
        Only the passages picked are read from SQLite.
        """
        extra = [a for a in anchors if a not in aids] if mode == "hybrid" else []
        owners, pids, vectors = self._passage_vectors(aids + extra)
        keys = pids.tolist()
        dense = dict(zip(keys, (vectors @ qvec).tolist(), strict=True))
        lexical = dict.fromkeys(keys, 0.0) | self.lexical.score_passages(query, keys)
        fused = self._fuse_mode(dense, lexical, mode, self.passage_fusion)
        out: dict[int, list[tuple[StoredPassage, Scores]]] = {aid: [] for aid in aids}
        ranked = np.lexsort((pids, -np.asarray([fused[p] for p in keys])))  # best first; ties by position
        chosen: list[tuple[int, int]] = []
        counts = dict.fromkeys(aids, 0)
        for i in ranked.tolist():
            aid = int(owners[i])
            if counts.get(aid, self.settings.passages_per_result) < self.settings.passages_per_result:
                counts[aid] += 1
                chosen.append((aid, keys[i]))
        rows = self.index.store.passages([p for _, p in chosen])
        for aid, pid in chosen:
            if pid in rows:
                sc = Scores(round(dense[pid], 6), round(lexical[pid], 6), round(fused[pid], 6))
                out[aid].append((rows[pid], sc))
        return out

    def _fuse_mode(
        self,
        dense: dict[int, float],
        lexical: dict[int, float],
        mode: str,
        fusion: Fusion,
    ) -> dict[int, float]:
        if mode == "dense":
            return dense
        if mode == "lexical":
            return lexical
        return fusion.fuse(dense, lexical)

    def rank_passages(self, query: str, qvec: np.ndarray, k: int, mode: str) -> list[tuple[StoredPassage, Scores]]:
        """The best ``k`` passages of the whole index for ``mode`` (batch runs, answer-recall evaluation)."""
        dense: dict[int, float] = {}
        lexical: dict[int, float] = {}
        if mode != "lexical":
            scores, ids = self.index.passages.search(qvec[None, :], max(self.settings.candidates, k))
            dense = {int(i): float(s) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0}
        if mode != "dense":
            lexical = dict(self.lexical.search_passages(query, max(self.settings.lexical_candidates, k)))
        if mode == "hybrid":
            vecs = self.index.store.passage_vectors(p for p in lexical if p not in dense)
            dense.update({p: float(v @ qvec) for p, v in vecs.items()})
            missing = [p for p in dense if p not in lexical]
            lexical.update({p: 0.0 for p in missing})
            lexical.update(self.lexical.score_passages(query, missing))
        fused = self._fuse_mode(dense, lexical, mode, self.passage_fusion)
        top = sorted(fused, key=lambda p: (-fused[p], p))[:k]
        rows = self.index.store.passages(top)
        return [
            (rows[p], Scores(round(dense.get(p, 0.0), 6), round(lexical.get(p, 0.0), 6), round(fused[p], 6)))
            for p in top
            if p in rows
        ]

    def batch_search(
        self, queries: Sequence[str], k: int, mode: str | None = None, *, articles: bool = True, passages: bool = True
    ) -> list[BatchResult]:
        """Rank articles and/or passages for many queries at once (evaluation runs): no highlights, no related."""
        if not 1 <= k <= 1000:
            raise InvalidInput(f"k must be between 1 and 1000 for batch runs, got {k}")
        mode = self.validate_mode(mode)
        texts = [self.validate_query(q) for q in queries]
        vecs = self.embedder.encode(texts, batch_size=64)
        out: list[BatchResult] = []
        for text, vec in zip(texts, vecs, strict=True):
            ranked = self.rank_articles(text, vec, k, mode).items if articles else []
            refs = self.index.store.article_refs(a for a, _ in ranked)
            top = self.rank_passages(text, vec, k, mode) if passages else []
            out.append(
                BatchResult(
                    articles=[(refs[a].id, sc.fused) for a, sc in ranked],
                    passages=[
                        RankedPassage(sp.passage.article_id, sp.passage.id, sp.passage.text, sc.fused, sc)
                        for sp, sc in top
                    ],
                )
            )
        return out

    # -- articles --------------------------------------------------------------------------------------------

    def _aid(self, article_id: str) -> int:
        aid = self.index.store.aid_of(article_id)
        if aid is None:
            raise NotFound(f"no article with id {article_id!r}")
        return aid

    def article(self, article_id: str) -> Article:
        return self.index.store.article(self._aid(article_id))

    def similar(self, article_id: str, k: int = 10) -> SimilarResponse:
        self.validate_k(k)
        aid = self._aid(article_id)
        nearest = self.related.nearest([aid], k)[0]
        refs = self.index.store.article_refs([aid] + [a for a, _ in nearest])
        return SimilarResponse(article=refs[aid], results=[SimilarResult(refs[a], round(s, 6)) for a, s in nearest])

    def health(self) -> dict[str, Any]:
        n_articles, n_passages = self.index.store.counts()
        return {
            "status": "ok",
            "index": self.index.name,
            "model": self.index.manifest["model"]["name"],
            "dimension": self.index.manifest["model"]["dimension"],
            "articles": n_articles,
            "passages": n_passages,
            "newest_date": self.index.store.newest_date(),
            "generation": self.index.store.generation(),
        }
