"""search/arrays.py against numpy's own set operations."""

from __future__ import annotations

import numpy as np
import pytest

from search.arrays import distinct_keys, member


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


@pytest.mark.parametrize("seed", range(4))
def test_member_is_numpys_isin(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for values, others in (
        (rng.integers(0, 300, 200), rng.integers(0, 300, 50)),
        (rng.integers(0, 10**9, 40), rng.integers(0, 10**9, 400)),
        (np.zeros(0, dtype=np.int64), np.array([1, 2])),
        (np.array([3, 1, 3]), np.zeros(0, dtype=np.int64)),
    ):
        of = np.concatenate([values[: len(values) // 3], others])  # some of the values, and others
        np.testing.assert_array_equal(member(values, of), np.isin(values, of))
        np.testing.assert_array_equal(member(values, others), np.isin(values, others))
