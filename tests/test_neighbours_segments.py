"""More-like-this profiles saved by what changed (``NeighbourGraph.save`` over ``search/news/segmented.py``): a save
appends a segment (deleted keys, rows made or remade) instead of rewriting ``neighbours.npz``, and the base with its
segments loads to exactly the graph in memory and to the graph a whole save gives. Exact and pooled profiles,
crash and damage cases. Synthetic articles, no model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from indexer.update import add_articles
from search.models import Article
from search.news import neighbours as nb
from search.news import segmented
from search.news.neighbours import GRAPH_STATE, NeighbourGraph, PoolConfig, graph_problems
from search.settings import Settings
from search.storage.index import check_index, open_index
from search.text.bm25 import Postings
from search.vectors.segments import MERGE_SEGMENTS
from tests.fakes import HashEmbedder
from tests.test_neighbours import CONFIG, synthetic, vector_store, wire_index


@pytest.fixture(autouse=True)
def _fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bases of a few hundred articles: a write's rows pass the default fraction quickly, so merges here go by the
    count of segments (one test keeps the default)."""
    monkeypatch.setattr(segmented, "MERGE_FRACTION", 5.0)


def assert_same(a: NeighbourGraph, b: NeighbourGraph) -> None:
    assert np.array_equal(a.keys, b.keys) and a.generation == b.generation and a.changed == b.changed
    assert a.profiles.shape == b.profiles.shape and (a.profiles != b.profiles).nnz == 0
    assert a.terms.shape == b.terms.shape and (a.terms != b.terms).nnz == 0
    assert_inverse(a)
    assert_inverse(b)
    assert np.array_equal(a.idf, b.idf)
    for x, y in ((a.clusters, b.clusters), (a.best, b.best), (a.centroids, b.centroids)):
        assert (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))
    for key in a.keys[:: max(1, len(a.keys) // 7)].tolist():
        got, want = a.rank(key), b.rank(key)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def assert_inverse(graph: NeighbourGraph) -> None:
    """``inverse`` is the transpose of every profile but the last ``untransposed`` (appended since it was made)."""
    n, tail = len(graph.keys), graph.untransposed
    head = sp.vstack([graph.profiles[: n - tail], sp.csr_matrix((tail, n), dtype=np.float32)])
    inverse = graph.transposed()
    assert inverse.shape == (n, n) and (inverse != head.T.tocsr()).nnz == 0


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".seg-" in p.name)


@pytest.mark.parametrize("pool", [None, PoolConfig(cluster_size=40, probe=4, widest=4)], ids=["exact", "pooled"])
@pytest.mark.parametrize("seed", [0, 1])
def test_base_and_segments_load_to_the_graph_in_memory(tmp_path: Path, pool: PoolConfig | None, seed: int) -> None:
    """Random writes (additions, deletions, both), each saved: the loaded graph equals the one in memory and the one
    a whole save of it gives, rank included; saves append, and past the count limit one segment of everything since
    the base replaces the listed ones (the fraction being raised: the base is never rewritten)."""
    rng = np.random.default_rng(seed)
    keys, vecs, rows = synthetic(400, seed=20 + seed)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, 1, CONFIG, pool)
    store = vector_store(keys, vecs)
    graph.save(tmp_path)
    base_writes, start, compacted = 0, 401, 0
    for generation in range(2, 14):
        before = (tmp_path / "neighbours.npz").stat()
        listed = len(segments(tmp_path))
        deleted = rng.choice(graph.keys, size=int(rng.integers(0, 4)), replace=False).tolist()
        count = int(rng.integers(0, 5)) if deleted else int(rng.integers(1, 5))
        new_keys, new_vecs, new_rows = synthetic(count, seed=100 * seed + generation, start=start)
        start += count
        postings = postings.without(deleted).extended(new_rows)
        store.remove(np.asarray(deleted, dtype=np.int64))
        store.add(new_keys, new_vecs)
        graph = graph.updated(deleted, new_keys.tolist(), store, postings, generation)
        assert graph.changed > 0  # never rebuilt here: what is saved is what an update made
        graph.save(tmp_path)
        after = (tmp_path / "neighbours.npz").stat()
        base_writes += (after.st_ino, after.st_mtime_ns) != (before.st_ino, before.st_mtime_ns)
        loaded = NeighbourGraph.load(tmp_path, generation, CONFIG)
        assert loaded is not None
        assert_same(loaded, graph)
        whole = tmp_path / f"whole{generation}"
        whole.mkdir()
        NeighbourGraph(**{**graph.__dict__, "stamp": None}).save(whole)
        assert segments(whole) == []
        reloaded = NeighbourGraph.load(whole, generation, CONFIG)
        assert reloaded is not None
        assert_same(reloaded, loaded)
        assert len(segments(tmp_path)) <= MERGE_SEGMENTS
        compacted += listed == MERGE_SEGMENTS and len(segments(tmp_path)) == 1
    assert base_writes == 0 and compacted > 0  # appended; merged into one segment when the count passed


def test_a_save_killed_before_its_stamp_leaves_the_old_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, vecs, rows = synthetic(200, seed=3)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, 1, CONFIG)
    graph.save(tmp_path)
    new_keys, new_vecs, new_rows = synthetic(3, seed=4, start=201)
    store = vector_store(np.concatenate([keys, new_keys]), np.concatenate([vecs, new_vecs]))
    store.remove(keys[[5]])
    updated = graph.updated(
        [int(keys[5])], new_keys.tolist(), store, postings.without([int(keys[5])]).extended(new_rows), 2
    )

    def killed(path: Path, stamp: object) -> None:
        raise OSError("killed before the stamp")

    with monkeypatch.context() as patched, pytest.raises(OSError):
        patched.setattr(nb, "write_stamp", killed)
        updated.save(tmp_path)
    assert segments(tmp_path) == ["neighbours.seg-2.npz"]  # written, not listed
    old = NeighbourGraph.load(tmp_path, None, CONFIG)
    assert old is not None and old.generation == 1
    assert_same(old, graph)
    assert NeighbourGraph.load(tmp_path, 2, CONFIG) is None  # stale for generation 2: an open updates or rebuilds it
    updated.save(tmp_path)  # the changes are still pending: appended on the old files, the unlisted one replaced
    loaded = NeighbourGraph.load(tmp_path, 2, CONFIG)
    assert loaded is not None
    assert_same(loaded, updated)


def test_a_damaged_segment_is_a_damaged_cache(tmp_path: Path) -> None:
    keys, vecs, rows = synthetic(200, seed=5)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, 1, CONFIG)
    graph.save(tmp_path)
    new_keys, new_vecs, new_rows = synthetic(2, seed=6, start=201)
    store = vector_store(np.concatenate([keys, new_keys]), np.concatenate([vecs, new_vecs]))
    graph.updated([], new_keys.tolist(), store, postings.extended(new_rows), 2).save(tmp_path)
    assert graph_problems(tmp_path, 2, CONFIG) == []
    segment = tmp_path / "neighbours.seg-2.npz"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert NeighbourGraph.load(tmp_path, 2, CONFIG) is None  # the open rebuilds it
    assert graph_problems(tmp_path, 2, CONFIG)  # and check says so
    segment.unlink()
    assert NeighbourGraph.load(tmp_path, 2, CONFIG) is None


def test_another_process_s_save_makes_the_next_one_write_a_base(tmp_path: Path) -> None:
    keys, vecs, rows = synthetic(200, seed=7)
    postings = Postings.build(rows, 2)
    graph = NeighbourGraph.build(keys, vecs, postings, 1, CONFIG)
    graph.save(tmp_path)
    other = NeighbourGraph.build(keys, vecs, postings, 1, CONFIG)
    other.save(tmp_path)  # another writer's whole save: the stamp on disk is not the one ``graph`` saved
    new_keys, new_vecs, new_rows = synthetic(2, seed=8, start=201)
    store = vector_store(np.concatenate([keys, new_keys]), np.concatenate([vecs, new_vecs]))
    updated = graph.updated([], new_keys.tolist(), store, postings.extended(new_rows), 2)
    updated.save(tmp_path)
    assert segments(tmp_path) == []
    loaded = NeighbourGraph.load(tmp_path, 2, CONFIG)
    assert loaded is not None
    assert_same(loaded, updated)


def test_a_stamp_from_before_segments_still_loads(tmp_path: Path) -> None:
    keys, vecs, rows = synthetic(120, seed=9)
    graph = NeighbourGraph.build(keys, vecs, Postings.build(rows, 2), 4, CONFIG)
    graph.save(tmp_path)
    stamp = segmented.read_stamp(tmp_path / GRAPH_STATE)
    old = {name: stamp[name] for name in ("generation", "version", "config", "changed")}
    segmented.write_stamp(tmp_path / GRAPH_STATE, old)
    loaded = NeighbourGraph.load(tmp_path, 4, CONFIG)
    assert loaded is not None
    assert_same(loaded, graph)


def test_check_reads_the_segments_of_an_index_and_an_open_rebuilds_a_damaged_one(tmp_path: Path) -> None:
    """Through the index: a write appends segments to both caches, ``newsdesk check`` passes, and finds a damaged
    segment of either; the next open serves the same profiles (rebuilt or updated from SQLite)."""
    target, rows = wire_index(tmp_path, 120)
    embedder, settings = HashEmbedder(), Settings(index_dir=target)
    index = open_index(target, embedder)
    article = Article(id="wire/new", title=rows[4]["title"], paragraphs=tuple(rows[4]["paragraphs"]), date=None)
    add_articles(index, [article], embedder, settings)
    graph = index.neighbours
    generation = index.generation
    index.close()
    directory = target.resolve()
    names = segments(directory)
    for stem in ("neighbours", "duplicates"):
        assert f"{stem}.seg-{generation}.npz" in names
    assert check_index(target) == []
    for stem in ("neighbours", "duplicates"):
        segment = directory / f"{stem}.seg-{generation}.npz"
        kept = segment.read_bytes()
        segment.write_bytes(kept[: len(kept) // 2])
        assert any(stem in problem or "duplicate" in problem for problem in check_index(target))
        segment.write_bytes(kept)
    assert check_index(target) == []
    (directory / f"neighbours.seg-{generation}.npz").write_bytes(b"damaged")
    reopened = open_index(target, embedder)
    assert reopened.neighbours is not None and graph is not None
    assert np.array_equal(reopened.neighbours.keys, graph.keys)
    reopened.close()
