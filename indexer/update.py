"""Adding and deleting articles in an open index, keeping SQLite, BM25 and FAISS in step.

SQLite (with the BM25 tables, through triggers) changes in one transaction; FAISS is then updated in memory and
saved with the new generation. If the process dies between the two, the next open sees a stale generation and
rebuilds FAISS from the stored vectors, so the dense side can lag a crash but never disagree after an open.

Other processes write too (``newsdesk add``, each server worker): the in-memory index reflects one generation
(``Index.generation``) and applies a write only on top of exactly that one. The check runs inside the write
transaction, under SQLite's write lock; finding another process's commit (or another build swapped in), the writer
rolls back, catches up (reopens the index as committed) and writes again. Caches are stamped with the generation the
in-memory state reflects, and saved only while the store is still there (``Store.saving``).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from indexer.build import (
    Reusable,
    input_text,
    lead_input,
    lead_limit,
    lead_vectors_stale,
    make_chunker,
    mean_vector,
    new_articles,
)
from search.alerts.matcher import match_rows
from search.errors import StaleIndex
from search.models import Article
from search.news.dedup import DedupIndex
from search.news.grouping import DUPLICATES_STATE, Text, label_new, load_duplicates, save_duplicates
from search.news.neighbours import GRAPH_STATE, NeighbourGraph, article_vectors
from search.news.segmented import read_stamp
from search.settings import Settings
from search.storage.changes import InMemory, changed_in_memory, follow_log
from search.storage.index import Index, now_iso
from search.storage.manifest import write_manifest
from search.storage.store import NewArticle, Replaced, Store
from search.text.embedding import Embedder

log = logging.getLogger("newsdesk.update")


def add_articles(
    index: Index, articles: Iterable[Article], embedder: Embedder, settings: Settings, *, origin: str = "add"
) -> int:
    """Insert or replace (by id) articles; returns how many were written. They are recorded as coming from
    ``origin`` (``newsdesk add``), so a later ``newsdesk index`` warns before deleting them.

    A replaced article's old and new versions swap in one transaction, and passages whose embedding input did not
    change keep their stored vectors instead of being embedded again."""
    items = list({a.id: a for a in articles}.values())
    if not items:
        return 0
    known = reusable_vectors(index, [a.id for a in items], settings, embedder)
    rows, _ = new_articles(items, make_chunker(settings, embedder), embedder, settings, known)
    apply_changes(index, [a.id for a in items], [replace(r, origin=origin) for r in rows], embedder=embedder)
    return len(items)


def delete_articles(index: Index, article_ids: Iterable[str]) -> int:
    """Delete articles by id (unknown ids are ignored); returns how many were deleted."""
    return apply_changes(index, list(article_ids), [])


def reusable_vectors(
    index: Index, article_ids: list[str], settings: Settings, embedder: Embedder
) -> dict[str, Reusable]:
    """Stored vectors (passage and sentences) of the given articles' passages, keyed by the text the model saw, and
    their article vectors, keyed by their headline + lead input (``embedder``'s tokenizer decides where a lead ends),
    so an edit past an article's opening does not embed the opening again."""
    _, store = index.writable
    known: dict[str, Reusable] = {
        input_text(title, field, text, settings.title_context): (vec, sentences)
        for title, field, text, vec, sentences in store.passage_texts(article_ids)
    }
    if not lead_vectors_stale(index.manifest) and getattr(embedder, "counts_tokens", True):
        limit = lead_limit(embedder, settings)
        for aid in (store.aid_of(i) for i in dict.fromkeys(article_ids)):
            if aid is not None:  # a passage's entry of the same text holds the same vector and its sentences too
                lead = lead_input(store.article(aid), limit, embedder.count_tokens)
                known.setdefault(lead, (store.article_vector(aid), None))
    return known


CATCH_UP_TRIES = 20  # each try that fails does so because another writer committed: someone makes progress

Exclusive = Callable[[], AbstractContextManager[object]]
Also = Callable[[sqlite3.Connection], None]  # statements committed with the write (Store.replace_articles)


def apply_changes(
    index: Index,
    delete_ids: list[str],
    rows: list[NewArticle],
    *,
    save: bool = True,
    embedder: Embedder | None = None,
    exclusive: Exclusive = nullcontext,
    also: Also | None = None,
) -> int:
    """Delete and insert in one SQLite transaction, then bring FAISS, the BM25 postings and the manifest up to it;
    returns the number of articles deleted. ``save=False`` leaves writing the on-disk caches to the caller
    (``save_state``), who may do it after letting readers back in: they are caches of the committed store.

    ``index`` catches up in place (``Index.catch_up``; ``embedder`` is checked against a new build's model) when
    another process committed since it was loaded, or a rebuild replaced it: the write is then labelled and applied
    again on top of the index as committed, so neither the in-memory index nor a cache saved from it misses the other
    writer's articles, and a write is never acknowledged into a store that is no longer the index.

    ``exclusive`` is entered around each step that changes ``index`` as its readers see it: the commit with the swap
    of the in-memory parts and the FAISS update, and a catch-up. A live writer passes its service's write lock
    (indexer/live.py): labelling, the SQLite statements and building the new postings, owners and catalog then run
    with searches going on (measured by bench/write_lock.py), and the lock is held for the commit and the swap.

    New articles get the kind of article vector ``index`` holds (``_of_kind``), checked again after each catch-up:
    an index built before issue 18 keeps taking writes, with mean vectors, until ``newsdesk index`` rebuilds it."""
    for _ in range(CATCH_UP_TRIES):
        try:
            deleted = _apply_once(index, delete_ids, _of_kind(index, rows), save, exclusive, embedder, also)
        except StaleIndex:
            with exclusive():
                if not follow_log(index):  # another process's write is followed; a rebuild is reopened
                    index.catch_up(embedder)
            continue
        if deleted is not None:
            return deleted
    raise StaleIndex(f"the index kept changing under this write ({CATCH_UP_TRIES} tries); nothing was written")


def _of_kind(index: Index, rows: list[NewArticle]) -> list[NewArticle]:
    """``rows`` with the kind of article vector ``index`` holds. ``new_articles`` gives headline + lead vectors;
    into an index whose article vectors are means of passage vectors (``lead_vectors_stale``: built before issue
    18) each row gets the mean of its own passage vectors instead, as that index's build did, rather than a refusal
    until a rebuild: one index never mixes the two kinds, whose cosines with each other mean nothing."""
    if not rows or not lead_vectors_stale(index.manifest):
        return rows
    return [replace(r, article_vector=mean_vector(r.passage_vectors, len(r.article_vector))) for r in rows]


def _apply_once(
    index: Index,
    delete_ids: list[str],
    rows: list[NewArticle],
    save: bool,
    exclusive: Exclusive,
    embedder: Embedder | None,
    also: Also | None = None,
) -> int | None:
    """One try of ``apply_changes``: StaleIndex (and nothing changed in memory that matters) if the store is not at
    the generation ``index`` reflects, or is no longer the index; None, ``index`` caught up, if a rebuild swapped
    the directory between the check and the commit (the write went to the replaced store and is written again).

    Only ``index.duplicates`` changes before the commit (labelling adds to it; the writer alone reads it): the new
    postings, owners and catalog are built inside the open transaction, from this connection's uncommitted rows,
    and swapped in with the commit under ``exclusive``."""
    directory, store = index.writable  # a replica refuses here, before anything changes
    if not index.current() or store.generation() != index.generation:
        raise StaleIndex("the index changed since it was loaded")  # cheap early exit; the binding check is below

    def check(generation: int) -> None:
        if generation != index.generation or not index.current():
            raise StaleIndex("another process wrote, or a rebuild replaced the index, since it was loaded")

    with ExitStack() as held:
        try:
            dedup = index.duplicates
            if rows and dedup is None:
                dedup = load_duplicates(directory, store, index.catalog)
            if dedup is not None:
                for article_id in delete_ids:
                    dedup.remove(article_id)
            rows = _labelled(index, dedup, delete_ids, rows)

            def publish(done: Replaced, commit: Callable[[], None]) -> None:
                changed = _changed(index, store, done, rows)
                _match_alerts(index, store, rows, done, embedder, changed)  # in this transaction, before commit
                held.enter_context(exclusive())  # left after the swap below, or after a catch-up
                commit()
                if index.current():
                    _swap(index, store, done, rows, changed, dedup)

            done = store.replace_articles(delete_ids, rows, check, before_commit=publish, also=also)
        except BaseException:
            index.duplicates = None  # it may hold what did not commit: reloaded from the store when next needed
            raise
        if not index.current():  # still exclusive: no reader sees the old in-memory index beside the commit
            index.duplicates = None
            index.catch_up(embedder)
            return None
    if (done.deleted_aids or rows) and save:
        save_after_commit(index)
    return len(done.deleted_aids)


def _match_alerts(
    index: Index,
    store: Store,
    rows: list[NewArticle],
    done: Replaced,
    embedder: Embedder | None,
    changed: InMemory | None,
) -> None:
    """The saved searches the write's new articles answer, recorded in its open transaction (search/alerts/
    matcher.py), outside the write lock: searches go on while it scores. The lexical side reads the new articles'
    terms from the postings ``changed`` built for them."""
    if rows:
        key = f"{store.path}:{store.build}"
        model, idf = index.manifest["model"], index.lexical.passages.term_idf
        lexical = changed.lexical if changed is not None else None
        match_rows(
            store.connection(),
            rows,
            key=key,
            fingerprint=model,
            idf=idf,
            generation=done.generation,
            embedder=embedder,
            postings=lexical.articles if lexical is not None else None,
            aids=done.new_aids,
            passage_postings=lexical.passages if lexical is not None else None,
            pids=done.new_pids,
        )


def _changed(index: Index, store: Store, done: Replaced, rows: list[NewArticle]) -> InMemory | None:
    """The postings, owners and catalog after ``done`` (read in its open transaction), or None if it changed
    nothing; the same update a replica applies to a published delta (search/storage/changes.py)."""
    aids, pids, new_aids, new_pids = done.deleted_aids, done.deleted_pids, done.new_aids, done.new_pids
    if not aids and not rows:
        return None
    owners = np.repeat(np.asarray(new_aids, dtype=np.int64), [len(r.passages) for r in rows])
    return changed_in_memory(index, store, (aids, pids), (new_aids, new_pids), owners, done.generation)


def _swap(
    index: Index,
    store: Store,
    done: Replaced,
    rows: list[NewArticle],
    changed: InMemory | None,
    dedup: DedupIndex | None,
) -> None:
    """Bring ``index`` to the committed ``done``: the parts built aside swapped in, FAISS updated in place (it has
    no copy to build aside), generation set. The caller holds the exclusive section."""
    aids, pids, new_aids, new_pids = done.deleted_aids, done.deleted_pids, done.new_aids, done.new_pids
    index.duplicates = dedup
    index.generation = done.generation
    if changed is not None:
        changed.swap_into(index)
    if aids:
        index.passages.remove(np.asarray(pids, dtype=np.int64))
        index.articles.remove(np.asarray(aids, dtype=np.int64))
    if rows:
        index.passages.add(np.asarray(new_pids, dtype=np.int64), np.concatenate([r.passage_vectors for r in rows]))
        index.articles.add(np.asarray(new_aids, dtype=np.int64), np.stack([r.article_vector for r in rows]))
    if aids or rows:  # what replicas read besides vectors (Milvus's record collections)
        index.vectors.apply(store, (aids, pids), (new_aids, new_pids))
        # The profiles follow in save_state: an exact update passes over every article's vector and term entries
        # (search/news/neighbours.py), which must not be spent with searches locked out. Until then searches use the
        # previous profiles; related.py skips the articles they name that are gone.
        index.neighbour_changes[0].extend(aids)
        index.neighbour_changes[1].extend(new_aids)


def _labelled(
    index: Index, dedup: DedupIndex | None, delete_ids: list[str], rows: list[NewArticle]
) -> list[NewArticle]:
    """``rows`` with their story and duplicate-group labels, decided before the write so they commit with it."""
    if not rows or dedup is None:
        return rows
    catalog = index.catalog
    deleted = {int(catalog.aids[row]) for row in map(catalog.row_of, delete_ids) if row >= 0}
    texts = [Text(r.article.title, r.article.body, r.article.date, _headline_vector(r)) for r in rows]
    labels = label_new(
        catalog,
        index.articles,
        dedup,
        [r.article.id for r in rows],
        np.stack([r.article_vector for r in rows]),
        texts,
        exclude=deleted,
    )
    return [replace(r, story=story, duplicates=dup) for r, (story, dup) in zip(rows, labels, strict=True)]


def _headline_vector(row: NewArticle) -> np.ndarray | None:
    for (_, field, *_), vec in zip(row.passages, row.passage_vectors, strict=True):
        if field == "title":
            return np.asarray(vec)
    return None


def save_state(index: Index, rebuilds: ProfileRebuilds | None = None) -> None:
    """The caches, stamped with the generation the in-memory index reflects, then the manifest's counts; nothing if
    another process committed since (its own save follows, or the next open repairs the caches) or a rebuild
    replaced the index."""
    directory, store = index.writable
    update_neighbours(index, rebuilds)
    generation = index.generation
    with store.saving(generation) as ok:
        if not ok or not index.current():
            return
        index.vectors.save(directory, generation, index.manifest)
        index.lexical.save(directory)
        if index.neighbours is not None:
            index.neighbours.save(directory)
        if index.duplicates is not None:
            save_duplicates(directory, index.duplicates, generation)
        n_articles, n_passages = store.counts()
        index.manifest["counts"] = {"articles": n_articles, "passages": n_passages}
        index.manifest["newest_date"] = store.newest_date()
        index.manifest["updated_at"] = now_iso()
        write_manifest(directory, index.manifest)
        index.vectors.publish(generation, index.manifest)  # replicas reload (Milvus only)


def save_after_commit(index: Index, rebuilds: ProfileRebuilds | None = None) -> bool:
    """``save_state`` after a committed write, which stays committed whatever happens here: a save the disk refuses
    (ENOSPC, or a directory gone read-only) is logged, not raised, so the write is still reported as done. The caches
    keep their older generation stamp (each is stamped last), so every process rebuilds them from SQLite when it next
    opens the index; the manifest's counts are repaired the same way. Returns whether everything was saved."""
    try:
        save_state(index, rebuilds)
    except OSError as exc:
        log.warning(
            "the write is committed (generation %s) but saving the index caches failed: %s; they are rebuilt from "
            "SQLite when the index is next opened",
            index.generation,
            exc,
        )
        return False
    return True


def update_neighbours(index: Index, rebuilds: ProfileRebuilds | None = None) -> None:
    """Bring the more-like-this profiles up to the writes ``apply_changes`` recorded, then swap them in (readers hold
    either the old profiles or the new ones, never a half-updated object). With ``rebuilds`` (a server's writer),
    a whole rebuild falling due is made in a thread and adopted by a later write, not made in this one."""
    deleted, added = index.neighbour_changes
    if not deleted and not added:
        return
    index.neighbour_changes = ([], [])
    graph = index.neighbours
    if graph is None:
        return
    live = np.isin(added, index.articles.ids())
    added = sorted(set(np.asarray(added, dtype=np.int64)[live].tolist()))  # not added, then deleted
    if rebuilds is not None:
        index.neighbours = rebuilds.updated(graph, deleted, added, index)
        return
    index.neighbours = graph.updated(deleted, added, index.articles, index.lexical.articles, index.generation)


class ProfileRebuilds:
    """Whole rebuilds of the exact more-like-this profiles, made in a thread beside a long-lived writer's writes
    (``indexer.live.Writer``: a server's) instead of inside the write that found them due. Building every profile
    costs all pairs of articles: at 26,671 articles the write that crossed ``REBUILD_SHARE`` took 35 s with
    searches running beside (101 s niced in a write process), where a write is otherwise under a second
    (bench/README.md). A one-shot writer (``newsdesk add``) still rebuilds in the write.

    The thread builds from a snapshot (the keys, their vectors and the postings object of the write that started
    it: postings objects are replaced by writes, never changed). Each write meanwhile goes on updating the current
    profiles incrementally and records what it deleted and added; the first write after the build finished adopts
    it, replaying those changes onto it (``NeighbourGraph.updated``, incremental), so the adopted profiles hold
    every write. A build that fails is logged and dropped; the next write finds the profiles due again. The thread
    inherits the writer's CPU niceness (api/writes.py)."""

    def __init__(self) -> None:
        self._build: _ProfileBuild | None = None

    @property
    def running(self) -> bool:
        return self._build is not None and self._build.thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Until the build in progress ends (tests; a server never waits)."""
        if self._build is not None:
            self._build.thread.join(timeout)

    def updated(self, graph: NeighbourGraph, deleted: list[int], added: list[int], index: Index) -> NeighbourGraph:
        """``graph`` after a write that deleted and added these article keys: a finished rebuild with every change
        since its snapshot, else ``graph`` updated incrementally (and a rebuild started if it is due). A build from
        an index the service has since replaced (reopened after a rebuild swapped the directory) is dropped: the
        changes recorded since its snapshot are not the new index's."""
        articles, postings, generation = index.articles, index.lexical.articles, index.generation
        build = self._build
        if build is not None and build.of() is not index:
            build = self._build = None  # its thread finishes into its own record, which nothing reads
        if build is not None:
            build.deleted.update(int(k) for k in deleted)
            build.added.update(int(k) for k in added)
            if not build.thread.is_alive():
                self._build = None
                if build.built:
                    gone, new = sorted(build.deleted), sorted(build.added - build.deleted)
                    return build.built[0].updated(gone, new, articles, postings, generation, rebuild=False)
        current = graph.updated(deleted, added, articles, postings, generation, rebuild=False)
        if self._build is None and current.due():
            self._build = _ProfileBuild.start(current, index)
        return current


@dataclass
class _ProfileBuild:
    """One whole rebuild of the profiles in its thread: the index it snapshotted, the graph once built, and the
    article keys the writes since deleted and added (to replay onto it)."""

    thread: threading.Thread
    of: weakref.ref[Index]
    built: list[NeighbourGraph] = dataclasses.field(default_factory=list)
    deleted: set[int] = dataclasses.field(default_factory=set)
    added: set[int] = dataclasses.field(default_factory=set)

    @classmethod
    def start(cls, graph: NeighbourGraph, index: Index) -> _ProfileBuild:
        keys = graph.keys.copy()
        vectors = article_vectors(index.articles, keys)  # read now: the vector store changes with the next write
        postings, generation, config = index.lexical.articles, index.generation, graph.config
        built: list[NeighbourGraph] = []

        def build() -> None:
            started = time.perf_counter()
            try:
                built.append(NeighbourGraph.build(keys, vectors, postings, generation, config))
            except Exception:  # the write path never sees it: the profiles stay incremental, due again next write
                log.exception("rebuilding the more-like-this profiles failed; they are rebuilt at a later write")
                return
            log.info("rebuilt %d more-like-this profiles in %.1f s", len(keys), time.perf_counter() - started)

        thread = threading.Thread(target=build, name="newsdesk-profiles", daemon=True)
        thread.start()
        return cls(thread, weakref.ref(index), built)


def apply_metadata(index: Index, articles: list[Article]) -> int:
    """Write new metadata (date, source, url, tags, extra) of stored articles whose text is unchanged, without
    embedding or re-inserting anything; returns how many were updated.

    The store's row changes in one transaction with a new generation (servers reload); the catalog (filters,
    facets, timelines, canonical copies) reads those rows again, and the caches that do not hold metadata (FAISS, BM25
    postings, profiles, duplicate fingerprints) are re-stamped with the new generation instead of going stale. An
    article keeps its story and duplicate labels: labels are never rewritten once given (search/news/grouping.py), so a
    corrected date moves it in timelines and date filters, not out of its story (``--rebuild`` regroups)."""
    directory, store = index.writable
    if not articles:
        return 0
    if not index.current() or store.generation() != index.generation:
        index.catch_up(None)  # another writer committed, or a rebuild replaced the index: start from what is there
        directory, store = index.writable
    if index.duplicates is None:  # loaded now (after any catch-up, which replaces it), so it is saved below
        index.duplicates = load_duplicates(directory, store, index.catalog)
    aids = store.update_metadata(articles)
    if not aids:
        return 0
    generation = store.generation()
    if generation != index.generation + 1 or not index.current():
        # another process committed beside this update: the caches must not be stamped with its generation while
        # missing its change, so take everything as committed instead (its writer saves, or the next open repairs)
        index.catch_up(None)
        return len(aids)
    index.generation = generation
    index.catalog = index.catalog.updated(store, aids, aids)
    index.lexical = replace(index.lexical, generation=generation)
    if index.neighbours is not None:
        index.neighbours = replace(index.neighbours, generation=generation)
    index.vectors.apply(store, (aids, []), (aids, []))  # replicas read the article fields from the records (Milvus)
    save_state(index)
    return len(aids)


def optimize(index: Index) -> int:
    """Merge the segments saves appended (vectors: search/vectors/segments.py; BM25: search/text/bm25.py; profiles
    and duplicate fingerprints: search/news/segmented.py) into new base files now, under the caches lock as a save;
    returns how many segment files were merged (0: the bases already hold everything).
    Another process committing meanwhile makes this catch up (its own save may have merged) and try again."""
    for _ in range(CATCH_UP_TRIES):
        directory, store = index.writable
        with store.saving(index.generation) as ok:
            if ok and index.current():
                merged = index.vectors.merge(directory, index.generation, index.manifest)
                return merged + index.lexical.merge(directory) + _merge_news(index, directory, store)
        if not index.current() or store.generation() != index.generation:
            index.catch_up(None)
            continue
        raise OSError(f"cannot take the caches lock of {directory}; is the directory writable?")
    raise StaleIndex(f"the index kept changing under this merge ({CATCH_UP_TRIES} tries); nothing was merged")


def _merge_news(index: Index, directory: Path, store: Store) -> int:
    """Write the profiles and the duplicate fingerprints as new bases when their stamps list segments; returns how
    many segment files that merged. Under the caches lock, at ``index.generation`` (the caller checked)."""
    merged = 0
    update_neighbours(index)  # the profiles as of the index's generation, before they are written whole
    listed = len(read_stamp(directory / GRAPH_STATE).get("segments", []))
    if listed and index.neighbours is not None:
        index.neighbours.save(directory, merge=True)
        merged += listed
    listed = len(read_stamp(directory / DUPLICATES_STATE).get("segments", []))
    if listed:
        dedup = index.duplicates if index.duplicates is not None else load_duplicates(directory, store, index.catalog)
        save_duplicates(directory, dedup, index.generation, merge=True)
        index.duplicates = dedup
        merged += listed
    return merged
