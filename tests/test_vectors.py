"""FAISS store mechanics on synthetic vectors, checked against a brute-force numpy oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search.errors import IndexCorrupt, InvalidInput
from search.vectors.faiss import IVF_TRAIN_PER_LIST, FaissVectorStore

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


def test_trained_and_plain_factories_keep_our_int64_ids(data) -> None:
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


# -- approximate indexes: HNSW and IVF against the exact oracle ----------------------------------------------------

ANN = [
    ("HNSW32", "efSearch=64"),
    ("IDMap2,HNSW32", "efSearch=64"),
    ("HNSW32,Flat", "efSearch=64"),
    ("HNSW32_SQ8", "efSearch=64"),
    ("IVF64,Flat", "nprobe=16"),
    ("IVF64,SQ8", "nprobe=16"),
    ("IDMap2,IVF64,SQ8", "nprobe=16"),  # the id map is dropped: IVF keeps our ids itself
]


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float = 0.2) -> np.ndarray:
    """Unit vectors around a few centres, like embeddings of a corpus with topics (harder than uniform noise)."""
    v = centres[rng.integers(len(centres), size=n)] + spread * rng.standard_normal((n, DIM)).astype(np.float32)
    out: np.ndarray = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5,000 clustered vectors with sparse ids, and 100 held-out queries from the same distribution."""
    rng = np.random.default_rng(11)
    centres = unit(rng, 40)
    ids = rng.choice(10**12, size=5000, replace=False).astype(np.int64)
    return ids, clustered(rng, 5000, centres), clustered(rng, 100, centres)


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g[g >= 0]) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


@pytest.mark.parametrize(("factory", "search"), ANN)
def test_ann_recall_and_scores_against_brute_force(corpus, factory: str, search: str) -> None:
    ids, vecs, queries = corpus
    store = FaissVectorStore.build(DIM, factory, [(ids[:2000], vecs[:2000]), (ids[2000:], vecs[2000:])], search)
    assert store.count() == 5000
    np.testing.assert_array_equal(store.ids(), np.sort(ids))
    scores, got = store.search(queries, 10)
    _, want = oracle(ids, vecs, queries, 10)
    assert recall(got, want) >= 0.9
    # Inner product, best first: each score is the query's dot product with the vector returned (HNSW negates
    # inner products internally; a sign slip would rank the farthest vectors first).
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    by_id = dict(zip(ids.tolist(), vecs, strict=True))
    exact = np.array([[q @ by_id[int(i)] for i in row] for q, row in zip(queries, got, strict=True)])
    np.testing.assert_allclose(scores, exact, atol=0.02 if "SQ" in factory else 1e-4)
    with pytest.raises(KeyError):
        store.reconstruct(12345)  # not an id of ours
    np.testing.assert_allclose(store.reconstruct(int(ids[3])), vecs[3], atol=0.02 if "SQ" in factory else 1e-6)


@pytest.mark.parametrize(("factory", "search"), ANN)
def test_ann_remove_and_re_add(corpus, factory: str, search: str) -> None:
    ids, vecs, queries = corpus
    store = FaissVectorStore.build(DIM, factory, [(ids, vecs)], search)
    gone = ids[:1500]
    assert store.remove(np.concatenate([gone, gone[:10], [424242]])) == 1500  # repeats and unknown ids: no-ops
    assert store.remove(gone[:5]) == 0
    assert store.count() == 3500
    np.testing.assert_array_equal(store.ids(), np.sort(ids[1500:]))
    with pytest.raises(KeyError):
        store.reconstruct(int(gone[0]))
    _, got = store.search(queries, 50)
    assert not np.isin(got, gone).any()
    assert (got >= 0).all()  # removed vectors do not leave holes in the results either
    _, want = oracle(ids[1500:], vecs[1500:], queries, 10)
    assert recall(got[:, :10], want) >= 0.9
    # A removed id comes back with a new vector (as update.py re-adds a changed article): only the new one is found.
    store.add(gone[:1], -vecs[:1])
    assert store.count() == 3501
    _, got = store.search(-vecs[:1], 1)
    assert got[0, 0] == gone[0]
    _, got = store.search(vecs[:1], 20)
    assert gone[0] not in got
    # Removing most of what is left (HNSW: tombstones then outnumber live vectors, so the graph is rebuilt).
    assert store.remove(ids[1500:4000]) == 2500
    assert store.count() == 1001
    live_ids = np.concatenate([gone[:1], ids[4000:]])
    np.testing.assert_array_equal(store.ids(), np.sort(live_ids))
    _, got = store.search(queries, 10)
    _, want = oracle(live_ids, np.concatenate([-vecs[:1], vecs[4000:]]), queries, 10)
    assert recall(got, want) >= 0.9


@pytest.mark.parametrize(("factory", "search"), [("HNSW32", "efSearch=77"), ("IVF64,SQ8", "nprobe=9")])
def test_save_load_keeps_search_params_and_removals(tmp_path: Path, corpus, factory: str, search: str) -> None:
    ids, vecs, queries = corpus
    store = FaissVectorStore.build(DIM, factory, [(ids, vecs)], search)
    store.remove(ids[:100])
    store.save(tmp_path / "v.faiss")
    loaded = FaissVectorStore.load(tmp_path / "v.faiss", factory, search)
    assert loaded.search_params == search
    name, _, value = search.partition("=")
    assert getattr(_tuned(loaded, name), name) == int(value)
    assert loaded.count() == 4900
    np.testing.assert_array_equal(loaded.ids(), np.sort(ids[100:]))
    for a, b in zip(store.search(queries, 10), loaded.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    defaults = FaissVectorStore.load(tmp_path / "v.faiss", factory)  # empty: FAISS's defaults, not the saved ones
    assert defaults.search_params == ""
    assert getattr(_tuned(defaults, name), name) in (1, 16)


@pytest.mark.parametrize(
    ("factory", "search"),
    [
        ("HNSW32", "efSearch"),
        ("HNSW32", "efSearch=abc"),
        ("HNSW32", "efSearch=0"),
        ("HNSW32", "efSearch=64,"),
        ("HNSW32", "nprobe=8"),  # an IVF parameter on HNSW
        ("IVF4,Flat", "efSearch=8"),
        ("IDMap2,Flat", "efSearch=8"),  # exact search takes no parameters
        ("HNSW32", "bogus=1"),
    ],
)
def test_invalid_search_params_are_input_errors(tmp_path: Path, data, factory: str, search: str) -> None:
    with pytest.raises(InvalidInput, match="FAISS search parameters"):
        FaissVectorStore(DIM, factory, search=search)
    ids, vecs, _ = data
    FaissVectorStore.build(DIM, factory, [(ids, vecs)]).save(tmp_path / "v.faiss")
    with pytest.raises(InvalidInput, match="FAISS search parameters"):
        FaissVectorStore.load(tmp_path / "v.faiss", factory, search)


def _tuned(store: FaissVectorStore, name: str) -> object:
    """What holds the search parameter ``name``: the HNSW graph's settings (efSearch) or the IVF (nprobe)."""
    if name == "efSearch":
        assert store._hnsw is not None
        return store._hnsw.hnsw
    return store._ivf


def test_search_params_accept_spaces_and_several_names() -> None:
    store = FaissVectorStore(DIM, "IVF16_HNSW32,Flat", search=" nprobe = 4 , quantizer_efSearch=40")
    assert store.search_params == "nprobe=4,quantizer_efSearch=40"
    assert store._ivf is not None and store._ivf.nprobe == 4


def test_ivf_with_fewer_vectors_than_lists_is_refused(data) -> None:
    ids, vecs, _ = data
    with pytest.raises(InvalidInput, match=r"64 IVF lists but there are only 50 vectors"):
        FaissVectorStore.build(DIM, "IVF64,SQ8", [(ids[:50], vecs[:50])])


def test_ivf_trains_on_a_bounded_seeded_sample(corpus) -> None:
    ids, vecs, queries = corpus
    batches = [(ids[:1234], vecs[:1234]), (ids[1234:], vecs[1234:])]
    store = FaissVectorStore(DIM, "IVF16,Flat")
    sample = store._training_sample(batches)
    assert len(sample) == IVF_TRAIN_PER_LIST * 16 < len(ids)
    assert np.isin(sample.view(np.dtype((np.void, DIM * 4))), vecs.view(np.dtype((np.void, DIM * 4)))).all()
    np.testing.assert_array_equal(sample, store._training_sample(batches))  # seeded: the same vectors each time
    a = FaissVectorStore.build(DIM, "IVF16,Flat", batches, "nprobe=2").search(queries, 10)
    b = FaissVectorStore.build(DIM, "IVF16,Flat", batches, "nprobe=2").search(queries, 10)
    np.testing.assert_array_equal(a[1], b[1])


def test_an_id_map_around_ivf_on_disk_is_corrupt(tmp_path: Path, data) -> None:
    """Files from before IVF kept its own ids: IDMap2.remove_ids would scramble them, so open rebuilds them."""
    import faiss

    ids, vecs, _ = data
    legacy = faiss.IndexIDMap2(faiss.index_factory(DIM, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT))
    legacy.train(vecs)
    legacy.add_with_ids(vecs, ids)
    faiss.write_index(legacy, str(tmp_path / "v.faiss"))
    with pytest.raises(IndexCorrupt):
        FaissVectorStore.load(tmp_path / "v.faiss", "IVF4,Flat")


def test_the_search_param_is_what_trades_recall(corpus) -> None:
    ids, vecs, queries = corpus
    _, want = oracle(ids, vecs, queries, 10)
    store = FaissVectorStore.build(DIM, "IVF64,Flat", [(ids, vecs)], "nprobe=1")
    narrow = recall(store.search(queries, 10)[1], want)
    store.set_search_params("nprobe=64")  # every list: exact
    assert recall(store.search(queries, 10)[1], want) == 1.0 > narrow


@pytest.mark.parametrize("factory", ["IDMap2,Flat", "HNSW16", "IVF8,Flat"])
def test_reconstruct_batch_returns_stored_vectors(factory: str) -> None:
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((400, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1000, 1400, dtype=np.int64)
    store = FaissVectorStore.build(16, factory, [(ids, vecs)])
    picked = np.array([1399, 1000, 1200], dtype=np.int64)
    np.testing.assert_allclose(store.reconstruct_batch(picked), vecs[picked - 1000], atol=1e-6)
    assert store.reconstruct_batch(np.zeros(0, np.int64)).shape == (0, 16)
    with pytest.raises(KeyError):
        store.reconstruct_batch(np.array([-1], dtype=np.int64))


# -- filtered search: only allowed ids, exact when few, through an IDSelector when many ----------------------------


@pytest.mark.parametrize("exact_limit", [10**9, 0])  # every filter scored exactly / every filter by IDSelector
@pytest.mark.parametrize(("factory", "search"), [("IDMap2,Flat", ""), *ANN[:1], ANN[4]])
def test_filtered_search_returns_only_allowed_ids(
    corpus, monkeypatch: pytest.MonkeyPatch, factory: str, search: str, exact_limit: int
) -> None:
    import search.vectors.faiss as vectors_module

    monkeypatch.setattr(vectors_module, "EXACT_FILTER_LIMIT", exact_limit)
    ids, vecs, queries = corpus
    store = FaissVectorStore.build(DIM, factory, [(ids, vecs)], search)
    rng = np.random.default_rng(5)
    keep = np.sort(rng.choice(len(ids), size=1500, replace=False))
    allowed = np.sort(ids[keep])
    scores, got = store.search(queries, 10, allowed=allowed)
    assert np.isin(got[got >= 0], allowed).all()
    _, want = oracle(ids[keep], vecs[keep], queries, 10)
    assert recall(got, want) >= (0.999 if exact_limit or factory == "IDMap2,Flat" else 0.85)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_filtered_search_with_few_allowed_pads_and_empty_allows_nothing(data) -> None:
    ids, vecs, _ = data
    store = FaissVectorStore.build(DIM, "HNSW32", [(ids, vecs)], "efSearch=16")
    _, got = store.search(vecs[[3]], 5, allowed=np.sort(ids[[3, 7]]))
    assert got.shape == (1, 2) and list(got[0]) == [ids[3], ids[7]]  # itself first (cosine 1), then the other
    scores, got = store.search(vecs[:1], 5, allowed=np.zeros(0, dtype=np.int64))
    assert got.shape == (1, 1) and (got == -1).all() and np.isneginf(scores).all()  # one padding slot, as Milvus
    removed = np.asarray([ids[3]])
    store.remove(removed)
    _, got = store.search(vecs[:1], 5, allowed=np.sort(ids[[3, 7]]))
    assert ids[3] not in got[0] and ids[7] in got[0]  # a tombstone is never returned, filtered or not


@pytest.mark.parametrize(
    ("factory", "per_vector"),
    [
        ("IDMap2,Flat", 4 * 32 + 8 + 40),  # float32 codes, the id map, IDMap2's reverse hashtable entry
        ("SQ8", 32 + 8 + 40),  # a byte a dimension
        ("HNSW16", 4 * 32 + 8 + 40 + 4 * 32),  # and at least the 2 x 16 level-0 links of 4 bytes each
        ("IVF8,SQ8", 32 + 8 + 40),  # codes and ids in the lists, the id hashtable
    ],
)
def test_memory_bytes_counts_codes_ids_and_graph(factory: str, per_vector: int) -> None:
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = FaissVectorStore.build(32, factory, [(np.arange(2000, dtype=np.int64), vectors)])
    held = store.memory_bytes()
    assert 2000 * per_vector <= held <= 2000 * per_vector * 1.5 + 32 * 32 * 4 * 8  # plus an IVF's centroids
    store.remove(np.arange(1000, dtype=np.int64))
    assert store.memory_bytes() <= held  # removal never grows it (an HNSW tombstone keeps its node)


# -- range search: every vector at or above a floor (a query's match count) -----------------------------------------


def in_range(ids: np.ndarray, vecs: np.ndarray, query: np.ndarray, floor: float) -> set[int]:
    """The brute-force oracle of ``range``: ids whose float32 inner product with ``query`` is at least ``floor``."""
    return set(ids[(vecs @ query).astype(np.float32) >= np.float32(floor)].tolist())


def borderline(vecs: np.ndarray, query: np.ndarray, floor: float, ids: np.ndarray) -> set[int]:
    """Ids whose score is within float rounding of the floor (FAISS and numpy may sum in another order)."""
    return set(ids[np.abs(vecs @ query - floor) < 1e-5].tolist())


@pytest.mark.parametrize(
    ("factory", "search"), [("IDMap2,Flat", ""), ("IVF64,Flat", "nprobe=64"), ("HNSW32", "efSearch=16")]
)
@pytest.mark.parametrize("floor", [-1.0, 0.2, 0.55, 0.9])
def test_range_is_every_vector_at_or_above_the_floor(corpus, factory: str, search: str, floor: float) -> None:
    """Exact where the index is (flat, an IVF probing every list), after removals too, and the floor is inclusive;
    HNSW (a deepened top-k search: its own range search stops at efSearch) finds true matches only (how many is
    the graph's walk through its tombstones, as before range search); scores are the inner products."""
    ids, vecs, queries = corpus
    store = FaissVectorStore.build(DIM, factory, [(ids, vecs)], search)
    store.remove(ids[:500])
    live_ids, live = ids[500:], vecs[500:]
    by_id = dict(zip(live_ids.tolist(), live, strict=True))
    for query in queries[:10]:
        scores, got = store.range(query, floor)
        assert got.dtype == np.int64 and scores.dtype == np.float32 and len(got) == len(set(got.tolist()))
        want, edge = in_range(live_ids, live, query, floor), borderline(live, query, floor, live_ids)
        if factory.startswith("HNSW"):
            assert set(got.tolist()) <= want | edge
        else:
            assert set(got.tolist()) - edge == want - edge
        np.testing.assert_allclose(scores, [by_id[int(i)] @ query for i in got], atol=1e-5)
        assert (scores >= np.float32(floor)).all()
    top, best = store.search(queries[:1], 1)  # a floor equal to a score FAISS computes keeps that vector
    assert int(best[0][0]) in store.range(queries[0], float(top[0][0]))[1].tolist()


def test_range_of_an_ann_finds_what_its_probes_reach(corpus) -> None:
    """An IVF probing a few lists returns only true matches, and most of them; probing more finds more."""
    ids, vecs, queries = corpus
    store = FaissVectorStore.build(DIM, "IVF64,Flat", [(ids, vecs)], "nprobe=4")
    found, wanted = 0, 0
    for query in queries[:20]:
        _, got = store.range(query, 0.5)
        want = in_range(ids, vecs, query, 0.5) | borderline(vecs, query, 0.5, ids)
        assert set(got.tolist()) <= want
        found, wanted = found + len(got), wanted + len(in_range(ids, vecs, query, 0.5))
    assert 0.5 * wanted <= found < wanted
    store.set_search_params("nprobe=64")
    assert sum(len(store.range(q, 0.5)[1]) for q in queries[:20]) > found


def test_range_on_a_mapped_base_and_an_empty_store(tmp_path: Path, corpus) -> None:
    ids, vecs, queries = corpus
    FaissVectorStore.build(DIM, "IVF64,Flat", [(ids, vecs)]).save(tmp_path / "v.faiss")
    mapped = FaissVectorStore.load(tmp_path / "v.faiss", "IVF64,Flat", "nprobe=64")
    assert mapped.mapped
    assert set(mapped.range(queries[0], 0.3)[1].tolist()) - borderline(vecs, queries[0], 0.3, ids) == in_range(
        ids, vecs, queries[0], 0.3
    ) - borderline(vecs, queries[0], 0.3, ids)
    # changed through its layer: removed base vectors are not found, added ones are, at their exact scores
    removed = ids[np.isin(ids, list(in_range(ids, vecs, queries[0], 0.3)))][:5]
    added = np.arange(10**6, 10**6 + 20, dtype=np.int64)
    mapped.remove(removed)
    mapped.add(added, vecs[:20])
    live = ~np.isin(ids, removed)
    all_ids, all_vecs = np.concatenate([ids[live], added]), np.concatenate([vecs[live], vecs[:20]])
    assert mapped.mapped
    got_ids = set(mapped.range(queries[0], 0.3)[1].tolist())
    edge = borderline(all_vecs, queries[0], 0.3, all_ids)
    assert got_ids - edge == in_range(all_ids, all_vecs, queries[0], 0.3) - edge
    assert not got_ids & set(removed.tolist())
    scores, got = FaissVectorStore(DIM).range(queries[0], -1.0)
    assert len(scores) == len(got) == 0
