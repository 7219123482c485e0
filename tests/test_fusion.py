from __future__ import annotations

import numpy as np
import pytest

from search.errors import InvalidInput
from search.ranking.fusion import Fusion, normalise, ranks


def test_ranks_are_one_based_best_first_and_stable_on_ties() -> None:
    assert ranks({"a": 0.1, "b": 0.9, "c": 0.1}) == {"b": 1, "a": 2, "c": 3}
    assert ranks({}) == {}


def test_normalisations() -> None:
    s = {"a": 4.0, "b": 2.0, "c": 0.0}
    assert normalise(s, "max") == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert normalise(s, "minmax") == {"a": 1.0, "b": 0.5, "c": 0.0}
    z = normalise(s, "zscore")
    assert z["b"] == pytest.approx(0.0) and z["a"] == pytest.approx(-z["c"])
    assert normalise({"a": 3.0, "b": 3.0}, "minmax") == {"a": 1.0, "b": 1.0}
    assert normalise({"a": -1.0}, "max") == {"a": 0.0}
    assert normalise({}, "max") == {}


def test_convex_combination_by_hand() -> None:
    dense = {"a": 0.8, "b": 0.4}
    lexical = {"b": 10.0, "c": 5.0}
    fused = Fusion("convex", alpha=0.6, normalisation="max").fuse(dense, lexical)
    assert fused == pytest.approx({"a": 0.6, "b": 0.6 * 0.5 + 0.4, "c": 0.4 * 0.5})
    assert Fusion("convex", alpha=1.0).fuse(dense, lexical)["c"] == 0.0  # alpha 1 is dense alone
    assert Fusion("convex", alpha=0.0).fuse(dense, lexical)["a"] == 0.0  # alpha 0 is lexical alone


def test_rrf_by_hand() -> None:
    fused = Fusion("rrf", rrf_k=60).fuse({"a": 0.9, "b": 0.5}, {"b": 3.0, "c": 1.0})
    assert fused == pytest.approx({"a": 1 / 61, "b": 1 / 62 + 1 / 61, "c": 1 / 62})


def test_convex_keeps_score_gaps_that_rrf_discards() -> None:
    # dense is sure about "a"; lexical barely prefers "b": convex follows the confident side, RRF cannot tell.
    dense = {"a": 0.9, "b": 0.2}
    lexical = {"b": 5.01, "a": 5.0}
    convex = Fusion("convex", alpha=0.5).fuse(dense, lexical)
    rrf = Fusion("rrf").fuse(dense, lexical)
    assert convex["a"] > convex["b"]
    assert rrf["a"] == pytest.approx(rrf["b"])


@pytest.mark.parametrize(
    "kwargs",
    [{"method": "sum"}, {"normalisation": "l2"}, {"alpha": 1.5}, {"alpha": -0.1}, {"rrf_k": 0}],
)
def test_bad_fusion_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        Fusion(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("normalisation", ["max", "minmax"])
@pytest.mark.parametrize("alpha", [0.0, 0.35, 0.6, 1.0])
def test_fuse_arrays_is_fuse_bit_for_bit(normalisation: str, alpha: float) -> None:
    """The array fusion a search ranks with gives ``fuse``'s numbers exactly (NaN: a side lacks the key), on
    float32-valued scores as FAISS and BM25 give them, ties, zeros, negatives and one-sided keys included."""
    rng = np.random.default_rng(7)
    for trial in range(50):
        n = int(rng.integers(1, 60))
        dense = rng.normal(0.3, 0.2, n).astype(np.float32).astype(np.float64)
        lexical = np.abs(rng.normal(5, 4, n)).astype(np.float32).astype(np.float64)
        lexical[rng.random(n) < 0.3] = 0.0
        dense[rng.random(n) < 0.2] = np.nan
        if trial % 5 == 0:
            dense[:] = -0.1  # no positive dense score: max normalises to 0
        keys = [f"k{i}" for i in range(n)]
        fusion = Fusion("convex", alpha=alpha, normalisation=normalisation)
        by_dict = fusion.fuse(
            {k: float(d) for k, d in zip(keys, dense, strict=True) if not np.isnan(d)},
            dict(zip(keys, lexical.tolist(), strict=True)),
        )
        assert fusion.fuse_arrays(dense, lexical).tolist() == [by_dict[k] for k in keys]


def test_fuse_arrays_refuses_order_dependent_fusions() -> None:
    assert not Fusion("rrf").on_arrays and not Fusion("convex", normalisation="zscore").on_arrays
    with pytest.raises(ValueError):
        Fusion("rrf").fuse_arrays(np.zeros(2), np.zeros(2))
