"""Stateless replicas (issue 8): an index served from Milvus alone, with no index directory
(search/vectors/milvus/replica.py).

In process, a replica opened on Milvus Lite beside the directory index that wrote it must answer exactly as the
directory index does (search in every mode, filters, facets, similar, timelines, stories, articles), follow writes,
crash repairs and rebuilds once they are published, and refuse writes. Across processes, two ``newsdesk serve
--milvus-uri --collections`` replicas on one Milvus server, with the index directory moved out of reach, answer
alike, and a write through the indexer reaches both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from api.app import create_app
from indexer.build import build_index, make_chunker, new_articles
from indexer.sources import read_sources
from indexer.update import add_articles, delete_articles
from search.errors import IndexMissing, WritesDisabled
from search.models import Article, to_plain
from search.ranking.catalog import Filter
from search.service import SearchService
from search.settings import Settings
from search.storage.index import open_index
from search.vectors.milvus.records import PART_BYTES, RecordCollection, split_parts
from search.vectors.milvus.replica import Replica, meta_collection, open_replica
from tests.conftest import CORPUS
from tests.fakes import HashEmbedder
from tests.procs import PRODUCT_ENV, serving
from tests.test_replicas import milvus_server  # noqa: F401  (a fixture: Milvus Lite's gRPC server, own process)

QUERIES = ("central bank raises interest rates", "football match result", "new phone launch", "café ünïcode")


def _plain(value: Any) -> Any:
    out = to_plain(value)
    if isinstance(out, dict):
        out.pop("took_ms", None)
    return out


def _replica(target: Path, embedder: Any, uri: str | None = None) -> SearchService:
    """A replica of the index at ``target`` (its Milvus Lite database, shared in this process), polling always."""
    uri = uri or str(target / "milvus.db")
    index = open_replica(uri, "newsdesk_" + target.name, embedder, poll_seconds=0.0)
    assert index.directory is None and index.replica is not None
    return SearchService(index, embedder, Settings(index_dir=Path("/nonexistent")))


def _service(target: Path, embedder: Any) -> SearchService:
    return SearchService(open_index(target, embedder), embedder, Settings(index_dir=target))


def _assert_alike(a: SearchService, b: SearchService, article_ids: list[str]) -> None:
    for q in QUERIES:
        for mode in ("hybrid", "dense", "lexical"):
            assert _plain(a.search(q, k=5, mode=mode)) == _plain(b.search(q, k=5, mode=mode)), (q, mode)
        assert _plain(a.search(q, k=3, facets=True, cursor="*")) == _plain(b.search(q, k=3, facets=True, cursor="*"))
        assert _plain(a.query_timeline(q, k=5)) == _plain(b.query_timeline(q, k=5))
        assert [_plain(x) for x in a.batch_search([q], 5)] == [_plain(x) for x in b.batch_search([q], 5)]
    for article_id in article_ids:
        for scoring in ("profile", "cosine"):
            assert _plain(a.similar(article_id, k=5, scoring=scoring)) == _plain(
                b.similar(article_id, k=5, scoring=scoring)
            )
        assert _plain(a.timeline(article_id, k=5)) == _plain(b.timeline(article_id, k=5))
        assert a.article_with_labels(article_id) == b.article_with_labels(article_id)
        ref = a.article_with_labels(article_id)[1]
        assert _plain(a.story(ref.story_id or article_id)) == _plain(b.story(ref.story_id or article_id))
    health_a, health_b = a.health(), b.health()
    assert {k: health_a[k] for k in ("articles", "passages", "newest_date", "generation")} == {
        k: health_b[k] for k in ("articles", "passages", "newest_date", "generation")
    }


@pytest.fixture
def hash_index(tmp_path: Path) -> Iterator[tuple[Path, HashEmbedder, Settings]]:
    """The fixture corpus on the hashing embedder with vectors and records in a Milvus Lite database outside the
    index directory (as a server would be: a rebuild's new directory uses the same one): an index to write to."""
    embedder = HashEmbedder()
    target = tmp_path / "corpus"
    settings = Settings(index_dir=target, store="milvus", milvus_uri=str(tmp_path / "shared.db"))
    build_index(read_sources([CORPUS]), target, settings, embedder, progress=False)
    yield target, embedder, settings


def test_a_replica_answers_as_the_directory_index(milvus_corpus_index: Path, embedder) -> None:
    """The real model: search in every mode, facets, cursors, batch runs, similar, timelines, stories, articles."""
    directory = _service(milvus_corpus_index, embedder)
    replica = _replica(milvus_corpus_index, embedder)
    try:
        ids = list(directory.index.catalog.ids)
        _assert_alike(directory, replica, ids)
        result = replica.search("why is North Korea accusing", k=3)
        assert all(p.highlight is not None for r in result.results for p in r.passages)
        flt = Filter.parse("2024-03-01", None, ["Example Wire"], [])
        assert _plain(directory.search("bank", k=5, filters=flt)) == _plain(replica.search("bank", k=5, filters=flt))
        # one key for both (the published manifest's): a walk started on one server continues on the other
        # (k=1: two articles of the fixture match "bank", so the walk has a second page)
        walk = directory.search("bank", k=1, cursor="*").next_cursor
        assert walk and _plain(replica.search("bank", k=1, cursor=walk)) == _plain(
            directory.search("bank", k=1, cursor=walk)
        )
    finally:
        replica.index.close()
        directory.index.close()


def test_writes_crash_repairs_and_rebuilds_reach_a_replica(hash_index: tuple[Path, HashEmbedder, Settings]) -> None:
    target, embedder, settings = hash_index
    replica = _replica(target, embedder, settings.milvus_uri)
    try:
        index = open_index(target, embedder)
        try:
            long_body = ["A very long paragraph about central banks, rates and é ü ñ 漢字. " * 2000] * 3
            assert len(json.dumps(long_body).encode()) > 2 * PART_BYTES  # several record parts
            added = [
                Article(id="new/1", title="Central bank raises interest rates again", paragraphs=(
                    "The central bank raised its main rate by half a point. Inflation stayed high.",)),
                Article(id="new/long", title="A long central bank story", paragraphs=tuple(long_body)),
            ]  # fmt: skip
            add_articles(index, added, embedder, settings)
            delete_articles(index, ["business/001"])
            add_articles(index, [Article(id="world/001", title="A replaced world story", paragraphs=("New text.",))],
                         embedder, settings)  # fmt: skip
        finally:
            index.close()
        fresh = _service(target, embedder)
        try:
            _assert_alike(fresh, replica, list(fresh.index.catalog.ids))
            assert replica.article("new/long").paragraphs == tuple(long_body)
            assert replica.article("world/001").title == "A replaced world story"
            assert "new/1" in [r.article.id for r in replica.search("central bank interest rates", k=5).results]
        finally:
            fresh.index.close()

        # a writer that died after its SQLite commit, before the records and the published state: the next open
        # repairs the records from SQLite and publishes, and the replica follows
        index = open_index(target, embedder)
        try:
            rows, _ = new_articles(
                [Article(id="crash/1", title="Written before a crash", paragraphs=("Only SQLite has it.",))],
                make_chunker(settings, embedder), embedder, settings,
            )  # fmt: skip
            index.writable[1].replace_articles(["new/1"], rows)
        finally:
            index.close()
        assert replica.health()["articles"] == fresh.health()["articles"]  # nothing published yet
        repaired = _service(target, embedder)
        try:
            assert replica.article("crash/1").title == "Written before a crash"
            _assert_alike(repaired, replica, list(repaired.index.catalog.ids))
        finally:
            repaired.index.close()

        # a rebuild writes new collections, publishes them, then drops the old ones: the replica moves over
        assert isinstance(replica.index.replica, Replica)
        old = dict(replica.index.replica.state["collections"])
        build_index(read_sources([CORPUS]), target, settings, embedder, progress=False)
        rebuilt = _service(target, embedder)
        try:
            _assert_alike(rebuilt, replica, list(rebuilt.index.catalog.ids))
            assert isinstance(replica.index.replica, Replica) and replica.index.replica.state["collections"] != old
        finally:
            rebuilt.index.close()
    finally:
        replica.index.close()


def test_an_old_copy_of_the_directory_does_not_take_the_replicas_back(
    hash_index: tuple[Path, HashEmbedder, Settings], tmp_path: Path
) -> None:
    """After a rebuild, opening and writing through a copy of the replaced directory (its own, recreated
    collections) leaves the published state on the new build: only a build takes the meta collection over."""
    from search.vectors.milvus.records import read_state

    target, embedder, settings = hash_index
    old_copy = tmp_path / "old" / "corpus"
    shutil.copytree(target.resolve(), old_copy)
    build_index(read_sources([CORPUS]), target, settings, embedder, progress=False)
    new_collections = json.loads((target / "manifest.json").read_text())["milvus"]["collections"]
    stale = open_index(old_copy, embedder)  # its collections were dropped by the rebuild: recreated from its SQLite
    try:
        add_articles(stale, [Article(id="stale/1", title="Written to the old copy", paragraphs=("x",))], embedder,
                     settings)  # fmt: skip
        from search.vectors.milvus.vectors import MilvusVectorStore

        assert isinstance(stale.articles, MilvusVectorStore)
        state = read_state(stale.articles.connection, "newsdesk_corpus_meta")
        assert state is not None and state["collections"] == new_collections
    finally:
        stale.close()
    replica = _replica(target, embedder, settings.milvus_uri)
    try:
        assert replica.index.store.aid_of("stale/1") is None
    finally:
        replica.index.close()


def test_a_background_replica_serves_its_state_while_it_reloads(
    hash_index: tuple[Path, HashEmbedder, Settings],
) -> None:
    """``serve`` replicas reload in a thread: requests meanwhile get the loaded state, never wait for the load."""
    target, embedder, settings = hash_index
    index = open_replica(str(settings.milvus_uri), "newsdesk_corpus", embedder, poll_seconds=0.0, background=True)
    replica = SearchService(index, embedder, Settings(index_dir=Path("/nonexistent")))
    try:
        before = replica.health()["generation"]
        writer = open_index(target, embedder)
        try:
            add_articles(writer, [Article(id="bg/1", title="Comet seen with the naked eye", paragraphs=("A comet.",))],
                         embedder, settings)  # fmt: skip
            generation = writer.store.generation()
        finally:
            writer.close()
        deadline = time.monotonic() + 60
        while replica.health()["generation"] != generation:  # each request answers at once, from some state
            assert replica.health()["generation"] in (before, generation)
            assert time.monotonic() < deadline, "the background reload did not land"
            time.sleep(0.05)
        fresh = _service(target, embedder)
        try:
            _assert_alike(fresh, replica, ["bg/1", "business/001"])
        finally:
            fresh.index.close()
    finally:
        replica.index.close()


def test_a_replica_refuses_writes(milvus_corpus_index: Path, embedder) -> None:
    replica = _replica(milvus_corpus_index, embedder)
    try:
        replica.settings = replica.settings.replace(api_key="k")
        app = create_app(service=replica)
        client = app.test_client()
        auth = {"Authorization": "Bearer k"}
        posted = client.post("/api/articles", json={"id": "x", "title": "t", "paragraphs": ["p"]}, headers=auth)
        assert posted.status_code == 403 and posted.get_json()["error"]["code"] == "writes_disabled"
        assert "replica" in posted.get_json()["error"]["message"]
        deleted = client.delete("/api/articles/business%2F001", headers=auth)
        assert deleted.status_code == 403
        assert client.get("/api/health").get_json()["articles"] == replica.health()["articles"]
        assert client.get("/metrics").status_code == 200
        page = client.get("/?q=central+bank")  # the web page too: results, and an article page from the engine
        assert page.status_code == 200 and "Central bank" in page.get_data(as_text=True)
        assert client.get("/article?id=business/001").status_code == 200
        assert client.get("/api/articles/nope%2F1").status_code == 404
        with pytest.raises(WritesDisabled):
            replica.index.writable  # noqa: B018
    finally:
        replica.index.close()


def test_an_index_from_before_the_records_gets_them_on_open(hash_index: tuple[Path, HashEmbedder, Settings]) -> None:
    """An index on Milvus built before the record collections existed: the next open of its directory writes
    them from SQLite and publishes, after which a replica serves it."""
    target, embedder, settings = hash_index
    index = open_index(target, embedder)
    try:
        from search.vectors.milvus.vectors import MilvusVectorStore

        assert isinstance(index.articles, MilvusVectorStore)
        connection = index.articles.connection
        names = index.manifest["milvus"]["collections"]
        for kind in ("article_rows", "passage_rows", "sentence_rows"):
            connection.call("drop", "drop_collection", names[kind])
        connection.call("drop", "drop_collection", "newsdesk_corpus_meta")
    finally:
        index.close()
    with pytest.raises(IndexMissing):
        open_replica(settings.milvus_uri, "newsdesk_corpus", embedder)
    directory = _service(target, embedder)
    replica = _replica(target, embedder, settings.milvus_uri)
    try:
        _assert_alike(directory, replica, list(directory.index.catalog.ids))
    finally:
        replica.index.close()
        directory.index.close()


def test_record_parts_and_names() -> None:
    text = "é" * PART_BYTES + "漢" * 10 + "x"
    parts = split_parts(text)
    assert "".join(parts) == text and all(len(p.encode()) <= PART_BYTES for p in parts) and len(parts) == 3
    assert split_parts("short") == ["short"]
    assert meta_collection("newsdesk_news") == meta_collection("news") == "newsdesk_news_meta"
    assert meta_collection("newsdesk_news_meta") == "newsdesk_news_meta"


def test_records_replace_their_parts(tmp_path: Path) -> None:
    """A record rewritten shorter loses its old later parts; deleting keys removes every part."""
    from search.vectors.milvus.vectors import MilvusConnection

    connection = MilvusConnection("records.db", tmp_path)
    try:
        rows = RecordCollection.create(connection, "rows")
        long_doc = {"text": "ü" * (3 * PART_BYTES)}
        rows.put([(7, 1, long_doc), (8, 1, {"text": "short"})], replace=False)
        assert rows.get([7, 8, 9]) == {7: long_doc, 8: {"text": "short"}}
        assert len(list(rows.scan())) > 3  # the long one took several rows
        rows.put([(7, 2, {"text": "now short"})])
        assert rows.get([7]) == {7: {"text": "now short"}} and len(list(rows.scan())) == 2
        assert rows.documents() == {7: (2, {"text": "now short"}), 8: (1, {"text": "short"})}
        rows.delete([7])
        np.testing.assert_array_equal(rows.keys(), [8])
    finally:
        connection.close()


def test_no_published_index_is_a_clear_error(tmp_path: Path, embedder) -> None:
    with pytest.raises(IndexMissing, match="no collection newsdesk_nothing_meta"):
        open_replica(str(tmp_path / "empty.db"), "newsdesk_nothing", embedder)


def test_a_meta_collection_holds_the_manifest_and_state(hash_index: tuple[Path, HashEmbedder, Settings]) -> None:
    target, embedder, _ = hash_index
    index = open_index(target, embedder)
    try:
        from search.vectors.milvus.vectors import MilvusVectorStore

        assert isinstance(index.articles, MilvusVectorStore)
        meta = RecordCollection.open(index.articles.connection, "newsdesk_corpus_meta").get([0, 1])
        assert meta[0]["generation"] == index.store.generation()
        assert meta[0]["collections"] == index.manifest["milvus"]["collections"]
        assert meta[1]["model"] == index.manifest["model"]
        rows = RecordCollection.open(index.articles.connection, index.manifest["milvus"]["collections"]["passage_rows"])
        keys, _ = rows.owners()
        np.testing.assert_array_equal(keys, index.owners.pids)
    finally:
        index.close()


# -- two processes ---------------------------------------------------------------------------------------------


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    body.pop("took_ms", None)
    return body


def _newsdesk(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("newsdesk"))
    return subprocess.run([exe, *args], capture_output=True, text=True, check=False)


def test_two_stateless_replicas_on_one_milvus_server(milvus_server: str, tmp_path: Path) -> None:  # noqa: F811
    work = tmp_path / "writer"
    built = _newsdesk("index", str(CORPUS), "--index", str(work / "corpus"), "--quiet", "--store", "milvus",
                      "--milvus-uri", milvus_server)  # fmt: skip
    assert built.returncode == 0, built.stderr
    hidden = tmp_path / "elsewhere"
    os.rename(work, hidden)  # the index directory is out of every replica's reach while they start and serve
    empty = tmp_path / "replica-cwd"
    empty.mkdir()
    args = ("--milvus-uri", milvus_server, "--collections", "newsdesk_corpus", "--replica-poll", "0.2")
    # one process each: the workers of one server reload apart, so two requests may meet two generations
    one = ("--processes", "1", "--workers", "2")
    with serving(2, None, tmp_path, *args, *one, env=PRODUCT_ENV, cwd=empty) as (a, b):
        paths = [f"/api/search?q={q.replace(' ', '+')}&k=5" for q in QUERIES[:3]]
        paths += ["/api/search?q=bank&k=5&mode=lexical&facets=true", "/api/timeline?q=bank&k=5"]
        for article_id in ("business%2F001", "sport%2F001"):
            paths += [f"/api/articles/{article_id}", f"/api/articles/{article_id}/similar?k=5",
                      f"/api/articles/{article_id}/timeline?k=5"]  # fmt: skip
        for path in paths:
            assert _get(a, path) == _get(b, path), path
        assert _get(a, paths[0])["results"], "the corpus should answer the query"
        before = _get(a, "/api/health")["generation"]
        assert list(empty.iterdir()) == []  # nothing written where the replicas run

        # a write through the indexer (which owns SQLite) reaches both replicas once it is published
        os.rename(hidden, work)
        source = tmp_path / "new.jsonl"
        source.write_text(json.dumps({"id": "replica/1", "title": "Central bank raises interest rates again",
            "paragraphs": ["The central bank raised its main interest rate by half a point to fight inflation."]})
            + "\n")  # fmt: skip
        added = _newsdesk("add", str(source), "--index", str(work / "corpus"))
        assert added.returncode == 0, added.stderr
        deadline = time.monotonic() + 60
        while not all(_get(p, "/api/health")["generation"] > before for p in (a, b)):
            assert time.monotonic() < deadline, "the replicas did not see the published write"
            time.sleep(0.2)
        for path in paths:
            assert _get(a, path) == _get(b, path), path
        got = _get(b, paths[0])
        assert "replica/1" in [r["article"]["id"] for r in got["results"]]
    shutil.rmtree(tmp_path / "replica-cwd", ignore_errors=True)
