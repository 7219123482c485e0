"""search/arrays.py against numpy's own set operations."""

from __future__ import annotations

import numpy as np
import pytest

from search.arrays import distinct_keys


@pytest.mark.parametrize("seed", range(4))
def test_distinct_keys_are_numpys_unique(seed: int) -> None:
    """The table pass over small keys and ``np.unique`` for sparse ones give the same ascending distinct keys."""
    rng = np.random.default_rng(seed)
    for keys in (
        rng.integers(0, 300, 1000),  # dense: the table
        rng.integers(0, 10**9, 50),  # sparse: np.unique
        np.zeros(0, dtype=np.int64),
        np.array([5, 5, 5]),
    ):
        got = distinct_keys(keys, 100)
        assert got.dtype == np.int64 and got.tolist() == np.unique(keys).tolist()
