"""Store.replace_articles writes each table with one executemany and gives the keys itself (search/storage/store.py
``Store._insert``): the keys must be the ones SQLite would have picked, every row must land under its own article and
passage, and the FTS5 tables must index exactly the rows written."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import numpy as np
import pytest

import search.storage.store as store_module
from search.models import Article
from search.storage.store import NewArticle, Store

DIM = 8


def _row(article_id: str, texts: list[str], *, story: str | None = None, split: bool = False) -> NewArticle:
    """An article of ``texts`` as passages; ``split`` gives each passage two sentences with their own vectors."""
    rng = np.random.default_rng(zlib.crc32(article_id.encode()))
    passages = [(i, "body", 0, len(t), t) for i, t in enumerate(texts)]
    sentences = [([(0, 1), (1, len(t))], rng.standard_normal((2, DIM)).astype(np.float32)) for t in texts]
    return NewArticle(
        article=Article(id=article_id, title=f"title of {article_id}", paragraphs=tuple(texts)),
        passages=passages,
        passage_vectors=rng.standard_normal((len(texts), DIM)).astype(np.float32),
        article_vector=rng.standard_normal(DIM).astype(np.float32),
        sentences=sentences if split else (),
        story=story,
        duplicates=None,
        origin="add",
    )


def _plain_sqlite_keys(path: Path, deletes: list[str], rows: list[NewArticle]) -> tuple[list[int], list[int]]:
    """The keys SQLite itself assigns (``lastrowid``) to the same deletes and inserts on a copy of the store."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys=ON")
    for article_id in deletes:
        conn.execute("DELETE FROM passages WHERE aid IN (SELECT aid FROM articles WHERE id = ?)", (article_id,))
        conn.execute("DELETE FROM articles WHERE id = ?", (article_id,))
    aids, pids = [], []
    for row in rows:
        a = row.article
        cur = conn.execute(
            "INSERT INTO articles (id, title, paragraphs, tags, extra, content_hash, vector) "
            "VALUES (?, ?, '[]', '[]', '{}', '', x'00')",
            (a.id, a.title),
        )
        aids.append(int(cur.lastrowid or 0))
        for position, field, start, end, text in row.passages:
            cur = conn.execute(
                'INSERT INTO passages (aid, position, field, start, "end", text, vector) VALUES (?, ?, ?, ?, ?, ?, ?)',
                (aids[-1], position, field, start, end, text, b"\0"),
            )
            pids.append(int(cur.lastrowid or 0))
    conn.rollback()
    conn.close()
    return aids, pids


# Rows per multi-row INSERT: one row a statement, a write's rows split across statements, all in one.
CHUNKS = pytest.mark.parametrize("chunk", [1, 2, store_module.INSERT_CHUNK_ROWS])


@CHUNKS
def test_keys_are_sqlites_own_and_rows_land_under_them(
    tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "INSERT_CHUNK_ROWS", chunk)
    store = Store(tmp_path / "s.sqlite", create=True)
    first = [
        _row("a", ["alpha one", "alpha two"], story="s-a", split=True),
        _row("b", ["bravo"]),
        _row("c", ["charlie one", "charlie two", "charlie three"], story="s-c", split=True),
    ]
    done = store.replace_articles((), first)
    assert done.new_aids == [1, 2, 3]
    assert done.new_pids == [1, 2, 3, 4, 5, 6]

    # deleting the newest article frees the largest keys: SQLite takes them again, and so must the store
    second = [_row("d", ["delta one", "delta two"], split=True), _row("e", ["echo"], story="s-e")]
    expected = _plain_sqlite_keys(store.path, ["c"], second)
    done = store.replace_articles(["c"], second)
    assert (done.new_aids, done.new_pids) == expected
    assert done.deleted_aids == [3] and done.deleted_pids == [4, 5, 6]

    conn = store.connection()
    for row, aid in zip(second, done.new_aids, strict=True):
        assert store.aid_of(row.article.id) == aid
        assert [p.text for p in store.passages_of(aid)] == [p[4] for p in row.passages]
    stored = store.passage_vectors(done.new_pids)
    flat = np.concatenate([r.passage_vectors for r in second])
    for pid, vec in zip(done.new_pids, flat, strict=True):
        np.testing.assert_array_equal(stored[pid], vec)
    sentences = store.sentence_vectors(done.new_pids)
    assert sorted(sentences) == done.new_pids[:2]  # d's two passages were split, e's was not
    np.testing.assert_allclose(sentences[done.new_pids[1]][1], second[0].sentences[1][1], atol=1e-2)  # type: ignore[index]
    groups = dict(conn.execute("SELECT aid, story FROM article_groups").fetchall())
    assert groups == {1: "s-a", done.new_aids[1]: "s-e"}
    assert store.generation() == 2


@CHUNKS
def test_fts_tables_index_exactly_the_rows_written(tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "INSERT_CHUNK_ROWS", chunk)
    store = Store(tmp_path / "s.sqlite", create=True)
    store.replace_articles((), [_row("a", ["zebra crossing", "quiet street"]), _row("b", ["yellow zebra"])])
    store.replace_articles(["a"], [_row("a", ["walrus beach"]), _row("c", ["walrus zebra"])])
    assert store.integrity_problems() == []
    conn = store.connection()

    def matches(table: str, term: str) -> set[int]:
        return {int(r[0]) for r in conn.execute(f"SELECT rowid FROM {table} WHERE {table} MATCH ?", (term,))}

    pid = {text: pid for pid, text in conn.execute("SELECT id, text FROM passages")}
    assert matches("passages_fts", "zebra") == {pid["yellow zebra"], pid["walrus zebra"]}
    assert matches("passages_fts", "quiet") == set()  # a's old passage went with it
    assert matches("passages_fts", "walrus") == {pid["walrus beach"], pid["walrus zebra"]}
    aid = {a: store.aid_of(a) for a in "abc"}
    assert matches("articles_fts", "zebra") == {aid["b"], aid["c"]}
    assert matches("articles_fts", "walrus") == {aid["a"], aid["c"]}
