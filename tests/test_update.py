"""Adding and deleting articles keeps SQLite, the BM25 tables and FAISS consistent."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.update import add_articles, delete_articles
from search.models import Article
from search.ranking.catalog import ArticleCatalog
from search.service import SearchService
from search.settings import Settings
from search.storage.index import PassageOwners, check_index, open_index
from tests.test_catalog_updates import assert_same_catalog


@pytest.fixture
def writable(tmp_path: Path, corpus_index: Path, embedder) -> SearchService:
    copy = tmp_path / "copy"
    shutil.copytree(corpus_index, copy)
    settings = Settings(index_dir=copy)
    return SearchService(open_index(copy, embedder), embedder, settings)


def consistent(service: SearchService) -> None:
    store, index = service.index.sqlite, service.index
    stored_pids = np.sort(np.concatenate([ids for ids, _ in store.iter_vectors("passages")]))
    stored_aids = np.sort(np.concatenate([ids for ids, _ in store.iter_vectors("articles")]))
    np.testing.assert_array_equal(index.passages.ids(), stored_pids)
    np.testing.assert_array_equal(index.articles.ids(), stored_aids)
    assert store.integrity_problems() == []  # includes the BM25 tables against their rows
    assert check_index(index.writable[0]) == []
    assert_same_catalog(index.catalog, ArticleCatalog.load(store))  # updated by the write, not read again
    fresh = PassageOwners.load(store)
    assert [index.owners.pids.tolist(), index.owners.aids.tolist()] == [fresh.pids.tolist(), fresh.aids.tolist()]


def test_delete_removes_an_article_from_every_side(writable: SearchService, embedder) -> None:
    assert delete_articles(writable.index, ["business/002", "no-such-id"]) == 1
    consistent(writable)
    for mode in ("dense", "lexical", "hybrid"):
        got = [r.article.id for r in writable.search("semiconductor chips carmaker shares", k=8, mode=mode).results]
        assert "business/002" not in got
    assert writable.lexical.search_passages("semiconductor", 5) == []
    reopened = open_index(writable.index.writable[0], embedder)  # the saved caches match the new generation
    assert reopened.passages.count() == writable.index.passages.count()
    assert reopened.manifest["counts"]["articles"] == 7


def test_add_makes_an_article_findable_on_every_side(writable: SearchService, embedder) -> None:
    new = Article(
        id="science/042",
        title="Astronomers spot a comet heading for the inner solar system",
        paragraphs=("The icy comet will pass closest to the Sun in March and may be visible to the naked eye.",),
    )
    assert add_articles(writable.index, [new], embedder, writable.settings) == 1
    consistent(writable)
    for mode in ("dense", "lexical", "hybrid"):
        assert writable.search("comet visible in the night sky", k=1, mode=mode).results[0].article.id == "science/042"
    assert open_index(writable.index.writable[0], embedder).manifest["counts"]["articles"] == 9


def test_re_adding_an_id_replaces_it_everywhere(writable: SearchService, embedder) -> None:
    before = writable.index.store.counts()
    replacement = Article(id="sport/001", title="Chess champion defends her title", paragraphs=())
    add_articles(writable.index, [replacement], embedder, writable.settings)
    consistent(writable)
    assert writable.index.store.counts() == (before[0], before[1] - 2)  # 3 passages became 1
    assert writable.search("derby goals striker", k=8, mode="lexical").results == [] or all(
        r.article.id != "sport/001" for r in writable.search("derby goals striker", k=8, mode="lexical").results
    )
    assert writable.search("chess title", k=1, mode="lexical").results[0].article.id == "sport/001"


def test_added_articles_get_labels_in_the_same_write_and_old_labels_stay(writable: SearchService, embedder) -> None:
    index = writable.index
    before = dict(zip(index.catalog.ids, index.catalog.story_labels, strict=True))
    original = index.store.article(index.store.aid_of("sport/001") or -1)
    copy = Article(
        id="sport/001-reprint",
        title=original.title,
        paragraphs=original.paragraphs,
        date="2024-03-20",
        source="Reprint Weekly",
    )
    add_articles(index, [copy], embedder, writable.settings)
    groups = index.store.groups()
    assert len(groups) == index.store.counts()[0]  # every article labelled, the new one in its own transaction
    after = dict(zip(index.catalog.ids, index.catalog.story_labels, strict=True))
    assert {i: after[i] for i in before} == before  # labels once given never change
    row = index.catalog.ids.index("sport/001-reprint")
    assert index.catalog.canonical_id(row) == "sport/001"  # the earlier copy
    top = writable.search("football derby goals", k=3).results[0]
    assert top.article.id == "sport/001" and [c.id for c in top.also_reported] == ["sport/001-reprint"]
    consistent(writable)


def test_a_light_rewrite_joins_its_original_and_another_story_does_not(writable: SearchService, embedder) -> None:
    index = writable.index
    original = index.store.article(index.store.aid_of("business/001") or -1)
    rewrite = Article(
        id="rewrite-of-business-001",
        title="Interest rates raised by central bank to tame inflation",  # reworded headline
        paragraphs=original.paragraphs[:2],  # the byline paragraph dropped
        date="2024-03-15",
        source="Other Wire",
    )
    other = Article(
        id="business/099",
        title="Central bank holds interest rates as inflation cools",
        paragraphs=(
            "The central bank left its benchmark rate unchanged on Wednesday after two years of increases.",
            "Officials pointed to slowing price growth and weaker hiring as reasons to pause.",
        ),
        date="2024-03-15",
        source="Example Wire",
    )
    add_articles(index, [rewrite, other], embedder, writable.settings)
    catalog = index.catalog

    def canonical(article_id: str) -> str:
        return catalog.canonical_id(catalog.ids.index(article_id))

    assert canonical("rewrite-of-business-001") == "business/001"
    assert canonical("business/099") == "business/099"
    top = writable.search("central bank raises interest rates", k=5).results
    shown = [r.article.id for r in top]
    assert "rewrite-of-business-001" not in shown and "business/099" in shown
    assert {c.id for c in top[0].also_reported} == {"copy-of-business-001", "rewrite-of-business-001"}
    reopened = open_index(index.writable[0], embedder)  # the saved duplicate cache matches this generation
    assert reopened.catalog.dup_labels == catalog.dup_labels
    consistent(writable)
