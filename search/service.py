"""``SearchService``: the one query-side object the API and the CLI call.

It validates input, embeds the query once (with a small cache), retrieves passages from FAISS, groups them into
articles, pages the grouped list, then locates answering sentences and related stories for the page only.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search.embedding import Embedder
from search.errors import InvalidInput, NotFound
from search.highlight import Highlighter
from search.index import Index
from search.models import (
    Article,
    PassageHit,
    RankedPassage,
    Related,
    SearchResponse,
    SearchResult,
    SimilarResponse,
    SimilarResult,
)
from search.related import RelatedFinder
from search.settings import Settings
from search.store import StoredPassage

MAX_OFFSET = 10_000


@dataclass(frozen=True)
class _Group:
    aid: int
    score: float
    passages: list[tuple[StoredPassage, float]]


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
        self.highlighter = Highlighter(embedder)
        self.related = RelatedFinder(index.store, index.articles, settings.duplicate_threshold)
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

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

    def search(self, query: str, k: int = 10, offset: int = 0) -> SearchResponse:
        started = time.perf_counter()
        query = self.validate_query(query)
        self.validate_k(k)
        if not 0 <= offset <= MAX_OFFSET:
            raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET}, got {offset}")
        qvec = self.embed_query(query)
        groups = self._ranked_groups(qvec, offset + k)
        page = groups[offset : offset + k]
        shown = [(g, g.passages[: self.settings.passages_per_result]) for g in page]
        highlights = self.highlighter.locate(
            qvec, [(sp.passage.id, sp.passage.text) for _, ps in shown for sp, _ in ps]
        )
        related = self.related.nearest([g.aid for g in page], self.settings.related_per_result)
        refs = self.index.store.article_refs([g.aid for g in page] + [a for rel in related for a, _ in rel])
        results: list[SearchResult] = []
        h = iter(highlights)
        for (group, passages), rel in zip(shown, related, strict=True):
            hits = [
                PassageHit(sp.passage.id, sp.passage.text, round(score, 6), sp.passage.field, next(h))
                for sp, score in passages
            ]
            results.append(
                SearchResult(
                    article=refs[group.aid],
                    score=round(group.score, 6),
                    passages=hits,
                    related=[Related(refs[a].id, refs[a].title, round(s, 6)) for a, s in rel],
                )
            )
        took = (time.perf_counter() - started) * 1000
        return SearchResponse(query=query, total=len(groups), results=results, took_ms=round(took, 2))

    def _ranked_groups(self, qvec: np.ndarray, need: int) -> list[_Group]:
        """Articles ranked by their best passage, from a candidate pool grown until ``need`` articles are found.

        ``total`` in a response is the size of this list: the articles that had a passage among the candidates.
        """
        count = self.index.passages.count()
        if count == 0:
            return []
        n = min(count, max(self.settings.candidates, need * 4))
        while True:
            scores, ids = self.index.passages.search(qvec[None, :], n)
            hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
            rows = self.index.store.passages(i for i, _ in hits)
            by_article: dict[int, list[tuple[StoredPassage, float]]] = {}
            for pid, score in hits:
                sp = rows.get(pid)
                if sp is not None:
                    by_article.setdefault(sp.aid, []).append((sp, score))
            if len(by_article) >= need or n >= count:
                break
            n = min(count, n * 4)
        groups = [_Group(aid, ps[0][1], ps) for aid, ps in by_article.items()]
        groups.sort(key=lambda g: (-g.score, g.aid))
        return groups

    def batch_search(self, queries: Sequence[str], k: int) -> list[BatchResult]:
        """Rank articles for many queries at once (evaluation runs): no highlights, no related stories."""
        if not 1 <= k <= 1000:
            raise InvalidInput(f"k must be between 1 and 1000 for batch runs, got {k}")
        texts = [self.validate_query(q) for q in queries]
        vecs = self.embedder.encode(texts, batch_size=64)
        out: list[BatchResult] = []
        refs_cache: dict[int, str] = {}
        for vec in vecs:
            groups = self._ranked_groups(vec, k)[:k]
            missing = [g.aid for g in groups if g.aid not in refs_cache]
            refs_cache.update({aid: ref.id for aid, ref in self.index.store.article_refs(missing).items()})
            ranked = sorted(((sp, s) for g in groups for sp, s in g.passages), key=lambda x: (-x[1], x[0].passage.id))[
                :k
            ]
            out.append(
                BatchResult(
                    articles=[(refs_cache[g.aid], g.score) for g in groups],
                    passages=[
                        RankedPassage(sp.passage.article_id, sp.passage.id, sp.passage.text, s) for sp, s in ranked
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
