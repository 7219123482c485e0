"""Replicas that catch up by deltas (issue 17, acceptance 6): a published state names what changed since the
previous one (search/vectors/milvus/records.py ``change_record``), and a stateless replica applies it through the
writer's own in-memory update (search/storage/changes.py) instead of reading the corpus again
(search/vectors/milvus/replica.py ``Replica.reopen``).

The oracle: a replica that followed N deltas holds what a replica freshly loaded from the same published state holds
(search results in every mode, the catalog field by field, owners, postings, store rows). Milvus Lite runs in this
process, shared by the writer and both replicas (one process may open a Milvus Lite database at a time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.update import add_articles, apply_metadata, delete_articles
from search.models import Article
from search.service import SearchService
from search.settings import Settings
from search.storage.index import Index, open_index
from search.vectors.milvus import records
from search.vectors.milvus.client import MilvusConnection
from search.vectors.milvus.records import LOG_KEY, RecordCollection, read_state
from search.vectors.milvus.replica import MilvusReadStore, Replica, open_replica
from search.vectors.milvus.vectors import MilvusVectorStore
from tests.fakes import HashEmbedder
from tests.test_stateless import _assert_alike, _plain, _replica, hash_index  # noqa: F401  (hash_index: a fixture)

Fixture = tuple[Path, HashEmbedder, Settings]


WORDS = (
    "alder birch cedar dogwood elm fir ginkgo hazel ivy juniper kauri larch maple nutmeg oak poplar quince rowan "
    "spruce teak umbrella viburnum willow yew zelkova acacia bamboo cypress ebony fig hawthorn lime magnolia olive "
    "palm redwood sequoia tamarind walnut almond banyan chestnut damson elder gum holly ironwood jacaranda laurel "
    "mahogany neem orange pear rosewood sycamore tulip"
).split()


def _news(prefix: str, n: int) -> list[Article]:
    """``n`` short articles, each with words of its own: no two lie so close that Milvus's float noise (its
    segments are sealed in the background) could swap them in a ranking and make two correct answers differ."""
    topics = ("central bank rates", "football cup final", "phone launch", "storm floods coast", "election count")
    out = []
    for i in range(n):
        own = " ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(5))
        topic = topics[i % len(topics)]
        out.append(
            Article(
                id=f"{prefix}/{i}",
                title=f"{topic.title()} {own.split()[0]} report {prefix}",
                paragraphs=(f"The {topic} story: {own}. From {prefix}.", f"Then {own.split()[2]} and markets."),
                date=f"2024-04-{10 + i % 15:02d}",
                source="Delta Wire",
                tags=("delta", prefix),
            )
        )
    return out


def _loads(service: SearchService) -> tuple[int, int]:
    replica = service.index.replica
    assert isinstance(replica, Replica)
    return replica.loads.full, replica.loads.deltas


def _same_catalog(a: Index, b: Index) -> None:
    left, right = vars(a.catalog), vars(b.catalog)
    assert left.keys() == right.keys()
    for key, value in left.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, right[key], err_msg=key)
        else:
            assert value == right[key], key


def _same_index(followed: SearchService, fresh: SearchService) -> None:
    """Everything the query side holds, as a fresh load of the same published state holds it."""
    a, b = followed.index, fresh.index
    assert isinstance(a.store, MilvusReadStore) and isinstance(b.store, MilvusReadStore)
    assert a.store.generation() == b.store.generation()
    _same_catalog(a, b)
    np.testing.assert_array_equal(a.owners.pids, b.owners.pids)
    np.testing.assert_array_equal(a.owners.aids, b.owners.aids)
    assert a.store.catalog_rows() == b.store.catalog_rows() and a.store.groups() == b.store.groups()
    assert a.store.counts() == b.store.counts() and a.store.newest_date() == b.store.newest_date()
    assert a.passages.count() == b.passages.count() and a.articles.count() == b.articles.count()
    for table in ("passages", "articles"):
        pa, pb = getattr(a.lexical, table), getattr(b.lexical, table)
        np.testing.assert_array_equal(pa.rowids, pb.rowids)
        for terms in (["central", "bank"], ["footbal"], ["storm", "coast"]):
            weights = [1.0] * pa.tfs.shape[0]
            np.testing.assert_allclose(pa.scores(terms, weights), pb.scores(terms, weights), rtol=1e-6)
    _assert_alike(fresh, followed, list(b.catalog.ids)[:6] + [i for i in b.catalog.ids if "/" in i][-4:])


def _same_as_a_fresh_load(followed: SearchService, target: Path, embedder: HashEmbedder, settings: Settings) -> None:
    """``_same_index`` against a replica loaded whole now."""
    fresh = _replica(target, embedder, settings.milvus_uri)
    try:
        _same_index(followed, fresh)
    finally:
        fresh.index.close()


@pytest.fixture
def writer_and_replicas(hash_index: Fixture) -> Any:  # noqa: F811
    """The directory index (the writer) and two replicas of it, all on one Milvus Lite database."""
    target, embedder, settings = hash_index
    writer = open_index(target, embedder)
    first = _replica(target, embedder, settings.milvus_uri)
    second = _replica(target, embedder, settings.milvus_uri)
    try:
        yield writer, first, second, (target, embedder, settings)
    finally:
        for service in (first, second):
            service.index.close()
        writer.close()


def test_a_ten_article_write_reaches_the_other_replica_by_a_delta(writer_and_replicas: Any) -> None:
    writer, first, second, (target, embedder, settings) = writer_and_replicas
    assert _loads(first) == _loads(second) == (0, 0)
    add_articles(writer, _news("wire", 10), embedder, settings)
    found = second.search("football cup final report wire", k=10)  # the next request polls, sees the state, applies
    assert any(r.article.id.startswith("wire/") for r in found.results)
    assert second.index.store.generation() == writer.generation
    assert _loads(second) == (0, 1), "the replica read the corpus again instead of applying the delta"
    fresh = _replica(target, embedder, settings.milvus_uri)
    try:
        _same_index(second, fresh)
        first.refresh()
        _same_index(first, fresh)
        assert _loads(first) == (0, 1)
    finally:
        fresh.index.close()


def test_a_replica_that_missed_publications_applies_every_delta_since(writer_and_replicas: Any) -> None:
    """Adds, a deletion, a replacement, new metadata and a write that reuses the deleted newest key, published one
    by one while the replica did not poll: one catch-up by the chain of deltas, equal to a fresh load."""
    writer, first, _, (target, embedder, settings) = writer_and_replicas
    before = first.index.store.generation()
    add_articles(writer, _news("a", 4), embedder, settings)
    delete_articles(writer, ["business/001", "a/3"])  # a/3 holds the newest key: SQLite gives it out again below
    add_articles(writer, _news("b", 2), embedder, settings)
    replaced = Article(id="a/1", title="Storm floods the coast again", paragraphs=("New text for a/1.",))
    add_articles(writer, [replaced], embedder, settings)
    moved = Article(id="a/0", title=_news("a", 1)[0].title, paragraphs=_news("a", 1)[0].paragraphs,
                    date="2023-01-02", source="Other Wire", tags=("moved",))  # fmt: skip
    assert apply_metadata(writer, [moved]) == 1
    assert writer.generation >= before + 5
    first.refresh()
    assert _loads(first) == (0, 1)
    assert first.index.store.generation() == writer.generation
    assert first.article("a/1").title == "Storm floods the coast again"
    assert first.article_with_labels("a/0")[0].source == "Other Wire"
    with pytest.raises(Exception, match="business/001"):
        first.article("business/001")
    fresh = _replica(target, embedder, settings.milvus_uri)
    try:
        _same_index(first, fresh)
    finally:
        fresh.index.close()


def test_a_trimmed_log_falls_back_to_a_full_reload(writer_and_replicas: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    writer, first, _, (target, embedder, settings) = writer_and_replicas
    monkeypatch.setattr(records, "LOG_KEEP", 2)
    for n in range(4):
        add_articles(writer, _news(f"t{n}", 1), embedder, settings)
    first.refresh()
    assert _loads(first) == (1, 0), "the log no longer reaches the replica's state: it must read everything"
    add_articles(writer, _news("t9", 1), embedder, settings)
    first.refresh()
    assert _loads(first) == (1, 1)  # caught up by delta again from the state it reloaded
    fresh = _replica(target, embedder, settings.milvus_uri)
    try:
        _same_index(first, fresh)
    finally:
        fresh.index.close()


def test_a_damaged_delta_falls_back_to_a_full_reload(writer_and_replicas: Any) -> None:
    writer, first, _, (_, embedder, settings) = writer_and_replicas
    add_articles(writer, _news("d", 2), embedder, settings)
    connection = writer.articles.connection
    meta = RecordCollection(connection, "newsdesk_corpus_meta")
    state = read_state(connection, "newsdesk_corpus_meta")
    assert state is not None
    meta.put([(LOG_KEY + int(state["generation"]), 0, {"from": "nonsense"})])
    first.refresh()
    assert _loads(first) == (1, 0)
    assert "d/0" in first.index.catalog.ids


def test_deltas_name_what_changed(writer_and_replicas: Any) -> None:
    """The log record a write publishes: the ids it wrote, with their keys and passages as SQLite holds them."""
    writer, _, _, _ = writer_and_replicas
    connection = writer.articles.connection
    previous = read_state(connection, "newsdesk_corpus_meta")
    delete_articles(writer, ["sport/001"])
    state = read_state(connection, "newsdesk_corpus_meta")
    assert previous is not None and state is not None and state["log"] == previous["log"]
    delta = RecordCollection(connection, "newsdesk_corpus_meta").get([LOG_KEY + writer.generation])
    assert delta[LOG_KEY + writer.generation] == {
        "from": previous["generation"],
        "to": writer.generation,
        "log": state["log"],
        "ids": ["sport/001"],
        "aids": [],
        "pids": [],
    }


def test_a_replica_behind_the_engine_serves_only_what_it_holds(hash_index: Fixture) -> None:  # noqa: F811
    """Between a write reaching Milvus and the replica applying it, the engine's article vectors hold articles the
    replica does not know: related stories must not name them (it answered 500, a KeyError, before)."""
    target, embedder, settings = hash_index
    index = open_replica(settings.milvus_uri, "newsdesk_corpus", embedder, poll_seconds=3600.0)
    replica = SearchService(index, embedder, Settings(index_dir=Path("/nonexistent")))
    writer = open_index(target, embedder)
    try:
        original = replica.article("business/001")
        near = Article(id="near/1", title=original.title + " today", paragraphs=original.paragraphs[:1])
        add_articles(writer, [near], embedder, settings)
        assert replica.index.store.aid_of("near/1") is None  # not polled yet: the replica serves its state
        found = replica.search("central bank raises interest rates", k=5)
        assert found.results and all(r.id != "near/1" for res in found.results for r in res.related)
        for scoring in ("cosine", "profile"):
            similar = replica.similar("business/001", k=5, scoring=scoring)
            assert all(r.article.id != "near/1" for r in similar.results)
    finally:
        writer.close()
        replica.index.close()


def test_a_delta_reads_the_catalog_rows_of_its_own_articles_only(
    writer_and_replicas: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catching up costs the change, not the corpus: the catalog update looks up the delta's rows and labels by key
    (it read the replica's whole catalog and all its labels, then filtered them, per delta)."""
    writer, first, _, (target, embedder, settings) = writer_and_replicas
    add_articles(writer, _news("c", 3), embedder, settings)
    delete_articles(writer, ["business/001"])

    def whole(self: MilvusReadStore) -> None:
        raise AssertionError("a delta read every article's row")

    with monkeypatch.context() as patch:
        patch.setattr(MilvusReadStore, "catalog_rows", whole)
        patch.setattr(MilvusReadStore, "groups", whole)
        first.refresh()
    assert _loads(first) == (0, 1)
    _same_as_a_fresh_load(first, target, embedder, settings)


def test_a_delta_reads_back_the_vectors_of_its_own_articles_only(
    writer_and_replicas: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The more-like-this profiles take every article vector; a replica keeps them from its load and reads from the
    engine only those of the articles a delta names (it read all of them back per delta: 0.9 s at 2,700 articles)."""
    writer, first, _, (target, embedder, settings) = writer_and_replicas
    articles = first.index.articles
    assert isinstance(articles, MilvusVectorStore)
    add_articles(writer, _news("v", 3), embedder, settings)
    read: list[int] = []
    call = MilvusConnection.call

    def counted(self: MilvusConnection, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "get" and args == (articles.collection,):
            read.extend(kwargs["ids"])
        return call(self, what, method, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(MilvusConnection, "call", counted)
        first.refresh()
    assert _loads(first) == (0, 1)
    assert sorted(read) == sorted(first.index.store.aid_of(f"v/{i}") for i in range(3))
    kept = first.index.articles
    assert first.index.vectors.memory_bytes() == len(first.index.catalog.aids) * kept.dimension * 4  # the memory report
    fresh = _replica(target, embedder, settings.milvus_uri)
    try:
        _same_index(first, fresh)
        for article_id in ("v/0", "business/002"):  # more-like-this from the kept and the read vectors alike
            for scoring in ("cosine", "profile"):
                assert _plain(first.similar(article_id, k=5, scoring=scoring)) == _plain(
                    fresh.similar(article_id, k=5, scoring=scoring)
                )
    finally:
        fresh.index.close()


def test_a_write_sweeps_no_record_collection_by_filter(
    writer_and_replicas: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records of a write's new keys are upserted with no ``key in [...]`` delete after them (a scan of every
    row on Milvus Lite, three per write): the keys are new, or the write deleted them first. A replacement, new
    metadata and a reused key still leave exactly one record per row SQLite holds."""
    writer, first, _, (target, embedder, settings) = writer_and_replicas
    names = {
        writer.manifest["milvus"]["collections"][kind] for kind in ("article_rows", "passage_rows", "sentence_rows")
    }
    swept: list[str] = []
    call = MilvusConnection.call

    def counted(self: MilvusConnection, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "delete" and args[0] in names:
            swept.append(str(kwargs.get("filter")))
        return call(self, what, method, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(MilvusConnection, "call", counted)
        add_articles(writer, _news("s", 4), embedder, settings)
    assert swept == []
    delete_articles(writer, ["s/3"])  # the newest key: SQLite gives it out again below
    add_articles(
        writer,
        [*_news("u", 1), Article(id="s/1", title="Storm floods the coast again", paragraphs=("New.",))],
        embedder,
        settings,
    )
    moved = _news("s", 1)[0]
    assert (
        apply_metadata(writer, [Article(moved.id, moved.title, moved.paragraphs, date="2023-01-02", tags=("m",))]) == 1
    )
    connection = writer.articles.connection
    for kind, table in (("article_rows", "articles"), ("passage_rows", "passages")):
        rows = list(RecordCollection(connection, writer.manifest["milvus"]["collections"][kind]).scan(("key",)))
        assert sorted(int(r["key"]) for r in rows) == writer.sqlite.keys(table).tolist(), kind
    first.refresh()
    assert _loads(first) == (0, 1)
    _same_as_a_fresh_load(first, target, embedder, settings)


def test_the_newest_date_follows_deltas_that_add_and_delete_the_newest(writer_and_replicas: Any) -> None:
    """A delta updates the newest date from its own rows, and looks through every article only when the newest left."""
    writer, first, _, (target, embedder, settings) = writer_and_replicas
    store = first.index.store
    newest = store.newest_date()
    assert newest is not None
    (late,) = _news("late", 1)
    add_articles(writer, [Article(late.id, late.title, late.paragraphs, date="2099-01-01")], embedder, settings)
    first.refresh()
    assert first.index.store.newest_date() == "2099-01-01"
    delete_articles(writer, [late.id])
    first.refresh()
    assert first.index.store.newest_date() == newest
    dated = [row for row in first.index.store.catalog_rows() if row[1] == newest]
    delete_articles(writer, [row[4] for row in dated])
    first.refresh()
    assert _loads(first) == (0, 3)
    assert (first.index.store.newest_date() or "") < newest
    _same_as_a_fresh_load(first, target, embedder, settings)
