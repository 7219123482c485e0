"""Writes while the server serves: articles added, replaced and deleted through the API or the CLI.

One writer at a time (a lock per process; SQLite serialises writers across processes). Searches are locked out only
for the swap: embedding runs first; then, with the service holding its index (``SearchService.holding``: no reload
replaces it meanwhile), the batch is labelled, one SQLite transaction's statements run and the new BM25 postings,
passage owners and catalog are built from its uncommitted rows, all with searches going on; under the service's
write lock the transaction commits, those objects are swapped in and FAISS is updated (indexer/update.py
``apply_changes``, ``exclusive``). A search sees the index before the write or after it, never between: the commit
and the swap happen together under the lock, and until the commit no other connection sees the transaction's rows.
An acknowledged write is committed (``synchronous=FULL``) and searchable; a failed one leaves the store as it was
(SQLite rolls back) and the service serving it: a failure before the commit changed nothing searches read, and one
under the lock makes the service reload the store's state before it lets readers back in.

The write applies to the index the service holds when the write starts holding it, not the one it held before the
embedding: a reload meanwhile (another process wrote) would otherwise leave the write on a detached index. When
another process commits after that, ``apply_changes`` catches up (under the write lock) and writes again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from indexer.build import make_chunker, new_articles
from indexer.update import Also, ProfileRebuilds, apply_changes, reusable_vectors, save_after_commit
from search.errors import NotFound
from search.models import Article
from search.news.grouping import load_duplicates
from search.service import SearchService
from search.storage.changes import saved_postings
from search.storage.index import Index
from search.storage.store import NewArticle


@dataclass(frozen=True)
class WriteResult:
    written: list[str]
    deleted: list[str]
    generation: int


class Writer:
    def __init__(self, service: SearchService) -> None:
        self.service = service
        self._lock = threading.Lock()
        self.rebuilds = ProfileRebuilds()  # whole rebuilds of the profiles beside the writes, not inside one

    def upsert(self, articles: list[Article], also: Also | None = None) -> WriteResult:
        """Insert or replace (by id) every article of the batch, in one transaction: all or nothing. ``also`` runs
        more statements in that transaction (``newsdesk watch`` records what it ingested there)."""
        svc = self.service
        ids = [a.id for a in articles]
        with self._lock:
            svc.refresh()
            settings = svc.settings
            with svc.lock.reading():  # the index is not replaced (and its store closed) while it is read
                known = reusable_vectors(svc.index, ids, settings, svc.embedder)
            rows, _ = new_articles(articles, make_chunker(settings, svc.embedder), svc.embedder, settings, known)
            rows = [replace(r, origin="api") for r in rows]  # newsdesk index warns before deleting these
            svc.refresh()
            with svc.holding() as index:  # the one searches use, whatever reloaded during the embedding
                generation = self._apply(index, ids, rows, also)
            self._save()
            return WriteResult(ids, [], generation)

    def delete(self, article_ids: list[str]) -> WriteResult:
        """Delete articles by id; NotFound (and nothing deleted) if any of them is not in the index."""
        svc = self.service
        with self._lock:
            svc.refresh()
            with svc.holding() as index:
                index.writable  # noqa: B018 -- a read-only index refuses (403) whether or not the ids exist
                missing = [i for i in article_ids if index.store.aid_of(i) is None]
                if missing:
                    raise NotFound(f"no article with id {missing[0]!r}")
                generation = self._apply(index, list(article_ids), [])
            self._save()
            return WriteResult([], list(article_ids), generation)

    def prepare(self) -> None:
        """Load now what the first write would otherwise load: the duplicate fingerprints (4 s from their cache at
        924k passages, alone). A server's write process calls it while it starts (api/writes.py): niced, under a
        search load that keeps the cores busy, that load took the first write 58 s (bench/README.md). Nothing
        where the index cannot be written."""
        svc = self.service
        with self._lock:
            svc.refresh()
            with svc.holding() as index:
                if index.duplicates is not None or index.read_only or index.directory is None:
                    return
                directory, store = index.writable
                if store.generation() == index.generation:  # else the next write reloads (and catches up) anyway
                    index.duplicates = load_duplicates(directory, store, index.catalog)

    def _save(self) -> None:
        """Write the FAISS, BM25 and duplicate caches and the manifest with searches running again (they only read
        those objects; the next write waits on this writer's lock). Measured by bench/load.py: on a 110k-passage
        index saving them took about 0.9 s of each write, all of it with searches locked out when done under the
        write lock. A crash before the save leaves the caches stale, which open_index repairs; the store already
        holds the write, and so does a save that fails (a full disk): the write is answered as done and the stale
        caches are rebuilt from SQLite when the index is next opened. Under the read lock: searches go on, and the
        index is not replaced (nor its store closed) while it is saved."""
        svc = self.service
        with svc.lock.reading():
            save_after_commit(svc.index, self.rebuilds)

    def _apply(self, index: Index, delete_ids: list[str], rows: list[NewArticle], also: Also | None = None) -> int:
        """Write into ``index`` (the service's, held), with the write lock only around what changes what searches
        read; returns the generation then served."""
        svc = self.service
        exclusive = self._exclusive
        saved = saved_postings(index)  # this process followed another's writes, whose save it now appends to
        if saved is not None:
            with exclusive():  # nothing else changes it meanwhile: searches do not follow while the writer holds it
                index.lexical = saved
        apply_changes(index, delete_ids, rows, save=False, embedder=svc.embedder, exclusive=exclusive, also=also)
        return svc.generation

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The service's write lock around one step that changes its index in place (a commit and the swap, or a
        catch-up); the service then serves what that step left in ``svc.index`` (perhaps on a new store). A step
        that fails has SQLite rolled back, or committed with FAISS, postings or the catalog perhaps half-updated:
        the store's state is served again before the lock is released, so no reader sees the half."""
        svc = self.service
        with svc.lock.writing():
            try:
                yield
            except BaseException:
                svc.attach(svc.index.reopen(svc.embedder))
                raise
            svc.wrote()
