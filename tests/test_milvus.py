"""The Milvus backend: store mechanics on synthetic vectors against a brute-force numpy oracle (as test_vectors.py
does for FAISS), then an index kept in Milvus Lite through builds, writes, crashes, checks and the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import api.server
import search.vectors.milvus.vectors as milvus
from api.cli import main
from indexer.sources import read_sources
from indexer.sync import sync_index
from indexer.update import add_articles, delete_articles
from search.errors import IndexCorrupt, InvalidInput, VectorStoreUnavailable
from search.models import Article
from search.settings import Settings
from search.storage.index import check_index, open_index
from search.storage.store import Store
from search.vectors.base import deepened_range
from search.vectors.factory import backend
from search.vectors.milvus.client import CONNECT_TIMEOUT, MilvusConnection
from search.vectors.milvus.config import MilvusConfig, parse_params
from search.vectors.milvus.vectors import MilvusVectorStore, build_store
from tests.conftest import CORPUS
from tests.fakes import HashEmbedder
from tests.procs import free_port
from tests.test_vectors import DIM, oracle, unit


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FAISS tests' synthetic vectors (tests/test_vectors.py), checked against the same brute-force oracle."""
    rng = np.random.default_rng(7)
    ids = rng.choice(10**12, size=500, replace=False).astype(np.int64)  # sparse int64 ids, not 0..n
    return ids, unit(rng, 500), unit(rng, 20)


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[MilvusConnection]:
    conn = MilvusConnection("vectors.db", tmp_path)  # Milvus Lite, in this process
    yield conn
    conn.close()


def test_search_matches_brute_force(connection: MilvusConnection, data) -> None:
    ids, vecs, queries = data
    store = build_store(connection, "p", DIM, [(ids[:200], vecs[:200]), (ids[200:], vecs[200:])])
    assert store.count() == 500
    scores, got = store.search(queries, 10)
    want_scores, want = oracle(ids, vecs, queries, 10)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert (got == want).mean() > 0.99  # ties aside, identical ranking
    np.testing.assert_array_equal(store.ids(), np.sort(ids))


def test_range_is_every_vector_at_or_above_the_floor(
    connection: MilvusConnection, data, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Milvus's range search against numpy, the floor inclusive; where the engine refuses range parameters, or
    more vectors than one answer may hold reach the floor, a deepened top-k search answers, as before range
    search."""
    ids, vecs, queries = data
    store = build_store(connection, "p", DIM, [(ids, vecs)])
    store.remove(ids[:50])
    live_ids, live = ids[50:], vecs[50:]

    def want(query: np.ndarray, floor: float) -> set[int]:
        scores = live @ query
        return set(live_ids[(scores >= floor) & (np.abs(scores - floor) > 1e-5)].tolist())

    for floor in (-1.0, 0.1, 0.4):
        for query in queries[:3]:
            scores, got = store.range(query, floor)
            assert want(query, floor) <= set(got.tolist()) and (scores >= np.float32(floor) - 1e-5).all()
    top, best = store.search(queries[:1], 1)
    assert int(best[0][0]) in store.range(queries[0], float(top[0][0]))[1].tolist()
    monkeypatch.setattr(milvus, "MAX_TOPK", 20)  # more matches than an answer holds: deepened, as before
    _, deepened = deepened_range(store, queries[0], -1.0)
    assert len(deepened) == 20 and np.array_equal(store.range(queries[0], -1.0)[1], deepened)
    monkeypatch.setattr(milvus, "MAX_TOPK", 16384)
    plain = store._search

    def no_range(q: np.ndarray, k: int, expr: str, extra: dict[str, float] | None = None) -> Any:
        if extra:
            raise VectorStoreUnavailable("range search is not supported")
        return plain(q, k, expr)

    monkeypatch.setattr(store, "_search", no_range)
    assert want(queries[1], 0.1) <= set(store.range(queries[1], 0.1)[1].tolist()) <= want(queries[1], 0.1 - 1e-5)


def test_remove_and_reconstruct(connection: MilvusConnection, data) -> None:
    ids, vecs, queries = data
    store = build_store(connection, "p", DIM, [(ids, vecs)])
    np.testing.assert_array_equal(store.reconstruct(int(ids[17])), vecs[17])  # float32 kept exactly
    removed = ids[:100]
    assert store.remove(np.concatenate([removed, [5, 7]])) == 100  # ids it never held are not counted
    assert store.remove(removed[:3]) == 0
    assert store.count() == 400
    with pytest.raises(KeyError):
        store.reconstruct(int(ids[0]))
    with pytest.raises(KeyError):
        store.reconstruct_batch(ids[99:102])
    _, got = store.search(queries, 50)
    assert not np.isin(got, removed).any()
    _want_scores, want = oracle(ids[100:], vecs[100:], queries, 50)
    assert (got == want).mean() > 0.99
    np.testing.assert_array_equal(store.ids(), np.sort(ids[100:]))
    picked = ids[[300, 120, 300, 450]]  # order and repeats kept, as FAISS's reconstruct_batch
    np.testing.assert_array_equal(store.reconstruct_batch(picked), vecs[[300, 120, 300, 450]])
    assert store.reconstruct_batch(np.zeros(0, np.int64)).shape == (0, DIM)


def test_k_larger_than_count_pads_nothing_invalid(connection: MilvusConnection, data) -> None:
    ids, vecs, queries = data
    store = build_store(connection, "p", DIM, [(ids[:3], vecs[:3])])
    scores, got = store.search(queries[0], 10)
    assert got.shape == (1, 3)
    assert set(got[0]) == set(ids[:3])
    assert np.all(np.isfinite(scores))
    empty = build_store(connection, "e", DIM, [])
    scores, got = empty.search(queries[:2], 5)
    assert got.shape == (2, 1) and (got == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize(("limit", "topk"), [(20_000, 16384), (40, 16384), (40, 60)])
def test_allowed_restricts_the_search_exactly(
    connection: MilvusConnection, data, monkeypatch: pytest.MonkeyPatch, limit: int, topk: int
) -> None:
    """All three ways to honour ``allowed``: one ``id in [...]`` filter (the default limit), an unfiltered search
    deep enough to hold k allowed hits (a low limit), and filtered searches over chunks of the set, merged (a low
    limit and a low top-k cap)."""
    monkeypatch.setattr(milvus, "EXACT_FILTER_LIMIT", limit)
    monkeypatch.setattr(milvus, "MAX_TOPK", topk)
    ids, vecs, queries = data
    store = build_store(connection, "p", DIM, [(ids, vecs)])
    for pick in (np.arange(0, 500, 7), np.arange(0, 500, 2), np.arange(3)):
        allowed = np.sort(ids[pick])
        scores, got = store.search(queries, 10, allowed=np.concatenate([allowed, [1, 2]]))  # unknown ids: no harm
        k = min(10, len(pick))
        want_scores, want = oracle(ids[pick], vecs[pick], queries, k)
        assert got.shape == (len(queries), min(10, len(pick) + 2))
        assert np.isin(got[:, :k], allowed).all()
        np.testing.assert_allclose(scores[:, :k], want_scores, rtol=1e-5, atol=1e-5)
        assert (got[:, :k] == want).mean() > 0.99
        assert (got[:, k:] == -1).all() and np.isneginf(scores[:, k:]).all()
    scores, got = store.search(queries[:2], 5, allowed=np.zeros(0, np.int64))  # nothing may match
    assert got.shape == (2, 1) and (got == -1).all() and np.isneginf(scores).all()


def test_writes_and_reopening_keep_the_collection(tmp_path: Path, data) -> None:
    """Milvus persists each write: a new connection (after the in-process Milvus Lite was stopped) sees them."""
    ids, vecs, queries = data
    first = MilvusConnection("vectors.db", tmp_path)
    store = MilvusVectorStore.create(first, "p", DIM)
    store.add(ids[:300], vecs[:300])
    store.remove(ids[:10])
    store.add(ids[300:], vecs[300:])
    want = store.search(queries, 5)
    first.close()
    second = MilvusConnection("vectors.db", tmp_path)
    try:
        reopened = MilvusVectorStore.open(second, "p", DIM)
        assert reopened.count() == 490
        got = reopened.search(queries, 5)
        np.testing.assert_array_equal(got[1], want[1])
        with pytest.raises(IndexCorrupt, match="no collection"):
            MilvusVectorStore.open(second, "missing", DIM)
    finally:
        second.close()


def test_upsert_overwrites_a_reused_id(connection: MilvusConnection, data) -> None:
    ids, vecs, _ = data
    store = build_store(connection, "p", DIM, [(ids[:10], vecs[:10])])
    store.upsert(ids[5:12], vecs[105:112])
    assert store.count() == 12
    np.testing.assert_array_equal(store.reconstruct(int(ids[5])), vecs[105])


def test_bad_vectors_and_bad_index_settings_are_input_errors(connection: MilvusConnection, data) -> None:
    ids, _vecs, _ = data
    store = MilvusVectorStore.create(connection, "p", DIM)
    with pytest.raises(InvalidInput, match="dimension"):
        store.add(ids[:2], np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(InvalidInput, match="negative"):
        store.add(np.asarray([-3, 4]), np.zeros((2, DIM), np.float32))
    with pytest.raises(InvalidInput, match="Milvus Lite does not build DISKANN"):
        MilvusVectorStore.create(connection, "q", DIM, "DISKANN")
    with pytest.raises(InvalidInput, match="milvus_index"):
        MilvusConfig.from_settings(Settings(store="milvus", milvus_index="NoSuchIndex"))
    with pytest.raises(InvalidInput, match="store must be one of faiss, milvus"):
        backend(Settings(store="elastic").store)
    with pytest.raises(InvalidInput, match="neither"):
        MilvusConfig.from_settings(Settings(store="milvus", milvus_uri="ftp://host/x"))
    with pytest.raises(InvalidInput, match="name=value"):
        parse_params("ef", "search parameters")
    assert parse_params("M=32, efConstruction=200,metric=x", "p") == {"M": 32, "efConstruction": 200, "metric": "x"}


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float = 0.2) -> np.ndarray:
    v = centres[rng.integers(len(centres), size=n)] + spread * rng.standard_normal((n, DIM)).astype(np.float32)
    out: np.ndarray = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


@pytest.mark.parametrize(
    ("index_type", "build", "search"),
    [("HNSW", {"M": 16, "efConstruction": 64}, {"ef": 64}), ("IVF_FLAT", {"nlist": 16}, {"nprobe": 8})],
)
def test_approximate_indexes_keep_recall_and_respect_removals(
    connection: MilvusConnection, index_type: str, build: dict[str, Any], search: dict[str, Any]
) -> None:
    rng = np.random.default_rng(3)
    centres = unit(rng, 8)
    ids = rng.choice(10**9, size=2000, replace=False).astype(np.int64)
    vecs, queries = clustered(rng, 2000, centres), clustered(rng, 30, centres)
    store = build_store(connection, "ann", DIM, [(ids, vecs)], index_type, build, search)
    store.remove(ids[:200])
    _, got = store.search(queries, 10)
    _, want = oracle(ids[200:], vecs[200:], queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.9, recall
    assert not np.isin(got, ids[:200]).any()


def test_an_unreachable_milvus_is_a_clear_error(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(VectorStoreUnavailable, match=f"cannot reach Milvus at {uri}") as err:
        MilvusConnection(uri, tmp_path)
    assert time.monotonic() - started < CONNECT_TIMEOUT + 5
    assert "\n" not in err.value.message


def test_a_connect_to_milvus_lite_that_times_out_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process Milvus Lite server is running when its client connects; a connect that timed out (a loaded
    machine: it failed a fresh clone's make test once) is tried again, up to ``LITE_CONNECT_TRIES``."""
    import pymilvus
    from pymilvus.exceptions import MilvusException

    real = pymilvus.MilvusClient
    calls: list[str] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(kwargs.get("uri")))
        if len(calls) == 1:
            raise MilvusException(message="Fail connecting to server: illegal connection params or server unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(pymilvus, "MilvusClient", flaky)
    conn = MilvusConnection("retry.db", tmp_path)
    try:
        assert len(calls) == 2 and calls[0] == calls[1]
    finally:
        conn.close()


def test_milvus_lite_held_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys, milvus_lite; db = milvus_lite.MilvusLite({str(path)!r}); print('ok'); "
            "sys.stdout.flush(); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        with pytest.raises(VectorStoreUnavailable, match="open in another process"):
            MilvusConnection("held.db", tmp_path)
    finally:
        holder.communicate("")
    MilvusConnection("held.db", tmp_path).close()  # free once that process is gone


# -- an index in Milvus Lite: build, writes, crash repair, check, switching store ---------------------------------


def _article(i: int, text: str) -> Article:
    return Article(id=f"m/{i}", title=f"Story {i} {text}", paragraphs=(f"{text} paragraph of story {i}, long enough.",))


def _stored_ids(index_dir: Path, table: str) -> np.ndarray:
    store = Store(index_dir / "newsdesk.sqlite")
    try:
        return np.sort(np.concatenate([ids for ids, _ in store.iter_vectors(table)]))
    finally:
        store.close()


@pytest.fixture
def milvus_index(tmp_path: Path) -> tuple[Path, HashEmbedder, Settings]:
    target = tmp_path / "corpus"
    settings = Settings(index_dir=target, store="milvus")
    sync_index(read_sources([CORPUS]), settings, HashEmbedder(), progress=False)
    return target, HashEmbedder(), settings


def test_the_manifest_records_the_milvus_store(milvus_index) -> None:
    target, embedder, _ = milvus_index
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["store"] == "milvus"
    entry = manifest["milvus"]
    assert entry["uri"] == "milvus.db" and (target / "milvus.db").is_dir()  # Milvus Lite inside the index
    # vectors, and the records stateless replicas read (search/vectors/milvus/records.py), then the stable meta
    # collection
    assert set(entry["collections"]) == {"passages", "articles", "article_rows", "passage_rows", "sentence_rows"}
    assert all(name.startswith("newsdesk_corpus_") for name in entry["collections"].values())
    assert entry["meta"] == "newsdesk_corpus_meta"
    assert entry["schema"]["metric"] == "IP" and entry["schema"]["fields"][1]["dim"] == embedder.dimension
    assert entry["index"] == {"passages": {"type": "FLAT", "params": {}}, "articles": {"type": "FLAT", "params": {}}}
    assert check_index(target) == []
    index = open_index(target, embedder)
    try:
        assert isinstance(index.passages, MilvusVectorStore)
        np.testing.assert_array_equal(index.passages.ids(), _stored_ids(target, "passages"))
        np.testing.assert_array_equal(index.articles.ids(), _stored_ids(target, "articles"))
    finally:
        index.close()


def test_writes_reach_milvus_and_a_crash_between_sqlite_and_milvus_is_repaired(milvus_index) -> None:
    target, embedder, settings = milvus_index
    index = open_index(target, embedder)
    try:
        add_articles(index, [_article(1, "harbour strike"), _article(2, "grain prices")], embedder, settings)
        delete_articles(index, ["sport/001"])
        np.testing.assert_array_equal(index.passages.ids(), _stored_ids(target, "passages"))
        np.testing.assert_array_equal(index.articles.ids(), _stored_ids(target, "articles"))
        assert index.passages.count() == len(_stored_ids(target, "passages"))
    finally:
        index.close()
    assert check_index(target) == []
    # A writer that dies after SQLite's commit and before Milvus: only the store changes. SQLite reuses the highest
    # deleted rowid, so the repair must overwrite vectors by id, not only add and delete ids.
    store = Store(target / "newsdesk.sqlite")
    try:
        crashed = _rows(embedder, settings, [_article(3, "volcano ash flights")])
        store.replace_articles(["m/2", "business/001"], crashed)
    finally:
        store.close()
    reopened = open_index(target, embedder)
    try:
        np.testing.assert_array_equal(reopened.passages.ids(), _stored_ids(target, "passages"))
        np.testing.assert_array_equal(reopened.articles.ids(), _stored_ids(target, "articles"))
        for table, vs in (("passages", reopened.passages), ("articles", reopened.articles)):
            for ids, vecs in reopened.store.iter_vectors(table):
                np.testing.assert_array_equal(vs.reconstruct_batch(ids), vecs)
    finally:
        reopened.close()
    assert check_index(target) == []


def _rows(embedder: HashEmbedder, settings: Settings, articles: list[Article]) -> list[Any]:
    from indexer.build import make_chunker, new_articles

    rows, _ = new_articles(articles, make_chunker(settings, embedder), embedder, settings)
    return rows


def test_check_finds_a_collection_that_disagrees_with_sqlite(milvus_index) -> None:
    target, embedder, _ = milvus_index
    index = open_index(target, embedder)
    try:
        victim = index.passages.ids()[:2]
        index.passages.remove(victim)  # behind SQLite's back, with the state still claiming this generation
    finally:
        index.close()
    problems = check_index(target)
    assert len(problems) == 1 and "they differ" in problems[0], problems
    index = open_index(target, embedder)  # a fresh state is trusted on open, as FAISS's is; check is what finds it
    index.close()


def test_switching_store_rebuilds_and_search_params_update_in_place(milvus_index) -> None:
    target, embedder, settings = milvus_index
    report = sync_index(read_sources([CORPUS]), settings.replace(milvus_search="ef=32"), embedder, progress=False)
    assert report.mode == "incremental"
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["milvus"]["search_params"] == {"ef": 32}
    old = manifest["milvus"]["collections"]
    report = sync_index(read_sources([CORPUS]), settings.replace(store="faiss"), embedder, progress=False)
    assert report.mode == "full" and "vector store changed" in report.reason
    assert json.loads((target / "manifest.json").read_text(encoding="utf-8"))["store"] == "faiss"
    assert not (target / "milvus.db").exists() and check_index(target) == []
    report = sync_index(read_sources([CORPUS]), settings, embedder, progress=False)
    assert report.mode == "full" and "vector store changed" in report.reason
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["store"] == "milvus" and manifest["milvus"]["collections"] != old  # fresh names every build
    report = sync_index(read_sources([CORPUS]), settings.replace(milvus_index="HNSW"), embedder, progress=False)
    assert report.mode == "full" and report.reason == "the Milvus index changed"


def test_a_copied_index_opens_its_own_milvus_lite(milvus_index, tmp_path: Path) -> None:
    target, embedder, _ = milvus_index
    copy = tmp_path / "copy"
    shutil.copytree(target.resolve(), copy)
    index = open_index(copy, embedder)
    try:
        assert index.passages.count() == len(_stored_ids(copy, "passages"))
        assert (
            isinstance(index.passages, MilvusVectorStore)
            and index.passages.connection.lite == (copy / "milvus.db").resolve()
        )
    finally:
        index.close()


def test_cli_builds_checks_and_describes_a_milvus_index(
    tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "cli"
    env = {"NEWSDESK_BACKEND": "torch", "NEWSDESK_MILVUS_INDEX_PARAMS": ""}
    args = ["index", str(CORPUS), "--index", str(target), "--store", "milvus", "--quiet"]
    result = runner.invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["check", "--index", str(target)])
    assert result.exit_code == 0 and "ok" in result.output, result.output
    info = json.loads(runner.invoke(main, ["stats", "--index", str(target), "--json"]).stdout)
    assert info["store"]["backend"] == "milvus" and info["store"]["index"]["passages"]["type"] == "FLAT"
    text = runner.invoke(main, ["stats", "--index", str(target)]).stdout
    assert any(line.startswith("milvus") and "milvus.db" in line for line in text.splitlines())
    served = runner.invoke(main, ["serve", "--index", str(target), "--processes", "2"])
    assert served.exit_code == 2 and "Milvus Lite" in served.output
    ran: list[dict[str, object]] = []  # not told how many, serve picks one process for Milvus Lite and says why
    monkeypatch.setattr(api.server, "serve", lambda make_app, host, port, **kw: ran.append(kw))
    monkeypatch.setattr(api.server, "usable_cores", lambda: 2)
    served = runner.invoke(main, ["serve", "--index", str(target)])
    assert served.exit_code == 0 and ran[0]["processes"] == 1, served.output
    assert "waitress, 1 process(es)" in served.output and "Milvus Lite" in served.output
    bad = runner.invoke(
        main,
        [
            "index",
            str(CORPUS),
            "--index",
            str(target),
            "--store",
            "milvus",
            "--milvus-uri",
            f"http://127.0.0.1:{free_port()}",
            "--quiet",
        ],
        env=env,
    )
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "cannot reach Milvus" in bad.output, bad.output
    assert runner.invoke(main, ["check", "--index", str(target)]).exit_code == 0  # the failed build changed nothing
