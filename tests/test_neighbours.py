"""Shared-neighbour profiles (search/news/neighbours.py) against a brute-force numpy oracle, kept up to date by
writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from indexer.build import build_index
from indexer.sources import read_sources
from indexer.update import add_articles, delete_articles
from search.errors import InvalidInput
from search.models import Article
from search.news import neighbours as nb
from search.news.neighbours import NeighbourConfig, NeighbourGraph, PoolConfig
from search.ranking.catalog import Filter
from search.service import SearchService
from search.settings import Settings
from search.storage.index import open_index
from search.text.bm25 import Postings
from search.vectors.faiss import FaissVectorStore
from tests.fakes import HashEmbedder, wire_articles

WORDS = [f"t{i}" for i in range(60)]


def synthetic(n: int, seed: int, start: int = 1) -> tuple[np.ndarray, np.ndarray, list[tuple[int, tuple[str, str]]]]:
    """``n`` articles from key ``start``: unit vectors in 5 clusters and texts of words drawn near their cluster."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(5, 16))
    labels = rng.integers(0, 5, size=n)
    vecs = (centres[labels] + rng.normal(scale=1.5, size=(n, 16))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = []
    for i, c in enumerate(labels):
        words = [WORDS[int(w)] for w in (c * 12 + rng.integers(0, 20, size=15)) % len(WORDS)]
        body = " ".join(words[3:]) + (" common" if i % 2 else "")  # in half the articles: max_df drops it
        rows.append((start + i, (" ".join(words[:3]), body)))
    return np.arange(start, start + n, dtype=np.int64), vecs, rows


def oracle_terms(postings: Postings, keys: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """Dense tf-idf rows: (1 + ln tf) × idf, L2-normalised, straight from the postings."""
    out = np.zeros((len(keys), len(idf)), dtype=np.float64)
    row_of = {int(r): i for i, r in enumerate(postings.rowids)}
    wanted = {row_of[int(k)]: j for j, k in enumerate(keys)}
    for t in range(len(postings.indptr) - 1):
        for p in range(int(postings.indptr[t]), int(postings.indptr[t + 1])):
            j = wanted.get(int(postings.docs[p]))
            if j is not None:
                out[j, t] = (1 + np.log(postings.tfs[:, p].sum())) * idf[t]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1)


def oracle_idf(postings: Postings, max_df: float) -> np.ndarray:
    n = postings.rows
    df = np.diff(postings.indptr)
    return np.where(df > max_df * n, 0.0, np.log((1 + n) / (1 + df)) + 1)


def oracle_profiles(vecs: np.ndarray, terms: np.ndarray, rows: np.ndarray, config: NeighbourConfig) -> np.ndarray:
    """Profiles of ``rows`` over all articles, as dense rows."""
    n = len(vecs)
    k = min(config.k, n // 10)
    out = np.zeros((len(rows), n))
    for j, i in enumerate(rows):
        fused = np.zeros(n)
        for weight, sim in ((config.dense_weight, vecs @ vecs[i]), (1 - config.dense_weight, terms @ terms[i])):
            others = np.delete(sim, i)
            fused += weight * sim / (others.max() if others.max() > 0 else 1)
        fused[i] = -np.inf
        top = np.argsort(-fused, kind="stable")[:k]
        out[j, top] = np.maximum(fused[top], 0)
        out[j, i] = 1.0
        out[j] /= np.linalg.norm(out[j])
    return out


CONFIG = NeighbourConfig(k=20, dense_weight=0.3, max_df=0.3)


def test_profiles_and_ranking_match_the_oracle() -> None:
    keys, vecs, rows = synthetic(300, seed=1)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, generation=7, config=CONFIG)
    idf = oracle_idf(postings, CONFIG.max_df)
    assert idf[postings.vocab["common"]] == 0 and np.allclose(graph.idf, idf, atol=1e-6)
    terms = oracle_terms(postings, keys, idf)
    profiles = oracle_profiles(vecs.astype(np.float64), terms, np.arange(len(keys)), CONFIG)
    assert np.allclose(graph.profiles.toarray(), profiles, atol=1e-5)
    assert (graph.profiles.getnnz(axis=1) == CONFIG.k + 1).all()
    scores = profiles @ profiles.T
    for i in (0, 17, 299):
        got_keys, got_scores = graph.rank(int(keys[i]))
        expected = [j for j in np.argsort(-scores[i], kind="stable") if j != i and scores[i, j] > 0]
        assert sorted(got_keys.tolist()) == sorted(keys[expected].tolist())
        assert np.allclose(got_scores, scores[i, np.searchsorted(keys, got_keys)], atol=1e-5)
        assert (np.diff(got_scores) <= 1e-7).all()
    allowed = keys[::3]
    got_keys, _ = graph.rank(int(keys[5]), allowed)
    assert set(got_keys.tolist()) <= set(allowed.tolist()) and got_keys.size
    with pytest.raises(KeyError):
        graph.rank(10_000)


def test_a_small_corpus_gets_short_profiles() -> None:
    keys, vecs, rows = synthetic(25, seed=2)
    graph = NeighbourGraph.build(keys, vecs, Postings.build(rows, 2), generation=1, config=CONFIG)
    assert (graph.profiles.getnnz(axis=1) == 25 // 10 + 1).all()
    keys, vecs, rows = synthetic(5, seed=2)
    graph = NeighbourGraph.build(keys, vecs, Postings.build(rows, 2), generation=1, config=CONFIG)
    assert (graph.profiles.getnnz(axis=1) == 1).all()  # itself only: no ranking, similar() falls back to cosine
    assert graph.rank(int(keys[0]))[0].size == 0


def vector_store(keys: np.ndarray, vecs: np.ndarray) -> FaissVectorStore:
    store = FaissVectorStore(vecs.shape[1])
    store.add(keys, vecs)
    return store


def test_an_update_profiles_new_articles_like_a_build_and_drops_deleted_ones() -> None:
    keys, vecs, rows = synthetic(300, seed=3)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, generation=1, config=CONFIG)
    new_keys, new_vecs, new_rows = synthetic(20, seed=4, start=301)
    new_rows[0] = (301, ("unseen words", "brand new vocabulary here"))
    deleted = keys[[3, 50, 51]]
    postings2 = postings.without(deleted.tolist()).extended(new_rows)
    store = vector_store(np.concatenate([keys, new_keys]), np.concatenate([vecs, new_vecs]))
    store.remove(deleted)
    updated = graph.updated(deleted.tolist(), new_keys.tolist(), store, postings2, generation=2)
    assert updated is not None
    live = np.setdiff1d(np.concatenate([keys, new_keys]), deleted)
    assert np.array_equal(updated.keys, live) and updated.changed == 23 and updated.generation == 2
    # the profiles of older articles are kept, without the deleted articles
    old_rows = np.flatnonzero(~np.isin(keys, deleted))
    kept = graph.profiles.toarray()[old_rows][:, old_rows]
    assert np.allclose(updated.profiles.toarray()[: len(old_rows), : len(old_rows)], kept)
    # new articles are profiled against every live article, as a build would with the graph's idf (a term first
    # seen now weighs as a term seen once)
    assert len(updated.idf) == len(postings2.vocab) > len(graph.idf)
    terms = oracle_terms(postings2, live, updated.idf)
    vecs_live = store.reconstruct_batch(live).astype(np.float64)
    expected = oracle_profiles(vecs_live, terms, np.arange(len(old_rows), len(live)), CONFIG)
    assert np.allclose(updated.profiles.toarray()[len(old_rows) :], expected, atol=1e-5)
    assert int(new_keys[0]) in updated and int(deleted[0]) not in updated
    assert int(deleted[0]) not in updated.rank(int(new_keys[1]))[0].tolist()


def test_enough_changes_rebuild_every_profile() -> None:
    keys, vecs, rows = synthetic(100, seed=5)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, generation=1, config=CONFIG)
    new_keys, new_vecs, new_rows = synthetic(25, seed=6, start=101)  # 25 of 125 articles: the rebuild share
    postings2 = postings.extended(new_rows)
    store = vector_store(np.concatenate([keys, new_keys]), np.concatenate([vecs, new_vecs]))
    updated = graph.updated([], new_keys.tolist(), store, postings2, generation=2)
    assert updated is not None
    rebuilt = NeighbourGraph.build(updated.keys, store.reconstruct_batch(updated.keys), postings2, 2, CONFIG)
    assert updated.changed == 0
    assert np.allclose(updated.profiles.toarray(), rebuilt.profiles.toarray(), atol=1e-6)


def test_save_and_load_round_trip_and_stale_stamps(tmp_path: Path) -> None:
    keys, vecs, rows = synthetic(120, seed=7)
    graph = NeighbourGraph.build(keys, vecs, Postings.build(rows, 2), generation=4, config=CONFIG)
    graph.save(tmp_path)
    loaded = NeighbourGraph.load(tmp_path, 4, CONFIG)
    assert loaded is not None
    assert np.array_equal(loaded.keys, graph.keys) and np.allclose(loaded.idf, graph.idf)
    assert (loaded.profiles != graph.profiles).nnz == 0 and (loaded.terms != graph.terms).nnz == 0
    assert np.array_equal(loaded.rank(int(keys[9]))[0], graph.rank(int(keys[9]))[0])
    assert NeighbourGraph.load(tmp_path, 5, CONFIG) is None  # another generation
    assert NeighbourGraph.load(tmp_path, 4, NeighbourConfig(k=10)) is None  # another configuration
    (tmp_path / "neighbours.npz").write_bytes(b"damaged")
    assert NeighbourGraph.load(tmp_path, 4, CONFIG) is None


# -- in the service -------------------------------------------------------------------------------------------------


def test_similar_ranks_by_profiles(wire_service: SearchService) -> None:
    graph = wire_service.index.neighbours
    assert graph is not None and len(graph.keys) == 600
    response = wire_service.similar("wire/0007", k=10)
    store = wire_service.index.store
    aid = store.aid_of("wire/0007")
    assert aid is not None
    profiles = graph.profiles.toarray()
    me = profiles[np.searchsorted(graph.keys, aid)]
    for r in response.results:
        other = store.aid_of(r.article.id)
        assert other is not None
        assert r.score == pytest.approx(float(me @ profiles[np.searchsorted(graph.keys, other)]), abs=1e-5)
    scores = [r.score for r in response.results]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True)
    # on the hashing embedder's wire stories, shared neighbours keep an article among its own topic
    topic = {r["id"]: r["category"] for r in wire_articles()}
    assert sum(topic[r.article.id] == topic["wire/0007"] for r in response.results) >= 8


def wire_index(tmp_path: Path, n: int) -> tuple[Path, list[dict[str, Any]]]:
    rows = wire_articles(n, seed=11)
    source = tmp_path / "wire.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    target = tmp_path / "wire"
    build_index(read_sources([source]), target, Settings(index_dir=target), HashEmbedder(), progress=False)
    return target, rows


def test_writes_keep_the_graph_in_step_with_the_index_on_disk(tmp_path: Path) -> None:
    target, rows = wire_index(tmp_path, 200)
    embedder, settings = HashEmbedder(), Settings(index_dir=target)
    index = open_index(target, embedder)
    add_articles(
        index,
        [Article(id="wire/new", title=rows[0]["title"], paragraphs=tuple(rows[0]["paragraphs"]), date="1987-06-01")],
        embedder,
        settings,
    )
    delete_articles(index, ["wire/0001", "wire/0002"])
    graph = index.neighbours
    assert graph is not None and np.array_equal(graph.keys, np.sort(index.articles.ids()))
    assert graph.generation == index.store.generation() and graph.changed == 3
    new = index.store.aid_of("wire/new")
    assert new is not None and new in graph
    index.close()
    reopened = open_index(target, embedder)  # the saved graph is current: loaded as it was, not rebuilt
    assert reopened.neighbours is not None and reopened.neighbours.changed == 3
    assert (reopened.neighbours.profiles != graph.profiles).nnz == 0
    service = SearchService(reopened, embedder, settings)
    got = [r.article.id for r in service.similar("wire/new", k=5).results]
    assert len(got) == 5 and not {"wire/0001", "wire/0002", "wire/new"} & set(got)


def test_scoring_can_be_chosen_per_request(wire_service: SearchService) -> None:
    store = wire_service.index.store
    aid = store.aid_of("wire/0007")
    assert aid is not None
    cosine = wire_service.similar("wire/0007", k=10, scoring="cosine").results
    profile = wire_service.similar("wire/0007", k=10, scoring="profile").results
    me = store.article_vector(aid)
    for r in cosine:
        other = store.aid_of(r.article.id)
        assert other is not None
        assert r.score == pytest.approx(float(me @ store.article_vector(other)), abs=1e-5)
    assert [r.article.id for r in profile] == [r.article.id for r in wire_service.similar("wire/0007", k=10).results]
    assert [r.score for r in cosine] != [r.score for r in profile]
    with pytest.raises(InvalidInput, match="scoring must be one of profile, cosine"):
        wire_service.similar("wire/0007", scoring="tf-idf")


def entry_recall(got: sp.csr_matrix, exact: sp.csr_matrix) -> float:
    """Share of the exact profiles' (row, neighbour) entries that ``got`` holds too."""
    hit = (got.astype(bool).multiply(exact.astype(bool))).nnz
    return float(hit / exact.nnz)


def test_above_the_exact_size_profiles_are_pooled_and_agree_with_the_exact_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import search.news.neighbours as neighbours

    keys, vecs, rows = synthetic(1500, seed=8)
    postings = Postings.build(rows, 2)
    exact = NeighbourGraph.build(keys, vecs, postings, generation=1, config=CONFIG)
    assert exact.centroids is None
    monkeypatch.setattr(neighbours, "EXACT_ARTICLES", 1000)
    monkeypatch.setattr(neighbours, "DEFAULT_POOL", PoolConfig(cluster_size=50, probe=4, widest=8))

    class FakeStore:
        def generation(self) -> int:
            return 1

        @contextmanager
        def saving(self, generation: int) -> Iterator[bool]:
            yield True

    graph = neighbours.load_graph(tmp_path, FakeStore(), vector_store(keys, vecs), postings, CONFIG)  # type: ignore[arg-type]
    assert graph.centroids is not None and graph.clusters is not None and len(graph.centroids) == 30
    # each article scored against at most 8 of 30 clusters (about a quarter of the corpus): most exact neighbours,
    # more as the pools grow (this corpus's words follow its clusters loosely: tf-idf neighbours lie further out)
    recall = entry_recall(graph.profiles, exact.profiles)
    wider = NeighbourGraph.build(keys, vecs, postings, 1, CONFIG, PoolConfig(cluster_size=50, probe=8, widest=16))
    assert 0.75 < recall < entry_recall(wider.profiles, exact.profiles) < 1
    assert entry_recall(wider.profiles, exact.profiles) > 0.9
    assert (graph.profiles.getnnz(axis=1) == CONFIG.k + 1).all()
    # a pool covering every cluster gives the exact profiles
    whole = NeighbourGraph.build(keys, vecs, postings, 1, CONFIG, PoolConfig(cluster_size=50, probe=30, widest=30))
    assert np.allclose(whole.profiles.toarray(), exact.profiles.toarray(), atol=1e-6)
    # saved with its clusters, loaded as it was
    loaded = NeighbourGraph.load(tmp_path, 1, CONFIG)
    assert loaded is not None and loaded.clusters is not None and loaded.centroids is not None
    assert np.array_equal(loaded.clusters, graph.clusters) and np.array_equal(loaded.centroids, graph.centroids)
    assert (loaded.profiles != graph.profiles).nnz == 0


def test_a_write_to_pooled_profiles_scores_new_articles_from_both_sides() -> None:
    pool = PoolConfig(
        cluster_size=40, probe=10, widest=10
    )  # 10 clusters, all probed: the pooled profiles are the exact ones
    keys, vecs, rows = synthetic(400, seed=9)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, 1, CONFIG, pool)
    assert graph.centroids is not None and graph.clusters is not None and len(graph.centroids) == 10
    new_keys, new_vecs, new_rows = synthetic(10, seed=10, start=401)
    postings2 = postings.extended(new_rows)
    store = vector_store(np.concatenate([keys, new_keys]), np.concatenate([vecs, new_vecs]))
    updated = graph.updated([], new_keys.tolist(), store, postings2, generation=2)
    live = np.concatenate([keys, new_keys])
    assert np.array_equal(updated.keys, live) and updated.changed == 10 and updated.clusters is not None
    assert updated.centroids is graph.centroids  # the clusters stay; new articles join the nearest
    assert np.array_equal(updated.clusters[-10:], np.argmax(new_vecs @ graph.centroids.T, axis=1))
    # every profile, old and new, is what a build would make now: new articles entered the older profiles whose
    # weakest neighbour they beat, and the profiles whose best cosine they beat were made again
    terms = oracle_terms(postings2, live, updated.idf)
    vecs_live = store.reconstruct_batch(live).astype(np.float64)
    expected = oracle_profiles(vecs_live, terms, np.arange(len(live)), CONFIG)
    assert np.allclose(updated.profiles.toarray(), expected, atol=1e-5)
    before = graph.profiles.toarray()
    changed = np.flatnonzero(np.abs(updated.profiles.toarray()[:400, :400] - before).max(axis=1) > 1e-6)
    assert 0 < len(changed) < 400  # the write touched some older profiles, not all
    assert updated.best is not None and np.allclose(
        updated.best[:, 0], (vecs_live @ vecs_live.T - 2 * np.eye(410)).max(axis=1), atol=1e-5
    )
    # a delete: the articles that held it lose it, and nothing else changes
    gone = int(live[7])
    alone = updated.updated([gone], [], store, postings2.without([gone]), generation=3)
    held = updated.transposed()[7].indices
    assert gone not in alone and np.array_equal(alone.keys, np.delete(live, 7)) and len(held) > 1
    kept = np.delete(np.delete(updated.profiles.toarray(), 7, axis=0), 7, axis=1)
    assert np.allclose(alone.profiles.toarray(), kept)


def test_a_write_to_partly_pooled_profiles_stays_as_close_to_the_exact_ones_as_a_rebuild() -> None:
    pool = PoolConfig(cluster_size=40, probe=3, widest=4)
    keys, vecs, rows = synthetic(600, seed=11)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys[:500], vecs[:500], postings, 1, CONFIG, pool)
    store = vector_store(keys, vecs)
    updated = graph
    for lo in range(500, 600, 20):  # five writes of 20 articles
        updated = updated.updated([], keys[lo : lo + 20].tolist(), store, postings, generation=2)
    exact = NeighbourGraph.build(keys, vecs, postings, 2, CONFIG)
    rebuilt = NeighbourGraph.build(keys, vecs, postings, 2, CONFIG, pool)
    assert entry_recall(updated.profiles, exact.profiles) > entry_recall(rebuilt.profiles, exact.profiles) - 0.03


def test_kept_columns_drops_deleted_rows_and_columns_like_slicing() -> None:
    from search.news.neighbours import _kept_columns

    m = sp.random(40, 40, density=0.2, format="csr", random_state=4, dtype=np.float32).tolil()
    m[5] = 0  # an empty row
    m[39] = 0  # and the last one
    m = m.tocsr()
    m.eliminate_zeros()
    keep = np.random.default_rng(3).random(40) > 0.3
    keep[39] = True
    got = _kept_columns(m, np.flatnonzero(~keep), int(keep.sum()) + 4)
    assert got.shape == (int(keep.sum()), int(keep.sum()) + 4)
    got.check_format(full_check=True)
    assert np.array_equal(got.toarray()[:, : int(keep.sum())], m[keep][:, keep].toarray())


def test_filters_that_match_nothing_give_empty_lists(wire_service: SearchService) -> None:
    nothing = Filter(tags=("no such topic",))
    for scoring in ("profile", "cosine"):
        assert wire_service.similar("wire/0007", k=5, filters=nothing, scoring=scoring).results == []
    timeline = wire_service.timeline("wire/0007", k=5, filters=nothing)
    assert [e.article.id for e in timeline.entries] == ["wire/0007"]


def test_a_live_write_updates_the_profiles_after_the_lock_and_searches_meanwhile_skip_deleted_articles(
    tmp_path: Path,
) -> None:
    from indexer.build import make_chunker, new_articles
    from indexer.update import apply_changes, save_state

    target, rows = wire_index(tmp_path, 200)
    embedder, settings = HashEmbedder(), Settings(index_dir=target)
    index = open_index(target, embedder)
    service = SearchService(index, embedder, settings)
    before = index.neighbours
    assert before is not None
    victim = service.similar("wire/0005", k=3).results[0].article.id
    article = Article(id="wire/new", title=rows[5]["title"], paragraphs=tuple(rows[5]["paragraphs"]), date=None)
    new, _ = new_articles([article], make_chunker(settings, embedder), embedder, settings)
    apply_changes(index, [victim], new, save=False)  # what the live writer does under the write lock
    assert index.neighbours is before and before.generation < index.store.generation()
    service.wrote()
    got = [r.article.id for r in service.similar("wire/0005", k=5).results]
    assert victim not in got and len(got) == 5
    assert len(service.similar("wire/new", k=5).results) == 5  # not profiled yet: ranked by cosine
    save_state(index)  # after the lock: the profiles catch up, then are saved
    graph = index.neighbours
    assert graph is not None and graph is not before and graph.generation == index.store.generation()
    new_key = index.store.aid_of("wire/new")
    assert new_key is not None and new_key in graph and np.array_equal(graph.keys, np.sort(index.articles.ids()))
    assert victim not in [r.article.id for r in service.similar("wire/0005", k=5).results]


def test_a_stale_saved_graph_is_brought_up_to_date_not_rebuilt(tmp_path: Path) -> None:
    target, rows = wire_index(tmp_path, 200)
    embedder, settings = HashEmbedder(), Settings(index_dir=target)
    stale = {name: (target / name).read_bytes() for name in ("neighbours.npz", "neighbours.json")}
    index = open_index(target, embedder)
    article = Article(id="wire/new", title=rows[9]["title"], paragraphs=tuple(rows[9]["paragraphs"]), date=None)
    add_articles(index, [article], embedder, settings)
    delete_articles(index, ["wire/0003"])
    expected = index.neighbours
    assert expected is not None and expected.changed == 2
    index.close()
    for name, data in stale.items():  # as if the writer died before saving its profiles
        (target / name).write_bytes(data)
    reopened = open_index(target, embedder)
    graph = reopened.neighbours
    assert graph is not None and graph.changed == 2  # updated by the two changes (a rebuild would say 0)
    assert graph.generation == reopened.store.generation()
    assert np.array_equal(graph.keys, expected.keys)
    assert (graph.profiles != expected.profiles).nnz == 0


def full_inverse_rank(graph: NeighbourGraph, key: int) -> tuple[np.ndarray, np.ndarray]:
    """``rank`` read from the transpose of every profile (what a load or a build holds)."""
    whole = NeighbourGraph(**{**graph.__dict__, "inverse": graph.profiles.T.tocsr(), "untransposed": 0})
    return whole.rank(key)


def test_a_chain_of_writes_keeps_exact_profiles_and_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes one after another (additions, deletions, both) on one graph, as a writer makes them: the kept term
    transpose, the rows read past the transposes and the appended rooms (made small here, so they are remade and
    outgrown along the way) give every new article the profile a build gives it, keep the older ones, rank as the
    whole transpose does, bit for bit; and a second update of an older graph leaves the newer one as it was."""
    monkeypatch.setattr(nb, "TAIL_SHARE", 40)  # the transposes remade every 10 articles added, of 400
    monkeypatch.setattr(nb.Room, "GROWTH", 50)
    rng = np.random.default_rng(11)
    keys, vecs, rows = synthetic(400, seed=12)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, 1, CONFIG)
    store = vector_store(keys, vecs)
    start = 401
    for generation in range(2, 16):
        deleted = rng.choice(graph.keys, size=2, replace=False).tolist() if generation % 4 == 0 else []
        count = int(rng.integers(1, 6))
        new_keys, new_vecs, new_rows = synthetic(count, seed=200 + generation, start=start)
        start += count
        postings = postings.without(deleted).extended(new_rows)
        store.remove(np.asarray(deleted, dtype=np.int64))
        store.add(new_keys, new_vecs)
        before = graph
        kept = np.flatnonzero(~np.isin(before.keys, deleted))
        old_profiles = before.profiles[kept][:, kept].toarray()
        graph = before.updated(deleted, new_keys.tolist(), store, postings, generation)
        assert graph.changed > 0  # never rebuilt: what is checked is what an update made
        live = np.sort(store.ids())
        assert np.array_equal(graph.keys, live)
        assert np.array_equal(graph.profiles[: len(kept)][:, : len(kept)].toarray(), old_profiles)
        assert (graph.terms != nb._term_rows(postings, live, graph.idf)).nnz == 0
        terms = oracle_terms(postings, live, graph.idf)
        vectors = store.reconstruct_batch(live).astype(np.float64)
        expected = oracle_profiles(vectors, terms, np.arange(len(kept), len(live)), CONFIG)
        assert np.allclose(graph.profiles.toarray()[len(kept) :], expected, atol=1e-5)
        for key in [*graph.keys[:: len(live) // 9].tolist(), *new_keys.tolist()]:
            got, want = graph.rank(key), full_inverse_rank(graph, key)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        # the older graph updated again (as a reader's copy might be): the newer graph's rows stay as they were
        frozen = graph.terms.copy(), graph.profiles.copy()
        other_keys, other_vecs, other_rows = synthetic(3, seed=900 + generation, start=start)
        other_store = vector_store(np.concatenate([live, other_keys]), np.concatenate([vectors, other_vecs]))
        before.updated(deleted, other_keys.tolist(), other_store, postings.extended(other_rows), generation)
        assert (graph.terms != frozen[0]).nnz == 0 and (graph.profiles != frozen[1]).nnz == 0


def test_an_addition_passes_over_the_entries_it_changed_not_every_article_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write's new articles are scored against a term transpose kept from the write before, and appended to the
    term rows and profiles in place: a second addition transposes and copies about the entries of its own rows,
    not the corpus's (the whole term rows and profiles were transposed, and copied, by every write before)."""
    keys, vecs, rows = synthetic(3000, seed=13)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, 1, CONFIG)
    store = vector_store(keys, vecs)
    start = 3001
    for generation in (2, 3):  # the first makes what the later ones keep (as an open's first write)
        new_keys, new_vecs, new_rows = synthetic(3, seed=300 + generation, start=start)
        start += 3
        postings = postings.extended(new_rows)
        store.add(new_keys, new_vecs)
        transposed: list[int] = []

        def counted(*args: Any, seen: list[int] = transposed, real: Any = sp._csr.csr_tocsc) -> Any:
            seen.append(len(args[3]))  # the entries passed over: (M, N, indptr, indices, ...)
            return real(*args)

        with monkeypatch.context() as patched:
            patched.setattr(sp._csr, "csr_tocsc", counted)
            patched.setattr(sp._csc, "csr_tocsc", counted)
            before, graph = graph, graph.updated([], new_keys.tolist(), store, postings, generation)
    written = graph.profiles[-3:].nnz + graph.terms[-3:].nnz
    assert sum(transposed) <= 10 * written < graph.terms.nnz // 20
    assert np.shares_memory(graph.terms.data, before.terms.data)  # the kept rows were not copied
    assert np.shares_memory(graph.profiles.data, before.profiles.data)
    # a deletion alone, on a graph as an open loads it (no term transpose yet), transposes its profiles, no more
    loaded = NeighbourGraph(**{**graph.__dict__, "by_term": None, "rooms": (None, None)})
    transposed.clear()
    with monkeypatch.context() as patched:
        patched.setattr(sp._csr, "csr_tocsc", counted)
        patched.setattr(sp._csc, "csr_tocsc", counted)
        gone = loaded.updated([int(keys[7])], [], store, postings.without([int(keys[7])]), 4)
    assert sum(transposed) <= gone.profiles.nnz


# -- whole rebuilds beside a server's writes (indexer/update.py ProfileRebuilds) ------------------------------------


class _Written:
    """What ``ProfileRebuilds`` reads of an index after each write: its article vectors, article postings and
    generation. One object across writes, as a service's index is (writes change it in place); a class, not a
    namespace, since the rebuild keeps a weak reference to the index it snapshotted."""

    def wrote(self, keys: np.ndarray, vecs: np.ndarray, postings: Postings, generation: int) -> Any:
        from types import SimpleNamespace

        self.articles = vector_store(keys, vecs)
        self.lexical = SimpleNamespace(articles=postings)
        self.generation = generation
        return self


def test_a_due_rebuild_is_made_in_a_thread_and_adopted_with_every_write_since(monkeypatch: pytest.MonkeyPatch) -> None:
    """The write that finds the profiles due updates them incrementally and starts the rebuild in a thread; a write
    during the build goes on incrementally; the first write after it adopts the rebuild with both writes' changes
    replayed: the same graph as building at the snapshot and updating it by those changes."""
    import threading

    from indexer.update import ProfileRebuilds

    built_in: list[str] = []
    release = threading.Event()
    build = NeighbourGraph.build.__func__  # type: ignore[attr-defined]

    def watched(cls: type[NeighbourGraph], *args: Any, **kwargs: Any) -> NeighbourGraph:
        built_in.append(threading.current_thread().name)
        assert release.wait(30)
        return build(cls, *args, **kwargs)  # type: ignore[no-any-return]

    keys, vecs, rows = synthetic(100, seed=5)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, generation=1, config=CONFIG)
    monkeypatch.setattr(NeighbourGraph, "build", classmethod(watched))
    rebuilds, index = ProfileRebuilds(), _Written()
    # write A (generation 2): 25 new articles of 125, the rebuild share: due
    a_keys, a_vecs, a_rows = synthetic(25, seed=6, start=101)
    keys2, vecs2, postings2 = np.concatenate([keys, a_keys]), np.concatenate([vecs, a_vecs]), postings.extended(a_rows)
    after_a = rebuilds.updated(graph, [], a_keys.tolist(), index.wrote(keys2, vecs2, postings2, 2))
    assert after_a.changed == 25 and rebuilds.running and built_in == ["newsdesk-profiles"]
    # write B (generation 3), during the build: 3 deleted, 5 added
    gone = [int(keys[3]), int(keys[40]), int(a_keys[2])]
    b_keys, b_vecs, b_rows = synthetic(5, seed=7, start=126)
    live = ~np.isin(keys2, gone)
    keys3, vecs3 = np.concatenate([keys2[live], b_keys]), np.concatenate([vecs2[live], b_vecs])
    postings3 = postings2.without(gone).extended(b_rows)
    after_b = rebuilds.updated(after_a, gone, b_keys.tolist(), index.wrote(keys3, vecs3, postings3, 3))
    assert after_b.changed == 25 + 8 and np.array_equal(after_b.keys, keys3)  # incremental, still building
    release.set()
    rebuilds.wait(30)
    assert not rebuilds.running
    # write C (generation 4): 2 added; adopts the rebuild
    c_keys, c_vecs, c_rows = synthetic(2, seed=8, start=131)
    keys4, vecs4, postings4 = (
        np.concatenate([keys3, c_keys]),
        np.concatenate([vecs3, c_vecs]),
        postings3.extended(c_rows),
    )
    state4 = index.wrote(keys4, vecs4, postings4, 4)
    adopted = rebuilds.updated(after_b, [], c_keys.tolist(), state4)
    assert built_in == ["newsdesk-profiles"]  # no write built the profiles whole itself
    snapshot = build(NeighbourGraph, keys2, vecs2, postings2, 2, CONFIG)
    replayed = [*b_keys.tolist(), *c_keys.tolist()]
    want = snapshot.updated(sorted(gone), replayed, state4.articles, postings4, 4, rebuild=False)
    assert np.array_equal(adopted.keys, keys4) and adopted.generation == 4 and adopted.changed == 3 + 7
    assert (adopted.profiles != want.profiles).nnz == 0 and (adopted.terms != want.terms).nnz == 0
    assert not rebuilds.running and not adopted.due()


def test_a_rebuild_of_an_index_since_replaced_is_not_adopted() -> None:
    """A build snapshotted from one index is dropped when the writes go on to another (the service reopened the
    index after a rebuild swapped its directory): the changes recorded since its snapshot are not the new index's.
    The writes go on incrementally, and a new build starts from the new index."""
    from indexer.update import ProfileRebuilds

    keys, vecs, rows = synthetic(100, seed=5)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, generation=1, config=CONFIG)
    rebuilds = ProfileRebuilds()
    a_keys, a_vecs, a_rows = synthetic(25, seed=6, start=101)
    keys2, vecs2, postings2 = np.concatenate([keys, a_keys]), np.concatenate([vecs, a_vecs]), postings.extended(a_rows)
    old = _Written().wrote(keys2, vecs2, postings2, 2)
    after = rebuilds.updated(graph, [], a_keys.tolist(), old)
    rebuilds.wait(30)
    # the replacing index: other articles, its own profiles (as an open loads them)
    r_keys, r_vecs, r_rows = synthetic(120, seed=9, start=500)
    r_postings = Postings.build(r_rows, 2)
    replaced = NeighbourGraph.build(r_keys, r_vecs, r_postings, generation=7, config=CONFIG)
    n_keys, n_vecs, n_rows = synthetic(1, seed=10, start=620)
    keys8 = np.concatenate([r_keys, n_keys])
    new_state = _Written().wrote(keys8, np.concatenate([r_vecs, n_vecs]), r_postings.extended(n_rows), 8)
    got = rebuilds.updated(replaced, [], n_keys.tolist(), new_state)
    assert np.array_equal(got.keys, keys8) and got.generation == 8 and got.changed == 1  # not the old build
    assert after.changed == 25 and not rebuilds.running


def test_a_failed_rebuild_leaves_the_profiles_incremental_and_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from indexer.update import ProfileRebuilds

    keys, vecs, rows = synthetic(100, seed=5)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, generation=1, config=CONFIG)
    tries: list[int] = []

    def broken(cls: type[NeighbourGraph], *args: Any, **kwargs: Any) -> NeighbourGraph:
        tries.append(1)
        raise MemoryError("no room for a second graph")

    monkeypatch.setattr(NeighbourGraph, "build", classmethod(broken))
    rebuilds = ProfileRebuilds()
    a_keys, a_vecs, a_rows = synthetic(25, seed=6, start=101)
    keys2, vecs2, postings2 = np.concatenate([keys, a_keys]), np.concatenate([vecs, a_vecs]), postings.extended(a_rows)
    index = _Written()
    after = rebuilds.updated(graph, [], a_keys.tolist(), index.wrote(keys2, vecs2, postings2, 2))
    rebuilds.wait(30)
    b_keys, b_vecs, b_rows = synthetic(1, seed=7, start=126)
    keys3, vecs3 = np.concatenate([keys2, b_keys]), np.concatenate([vecs2, b_vecs])
    again = rebuilds.updated(after, [], b_keys.tolist(), index.wrote(keys3, vecs3, postings2.extended(b_rows), 3))
    rebuilds.wait(30)
    assert np.array_equal(again.keys, keys3) and again.changed == 26 and len(tries) == 2  # due again: tried again


def test_a_server_writer_rebuilds_the_profiles_beside_its_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ``indexer.live.Writer``: writes past the rebuild share return without building every profile, the
    rebuild is adopted by a later write, and the index on disk checks clean with the adopted profiles saved."""
    from indexer.live import Writer
    from search.storage.index import check_index

    monkeypatch.setattr(nb, "REBUILD_SHARE", 0.01)  # 2 changes of 200 articles
    target, rows = wire_index(tmp_path, 200)
    embedder = HashEmbedder()
    service = SearchService(open_index(target, embedder), embedder, Settings(index_dir=target))
    writer = Writer(service)
    new = [
        Article(id=f"wire/new{i}", title=rows[i]["title"], paragraphs=tuple(rows[i]["paragraphs"])) for i in range(3)
    ]
    writer.upsert(new)
    graph = service.index.neighbours
    assert graph is not None and graph.changed == 3 and graph.due()  # incremental: not rebuilt in the write
    writer.rebuilds.wait(60)
    writer.delete(["wire/new0"])
    graph = service.index.neighbours
    assert graph is not None and graph.changed == 1  # the rebuild, with the delete replayed onto it
    assert np.array_equal(graph.keys, np.sort(service.index.articles.ids()))
    assert check_index(target) == []
    assert [r.article.id for r in service.similar("wire/new1", k=3).results]
