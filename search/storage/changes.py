"""A committed change brought into an open index's in-memory parts: the BM25 postings, the passage owners and the
article catalog.

One function for both who do it: the writer after its own commit (indexer/update.py ``_apply_once``, reading the
added rows from SQLite) and a stateless replica catching up by a published delta (search/vectors/milvus/replica.py,
reading them from the engine's records). It lives here, below both, because the import layers run api -> indexer ->
search: the replica may not import the indexer, and the two must not drift apart (a replica that updates its
postings otherwise than the writer would rank otherwise). Vectors and profiles are not here: the writer adds its
vectors to the store it owns and defers the profiles to its save, while a replica's vectors are already in the
engine and it updates its profiles at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from search.ranking.catalog import ArticleCatalog
from search.storage.index import Index, PassageOwners
from search.storage.store import ChangedRows, Store
from search.text.bm25 import LexicalPostings
from search.vectors.base import Changes


@dataclass(frozen=True)
class InMemory:
    """The postings, owners and catalog of an index after a change, built aside from the ones searches use, so
    that a writer can build them before it takes the write lock and only swap them in under it."""

    lexical: LexicalPostings
    owners: PassageOwners
    catalog: ArticleCatalog

    def swap_into(self, index: Index) -> None:
        """Make ``index`` serve these (three reference assignments: the part a reader must not see half done)."""
        index.lexical, index.owners, index.catalog = self.lexical, self.owners, self.catalog


def changed_in_memory(
    index: Index,
    rows: ChangedRows,
    deleted: Changes,
    added: Changes,
    owners: np.ndarray,
    generation: int,
    metadata: Sequence[int] = (),
) -> InMemory:
    """New postings, owners and catalog for ``index`` that reflect a change that ``deleted`` and ``added``
    (article keys, passage ids), ``owners`` being the article of each added passage, and ``generation``; ``rows``
    gives the added rows' texts and the catalog after the change (for a writer: its own open transaction, read
    before the commit). ``metadata``: article keys whose text is unchanged and whose catalog rows are read again.
    ``index`` is only read: each part is a new object, never the old one changed in place."""
    aids, pids = deleted
    return InMemory(
        index.lexical.updated(rows, (aids, pids), added, generation),
        index.owners.updated(pids, np.asarray(added[1], dtype=np.int64), owners),
        index.catalog.updated(rows, [*aids, *metadata], [*added[0], *metadata]),  # its own rows, not the whole table
    )


def apply_in_memory(
    index: Index, rows: ChangedRows, deleted: Changes, added: Changes, owners: np.ndarray, generation: int
) -> None:
    """Replace ``index``'s postings, owners and catalog with ones that reflect a committed change
    (``changed_in_memory``). A reader holding the previous objects keeps a consistent view."""
    changed_in_memory(index, rows, deleted, added, owners, generation).swap_into(index)


# A change log naming more articles than this is not followed: the process reopens the index, whose caches the
# writer saved (a re-index of thousands of articles reads faster from them than row by row from SQLite).
FOLLOW_MOST = 2000
# Article keys the profiles' pending changes (``Index.neighbour_changes``) may list before they are recounted from
# the profiles and the vectors, so that a process following writes for months does not grow them without end.
PENDING_MOST = 50_000


@dataclass(frozen=True)
class Following:
    """Another process's writes, read and built aside (``following``) from the in-memory index at ``base``:
    what ``apply`` swaps in."""

    base: int  # the generation of the index this was built from
    built_from: LexicalPostings  # and its postings object (one a writer of this process replaced is not ``base``'s)
    generation: int
    deleted: Changes
    added: Changes
    vectors: tuple[np.ndarray, np.ndarray]
    parts: InMemory

    def apply(self, index: Index) -> bool:
        """Swap it into ``index`` under the caller's write lock; False (nothing changed) if ``index`` moved since
        it was built from it."""
        if index.generation != self.base or index.lexical is not self.built_from or index.directory is None:
            return False
        index.vectors.follow(index.directory.resolve(), self.generation, self.deleted, self.added, self.vectors)
        self.parts.swap_into(index)
        index.duplicates = None  # read again from the store when a write of this process needs them
        # The profiles stay as saved before; related.py ranks with them, skipping what they name that is gone, and
        # this process's own next save brings them up to date (indexer/update.py save_state).
        pending = index.neighbour_changes
        pending[0].extend(self.deleted[0])
        pending[1].extend(self.added[0])
        if len(pending[0]) + len(pending[1]) > PENDING_MOST and index.neighbours is not None:
            # a process that only follows never consumes them: kept as what the profiles lack and hold too many
            # (as an open brings saved profiles up to the store: search/news/neighbours.py load_graph)
            live, keys = np.sort(index.articles.ids()), index.neighbours.keys
            index.neighbour_changes = (np.setdiff1d(keys, live).tolist(), np.setdiff1d(live, keys).tolist())
        counts = index.manifest["counts"]
        counts["articles"] += len(self.added[0]) - len(self.deleted[0])
        counts["passages"] += len(self.added[1]) - len(self.deleted[1])
        index.generation = self.generation
        return True


def follow_log(index: Index) -> bool:
    """``following`` and ``apply`` in one step (the caller holds the write lock throughout): True when ``index``
    is now at its store's generation, False (nothing changed) where the caller must reopen it."""
    plan = following(index)
    return plan is True or (isinstance(plan, Following) and plan.apply(index))


def following(index: Index) -> Following | bool:
    """What brings ``index`` forward to the writes other processes committed to its store since it was loaded, by
    the store's change log, built aside while searches go on (the caller holds the read lock): what Lucene's
    near-real-time reopen does, opening only the new segments. True when there is nothing to follow; False where it
    cannot be followed (a replica, a rebuild swapped the directory, a backend that does not follow, a change too
    big, a reused key it cannot tell): the caller reopens the index.

    The work is the change, not the corpus: the changed articles' rows and vectors are read from SQLite in one
    snapshot (the writer may not have saved its caches yet: a process that reopened then would rebuild them whole),
    and built as the writer built them (``changed_in_memory``; the vectors' ``follow`` at ``apply``). Before this,
    a second server process (or one beside ``newsdesk watch``) reopened the whole index after every write: seconds
    at a million passages, with its searches waiting."""
    store = index.store
    if index.replica is not None or index.directory is None or not isinstance(store, Store):
        return False
    if not index.vectors.follows or not index.current():
        return False
    base, lexical = index.generation, index.lexical
    with store.snapshot():
        generation = store.generation()
        if generation == base:
            return True
        if generation < base:
            return False
        ids = store.changed_since(base)
        if len(ids) > FOLLOW_MOST:
            return False
        catalog = index.catalog
        old_aids = sorted({int(catalog.aids[row]) for row in map(catalog.row_of, ids) if row >= 0})
        held_owners, held_pids = index.owners.passages_of(old_aids)
        new_aids = sorted(a for a in (store.aid_of(i) for i in ids) if a is not None)
        owners, new_pids = store.passage_keys(new_aids)
        kept = _unchanged(index, store, (held_owners, held_pids), (owners, new_pids), set(old_aids) & set(new_aids))
        if kept is None:
            return False
        same = np.fromiter(kept, dtype=np.int64, count=len(kept))
        old_pids = held_pids[~np.isin(held_owners, same)]
        fresh = ~np.isin(owners, same)
        owners, new_pids = owners[fresh], new_pids[fresh]
        dimension = index.passages.dimension
        found = store.passage_vectors(new_pids.tolist())
        passage_vectors = np.stack([found[p] for p in new_pids.tolist()]) if len(new_pids) else _none(dimension)
        rewritten = [a for a in new_aids if a not in kept]
        article_vectors = np.stack([store.article_vector(a) for a in rewritten]) if rewritten else _none(dimension)
        deleted = ([a for a in old_aids if a not in kept], old_pids.tolist())
        added = (rewritten, new_pids.tolist())
        parts = changed_in_memory(index, store, deleted, added, owners, generation, metadata=sorted(kept))
    return Following(base, lexical, generation, deleted, added, (passage_vectors, article_vectors), parts)


def saved_postings(index: Index) -> LexicalPostings | None:
    """The BM25 postings another process saved for the generation ``index`` is at, where they are not the ones it
    holds (it followed that process's writes) and hold the same rows; else None. A process that followed and is
    about to write takes them first, so that its save appends a segment to them rather than writing new bases
    (seconds at a million passages): reading them costs about a quarter of a second there, paid by the write, not
    by the searches that followed."""
    if index.directory is None or index.replica is not None:
        return None
    directory = index.directory.resolve()
    if LexicalPostings.stamp_of(directory) in (None, index.lexical.stamp):
        return None
    saved = LexicalPostings.saved(directory, index.generation)
    held = index.lexical
    if saved is None or (saved.passages.rows, saved.articles.rows) != (held.passages.rows, held.articles.rows):
        return None
    return saved


def _unchanged(
    index: Index, store: Store, held: tuple[np.ndarray, np.ndarray], now: tuple[np.ndarray, np.ndarray], both: set[int]
) -> set[int] | None:
    """Of the article keys ``both`` held here and stored now, those whose text did not change (new metadata
    only: the catalog reads them again, nothing else changes); None where that cannot be told, and the caller
    reopens. SQLite reuses the keys of the last rows deleted, so a replaced newest article can come back under its
    old article key and passage ids: same keys are unchanged only when every stored vector still equals the one
    held (exact stores give them back bit for bit; an approximate one cannot tell, and is reopened)."""
    kept: set[int] = set()
    for aid in sorted(both):
        then, current = held[1][held[0] == aid], now[1][now[0] == aid]
        if not np.array_equal(np.sort(then), np.sort(current)):
            continue  # other passages: a replacement under a reused article key
        try:
            stored = store.passage_vectors(current.tolist())
            same = np.array_equal(
                index.passages.reconstruct_batch(current), np.stack([stored[int(p)] for p in current])
            ) and np.array_equal(index.articles.reconstruct_batch(np.asarray([aid])), store.article_vector(aid)[None])
        except KeyError:
            return None
        if not same:
            return None
        kept.add(aid)
    return kept


def _none(dimension: int) -> np.ndarray:
    return np.zeros((0, dimension), dtype=np.float32)
