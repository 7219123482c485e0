"""``SearchService``: the one query-side object the API and the CLI call.

It validates input, embeds the query once (with a small cache), takes dense candidates from FAISS and lexical ones
from BM25, fuses them at the article level, pages the ranked list, then scores every passage of the page's articles
on both sides, locates answering sentences and lists related stories, for the page only.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial, wraps
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np

from search import pages
from search.arrays import distinct_keys, member, sorted_lookup
from search.checks import MAX_OFFSET as MAX_OFFSET  # where api/openapi.py reads it
from search.checks import check_k, check_mode, check_offset, check_query
from search.errors import InvalidInput, NotFound
from search.memory import memory_report
from search.models import (
    AnswersResponse,
    Article,
    ArticleRef,
    Copy,
    Health,
    Mode,
    PassageHit,
    RankedPassage,
    Related,
    Scores,
    Scoring,
    SearchResponse,
    SearchResult,
    SimilarResponse,
    SimilarResult,
    StoryResponse,
    TimelineEntry,
    TimelineResponse,
    is_scoring,
)
from search.news.related import RelatedFinder
from search.pages import ArticlePage, IndexOverview, SimilarPage
from search.ranking.answers import AnswerRanking, date_closeness
from search.ranking.catalog import NO_DATE, Filter, day_text, parse_day
from search.ranking.feedback import FEEDBACK_PASSAGES, content_terms, rm3_terms
from search.ranking.fusion import Fusion
from search.ranking.highlight import Highlighter
from search.ranking.paging import START as CURSOR_START
from search.ranking.paging import Cursor, diversify, fingerprint, index_key, resume
from search.ranking.recency import RECENCY_POOL, Recency, decayed
from search.settings import SIMILAR_SCORINGS, Settings
from search.storage.changes import Following, follow_log, following
from search.storage.index import Index
from search.storage.store import Store, StoredPassage
from search.text.bm25 import LexicalPostings, MemoryBM25
from search.text.embedding import Embedder
from search.vectors.base import Matches
from search.vectors.factory import pin_threads as pin_vector_threads

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


P = ParamSpec("P")
R = TypeVar("R")


def _unlocked(method: Callable[Concatenate[SearchService, P], R]) -> Callable[Concatenate[SearchService, P], R]:
    """A ``_reads`` method without its lock, for a read that already holds it (the lock is not re-entrant: a
    nested read behind a waiting writer would wait forever)."""
    inner: Callable[Concatenate[SearchService, P], R] = method.__wrapped__  # type: ignore[attr-defined]
    return inner


def _source_of_item(sources: dict[int, str | None], item: tuple[int, Scores]) -> str | None:
    return sources.get(item[0])


def _no_scores() -> tuple[np.ndarray, np.ndarray]:
    """No candidates: (keys, scores) arrays of length 0."""
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)


def _aligned(keys: np.ndarray, of: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (float64, for the distinct keys ``of``) looked up for each of ``keys``; NaN where ``of`` lacks
    one."""
    out = np.full(len(keys), np.nan)
    order = np.argsort(of)
    at, found = sorted_lookup(of[order], keys)
    out[found] = values[order[at[found]]]
    return out


def _ranked_depth(need: int, recency: Recency | None) -> int:
    """How many articles ``rank_articles`` ranks for ``need``: with recency, at least ``RECENCY_POOL`` (decayed,
    then cut)."""
    return max(need, RECENCY_POOL) if recency is not None else need


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """Each item's place (0, 1, ...) among the items of its group before it: ``groups`` in ranked order."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    place = np.empty(len(groups), dtype=np.int64)
    place[order] = np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
    return place


@dataclass(frozen=True)
class Ranking:
    """The best articles of a query, best first, and how many candidate articles were ranked (the pool the best
    were taken from, not the query's match count: ``SearchService.count_matches`` gives that)."""

    items: list[tuple[int, Scores]]
    total: int


@dataclass(frozen=True)
class BatchResult:
    """One query of a batch run: ranked articles and ranked passages."""

    articles: list[tuple[str, float]]
    passages: list[RankedPassage]


class ReadWriteLock:
    """Many readers or one writer, a waiting writer first: searches run concurrently, and an index update (FAISS
    adds and removes, new postings and catalog) happens while no search is looking at those objects."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting_writers = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def _reads(method: Callable[Concatenate[SearchService, P], R]) -> Callable[Concatenate[SearchService, P], R]:
    """A public read: sees the latest committed index (reloaded if another process wrote) and no half-applied
    update of this one."""

    @wraps(method)
    def wrapper(self: SearchService, /, *args: P.args, **kwargs: P.kwargs) -> R:
        for _ in range(READ_TRIES):
            self._refresh_for_read()
            generation = self.generation
            try:
                with self.lock.reading():
                    return method(self, *args, **kwargs)
            except Exception:
                if not self._moved_since(generation):
                    raise
                # another process committed while this read ran: read again, on what it committed
        while True:  # it kept committing: read inside one SQLite snapshot, the index followed to it
            with self._snapshot() as pinned:
                if pinned() > self.generation:
                    self.refresh()  # follows to the snapshot's generation: it reads through the same transaction
                with self.lock.reading():
                    if pinned() == self.generation:
                        return method(self, *args, **kwargs)
                # the index moved past this snapshot (another thread followed a later commit): a newer one

    return wrapper


# Tries of a read that failed while another process committed beside it, before it is made inside a SQLite snapshot.
# A read takes the FAISS and postings of the generation it follows, and article rows from SQLite as they are when it
# reads them: a commit in between can delete an article the read ranked (a KeyError when its row is looked up). Such
# a read is made again on the new state; only a writer that keeps committing faster than a search runs gets reads
# pinned to one snapshot, rather than every request holding a SQLite read transaction open (under which SQLite's unix
# VFS parks the descriptor of every connection another thread closes).
READ_TRIES = 3


# How often the background follower (``SearchService._follow_soon``) reads the store's generation: a write another
# process committed and has not acknowledged yet is served here this long after at most, plus the follow.
FOLLOW_POLL_SECONDS = 0.02


def _follow_while_alive(ref: weakref.ReferenceType[SearchService]) -> None:
    while True:
        time.sleep(FOLLOW_POLL_SECONDS)
        service = ref()
        if service is None or service.index.closed:
            return
        try:
            service.refresh()
        except Exception:  # a read that needs the write follows it itself, or reports why it cannot
            logging.getLogger("newsdesk.follow").exception("following another process's writes failed")
            return
        finally:
            del service


class SearchService:
    def __init__(self, index: Index, embedder: Embedder, settings: Settings) -> None:
        self.embedder = embedder
        self.settings = settings
        self.lock = ReadWriteLock()
        self._reload_guard = threading.Lock()
        self._following = threading.Lock()
        self._follower: threading.Thread | None = None
        self._reloading = False
        self._held = 0  # writes of this process's writer in progress on ``self.index`` (``holding``)
        self.attach(index)
        self.fusion = settings.fusion_config()
        self.passage_fusion = settings.fusion_config(passages=True)
        self.answer_ranking = AnswerRanking.parse(settings.answer_signals, settings.answer_rrf_k)
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._threads = threading.local()
        _pin_blas(settings.search_threads)

    def attach(self, index: Index) -> None:
        """Serve ``index``: everything built on an index's objects is built again with it. The SQLite store it
        replaces is closed (every request thread's connection): callers hold the write lock, so no reader uses it."""
        previous = getattr(self, "_store", None)
        self.index = index
        self._store = index.store
        self.generation = index.generation if index.replica is None else index.store.generation()
        if previous is not None and previous is not index.store and index.replica is None:
            previous.close()
        self.highlighter = Highlighter(self.embedder, index.store.sentence_vectors)
        self.related = RelatedFinder(
            index.store,
            index.articles,
            self.settings.duplicate_threshold,
            groups=self._duplicate_groups,
            graph=lambda: self.index.neighbours,
            graph_from=None if self.settings.related_from_profiles < 0 else self.settings.related_from_profiles,
            generation=lambda: self.generation,
        )
        self.lexical = MemoryBM25(index, self.settings.title_weight, prune=self.settings.lexical_pruning)

    def refresh(self) -> None:
        """Follow the writes another process committed since the index was loaded (search/storage/changes.py: what
        changed is read from SQLite and built aside with searches going on; the write lock is held only to swap it
        in), or reopen the index where they cannot be followed (a rebuild swapped the directory; its caches on disk
        are stamped, so that costs a file load, no re-embedding); a replica reloads from the engine when the indexer
        published a new state."""
        with self.lock.reading():  # not while a writer replaces the index and closes its store
            if self._held or not self._stale():
                return
        replica = self.index.replica
        if replica is not None and replica.background:
            self._reload_in_background()
            return
        with self._following:  # one thread follows; searches that need it wait, the others serve meanwhile
            with self.lock.reading():
                if self._held or not self._stale():
                    return
                plan = following(self.index)
            with self.lock.writing():
                if self._held or not self._stale():
                    return  # this process's writer holds the index, or caught up itself
                if isinstance(plan, Following):
                    plan.apply(self.index)  # a swap; nothing if the index moved while the plan was built
                if follow_log(self.index):  # nothing left to follow, or what was committed since the plan
                    self.wrote()
                    return
                self.attach(self.index.reopen(self.embedder))

    def _refresh_for_read(self) -> None:
        """``refresh`` as a read needs it: what a writer may already have acknowledged is followed before the read
        (it is answered after saving the caches it stamps with its generation: indexer/update.py ``save_state``),
        what it committed and has not acknowledged yet is left to the background follower (``_follow_soon``), so
        that a search does not wait for that follow (measured by bench/archive.py ``writes_beside_process``: the
        search that followed carried its tokenising, 30 ms at the median and up to 180 ms for a large write at
        924k passages). A read racing the commit it did not wait for is made again (``_reads``)."""
        with self.lock.reading():
            if self._held or not self._stale():
                return
            lagging = self.index.replica is None and self.index.current() and not self._behind_acknowledged()
        if lagging:
            self._follow_soon()
            return
        self.refresh()

    def _behind_acknowledged(self) -> bool:
        """Whether the caches on disk were saved for a generation this process does not serve yet (a write another
        process may have acknowledged), or that cannot be told."""
        directory = self.index.directory
        if directory is None:
            return True
        stamp = LexicalPostings.stamp_of(directory.resolve())
        saved = stamp.get("generation") if stamp is not None else None
        return not isinstance(saved, int) or saved > self.generation

    def _follow_soon(self) -> None:
        """Start the thread that follows other processes' writes as they commit, once (this process learnt that
        another writes to its index). It reads the store's generation every ``FOLLOW_POLL_SECONDS``, and ends with
        the service or when the index it serves is closed."""
        with self._reload_guard:
            if self._follower is not None and self._follower.is_alive():
                return
            self._follower = threading.Thread(
                target=_follow_while_alive, args=(weakref.ref(self),), name="newsdesk-follow", daemon=True
            )
            self._follower.start()

    @contextmanager
    def holding(self) -> Iterator[Index]:
        """Keep serving the index yielded (no reload replaces it nor closes its store) while this process's writer
        works on it outside the write lock: it labels, runs its SQLite statements and builds the new postings and
        catalog with searches going on, and takes the write lock only to commit and swap them in
        (indexer/live.py). A commit by another process meanwhile makes the writer catch up, under the write lock, in
        place; until then searches keep the loaded state, as they would until their next refresh. Taken under the
        read lock, so that a reload that already decided to run finishes first and the writer works on its index."""
        with self.lock.reading(), self._reload_guard:
            self._held += 1
            index = self.index
        try:
            yield index
        finally:
            with self._reload_guard:
                self._held -= 1

    def _reload_in_background(self) -> None:
        """A replica's reload (reading and tokenising the corpus: seconds to minutes) runs in a thread while
        requests go on with the loaded state; the new index is swapped in under the write lock when ready. A failed
        reload is logged and tried again at the next poll that still sees a newer state."""
        with self._reload_guard:
            if self._reloading:
                return
            self._reloading = True

        def reload() -> None:
            try:
                fresh = self.index.reopen()
                with self.lock.writing():
                    self.attach(fresh)
            except Exception:
                logging.getLogger("newsdesk.replica").exception("reloading the replica failed; will retry")
            finally:
                with self._reload_guard:
                    self._reloading = False

        threading.Thread(target=reload, name="newsdesk-replica-reload", daemon=True).start()

    @contextmanager
    def _snapshot(self) -> Iterator[Callable[[], int]]:
        """This thread's SQLite reads held at one committed state (``Store.snapshot``) for the block; yields what
        gives that state's generation (-1 when the service's store was replaced meanwhile: a rebuild reopened, and
        the caller tries again). A replica's store is the state it loaded: nothing to hold."""
        store = self._local_store()
        if store is None:
            yield lambda: self.generation
            return
        with store.snapshot():
            yield lambda: store.generation() if self.index.store is store else -1

    def _moved_since(self, generation: int) -> bool:
        """Whether another process committed since the read that served ``generation`` began (a directory index;
        a replica's store is the state it loaded)."""
        store = self._local_store()
        return store is not None and store.generation() != generation

    def _local_store(self) -> Store | None:
        """The SQLite store of a directory index, which other processes may commit to; None for a replica."""
        store = self.index.store
        return store if self.index.replica is None and isinstance(store, Store) else None

    def _stale(self) -> bool:
        """Whether the store moved past the loaded index: a commit by another process, a rebuild that swapped
        the index directory (another build, whatever its generation), or for a replica a new state published in
        the engine (search/vectors/milvus/replica.py)."""
        if self.index.replica is not None:
            changed: bool = self.index.replica.changed()
            return changed
        # ``>``: a thread reading inside an older SQLite snapshot (``_reads``) sees a generation below the one served
        return not self.index.current() or bool(self.index.store.generation() > self.generation)

    def wrote(self) -> None:
        """Called by this process's writer, under the write lock, after it changed ``self.index`` in place (and
        perhaps caught it up onto another store: then everything is attached to it again). The store's generation
        is then the one served, so readers do not take the writer's own commit for another process's."""
        if self.index.store is not self._store:
            self.attach(self.index)
        self.generation = self.index.generation

    # -- validation ------------------------------------------------------------------------------------------

    def validate_query(self, query: str) -> str:
        return check_query(self.settings, query)  # search/checks.py: the CLI runs them before loading anything

    def validate_k(self, k: int, name: str = "k") -> int:
        return check_k(self.settings, k, name)

    # -- queries ---------------------------------------------------------------------------------------------

    def _pin_search_threads(self) -> None:
        """OpenMP's thread count is per calling thread: set it once in each request thread before the vector engine
        (FAISS) runs."""
        if getattr(self._threads, "pinned", None) != self.settings.search_threads:
            pin_vector_threads(self.settings.search_threads)
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

    def validate_mode(self, mode: str | None) -> Mode:
        return check_mode(self.settings, mode)

    @_reads
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
        recency: Recency | None = None,
    ) -> SearchResponse:
        """One page of ranked articles, each with its best passages, answering sentences and related stories.

        ``filters`` restrict the candidates before ranking (a filtered page is full whenever enough articles
        match). ``cursor`` (``*`` to start, then each response's ``next_cursor``) pages one fixed ranked list of
        up to ``cursor_depth`` articles; ``max_per_source`` caps the results of one source on a page; ``facets``
        counts the ranked candidates by source, category and month. ``recency`` decays each article's score by its
        age (search/ranking/recency.py), an explicit step after relevance ranking.
        """
        started = time.perf_counter()
        query = self.validate_query(query)
        self.validate_k(k)
        mode = self.validate_mode(mode)
        check_offset(offset)
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
            decay = (recency.key(),) if recency is not None else ()  # a walk without decay keeps its old fingerprint
            mark = fingerprint(query, mode, filters.key() if filters else None, k, max_per_source, *decay)
            generation = self.generation  # what the walk ranks: another process may have committed since
            key = index_key(self.index.manifest, self.index.store)
            if cursor == CURSOR_START:
                walk = Cursor(0, max(self.settings.cursor_depth, k), generation, mark)
            else:
                bound = max(self.settings.cursor_depth, k)
                walk = resume(cursor, mark, generation, key, page_size=k, max_depth=bound)
            offset, depth = walk.offset, walk.depth
        catalog = self.index.catalog
        allowed = catalog.allowed(filters)
        qvec = self.embed_query(query)  # also needed in lexical mode, to locate the answering sentence
        pool = self._pool_size(_ranked_depth(depth, recency))  # the passages rank_articles will take first
        matched = self.matching_rows(query, qvec, mode, pool=pool)
        total = catalog.count(matched, filters)
        if max_per_source is None:
            ranked = self.rank_articles(query, qvec, depth, mode, allowed, recency=recency)
            page = ranked.items[offset : offset + k]
            end = len(ranked.items)
        else:
            ranked, page, end = self._diverse_page(
                query, qvec, depth, mode, allowed, k, offset, max_per_source, walk, total, recency
            )
        next_cursor = None
        if walk is not None and offset + k < end:
            next_cursor = Cursor(offset + k, walk.depth, walk.generation, walk.fingerprint).encode(key)
        page_aids = [aid for aid, _ in page]
        anchors = [aid for aid, _ in ranked.items[:ANCHOR_ARTICLES]]
        passages = self._best_passages(query, qvec, page_aids, mode, anchors)
        shown = [(sp, sc) for aid in page_aids for sp, sc in passages[aid]]
        marked = [(sp.passage.id, sp.passage.text) for sp, _ in shown]
        highlights = iter(self.highlighter.locate(qvec, marked, self.lexical.term_weights(query)))
        related = self.related.nearest(page_aids, self.settings.related_per_result)
        refs = self._refs(page_aids + [a for rel in related for a, _ in rel])
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
                    also_reported=self._copies(aid),
                )
            )
        took = (time.perf_counter() - started) * 1000
        return SearchResponse(
            query=query,
            mode=mode,
            # an article written by another process since the catalog was loaded is ranked but not yet counted
            total=max(total, offset + len(results)) if results else total,
            results=results,
            took_ms=round(took, 2),
            facets=catalog.facets(matched, filters) if facets else None,
            next_cursor=next_cursor,
            notes=catalog.notes(filters),
        )

    def matching_rows(self, query: str, qvec: np.ndarray, mode: str, *, pool: int = 0) -> np.ndarray:
        """Which catalog rows match the query in ``mode``, as a mask (filters apply on top): an article matches
        when it holds a query term (lexical, hybrid) or its best passage's cosine reaches ``match_floor`` (dense,
        hybrid). What a total and its facets count, and the same rule ``rank_articles`` cuts its results by.
        ``pool``: how many of the best matching passages the ranking that follows will take (``_pool_size``)."""
        catalog = self.index.catalog
        matched = np.zeros(len(catalog), dtype=bool)
        if mode != "dense":
            matched |= catalog.rows_of(self.lexical.matching_articles(query))
        if mode != "lexical":
            matched |= catalog.rows_of(self._dense_matches(qvec, pool))
        return matched

    def _pool_size(self, need: int) -> int:
        """How many passages ``_dense_articles`` takes first for ``need`` articles."""
        return max(self.settings.candidates, need * 4)

    def _dense_matches(self, qvec: np.ndarray, pool: int) -> np.ndarray:
        """Keys of the articles with a passage at or above the floor: one range search of the passage vectors (all
        of them for an exact index, those the ANN finds for an approximate one). A top-k search deepened until its
        last hit fell below the floor cost a search of up to 819,200 hits at 924k passages. The best ``pool``
        hits, scored exactly, are kept for the ranking that follows (``_dense_articles``); the other hits need no
        exact score (``VectorStore.matches``)."""
        self._pin_search_threads()
        found = self.index.passages.matches(qvec, self.settings.match_floor, pool)
        self._threads.hits = (self._hits_key(qvec), found)  # the same query's candidates (_dense_articles)
        owners = self.index.owners.articles_of(found.ids)
        return distinct_keys(owners[owners >= 0], len(self.index.catalog))

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
        total: int,
        recency: Recency | None = None,
    ) -> tuple[Ranking, list[tuple[int, Scores]], int]:
        """The page at ``offset`` of the ranked list cut into per-source-capped pages; the ranking is deepened
        (unless a cursor fixed its depth) until that page is full or the candidates run out.
        Returns the ranking, the page, and the item position where the pages end (for a cursor's next page)."""
        while True:
            ranked = self.rank_articles(query, qvec, depth, mode, allowed, recency=recency)
            aids = [a for a, _ in ranked.items]
            sources = dict(zip(aids, self.index.catalog.source_of(aids), strict=True))
            pages = diversify(ranked.items, partial(_source_of_item, sources), k, cap)
            index = offset // k
            page = pages[index] if index < len(pages) else []
            # every match is ranked, or the pool is as deep as the index: deeper finds nothing more
            exhausted = len(ranked.items) >= total or depth >= len(self.index.catalog)
            if walk is not None or exhausted or (len(page) == k and index + 1 < len(pages)):
                return ranked, page, k * len(pages)
            depth *= 2

    def rank_articles(
        self,
        query: str,
        qvec: np.ndarray,
        need: int,
        mode: str,
        allowed: np.ndarray | None = None,
        *,
        collapse: bool = True,
        recency: Recency | None = None,
    ) -> Ranking:
        """The best ``need`` articles by ``mode`` (fewer only if fewer candidates match), with both component
        scores, and how many candidates there were.

        Dense candidates come from FAISS (an article scores as its best passage), lexical ones from BM25 over whole
        articles. In hybrid mode each candidate's missing side is computed exactly before fusing, so an article
        found by one side only is not penalised by a guess. ``allowed`` (sorted article keys) is a filter applied
        before ranking on both sides. A candidate that does not match the query (no query term, and a best passage
        below ``match_floor``) is left out, so the list ends where a response's ``total`` says; the order of the
        others is untouched. ``recency`` then decays the first ``RECENCY_POOL`` (at least ``need``) by age and
        orders them again (search/ranking/recency.py).

        The candidates are arrays (keys, dense, lexical, fused), in the order the dicts this replaced held them: a
        few hundred candidates a search, whose dicts and per-candidate Python floats were a fifth of its CPU.
        """
        self._pin_search_threads()
        wanted, need = need, _ranked_depth(need, recency)
        keys, dense = self._dense_articles(qvec, need, allowed) if mode != "lexical" else _no_scores()
        lexical = np.zeros(len(keys), dtype=np.float64)
        if mode != "dense":
            top = self.lexical.search_articles(query, max(self.settings.lexical_candidates, need), allowed)
            lex_keys = np.fromiter((a for a, _ in top), dtype=np.int64, count=len(top))
            lex_scores = np.fromiter((s for _, s in top), dtype=np.float64, count=len(top))
            if mode == "lexical":
                keys, dense, lexical = lex_keys, np.full(len(top), np.nan), lex_scores
        if mode == "hybrid":
            # the lexical candidates' exact dense side (those with vectors), then those without; the dense ones' lexical
            lexical_only = ~member(lex_keys, keys)
            more_keys, more_dense = self._dense_scores_of(qvec, lex_keys[lexical_only])
            rest = lex_keys[lexical_only & ~member(lex_keys, more_keys)]
            keys = np.concatenate([keys, more_keys, rest])
            dense = np.concatenate([dense, more_dense, np.full(len(rest), np.nan)])
            lexical = _aligned(keys, lex_keys, lex_scores)
            missing = np.isnan(lexical)
            lexical[missing] = self.lexical.given_scores("articles", query, keys[missing])
            fused = self._fused(dense, lexical, self.fusion, keys, lex_keys)
        else:
            fused = np.nan_to_num(dense if mode == "dense" else lexical, nan=0.0)
        keep = np.ones(len(keys), dtype=bool)
        if mode != "lexical":  # results end where matches end: a term, or a passage at the floor (matching_rows)
            keep = (np.nan_to_num(dense, nan=-2.0) >= self.settings.match_floor) | (lexical > 0)
        if collapse:  # one article per duplicate group; evaluation runs rank every copy (judgements name each)
            keep &= self._one_per_group(keys, fused, keep)
        ranked = np.flatnonzero(keep)
        ranked = ranked[np.lexsort((keys[ranked], -fused[ranked]))]
        head = ranked[:need]
        head_keys = keys[head]
        # the side a single-mode ranking did not use is filled for the returned articles only (it explains them)
        if mode == "dense":
            lexical = lexical.copy()
            lexical[head] = self.lexical.given_scores("articles", query, head_keys)
        elif mode == "lexical":
            dense = dense.copy()
            dense[head] = _aligned(head_keys, *self._dense_scores_of(qvec, head_keys))
        items = [
            (a, Scores(round(d, 6), round(lx, 6), round(f, 6)))
            for a, d, lx, f in zip(
                head_keys.tolist(),
                np.nan_to_num(dense[head], nan=0.0).tolist(),
                lexical[head].tolist(),
                fused[head].tolist(),
                strict=True,
            )
        ]
        if recency is not None:
            items = decayed(items, self.index.catalog, recency)[:wanted]
        return Ranking(items, len(ranked))

    def _fused(
        self, dense: np.ndarray, lexical: np.ndarray, fusion: Fusion, keys: np.ndarray, lexical_first: np.ndarray
    ) -> np.ndarray:
        """Both sides fused, aligned with ``keys``: on the arrays, or (an RRF or z-score fusion, whose numbers
        depend on the order the candidates come in) through ``Fusion.fuse`` on dicts in the order the ranking held
        them before: the dense side in ``keys`` order, the lexical side ``lexical_first`` first."""
        if fusion.on_arrays:
            return fusion.fuse_arrays(dense, lexical)
        key_list = keys.tolist()
        has_dense = ~np.isnan(dense)
        dense_of = dict(zip(keys[has_dense].tolist(), dense[has_dense].tolist(), strict=True))
        lexical_of = dict(zip(key_list, lexical.tolist(), strict=True))
        lexical_of = {k: lexical_of[k] for k in lexical_first.tolist()} | lexical_of
        fused = fusion.fuse(dense_of, lexical_of)
        return np.asarray([fused[k] for k in key_list], dtype=np.float64)

    def _one_per_group(self, keys: np.ndarray, fused: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Which of the kept candidates is the best-scoring of its duplicate group (ties: the smaller key)."""
        catalog = self.index.catalog
        if not catalog.has_duplicates or not keep.any():
            return keep
        rows = catalog.positions(keys)
        groups = np.where(rows >= 0, catalog.dup_codes[np.maximum(rows, 0)], -1 - keys)
        kept = np.flatnonzero(keep)
        order = kept[np.lexsort((keys[kept], -fused[kept]))]
        first = np.unique(groups[order], return_index=True)[1]
        chosen = np.zeros(len(keys), dtype=bool)
        chosen[order[first]] = True
        return chosen

    def _hits_key(self, qvec: np.ndarray) -> tuple[int, int, bytes]:
        """What a range search's hits are valid for: this index object at this generation, this query vector."""
        return id(self.index), self.index.generation, np.ascontiguousarray(qvec, dtype=np.float32).tobytes()

    def _range_hits(self, qvec: np.ndarray) -> Matches | None:
        """The hits of this thread's last range search (``_dense_matches``) if it was for this query on this index,
        taken once; else None."""
        memo = getattr(self._threads, "hits", None)
        self._threads.hits = None
        if memo is None or memo[0] != self._hits_key(qvec):
            return None
        found: Matches = memo[1]
        return found

    def _dense_articles(
        self, qvec: np.ndarray, need: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(article keys, best passage cosine of each), best first, from a FAISS candidate pool grown until ``need``
        articles appear.

        A search that counted its matches (``matching_rows``) holds every passage at or above ``match_floor`` that
        the vector index finds; while the pool asked for is no larger than those, it is their best ones, not a
        second pass over the same vectors (an IVF index probes the same lists for both: at 924k passages the two
        passes were most of a hybrid search)."""
        pids = None if allowed is None else self.index.owners.passages_of_set(allowed)
        count = self.index.passages.count() if pids is None else len(pids)
        if count == 0:
            return _no_scores()
        hits = self._range_hits(qvec) if pids is None else None
        n = min(count, self._pool_size(need))
        while True:
            if hits is not None and len(hits.ids) >= n and len(hits.best_ids) >= n:  # best first, ties by id
                scores, ids = hits.best_scores[:n][None, :], hits.best_ids[:n][None, :]
            else:
                scores, ids = self.index.passages.search(qvec[None, :], n, allowed=pids)
            owners = self.index.owners.articles_of(ids[0])
            known = owners >= 0
            owners, best = owners[known], scores[0][known]
            first = np.sort(np.unique(owners, return_index=True)[1])  # hits come best first: an article's first
            if len(first) >= need or n >= count:
                return owners[first], best[first].astype(np.float64)
            n = min(count, n * 4)

    def _passage_vectors(self, aids: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(article, passage id, vector) of every passage of the given articles, grouped by article in id order.

        Vectors come from FAISS memory; if FAISS lags the store (another process wrote since it was loaded), from
        the stored copies."""
        owners, pids = self.index.owners.passages_of(aids)
        keep, vectors = self._vectors_of(pids)
        return owners[keep], pids[keep], vectors

    def _vectors_of(self, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``pids`` have a vector, their vectors): from FAISS memory, or from the stored copies if FAISS
        lags the store (another process wrote since it was loaded), where a passage deleted since has none."""
        try:
            return np.ones(len(pids), dtype=bool), self.index.passages.reconstruct_batch(pids)
        except KeyError:
            stored = self.index.store.passage_vectors(pids.tolist())
            keep = np.asarray([int(p) in stored for p in pids], dtype=bool)
            vectors = (
                np.stack([stored[int(p)] for p in pids[keep]])
                if keep.any()
                else np.zeros((0, self.embedder.dimension), dtype=np.float32)
            )
            return keep, vectors

    def _dense_scores_of(self, qvec: np.ndarray, aids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact best-passage cosine of the given articles (no FAISS search): (the keys of those with passages, in
        the order given, their scores)."""
        owners, _, vectors = self._passage_vectors(aids.tolist())
        if not len(owners):
            return _no_scores()
        scores = vectors @ qvec
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        return owners[starts], np.maximum.reduceat(scores, starts).astype(np.float64)

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
        dense = (vectors @ qvec).astype(np.float64)
        lexical = self.lexical.given_scores("passages", query, pids)
        if mode == "hybrid":
            fused = self._fused(dense, lexical, self.passage_fusion, pids, pids)
        else:
            fused = dense if mode == "dense" else lexical
        ranked = np.lexsort((pids, -fused))  # best first; ties by position
        ranked = ranked[member(owners[ranked], np.asarray(aids, dtype=np.int64))]  # the anchors only normalise
        chosen = ranked[_rank_within(owners[ranked]) < self.settings.passages_per_result]
        rows = self.index.store.passages(pids[chosen].tolist())
        out: dict[int, list[tuple[StoredPassage, Scores]]] = {aid: [] for aid in aids}
        for aid, pid, d, lx, f in zip(
            owners[chosen].tolist(),
            pids[chosen].tolist(),
            dense[chosen].tolist(),
            lexical[chosen].tolist(),
            fused[chosen].tolist(),
            strict=True,
        ):
            if pid in rows:
                out[aid].append((rows[pid], Scores(round(d, 6), round(lx, 6), round(f, 6))))
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

    def rank_passages(
        self, query: str, qvec: np.ndarray, k: int, mode: str, *, as_of: int | None = None
    ) -> list[tuple[StoredPassage, Scores]]:
        """The best ``k`` passages of the whole index for ``mode`` (batch runs, answer-recall evaluation); as in
        ``rank_articles``, only passages that match the query. In hybrid mode, a dated question (``as_of``, days
        since the epoch) has its candidates ranked as answers (``answer_signals``, ``_answer_scores``); an undated
        one by the passage fusion (``passage_alpha``), which did better than the signals without a date.
        """
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
        if mode == "hybrid" and self.answer_ranking is not None and as_of is not None:
            fused = self._answer_scores(query, qvec, dense, lexical, self.answer_ranking, as_of)
        else:
            fused = self._fuse_mode(dense, lexical, mode, self.passage_fusion)
        if mode != "lexical":  # a passage matches as an article does (rank_articles): a term, or the floor
            floor = self.settings.match_floor
            fused = {p: s for p, s in fused.items() if dense.get(p, -2.0) >= floor or lexical.get(p, 0.0) > 0}
        top = sorted(fused, key=lambda p: (-fused[p], p))[:k]
        rows = self.index.store.passages(top)
        return [
            (rows[p], Scores(round(dense.get(p, 0.0), 6), round(lexical.get(p, 0.0), 6), round(fused[p], 6)))
            for p in top
            if p in rows
        ]

    def answer_signals(
        self,
        query: str,
        qvec: np.ndarray,
        pids: list[int],
        dense: dict[int, float],
        lexical: dict[int, float],
        names: Sequence[str],
        as_of: int | None = None,
    ) -> dict[str, np.ndarray]:
        """The named signals of ``search/ranking/answers.py`` for candidate passages ``pids`` (arrays aligned on
        them), from their dense and lexical scores and what the index stores: sentence vectors, the articles' BM25
        and dates, and the postings (RM3's expanded query)."""
        out: dict[str, np.ndarray] = {}
        keys = np.asarray(pids, dtype=np.int64)
        if "dense" in names:
            out["dense"] = np.asarray([dense.get(p, np.nan) for p in pids], dtype=np.float64)
        if "lexical" in names:
            out["lexical"] = np.asarray([lexical.get(p, 0.0) for p in pids], dtype=np.float64)
        if "fused" in names:
            fused = self.passage_fusion.fuse(dense, lexical)
            out["fused"] = np.asarray([fused.get(p, np.nan) for p in pids], dtype=np.float64)
        if "sentence" in names:
            stored = self.index.store.sentence_vectors(pids)  # passages of one sentence have none: their own vector
            out["sentence"] = np.asarray(
                [float(np.max(stored[p][1] @ qvec)) if p in stored else dense.get(p, np.nan) for p in pids],
                dtype=np.float64,
            )
        if "article" in names or "date" in names or "headline" in names:
            owners = self.index.owners.articles_of(keys)
            if "headline" in names:
                out["headline"] = self._headline_scores(qvec, owners)
            if "article" in names:
                known = sorted({int(a) for a in owners.tolist() if a >= 0})
                bm25 = self.lexical.score_articles(query, known)
                out["article"] = np.asarray([bm25.get(int(a), 0.0) for a in owners.tolist()], dtype=np.float64)
            if "date" in names:
                catalog = self.index.catalog
                rows = catalog.positions(owners.tolist())
                days = np.where(rows >= 0, catalog.days[np.maximum(rows, 0)], NO_DATE).astype(np.float64)
                days[days == NO_DATE] = np.nan
                out["date"] = date_closeness(days, as_of)
        if "expanded" in names:
            feedback = sorted((p for p in pids if lexical.get(p, 0.0) > 0), key=lambda p: (-lexical[p], p))
            feedback = feedback[:FEEDBACK_PASSAGES]
            texts = self.index.store.passages(feedback)
            counts = [(content_terms(texts[p].passage.text), lexical[p]) for p in feedback if p in texts]
            terms = rm3_terms(counts, self.lexical.term_weights(query))
            scored = self.lexical.score_passages_weighted(terms, pids)
            out["expanded"] = np.asarray([scored.get(p, 0.0) for p in pids], dtype=np.float64)
        return out

    def _headline_scores(self, qvec: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """Each owner article's headline cosine to the query: its first passage (the headline passage; the lead
        paragraph for an article without a headline). NaN for a passage with no owner."""
        known = sorted({int(a) for a in owners.tolist() if a >= 0})
        article_of, pids = self.index.owners.passages_of(known)
        if not len(pids):
            return np.full(len(owners), np.nan)
        firsts = np.flatnonzero(np.r_[True, article_of[1:] != article_of[:-1]])
        keep, vectors = self._vectors_of(pids[firsts])
        cosine = dict(zip(article_of[firsts][keep].tolist(), (vectors @ qvec).tolist(), strict=True))
        return np.asarray([cosine.get(int(a), np.nan) for a in owners.tolist()], dtype=np.float64)

    def _answer_scores(
        self,
        query: str,
        qvec: np.ndarray,
        dense: dict[int, float],
        lexical: dict[int, float],
        ranking: AnswerRanking,
        as_of: int | None,
    ) -> dict[int, float]:
        """Candidates ranked as answers: the weighted reciprocal-rank fusion of ``ranking``'s signals."""
        pids = list(dict.fromkeys([*dense, *lexical]))
        signals = self.answer_signals(query, qvec, pids, dense, lexical, ranking.names, as_of)
        return dict(zip(pids, ranking.fuse(signals).tolist(), strict=True))

    @_reads
    def answers(self, query: str, k: int = 5, mode: str | None = None, *, as_of: str | None = None) -> AnswersResponse:
        """The ``k`` passages of the whole index that best answer ``query`` (``rank_passages``), with ``as_of`` (an
        ISO date) the question's date for the date answer signal."""
        started = time.perf_counter()
        query = self.validate_query(query)
        self.validate_k(k)
        mode = self.validate_mode(mode)
        day = None if as_of is None else parse_day(as_of, "as_of")
        top = self.rank_passages(query, self.embed_query(query), k, mode, as_of=day)
        return AnswersResponse(
            query=query,
            mode=mode,
            as_of=None if day is None else day_text(day),
            passages=[
                RankedPassage(sp.passage.article_id, sp.passage.id, sp.passage.text, sc.fused, sc) for sp, sc in top
            ],
            took_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    @_reads
    def batch_search(
        self, queries: Sequence[str], k: int, mode: str | None = None, *, articles: bool = True, passages: bool = True
    ) -> list[BatchResult]:
        """Rank articles and/or passages for many queries at once (evaluation runs): no highlights, no related."""
        if not 1 <= k <= self.settings.max_batch_k:
            raise InvalidInput(f"k must be between 1 and {self.settings.max_batch_k} for batch runs, got {k}")
        mode = self.validate_mode(mode)
        texts = [self.validate_query(q) for q in queries]
        vecs = self.embedder.encode(texts, batch_size=64)
        out: list[BatchResult] = []
        for text, vec in zip(texts, vecs, strict=True):
            ranked = self.rank_articles(text, vec, k, mode, collapse=False).items if articles else []
            refs = self._refs(a for a, _ in ranked)
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

    def _aids_of(self, article_ids: list[str]) -> dict[str, int]:
        """Keys of the given article ids (one indexed lookup each; a page lists a few dozen at most)."""
        found = {i: self.index.store.aid_of(i) for i in dict.fromkeys(article_ids)}
        return {i: a for i, a in found.items() if a is not None}

    def _aid(self, article_id: str) -> int:
        aid: int | None = self.index.store.aid_of(article_id)
        if aid is None:
            raise NotFound(f"no article with id {article_id!r}")
        return aid

    @_reads
    def article(self, article_id: str) -> Article:
        found: Article = self.index.store.article(self._aid(article_id))
        return found

    @_reads
    def article_with_labels(self, article_id: str) -> tuple[Article, ArticleRef]:
        """The article, and its reference carrying its ``canonical_id`` and ``story_id``."""
        aid = self._aid(article_id)
        return self.index.store.article(aid), self._refs([aid])[aid]

    @_reads
    def similar(
        self,
        article_id: str,
        k: int = 10,
        *,
        filters: Filter | None = None,
        exclude_story: bool = False,
        exclude_source: bool = False,
        scoring: str | None = None,
    ) -> SimilarResponse:
        """More like this: the nearest other articles, one per duplicate group and never the article's own copies;
        optionally not from its story or its source, and only within ``filters`` (a date window, sources...).
        ``scoring`` (default: the ``similar_scoring`` setting): ``profile`` ranks by shared neighbours, which keeps
        an article among its subject's articles (BBC category precision@5 0.964 against 0.923, ``bench/mlt.py``);
        ``cosine`` by the article vectors' cosine, which keeps more of the same event's coverage on top (on
        Reuters, 45% of the top 5 in the article's own story against 36%). Below ``MIN_ARTICLES`` articles profiles
        are measured to do worse than cosine, so cosine ranks whatever was asked; the response's ``scoring`` says
        which one scored the results."""
        self.validate_k(k)
        scoring = self.settings.similar_scoring if scoring is None else scoring
        if not is_scoring(scoring):
            raise InvalidInput(f"scoring must be one of {', '.join(SIMILAR_SCORINGS)}, got {scoring!r}")
        aid = self._aid(article_id)
        allowed = self._similar_allowed(aid, filters, exclude_story, exclude_source)
        used: Scoring = scoring
        if scoring == "profile" and not self.related.profiles_apply():
            used = "cosine"  # too few articles for profiles to mean anything (search/news/neighbours.py MIN_ARTICLES)
        nearest = self.related.nearest([aid], k, allowed, profile=used == "profile")[0]
        refs = self._refs([aid] + [a for a, _ in nearest])
        results = [SimilarResult(refs[a], round(s, 6), self._copies(a)) for a, s in nearest]
        return SimilarResponse(article=refs[aid], results=results, scoring=used)

    def _similar_allowed(
        self, aid: int, filters: Filter | None, exclude_story: bool, exclude_source: bool
    ) -> np.ndarray | None:
        catalog = self.index.catalog
        if filters is None and not exclude_story and not exclude_source:
            return None
        keep = np.ones(len(catalog), dtype=bool) if filters is None else catalog.mask(filters)
        row = int(catalog.positions([aid])[0])
        if row >= 0 and exclude_story:
            keep[catalog.story_rows(catalog.story_labels[row])] = False
        if row >= 0 and exclude_source and catalog.source_codes[row] >= 0:
            keep &= catalog.source_codes != catalog.source_codes[row]
        allowed: np.ndarray = catalog.aids[keep]
        return allowed

    @_reads
    def story(self, story_id: str) -> StoryResponse:
        """Every article of a story, earliest first."""
        catalog = self.index.catalog
        rows = catalog.story_rows(story_id)
        if not rows:
            raise NotFound(f"no story with id {story_id!r}")
        aids = [int(catalog.aids[r]) for r in rows]
        refs = self._refs(aids)
        return StoryResponse(story_id=story_id, articles=[refs[a] for a in aids if a in refs])

    @_reads
    def timeline(self, article_id: str, k: int = 20, *, filters: Filter | None = None) -> TimelineResponse:
        """Coverage around an article in date order (background first): its story and its ``k`` nearest dated
        articles, one per duplicate group, the article itself marked. Neighbours less similar than the
        ``timeline_min_similarity`` setting are left out (its story's articles never are)."""
        self.validate_k(k)
        return self._article_timeline(self._aid(article_id), k, filters)

    def _article_timeline(self, aid: int, k: int, filters: Filter | None) -> TimelineResponse:
        catalog = self.index.catalog
        row = int(catalog.positions([aid])[0])
        dated = catalog.days != NO_DATE
        keep = dated if filters is None else dated & catalog.mask(filters)
        floor = self.settings.timeline_min_similarity
        nearest = [(a, s) for a, s in self.related.nearest([aid], k, catalog.aids[keep])[0] if s >= floor]
        story = catalog.story_labels[row] if row >= 0 else self.index.store.article_refs([aid])[aid].id
        members = [int(catalog.aids[r]) for r in catalog.story_rows(story) if keep[r]]
        vector = self.related.vectors([aid])[0]
        scores = {a: s for a, s in nearest}
        others = [a for a in members if a not in scores and a != aid]
        if others:
            scores.update(zip(others, (self.related.vectors(others) @ vector).tolist(), strict=True))
        scores.pop(aid, None)
        groups = self._duplicate_groups([aid, *scores])
        scores = {a: s for a, s in scores.items() if groups[a] != groups[aid]}  # its copies: "also reported by"
        entries = [(a, round(float(s), 6)) for a, s in self._one_per_duplicate_group(scores).items()]
        entries.append((aid, 1.0))
        return self._timeline(entries, aid, story, self._refs([aid])[aid], None)

    @_reads
    def query_timeline(
        self, query: str, k: int = 20, mode: str | None = None, *, filters: Filter | None = None
    ) -> TimelineResponse:
        """The ``k`` best dated articles for a query, in date order; articles whose best passage's cosine to the
        query is below the ``timeline_min_relevance`` setting are left out (an "oil prices" timeline lists no cocoa
        review merely because it is among the nearest)."""
        query = self.validate_query(query)
        self.validate_k(k)
        mode = self.validate_mode(mode)
        dated = self.index.catalog.days != NO_DATE
        keep = dated if filters is None else dated & self.index.catalog.mask(filters)
        ranked = self.rank_articles(query, self.embed_query(query), k, mode, self.index.catalog.aids[keep])
        floor = self.settings.timeline_min_relevance  # on the dense side, which every mode fills
        items = [(a, sc.fused) for a, sc in ranked.items if sc.dense >= floor]
        return self._timeline(items, None, None, None, query)

    def _timeline(
        self,
        entries: list[tuple[int, float]],
        aid: int | None,
        story: str | None,
        ref: ArticleRef | None,
        query: str | None,
    ) -> TimelineResponse:
        refs = self._refs(a for a, _ in entries)
        catalog = self.index.catalog
        keys = [a for a, _ in entries]
        rows = catalog.positions(keys)
        days = {a: (int(catalog.days[r]) if r >= 0 else int(NO_DATE)) for a, r in zip(keys, rows.tolist(), strict=True)}
        # by day, then by the full timestamp within a day (ISO strings of one day compare in time order), then id
        ordered = sorted(
            (e for e in entries if e[0] in refs), key=lambda e: (days[e[0]], refs[e[0]].date or "", refs[e[0]].id)
        )
        return TimelineResponse(
            article=ref,
            query=query,
            entries=[
                TimelineEntry(refs[a], s, a == aid, story is not None and refs[a].story_id == story) for a, s in ordered
            ],
        )

    # -- pages: what the web pages show around the API's responses (search/pages.py) ---------------------------

    @_reads
    def overview(self) -> IndexOverview:
        """What the index holds (articles, date range, sources, categories) and example queries drawn from it."""
        return pages.overview(self.index.store, self.index.catalog)

    @_reads
    def article_page(self, article_id: str, related: int = 5, timeline: int = 20) -> ArticlePage:
        """An article with its story (other outlets' coverage, earliest first), its duplicates, related stories
        outside its story, and its timeline."""
        aid = self._aid(article_id)
        catalog, store = self.index.catalog, self.index.store
        row = int(catalog.positions([aid])[0])
        ref = self._refs([aid])[aid]
        copies = self._copies(aid)
        copy_ids = {c.id for c in copies}
        story_aids = [int(catalog.aids[r]) for r in catalog.story_rows(ref.story_id or ref.id)]
        story_aids = [a for a in story_aids if a != aid]
        floor = self.settings.timeline_min_similarity  # a related story is as close as a timeline neighbour
        near = self.related.nearest([aid], related + len(story_aids))[0]
        near = [(a, s) for a, s in near if a not in set(story_aids) and s >= floor][:related]
        line = self._article_timeline(aid, timeline, None)
        refs = self._refs(story_aids + [a for a, _ in near])
        story = [a for a in story_aids if a in refs and refs[a].id not in copy_ids]
        story.sort(key=lambda a: (refs[a].date or "9999", refs[a].id))
        timeline_aids = self._aids_of([e.article.id for e in line.entries])
        refs.update(self._refs(timeline_aids.values()))
        timeline_entries = [
            (timeline_aids[e.article.id], e.score) for e in line.entries if e.article.id in timeline_aids
        ]
        return ArticlePage(
            article=store.article(aid),
            ref=ref,
            categories=pages.categories_of(catalog, row),
            story=pages.cards(store, catalog, refs, [(a, None) for a in story], story=ref.story_id, self_aid=aid),
            duplicates=copies,
            related=pages.cards(store, catalog, refs, [(a, s) for a, s in near], story=ref.story_id, self_aid=aid),
            timeline=pages.cards(store, catalog, refs | {aid: ref}, timeline_entries, story=ref.story_id, self_aid=aid),
            dated=bool((catalog.days != NO_DATE).any()),
        )

    @_reads
    def similar_page(self, article_id: str, k: int = 10) -> SimilarPage:
        """More like this as the web page shows it: each entry with its categories, opening sentence and whether
        it belongs to the article's own story."""
        response = _unlocked(SearchService.similar)(self, article_id, k)
        story = response.article.story_id
        aids = self._aids_of([r.article.id for r in response.results])
        refs = {aids[r.article.id]: r.article for r in response.results if r.article.id in aids}
        copies = {aids[r.article.id]: r.also_reported for r in response.results if r.article.id in aids}
        entries: list[tuple[int, float | None]] = [
            (aids[r.article.id], r.score) for r in response.results if r.article.id in aids
        ]
        cards = pages.cards(self.index.store, self.index.catalog, refs, entries, story=story, copies=copies)
        return SimilarPage(article=response.article, results=cards)

    # -- labels: stories and duplicates -----------------------------------------------------------------------

    def _duplicate_groups(self, aids: Sequence[int]) -> dict[int, int]:
        catalog = self.index.catalog
        rows = catalog.positions(list(aids))
        return {
            int(a): (int(catalog.dup_codes[r]) if r >= 0 else -1 - int(a))
            for a, r in zip(aids, rows.tolist(), strict=True)
        }

    def _one_per_duplicate_group(self, scores: dict[int, float]) -> dict[int, float]:
        """The best-scoring article of each duplicate group (ties: the smaller key), in the given order."""
        if not scores or not self.index.catalog.has_duplicates:
            return scores
        groups = self._duplicate_groups(list(scores))
        best: dict[int, int] = {}
        for a in sorted(scores, key=lambda a: (-scores[a], a)):
            best.setdefault(groups[a], a)
        chosen = set(best.values())
        return {a: s for a, s in scores.items() if a in chosen}

    def _refs(self, aids: Iterable[int]) -> dict[int, ArticleRef]:
        """Article references with their canonical copy and story, from the catalog."""
        refs = self.index.store.article_refs(aids)
        catalog = self.index.catalog
        keys = list(refs)
        rows = catalog.positions(keys)
        out: dict[int, ArticleRef] = {}
        for aid, row in zip(keys, rows.tolist(), strict=True):
            ref = refs[aid]
            # written by another process since the catalog was loaded: alone in both until reloaded
            canonical, story = (catalog.canonical_id(row), catalog.story_labels[row]) if row >= 0 else (ref.id, ref.id)
            out[aid] = ArticleRef(ref.id, ref.title, ref.date, ref.source, ref.url, canonical, story)  # no replace()
        return out

    def _copies(self, aid: int) -> list[Copy]:
        catalog = self.index.catalog
        row = int(catalog.positions([aid])[0])
        if row < 0:
            return []
        return [Copy(catalog.ids[r], catalog.source_name(r)) for r in catalog.duplicate_rows(row)]

    @_reads
    def memory(self) -> dict[str, int]:
        """Resident memory by component (search/memory.py): the served index's parts, the model, RSS and other."""
        return memory_report(self.index.memory(), self.embedder)

    @_reads
    def health(self) -> Health:
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
            "read_only": self.index.read_only,
        }
