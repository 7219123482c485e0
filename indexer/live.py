"""Writes while the server serves: articles added, replaced and deleted through the API or the CLI.

One writer at a time (a lock per process; SQLite serialises writers across processes). The slow part, embedding,
runs before the write lock is taken, so searches go on meanwhile; then, under the service's write lock, one SQLite
transaction stores the articles with their passages, vectors and labels, and FAISS, the BM25 postings and the
catalog are brought up to it. An acknowledged write is committed (``synchronous=FULL``) and searchable; a failed
one leaves the store as it was, and the in-memory side is reloaded from it.

The write applies to the index the service holds when the write lock is taken, not the one it held before the
embedding: a reload meanwhile (another process wrote) would otherwise leave the write on a detached index. When
another process commits between that reload and this write, ``apply_changes`` catches up first (indexer/update.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from indexer.build import make_chunker, new_articles
from indexer.update import apply_changes, reusable_vectors, save_after_commit
from search.errors import NotFound
from search.models import Article
from search.service import SearchService


@dataclass(frozen=True)
class WriteResult:
    written: list[str]
    deleted: list[str]
    generation: int


class Writer:
    def __init__(self, service: SearchService) -> None:
        self.service = service
        self._lock = threading.Lock()

    def upsert(self, articles: list[Article]) -> WriteResult:
        """Insert or replace (by id) every article of the batch, in one transaction: all or nothing."""
        svc = self.service
        ids = [a.id for a in articles]
        with self._lock:
            svc.refresh()
            settings = svc.settings
            with svc.lock.reading():  # the index is not replaced (and its store closed) while it is read
                known = reusable_vectors(svc.index, ids, settings)
            rows, _ = new_articles(articles, make_chunker(settings, svc.embedder), svc.embedder, settings, known)
            rows = [replace(r, origin="api") for r in rows]  # newsdesk index warns before deleting these
            svc.refresh()
            with svc.lock.writing():  # svc.index now: the one searches use, whatever reloaded during the embedding
                self._apply(lambda: apply_changes(svc.index, ids, rows, save=False, embedder=svc.embedder))
                result = WriteResult(ids, [], svc.generation)
            self._save()
            return result

    def delete(self, article_ids: list[str]) -> WriteResult:
        """Delete articles by id; NotFound (and nothing deleted) if any of them is not in the index."""
        svc = self.service
        with self._lock:
            svc.refresh()
            svc.index.writable  # noqa: B018 -- a read-only index refuses (403) whether or not the ids exist
            with svc.lock.writing():
                missing = [i for i in article_ids if svc.index.store.aid_of(i) is None]
                if missing:
                    raise NotFound(f"no article with id {missing[0]!r}")
                self._apply(lambda: apply_changes(svc.index, list(article_ids), [], save=False, embedder=svc.embedder))
                result = WriteResult([], list(article_ids), svc.generation)
            self._save()
            return result

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
            save_after_commit(svc.index)

    def _apply(self, change: Callable[[], object]) -> None:
        """Run ``change`` under the service's write lock; the service then serves what it left in ``svc.index``
        (caught up in place, perhaps onto a new store)."""
        svc = self.service
        try:
            change()
        except BaseException:
            # SQLite rolled back; FAISS, postings or the catalog may be half-updated: serve the store's state again
            svc.attach(svc.index.reopen(svc.embedder))
            raise
        svc.wrote()
