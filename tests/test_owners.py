"""Passage owners (which article each passage belongs to) as an open reads them, one row per article from SQLite's
index, and as a write updates them in memory, against the oracle: every passage row read one by one."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.build import make_chunker, new_articles
from indexer.update import apply_changes
from search.errors import IndexCorrupt
from search.models import Article
from search.ranking.catalog import ArticleCatalog
from search.settings import Settings
from search.storage.index import DENSE_LOOKUP_FROM, PassageOwners, open_index
from search.storage.store import NewArticle, Store
from tests.test_catalog_updates import assert_same_catalog


def _row(article_id: str, passages: int) -> NewArticle:
    vec = np.ones(4, dtype=np.float32) / 2.0
    return NewArticle(
        article=Article(id=article_id, title=article_id, paragraphs=("Body.",)),
        passages=[(i, "body", 0, 5, f"p{i}") for i in range(passages)],
        passage_vectors=np.stack([vec] * passages),
        article_vector=vec,
    )


def _oracle(store: Store) -> tuple[list[int], list[int]]:
    rows = store.connection().execute("SELECT id, aid FROM passages ORDER BY id").fetchall()
    return [int(r[0]) for r in rows], [int(r[1]) for r in rows]


def _same(owners: PassageOwners, want: PassageOwners) -> None:
    for name in ("pids", "aids", "order"):
        got, expected = getattr(owners, name), getattr(want, name)
        assert got.dtype == np.int64 and got.tolist() == expected.tolist(), name


def test_the_store_reads_owners_by_article_runs_as_the_rows_say(tmp_path: Path) -> None:
    rng = random.Random(3)
    store = Store(tmp_path / "s.sqlite", create=True)
    assert [a.tolist() for a in store.passage_owners()] == [[], []]
    live: list[str] = []
    for step in range(30):
        gone = rng.sample(live, min(len(live), rng.randint(0, 2)))
        new = [f"a{step}-{i}" for i in range(rng.randint(0, 3))]
        store.replace_articles(gone, [_row(i, rng.randint(1, 5)) for i in new])
        live = [i for i in live if i not in gone] + new
        pids, aids = store.passage_owners()
        assert (pids.tolist(), aids.tolist()) == _oracle(store)
    # An article whose passage ids are not one run (ids moved by hand: this code never writes them so) is read
    # passage by passage, and the result is still in id order.
    conn = store.connection()
    aid, first, count = conn.execute(
        "SELECT aid, MIN(id), COUNT(*) FROM passages GROUP BY aid HAVING COUNT(*) >= 3 LIMIT 1"
    ).fetchone()
    with conn:
        conn.execute("UPDATE passages SET id = 100000 WHERE id = ?", (first + 1,))
        conn.execute("UPDATE passages SET id = 0 WHERE id = ?", (first + count - 1,))
    pids, aids = store.passage_owners()
    assert (pids.tolist(), aids.tolist()) == _oracle(store)
    assert 100000 in pids.tolist() and aid in aids.tolist()
    store.close()


@pytest.mark.parametrize("seed", range(6))
def test_updated_owners_equal_owners_of_the_rows(seed: int) -> None:
    """``updated`` (a write's removals and additions, the additions in any order) gives what ``of`` gives for the
    resulting rows: ids ascending, and ``order`` sorting the articles stably."""
    rng = np.random.default_rng(seed)
    pids = np.unique(rng.integers(0, 500, 120))
    aids = np.sort(rng.integers(0, 40, len(pids)))
    if seed % 2:
        rng.shuffle(aids)  # articles not in id order: the sort is needed
    owners = PassageOwners.of(pids, aids)
    table = dict(zip(pids.tolist(), aids.tolist(), strict=True))
    for _ in range(20):
        held = np.asarray(sorted(table), dtype=np.int64)
        removed = rng.choice(held, min(len(held), int(rng.integers(0, 15))), replace=False).tolist()
        removed += [int(rng.integers(1000, 2000))]  # not held: ignored
        top = max(table, default=0) + 1
        fresh = np.arange(top, top + int(rng.integers(0, 10)), dtype=np.int64)
        if seed % 3 == 0 and removed[:-1]:
            fresh = np.concatenate([fresh, np.asarray(removed[:1], dtype=np.int64)])  # an id given again
            rng.shuffle(fresh)
        fresh_aids = rng.integers(0, 60, len(fresh))
        owners = owners.updated(removed, fresh, fresh_aids)
        for p in removed:
            table.pop(p, None)
        table.update(zip(fresh.tolist(), fresh_aids.tolist(), strict=True))
        keys = np.asarray(sorted(table), dtype=np.int64)
        want = PassageOwners(keys, np.asarray([table[k] for k in keys.tolist()], dtype=np.int64), np.zeros(0))
        want = PassageOwners(want.pids, want.aids, np.argsort(want.aids, kind="stable"))
        _same(owners, want)


def test_owners_are_read_from_the_passage_index_alone(tmp_path: Path) -> None:
    """The owners query reads the ``passages_aid`` index, never the passage rows (each holds its vector)."""
    store = Store(tmp_path / "s.sqlite", create=True)
    plan = store.connection().execute(
        "EXPLAIN QUERY PLAN SELECT aid, MIN(id), MAX(id), COUNT(*) FROM passages INDEXED BY passages_aid GROUP BY aid"
    )
    assert "COVERING INDEX passages_aid" in str(plan.fetchall())
    store.close()


def test_an_open_after_a_write_whose_caches_were_never_saved_holds_it(
    tmp_path: Path, corpus_index: Path, embedder
) -> None:
    """Owners and catalog have no cache file to go stale: a writer that died between its commit and its save (the
    write applied with ``save=False`` and never saved) leaves an index whose next open holds the write in both."""
    copy = tmp_path / "copy"
    shutil.copytree(corpus_index, copy)
    writer = open_index(copy, embedder)
    new = Article(id="science/042", title="A comet heads for the Sun", paragraphs=("It may be seen in March.",))
    rows, _ = new_articles([new], make_chunker(Settings(index_dir=copy), embedder), embedder, Settings(), {})
    apply_changes(writer, ["business/002"], rows, save=False)  # committed; the process "dies" before saving
    reopened = open_index(copy, embedder)
    store = reopened.sqlite
    pids, aids = _oracle(store)
    assert (reopened.owners.pids.tolist(), reopened.owners.aids.tolist()) == (pids, aids)
    aid = store.aid_of("science/042")
    assert aid is not None and aid in aids and store.aid_of("business/002") is None
    assert "science/042" in reopened.catalog.ids and "business/002" not in reopened.catalog.ids
    assert_same_catalog(reopened.catalog, ArticleCatalog.load(store))
    reopened.close()
    writer.close()


@pytest.mark.parametrize("table", ["passages", "articles"])
def test_a_damaged_table_fails_the_reads_an_open_makes(tmp_path: Path, table: str) -> None:
    """Owners and catalog are read from indexes, yet a damaged table page is still the open's IndexCorrupt naming
    the file (each read also reads its table's first and last key), not an error at the first search."""
    path = tmp_path / "s.sqlite"
    store = Store(path, create=True)
    store.replace_articles([], [_row(f"a{i}", 3) for i in range(40)])
    conn = store.connection()
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    store.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * size : root * size] = b"\xa5" * size
    path.write_bytes(bytes(data))
    damaged = Store(path, read_only=True)
    with pytest.raises(IndexCorrupt, match=r"s\.sqlite"):
        damaged.passage_owners() if table == "passages" else damaged.catalog_rows()
    damaged.close()


def test_many_ids_are_looked_up_in_the_id_table_with_the_same_answers() -> None:
    """A range search's hundreds of thousands of hits go through ``by_id`` (one gather): the same articles, -1 for
    ids no passage has (gaps, beyond the last, negative), as the binary search gives; sparse ids keep the search."""
    rng = np.random.default_rng(5)
    pids = np.sort(rng.choice(30_000, size=20_000, replace=False)).astype(np.int64) + 1
    owners = PassageOwners.of(pids, rng.integers(0, 900, size=len(pids)))
    asked = np.concatenate([rng.integers(-5, 31_000, size=DENSE_LOOKUP_FROM * 3), pids[:10]])
    slow = owners.articles_of(asked[:100])  # below DENSE_LOOKUP_FROM: the binary search
    fast = owners.articles_of(asked)
    assert owners.__dict__.get("by_id") is not None
    np.testing.assert_array_equal(fast[:100], slow)
    held = set(pids.tolist())
    want = np.array([owners.aids[np.searchsorted(owners.pids, p)] if p in held else -1 for p in asked])
    np.testing.assert_array_equal(fast, want)
    sparse = PassageOwners.of(pids * 1000, owners.aids)
    assert sparse.by_id is None
    np.testing.assert_array_equal(sparse.articles_of(asked * 1000), want)


class _CommitsBeforeTheCheck(Store):
    """A store whose edge check (``_check_ends``) first lets another process's store commit one more article: the
    moment at which a ``newsdesk add`` beside another ``add`` used to find the tables "disagreeing"."""

    other: Store
    n = 0

    def _check_ends(self, table: str, key: str, keys: np.ndarray) -> None:
        self.n += 1
        self.other.replace_articles([], [_row(f"late{self.n}", 2)])
        super()._check_ends(table, key, keys)


def test_a_commit_between_the_rows_and_their_edge_check_is_not_damage(tmp_path: Path) -> None:
    """Owners and catalog read their rows and check the table's edges in one snapshot: another store's commit
    between the two is not seen by either, rather than making a sound table look damaged."""
    path = tmp_path / "s.sqlite"
    seed = Store(path, create=True)
    seed.replace_articles([], [_row(f"a{i}", 3) for i in range(5)])
    seed.close()
    store, other = _CommitsBeforeTheCheck(path), Store(path)
    store.other = other
    pids, aids = store.passage_owners()
    assert len(pids) == 15 and len(set(aids.tolist())) == 5  # the state before the late commit
    assert [r[4] for r in store.catalog_rows()] == [f"a{i}" for i in range(5)] + ["late1"]
    assert store.n == 2 and len(store.catalog_rows()) == 7
    store.close()
    other.close()
