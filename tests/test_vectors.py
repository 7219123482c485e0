"""FAISS store mechanics on synthetic vectors, checked against a brute-force numpy oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search.errors import InvalidInput
from search.vectors import FaissVectorStore

DIM = 32


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def oracle(ids: np.ndarray, vecs: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q @ vecs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    ids = rng.choice(10**12, size=500, replace=False).astype(np.int64)  # sparse int64 ids, not 0..n
    return ids, unit(rng, 500), unit(rng, 20)


def test_search_matches_brute_force(data) -> None:
    ids, vecs, queries = data
    store = FaissVectorStore.build(DIM, "IDMap2,Flat", [(ids[:200], vecs[:200]), (ids[200:], vecs[200:])])
    assert store.count() == 500
    scores, got = store.search(queries, 10)
    want_scores, want = oracle(ids, vecs, queries, 10)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert (got == want).mean() > 0.99  # ties aside, identical ranking


def test_remove_and_reconstruct(data) -> None:
    ids, vecs, queries = data
    store = FaissVectorStore.build(DIM, "IDMap2,Flat", [(ids, vecs)])
    np.testing.assert_allclose(store.reconstruct(int(ids[17])), vecs[17], atol=1e-6)
    removed = ids[:100]
    assert store.remove(removed) == 100
    assert store.count() == 400
    with pytest.raises(KeyError):
        store.reconstruct(int(ids[0]))
    _, got = store.search(queries, 50)
    assert not np.isin(got, removed).any()
    _want_scores, want = oracle(ids[100:], vecs[100:], queries, 50)
    assert (got == want).mean() > 0.99
    np.testing.assert_array_equal(store.ids(), np.sort(ids[100:]))


def test_k_larger_than_count_pads_nothing_invalid(data) -> None:
    ids, vecs, queries = data
    store = FaissVectorStore.build(DIM, "IDMap2,Flat", [(ids[:3], vecs[:3])])
    scores, got = store.search(queries[0], 10)
    assert got.shape == (1, 3)
    assert set(got[0]) == set(ids[:3])
    assert np.all(np.isfinite(scores))


def test_save_load_round_trip(tmp_path: Path, data) -> None:
    ids, vecs, queries = data
    store = FaissVectorStore.build(DIM, "IDMap2,Flat", [(ids, vecs)])
    store.save(tmp_path / "v.faiss")
    assert [p.name for p in tmp_path.iterdir()] == ["v.faiss"]  # no temporary file left behind
    loaded = FaissVectorStore.load(tmp_path / "v.faiss", "IDMap2,Flat")
    a = store.search(queries, 5)
    b = loaded.search(queries, 5)
    np.testing.assert_array_equal(a[1], b[1])


def test_trained_factory_and_plain_factory_get_an_id_map(data) -> None:
    ids, vecs, queries = data
    ivf = FaissVectorStore.build(DIM, "IVF4,Flat", [(ids, vecs)])
    assert ivf.count() == 500
    _, got = ivf.search(queries, 5)
    assert np.isin(got[got >= 0], ids).all()
    flat = FaissVectorStore.build(DIM, "Flat", [(ids, vecs)])  # wrapped in IDMap2: keeps our int64 ids
    _, got = flat.search(queries, 5)
    assert np.isin(got, ids).all()


def test_bad_factory_and_bad_dimension_are_input_errors(data) -> None:
    ids, _vecs, _ = data
    with pytest.raises(InvalidInput):
        FaissVectorStore(DIM, "NoSuchIndex,xyz")
    store = FaissVectorStore(DIM)
    with pytest.raises(InvalidInput):
        store.add(ids[:2], np.zeros((2, DIM + 1), np.float32))
