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

import numpy as np

from search.storage.index import Index
from search.storage.store import ChangedRows
from search.vectors.base import Changes


def apply_in_memory(
    index: Index, rows: ChangedRows, deleted: Changes, added: Changes, owners: np.ndarray, generation: int
) -> None:
    """Replace ``index``'s postings, owners and catalog with ones that reflect a change that ``deleted`` and
    ``added`` (article keys, passage ids), ``owners`` being the article of each added passage, and committed
    ``generation``; ``rows`` gives the added rows' texts and the catalog after the change. Each part is replaced by
    a new object, never changed in place: a reader holding the previous one keeps a consistent view."""
    aids, pids = deleted
    index.lexical = index.lexical.updated(rows, (aids, pids), added, generation)
    index.owners = index.owners.updated(pids, np.asarray(added[1], dtype=np.int64), owners)
    index.catalog = index.catalog.updated(rows, aids, added[0])  # its own rows, not the whole table
