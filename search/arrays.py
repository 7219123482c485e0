"""Array helpers shared by the caches that keep sorted id arrays (BM25 postings, the FAISS layer)."""

from __future__ import annotations

import numpy as np


def sorted_lookup(sorted_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(insertion index of each wanted id in ``sorted_ids``, whether it is there): a binary search each, where
    ``np.isin`` sorts both arrays (6.7 ms for 400 ids against the 924k ids of an archive's vector base, under the
    write lock)."""
    wanted = np.asarray(wanted)
    n = len(sorted_ids)
    at = np.searchsorted(sorted_ids, wanted)
    found = at < n
    found[found] = np.asarray(sorted_ids[at[found]]) == wanted[found]
    return at, found
