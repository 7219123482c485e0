"""The article catalog a write updates in place (``ArticleCatalog.updated``) against the oracle, a fresh
``ArticleCatalog.load`` of the same store, field by field, over random sequences of adds, deletes, replacements,
metadata updates and labels; and the write path (indexer/update.py) keeping an open index's catalog so."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import search.ranking.catalog as catalog_module
from indexer.update import add_articles, apply_metadata, delete_articles
from search.models import Article
from search.ranking.catalog import ArticleCatalog, parse_day
from search.settings import Settings
from search.storage.index import open_index
from search.storage.store import CatalogRow, NewArticle, Store

SOURCES = [None, "Reuters", "reuters", "AP", "BBC", ""]
TAGS = ["grain", "Grain", "crude", "ship", "trade", "élan"]
DATES = [None, "", "1987-03-01", "1987-03-01T15:00:00", "1987-04-12", "2022-06-09", "not a date", "1986-12-31"]


def _article(rng: random.Random, article_id: str) -> Article:
    return Article(
        id=article_id,
        title=f"title {article_id}",
        paragraphs=(f"body of {article_id} {rng.random()}",),
        date=rng.choice(DATES),
        source=rng.choice(SOURCES),
        tags=tuple(rng.sample(TAGS, rng.randint(0, 3))),
    )


def _row(rng: random.Random, article: Article, labels: list[str]) -> NewArticle:
    vec = np.ones(4, dtype=np.float32) / 2.0
    n = rng.randint(1, 3)
    # Labels as a write gives them: a story and a duplicate group, often shared with earlier articles; some rows
    # come unlabelled (a full build labels after writing; an older index has none).
    story = dup = None
    if rng.random() < 0.8:
        story = rng.choice(labels) if labels and rng.random() < 0.6 else article.id
        dup = rng.choice(labels) if labels and rng.random() < 0.4 else article.id
        labels.append(article.id)
    return NewArticle(
        article=article,
        passages=[(i, "body", 0, 4, f"p{i}") for i in range(n)],
        passage_vectors=np.stack([vec] * n),
        article_vector=vec,
        story=story,
        duplicates=dup,
    )


def assert_same_catalog(got: ArticleCatalog, want: ArticleCatalog) -> None:
    """Every field the catalog holds or derives, and what its methods answer from them."""
    assert vars(got).keys() == vars(want).keys()
    for name, value in vars(want).items():
        other = vars(got)[name]
        if isinstance(value, np.ndarray):
            assert isinstance(other, np.ndarray) and other.dtype == value.dtype, name
            assert np.array_equal(other, value), name
        else:
            assert other == value, name
    for row in range(len(want)):
        assert got.canonical_id(row) == want.canonical_id(row)
        assert got.duplicate_rows(row) == want.duplicate_rows(row)
    everything = np.ones(len(want), dtype=bool)
    assert got.facets(everything) == want.facets(everything)
    assert got.has_duplicates == want.has_duplicates


@pytest.mark.parametrize("seed", range(12))
def test_updated_equals_a_fresh_load_after_random_writes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = Store(tmp_path / "s.sqlite", create=True)
    labels: list[str] = []
    first = [_article(rng, f"a{i}") for i in range(rng.randint(0, 6))]
    store.replace_articles([], [_row(rng, a, labels) for a in first])
    extra: dict[int, tuple[str, str]] | None = None
    catalog = ArticleCatalog.load(store)
    stored = {a.id: a for a in first}
    serial = len(first)
    for _ in range(25):
        op = rng.choice(["add", "delete", "replace", "metadata", "mixed", "label", "extra", "noop"])
        deleted: list[int] = []
        added: list[int] = []
        if op in ("add", "mixed") or (op in ("delete", "replace", "metadata") and not stored):
            new = [_article(rng, f"a{serial + i}") for i in range(rng.randint(1, 4))]
            serial += len(new)
            gone = rng.sample(sorted(stored), min(len(stored), rng.randint(0, 2))) if op == "mixed" else []
            done = store.replace_articles(gone, [_row(rng, a, labels) for a in new])
            deleted, added = done.deleted_aids, done.new_aids
            for i in gone:
                stored.pop(i)
            stored.update({a.id: a for a in new})
        elif op == "delete":
            gone = rng.sample(sorted(stored), rng.randint(1, min(3, len(stored))))
            gone.append("never-stored")
            done = store.replace_articles(gone, [])
            deleted = done.deleted_aids
            for i in gone:
                stored.pop(i, None)
        elif op == "replace":
            ids = rng.sample(sorted(stored), rng.randint(1, min(3, len(stored))))
            new = [_article(rng, i) for i in ids]
            done = store.replace_articles(ids, [_row(rng, a, labels) for a in new])
            deleted, added = done.deleted_aids, done.new_aids
            stored.update({a.id: a for a in new})
        elif op == "metadata":
            ids = rng.sample(sorted(stored), rng.randint(1, min(3, len(stored))))
            changed = [
                Article(a.id, a.title, a.paragraphs, rng.choice(DATES), rng.choice(SOURCES), None, (rng.choice(TAGS),))
                for a in (stored[i] for i in ids)
            ]
            aids = store.update_metadata(changed)
            deleted, added = aids, aids
            stored.update({a.id: a for a in changed})
        elif op == "label":  # the labels an open gives unlabelled articles (storage/index.py _open)
            unlabelled = catalog.aids[~catalog.labelled].tolist()
            store.set_groups({a: (f"s{a % 3}", f"d{a % 2}") for a in unlabelled})
        elif op == "extra":  # labels held in memory only (a read-only index labelled on open)
            unlabelled = catalog.aids[~catalog.labelled].tolist()
            picked = rng.sample(unlabelled, (len(unlabelled) + 1) // 2)
            # cumulative, as in memory: labels once given are kept (a kept row keeps its labels in ``updated``)
            extra = {**(extra or {}), **{a: (f"x{a % 2}", f"y{a % 3}") for a in picked}} or None
        catalog = catalog.updated(store, deleted, added, extra)
        assert_same_catalog(catalog, ArticleCatalog.load(store, extra))
    assert sorted(catalog.ids) == sorted(stored)
    store.close()


class KeyedRows:
    """Catalog rows and labels by key, any keys: what ``updated`` reads of a change where a store's keys would only
    grow (a replica's engine may hold any), so new rows land between kept ones, and their tags mid-CSR."""

    def __init__(self) -> None:
        self.rows: dict[int, CatalogRow] = {}
        self.labels: dict[int, tuple[str, str]] = {}

    def catalog_rows(self, aids: Iterable[int] | None = None) -> list[CatalogRow]:
        keys = self.rows if aids is None else [a for a in aids if a in self.rows]
        return [self.rows[a] for a in sorted(keys)]

    def groups(self) -> dict[int, tuple[str, str]]:
        return self.groups_of(self.labels)

    def groups_of(self, aids: Iterable[int]) -> dict[int, tuple[str, str]]:
        return {a: self.labels[a] for a in aids if a in self.labels and a in self.rows}

    def passage_text_rows(self, ids: Iterable[int] | None = None) -> Iterator[tuple[int, str]]:
        return iter(())  # the catalog reads no texts

    def article_text_rows(self, aids: Iterable[int] | None = None) -> Iterator[tuple[int, str, list[str]]]:
        return iter(())


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("few", [catalog_module.SPLICE_FEW, 0])
def test_updated_splices_rows_between_kept_ones(seed: int, few: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys drawn anywhere in a small range: writes insert before, between and after kept rows, move an id to
    another key, retire and bring back sources and tags, and label rows, each against a fresh load; with the
    lists edited in place (a few rows) and rebuilt from slices (many: ``few`` 0 takes that path every time), and the
    id and member maps changed in their delta or folded into a new base (``few`` 0: at every write)."""
    monkeypatch.setattr(catalog_module, "SPLICE_FEW", few)
    monkeypatch.setattr(catalog_module, "LAYER_LIMIT", few and catalog_module.LAYER_LIMIT)
    rng = random.Random(seed)
    rows = KeyedRows()
    serial = 0

    def row(key: int, article_id: str | None = None) -> CatalogRow:
        nonlocal serial
        serial += 1
        tags = tuple(rng.sample(TAGS, rng.randint(0, 3)))
        return (key, rng.choice(DATES), rng.choice(SOURCES), tags, article_id or f"a{serial}")

    def label(key: int) -> None:
        held = sorted(rows.labels) or [key]
        rows.labels[key] = (f"s{rng.choice(held) % 4}", f"d{rng.choice(held) % 5}")

    for key in rng.sample(range(1, 40), rng.randint(0, 8)):
        rows.rows[key] = row(key)
    catalog = ArticleCatalog.load(rows)
    extra: dict[int, tuple[str, str]] | None = None
    for _ in range(30):
        free = [k for k in range(1, 40) if k not in rows.rows]
        held = sorted(rows.rows)
        op = rng.choice(["add", "delete", "replace", "move", "label", "extra"])
        deleted: list[int] = []
        added: list[int] = []
        if op == "add" or not held:
            added = rng.sample(free, rng.randint(1, 4))
            for key in added:
                rows.rows[key] = row(key)
                if rng.random() < 0.7:
                    label(key)
        elif op == "delete":
            deleted = rng.sample(held, rng.randint(1, min(3, len(held))))
            for key in deleted:
                del rows.rows[key]
                rows.labels.pop(key, None)
        elif op == "replace":  # new metadata (labels kept) or a new article under the same key
            added = rng.sample(held, rng.randint(1, min(3, len(held))))
            for key in added:
                rows.rows[key] = row(key, rows.rows[key][4] if rng.random() < 0.5 else None)
        elif op == "move":  # an id written again under another key
            old, new = rng.choice(held), rng.choice(free)
            rows.rows[new] = row(new, rows.rows.pop(old)[4])
            rows.labels.pop(old, None)
            label(new)
            deleted, added = [old], [new]
        elif op == "label":
            for key in catalog.aids[~catalog.labelled].tolist():
                label(key)
        else:
            picked = rng.sample(held, (len(held) + 1) // 2)
            extra = {**(extra or {}), **{a: (f"x{a % 2}", f"y{a % 3}") for a in picked}}
        catalog = catalog.updated(rows, deleted, added, extra)
        assert_same_catalog(catalog, ArticleCatalog.load(rows, extra))
    assert catalog.ids == [r[4] for r in rows.catalog_rows()]
    for key, (_, _, _, _, article_id) in rows.rows.items():
        assert catalog.row_of(article_id) == int(catalog.positions([key])[0])
    assert catalog.row_of("never-stored") == -1


def test_a_reused_key_is_read_again(tmp_path: Path) -> None:
    """SQLite gives a new article the key of the last one deleted (no AUTOINCREMENT): a write that deletes the newest
    article and adds another names the same key as deleted and added, and the row must be the new one's."""
    rng = random.Random(1)
    store = Store(tmp_path / "s.sqlite", create=True)
    labels: list[str] = []
    store.replace_articles([], [_row(rng, _article(rng, i), labels) for i in ("a", "b")])
    catalog = ArticleCatalog.load(store)
    done = store.replace_articles(["b"], [_row(rng, _article(rng, "c"), labels)])
    assert done.deleted_aids == done.new_aids  # the key was reused
    catalog = catalog.updated(store, done.deleted_aids, done.new_aids)
    assert "c" in catalog.ids and "b" not in catalog.ids
    assert_same_catalog(catalog, ArticleCatalog.load(store))
    store.close()


def test_the_write_path_keeps_the_catalog_of_the_store(tmp_path: Path, corpus_index: Path, embedder) -> None:
    """Adds, replacements, deletes and metadata updates through indexer/update.py leave the open index's catalog
    equal to a fresh load, though it reads only the rows they wrote."""
    copy = tmp_path / "copy"
    shutil.copytree(corpus_index, copy)
    index = open_index(copy, embedder)
    settings = Settings(index_dir=copy)
    store = index.sqlite
    first = index.catalog.ids[0]
    new = Article(
        id="science/042",
        title="Astronomers spot a comet heading for the inner solar system",
        paragraphs=("The icy comet will pass closest to the Sun in March.",),
        date="2024-03-02",
        source="Wire",
        tags=("space",),
    )
    add_articles(index, [new], embedder, settings)
    assert_same_catalog(index.catalog, ArticleCatalog.load(store))
    add_articles(index, [replace(new, title="A comet heads for the Sun", source="wire")], embedder, settings)
    assert_same_catalog(index.catalog, ArticleCatalog.load(store))
    apply_metadata(index, [replace(store.article(int(index.catalog.aids[0])), date="1999-01-01", tags=("moved",))])
    assert_same_catalog(index.catalog, ArticleCatalog.load(store))
    assert index.catalog.days[0] == parse_day("1999-01-01", "d")
    delete_articles(index, [first, "science/042"])
    assert_same_catalog(index.catalog, ArticleCatalog.load(store))
    assert "science/042" not in index.catalog.ids
    index.close()


def test_the_catalog_columns_are_read_from_their_own_index(tmp_path: Path) -> None:
    """An open reads the catalog from the ``articles_catalog`` index, not the article rows (which hold the text), and
    a store made before that index gets it when opened for writing."""
    path = tmp_path / "s.sqlite"
    store = Store(path, create=True)
    rng = random.Random(5)
    store.replace_articles([], [_row(rng, _article(rng, f"a{i}"), []) for i in range(3)])
    sql = "EXPLAIN QUERY PLAN SELECT aid, date, source, tags, id FROM articles ORDER BY aid"
    assert "COVERING INDEX articles_catalog" in str(store.connection().execute(sql).fetchall())
    rows = store.catalog_rows()
    with store.connection() as conn:
        conn.execute("DROP INDEX articles_catalog")  # as an index made before it
    store.close()
    reopened = Store(path)
    assert "COVERING INDEX articles_catalog" in str(reopened.connection().execute(sql).fetchall())
    assert reopened.catalog_rows() == rows
    reopened.close()
