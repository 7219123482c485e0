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

from dataclasses import dataclass

import numpy as np

from search.ranking.catalog import ArticleCatalog
from search.storage.index import Index, PassageOwners
from search.storage.store import ChangedRows
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
    index: Index, rows: ChangedRows, deleted: Changes, added: Changes, owners: np.ndarray, generation: int
) -> InMemory:
    """New postings, owners and catalog for ``index`` that reflect a change that ``deleted`` and ``added``
    (article keys, passage ids), ``owners`` being the article of each added passage, and ``generation``; ``rows``
    gives the added rows' texts and the catalog after the change (for a writer: its own open transaction, read
    before the commit). ``index`` is only read: each part is a new object, never the old one changed in place."""
    aids, pids = deleted
    return InMemory(
        index.lexical.updated(rows, (aids, pids), added, generation),
        index.owners.updated(pids, np.asarray(added[1], dtype=np.int64), owners),
        index.catalog.updated(rows, aids, added[0]),  # its own rows, not the whole table
    )


def apply_in_memory(
    index: Index, rows: ChangedRows, deleted: Changes, added: Changes, owners: np.ndarray, generation: int
) -> None:
    """Replace ``index``'s postings, owners and catalog with ones that reflect a committed change
    (``changed_in_memory``). A reader holding the previous objects keeps a consistent view."""
    changed_in_memory(index, rows, deleted, added, owners, generation).swap_into(index)
