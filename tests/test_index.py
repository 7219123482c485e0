"""Index directory: build, open, atomic replacement, model checks, FAISS cache rebuilds, integrity check."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.build import build_index
from indexer.sources import read_sources
from search.errors import IndexCorrupt, IndexMissing, ModelMismatch
from search.models import Article
from search.settings import Settings
from search.storage.index import MANIFEST, SQLITE, VECTORS_STATE, check_index, open_index
from search.storage.manifest import read_manifest, write_manifest
from search.text.embedding import Embedder, SentenceTransformerEmbedder, resolve_model
from search.vectors.faiss import PASSAGE_VECTORS, FaissVectors
from tests.conftest import CORPUS


def build(target: Path, embedder: Any, articles: list[Article] | None = None, **settings: Any) -> None:
    items = articles if articles is not None else list(read_sources([CORPUS]))
    build_index(items, target, Settings(index_dir=target, **settings), embedder, progress=False)


class Rotated:
    """Same dimension as the real model, different vectors: what a same-dimension model swap looks like."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = "rotated-minilm"
        self.dimension = inner.dimension
        q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((inner.dimension, inner.dimension)))
        self.rotation = q.astype(np.float32)

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.inner.encode(texts) @ self.rotation

    def encode_spans(
        self, texts: list[str], spans: list[list[tuple[int, int]]], *, batch_size: int = 64
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        vectors, span_vectors = self.inner.encode_spans(texts, spans, batch_size=batch_size)
        return vectors @ self.rotation, [v @ self.rotation for v in span_vectors]

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def fingerprint(self) -> dict[str, Any]:
        probe = self.encode(["North Korea accuses the United States of building an alliance in Asia."] * 3)
        return {"name": self.name, "dimension": self.dimension, "files_sha256": None, "probe": probe.tolist()}


class FailingAfter:
    """Raises on the n-th encode call, to interrupt a build halfway."""

    def __init__(self, inner: Embedder, calls: int) -> None:
        self.inner, self.calls = inner, calls
        self.name, self.dimension = inner.name, inner.dimension

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("simulated crash mid-build")
        return self.inner.encode(texts)

    def encode_spans(
        self, texts: list[str], spans: list[list[tuple[int, int]]], *, batch_size: int = 64
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("simulated crash mid-build")
        return self.inner.encode_spans(texts, spans)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()


def test_build_layout_manifest_and_spans(corpus_index: Path, embedder) -> None:
    assert corpus_index.is_symlink()  # the name points at a versioned directory, swapped atomically
    names = {p.name for p in corpus_index.iterdir()}
    assert {MANIFEST, SQLITE, PASSAGE_VECTORS, "articles.faiss", VECTORS_STATE} <= names
    manifest = json.loads((corpus_index / MANIFEST).read_text())
    assert manifest["counts"]["articles"] == 8
    assert manifest["model"]["dimension"] == 384 and len(manifest["model"]["probe"]) == 3
    assert manifest["newest_date"] == "2024-04-11"
    index = open_index(corpus_index, embedder)
    assert index.passages.count() == manifest["counts"]["passages"]
    for aid in range(1, 9):
        art = index.store.article(aid)
        for p in index.store.passages_of(aid):
            source = art.title if p.field == "title" else art.body
            assert source[p.start : p.end] == p.text
    # stored embeddings are what FAISS serves
    for ids, vecs in index.store.iter_vectors("passages"):
        for i, v in zip(ids, vecs, strict=True):
            np.testing.assert_allclose(index.passages.reconstruct(int(i)), v, atol=1e-6)


def test_rebuild_replaces_atomically_and_cleans_up(tmp_path: Path, embedder) -> None:
    target = tmp_path / "idx"
    build(target, embedder)
    first = target.resolve()
    build(target, embedder, [Article(id="only", title="A single headline about rain")])
    assert target.resolve() != first and not first.exists()
    assert json.loads((target / MANIFEST).read_text())["counts"]["articles"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "idx") == [target.resolve().name]


def test_failed_build_leaves_previous_index_intact(tmp_path: Path, embedder) -> None:
    target = tmp_path / "idx"
    build(target, embedder)
    before = (target / MANIFEST).read_text()
    many = [Article(id=f"a{i}", title=f"Headline number {i}") for i in range(1200)]  # several embedding groups
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(target, FailingAfter(embedder, calls=1), many)
    assert (target / MANIFEST).read_text() == before
    assert check_index(target) == []
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".idx.")]) == 1  # no half-built directory left


def test_building_over_a_plain_directory_copy(tmp_path: Path, corpus_index: Path, embedder) -> None:
    target = tmp_path / "copy"
    shutil.copytree(corpus_index, target)  # a user's copy: a real directory, not our symlink
    build(target, embedder, [Article(id="x", title="Replacement headline")])
    assert target.is_symlink()
    assert open_index(target, embedder).store.counts() == (1, 1)


def test_missing_and_damaged_manifest(tmp_path: Path, corpus_index: Path, embedder) -> None:
    with pytest.raises(IndexMissing):
        open_index(tmp_path / "nope", embedder)
    copy = tmp_path / "copy"
    shutil.copytree(corpus_index, copy)
    (copy / MANIFEST).write_text("{broken")
    with pytest.raises(IndexCorrupt, match="unreadable"):
        open_index(copy, embedder)
    (copy / MANIFEST).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(IndexCorrupt, match="format version"):
        open_index(copy, embedder)


def test_same_dimension_other_model_is_refused(corpus_index: Path, embedder) -> None:
    with pytest.raises(ModelMismatch, match="embeds text differently"):
        open_index(corpus_index, Rotated(embedder))


def test_real_second_model_same_dimension_refused_and_copy_of_same_model_accepted(
    tmp_path: Path, corpus_index: Path, embedder
) -> None:
    same = tmp_path / "same-model"
    shutil.copytree(resolve_model(embedder.name), same)  # the same files elsewhere, whichever backend embeds
    copy_embedder = SentenceTransformerEmbedder(str(same))
    assert open_index(corpus_index, copy_embedder).store.counts()[0] == 8  # same weights elsewhere: accepted
    pooling = same / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    cfg["pooling_mode"] = "cls"
    pooling.write_text(json.dumps(cfg))
    other = SentenceTransformerEmbedder(str(same))  # CLS pooling: 384 dimensions, different vectors
    assert other.dimension == embedder.dimension
    with pytest.raises(ModelMismatch):
        open_index(corpus_index, other)


def test_dimension_mismatch_refused(corpus_index: Path, embedder) -> None:
    class Small(Rotated):
        def __init__(self, inner: Embedder) -> None:
            super().__init__(inner)
            self.dimension = 128

    with pytest.raises(ModelMismatch, match="128"):
        open_index(corpus_index, Small(embedder))


def test_missing_or_stale_faiss_cache_is_rebuilt_from_stored_vectors(
    tmp_path: Path, corpus_index: Path, embedder
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(corpus_index, copy)
    q = embedder.encode(["central bank interest rates"])
    want = open_index(copy, embedder).passages.search(q, 5)
    (copy / PASSAGE_VECTORS).unlink()
    got = open_index(copy, embedder).passages.search(q, 5)
    np.testing.assert_array_equal(got[1], want[1])
    assert (copy / PASSAGE_VECTORS).is_file()
    # a newer generation in SQLite makes the cache stale: it is rebuilt and the new generation recorded
    with sqlite3.connect(copy / SQLITE) as conn:
        conn.execute("UPDATE meta SET value = '41' WHERE key = 'generation'")
    open_index(copy, embedder)
    assert json.loads((copy / VECTORS_STATE).read_text())["generation"] == 41
    # garbage in the cache file is treated like a missing cache
    (copy / PASSAGE_VECTORS).write_bytes(b"garbage")
    (copy / VECTORS_STATE).write_text(json.dumps({"generation": 41, "factory": "IDMap2,Flat"}))
    np.testing.assert_array_equal(open_index(copy, embedder).passages.search(q, 5)[1], want[1])


def test_check_index_finds_each_kind_of_damage(tmp_path: Path, corpus_index: Path) -> None:
    assert check_index(corpus_index) == []
    assert check_index(tmp_path / "none")
    copy = tmp_path / "c1"
    shutil.copytree(corpus_index, copy)
    (copy / PASSAGE_VECTORS).write_bytes(b"garbage")
    assert any("vectors.faiss" in p for p in check_index(copy))
    copy = tmp_path / "c2"
    shutil.copytree(corpus_index, copy)
    with sqlite3.connect(copy / SQLITE) as conn:
        conn.execute("UPDATE passages SET vector = zeroblob(1536) WHERE id = 3")
    assert any("not normalised" in p for p in check_index(copy))
    copy = tmp_path / "c3"
    shutil.copytree(corpus_index, copy)
    with sqlite3.connect(copy / SQLITE) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("DELETE FROM articles WHERE aid = 2")
    problems = check_index(copy)
    assert any("articles.faiss holds 8 ids, SQLite 7 articles" in p for p in problems)


def test_check_finds_a_bm25_index_out_of_step(tmp_path: Path, corpus_index: Path) -> None:
    copy = tmp_path / "fts"
    shutil.copytree(corpus_index, copy)
    with sqlite3.connect(copy / SQLITE) as conn:
        conn.execute("DROP TRIGGER passages_fts_delete")  # a writer that bypasses the triggers
        conn.execute("DROP TRIGGER articles_fts_delete")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("DELETE FROM articles WHERE aid = 2")
    problems = check_index(copy)
    assert any("BM25" in p for p in problems), problems


def test_passage_owners_map_passages_and_articles_both_ways() -> None:
    from search.storage.index import PassageOwners

    owners = PassageOwners.of(np.array([7, 3, 4, 10, 11, 5]), np.array([2, 1, 1, 3, 3, 1]))
    np.testing.assert_array_equal(owners.articles_of(np.array([4, 10, 99, -1])), [1, 3, -1, -1])
    arts, pids = owners.passages_of([3, 9, 1])  # grouped in the order asked, unknown articles skipped
    np.testing.assert_array_equal(arts, [3, 3, 1, 1, 1])
    np.testing.assert_array_equal(pids, [10, 11, 3, 4, 5])
    moved = owners.updated([3, 4, 5], np.array([12, 13]), np.array([1, 1]))
    np.testing.assert_array_equal(moved.passages_of([1])[1], [12, 13])
    np.testing.assert_array_equal(moved.articles_of(np.array([3, 12])), [-1, 1])
    empty = PassageOwners.of(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert empty.articles_of(np.array([1])).tolist() == [-1] and len(empty.passages_of([1])[1]) == 0


def test_open_index_knows_every_passage_owner(corpus_index: Path, embedder) -> None:
    index = open_index(corpus_index, embedder)
    rows = index.store.connection().execute("SELECT id, aid FROM passages").fetchall()
    got = index.owners.articles_of(np.array([r[0] for r in rows]))
    assert got.tolist() == [r[1] for r in rows]


def test_the_manifest_keeps_its_keys_order_and_bytes(tmp_path: Path, corpus_index: Path) -> None:
    """search/storage/manifest.py types the manifest without changing its JSON: a build writes the keys every
    index has had, in their order, and reading then writing a manifest gives back the very same bytes."""
    raw = (corpus_index / MANIFEST).read_bytes()
    keys = list(json.loads(raw))
    assert keys == [
        "format_version",
        "name",
        "build",
        "model",
        "chunking",
        "faiss",
        "store",
        "counts",
        "newest_date",
        "sources",
        "created_at",
        "updated_at",
        "cursor_key",
    ]
    # faiss_factory=auto (the default) adds its size rule after the keys every index has had
    assert list(json.loads(raw)["faiss"]) == ["factory", "search", "metric", "articles", "auto"]
    copy = tmp_path / "copy"
    shutil.copytree(corpus_index.resolve(), copy)
    write_manifest(copy, read_manifest(copy))
    assert (copy / MANIFEST).read_bytes() == raw
    # a manifest from before vector backends (no "store") opens as FAISS, and is written back without one
    old = json.loads(raw)
    del old["store"], old["cursor_key"]
    (copy / MANIFEST).write_text(json.dumps(old, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    index = open_index(copy, None)
    try:
        assert "store" not in index.manifest and isinstance(index.vectors, FaissVectors)
        assert index.passages.count() == index.sqlite.counts()[1]
    finally:
        index.close()
