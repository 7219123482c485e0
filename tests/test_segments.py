"""Vector segments (issue 17): a write's save appends what changed instead of rewriting the FAISS files; an open
applies the segments to the base; a merge (the policy, or ``newsdesk optimize``) writes a new base; a cut at any
step of a save or merge leaves an index that opens to exactly what SQLite committed."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import search.vectors.faiss as faiss_backend
from indexer.build import build_index
from indexer.update import add_articles, delete_articles
from search.models import Article
from search.settings import Settings
from search.storage.index import VECTORS_STATE, DirectoryIndex, check_index, open_index
from search.vectors.segments import Delta, compose, net
from tests.fakes import HashEmbedder, wire_articles
from tests.test_cli import assert_one_line_error, invoke

EMBEDDER = HashEmbedder()


def _articles(n: int, seed: int, prefix: str) -> list[Article]:
    return [
        Article(id=f"{prefix}-{i}", title=r["title"], paragraphs=tuple(r["paragraphs"]), date=r.get("date"))
        for i, r in enumerate(wire_articles(n, seed=seed))
    ]


def _build(target: Path, factory: str = "IDMap2,Flat") -> Path:
    build_index(_articles(40, 1, "base"), target, _settings(target, factory), EMBEDDER, progress=False)
    return target


def _settings(target: Path, factory: str = "IDMap2,Flat") -> Settings:
    return Settings(index_dir=target, faiss_factory=factory)


@pytest.fixture(autouse=True)
def _small_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """These indexes hold about 80 passages, so a write of a few articles passes the merge policy's fraction of
    the base; the fraction is lifted here (and restored by the test of it) so writes append."""
    monkeypatch.setattr(faiss_backend, "MERGE_FRACTION", 10.0)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("segments") / "base")


@pytest.fixture
def index_dir(tmp_path: Path, built: Path) -> Path:
    shutil.copytree(built, tmp_path / "idx")
    return tmp_path / "idx"


@pytest.fixture
def opened(index_dir: Path) -> Iterator[DirectoryIndex]:
    index = open_index(index_dir, EMBEDDER)
    yield index
    index.close()


def _stamp(directory: Path) -> dict[str, object]:
    state = json.loads((directory / VECTORS_STATE).read_text())
    assert isinstance(state, dict)
    return state


def _segment_files(directory: Path) -> list[str]:
    """The vector segments (the other caches append their own: lexical, profiles, duplicates)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(("vectors.seg-", "articles.seg-")))


def _stored(index: DirectoryIndex, table: str) -> tuple[np.ndarray, np.ndarray]:
    parts = list(index.store.iter_vectors(table))
    return np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])


def _assert_exact(index: DirectoryIndex, table: str, queries: np.ndarray, got: tuple[np.ndarray, np.ndarray]) -> None:
    """``got`` is a top-k a brute-force scan over SQLite's vectors gives: the same k best scores, each id's own
    score (the hashing embedder makes ties, which either order answers)."""
    ids, vectors = _stored(index, table)
    exact = queries @ vectors.T
    k = got[0].shape[1]
    np.testing.assert_allclose(got[0], -np.sort(-exact, axis=1)[:, :k], atol=1e-5)
    row = {int(i): r for r, i in enumerate(ids)}
    own = np.array([[exact[q, row[int(i)]] for i in line] for q, line in enumerate(got[1])])
    np.testing.assert_allclose(got[0], own, atol=1e-5)


def _same_as_sqlite(directory: Path) -> None:
    """The index opens to SQLite's vectors, searches as a brute-force scan over them does, and passes check."""
    assert check_index(directory) == []
    index = open_index(directory, EMBEDDER)
    try:
        queries = EMBEDDER.encode(["oil prices opec", "central bank rates", "harvest export", "port strike"])
        for table, store in (("passages", index.passages), ("articles", index.articles)):
            ids, vectors = _stored(index, table)
            np.testing.assert_array_equal(store.ids(), np.sort(ids))
            np.testing.assert_allclose(store.reconstruct_batch(ids), vectors, atol=1e-6)
            _assert_exact(index, table, queries, store.search(queries, 5))
    finally:
        index.close()


# -- the mechanics of a delta ------------------------------------------------------------------------------


def test_net_and_compose_equal_applying_every_change_in_order() -> None:
    rng = np.random.default_rng(7)
    state: dict[int, np.ndarray] = {}
    deltas: list[Delta] = []
    for _ in range(12):
        ops: list[tuple[np.ndarray, np.ndarray | None]] = []
        for _ in range(5):
            ids = rng.choice(40, size=int(rng.integers(1, 8)), replace=False).astype(np.int64)
            if rng.random() < 0.4:
                ops.append((ids, None))
                for i in ids.tolist():
                    state.pop(i, None)
            else:
                vecs = rng.standard_normal((len(ids), 3)).astype(np.float32)
                ops.append((ids, vecs))
                for i, v in zip(ids.tolist(), vecs, strict=True):
                    state[i] = v
        deltas.append(net(ops, 3))
    whole = compose(deltas, 3)
    assert set(whole.ids.tolist()) <= set(whole.tombstones.tolist())
    assert dict(zip(whole.ids.tolist(), whole.vectors.tolist(), strict=True)) == {
        i: v.tolist() for i, v in state.items()
    }


# -- a write appends; an open applies -------------------------------------------------------------------------


def test_a_write_appends_a_segment_and_leaves_the_base_files_alone(index_dir: Path, opened: DirectoryIndex) -> None:
    bases = {name: (index_dir / name).read_bytes() for name in ("vectors.faiss", "articles.faiss")}
    settings = _settings(index_dir)
    add_articles(opened, _articles(3, 20, "new"), EMBEDDER, settings)
    add_articles(opened, _articles(2, 21, "base"), EMBEDDER, settings)  # replaces base-0 and base-1
    delete_articles(opened, ["base-5", "new-1"])
    assert {name: (index_dir / name).read_bytes() for name in bases} == bases
    state = _stamp(index_dir)
    segments = state["segments"]
    assert isinstance(segments, dict) and len(segments["vectors.faiss"]) == 3 and len(segments["articles.faiss"]) == 3
    assert state["generation"] == opened.store.generation()
    assert _segment_files(index_dir) == sorted(e["file"] for entries in segments.values() for e in entries)
    _same_as_sqlite(index_dir)
    reopened = open_index(index_dir, EMBEDDER)
    try:  # the same index the writer holds in memory
        q = EMBEDDER.encode(["oil prices opec", "harvest export"])
        np.testing.assert_array_equal(reopened.passages.search(q, 8)[1], opened.passages.search(q, 8)[1])
    finally:
        reopened.close()


@pytest.mark.parametrize("factory", ["SQ8", "HNSW16"])
def test_segments_reopen_to_the_writers_index_with_trained_and_graph_factories(tmp_path: Path, factory: str) -> None:
    """A segment keeps raw vectors: re-added to a trained SQ8 index on open they get the writer's very codes."""
    target = _build(tmp_path / "idx", factory)
    index = open_index(target, EMBEDDER)
    try:
        add_articles(index, _articles(4, 30, "new"), EMBEDDER, _settings(target, factory))
        delete_articles(index, ["base-3"])
        assert len(_segment_files(target)) == 4
        reopened = open_index(target, EMBEDDER)
        try:
            np.testing.assert_array_equal(reopened.passages.ids(), index.passages.ids())
            ids = index.passages.ids()
            if factory == "SQ8":
                np.testing.assert_array_equal(
                    reopened.passages.reconstruct_batch(ids), index.passages.reconstruct_batch(ids)
                )
        finally:
            reopened.close()
    finally:
        index.close()
    assert check_index(target) == []


def test_segments_that_only_delete_pass_check(index_dir: Path, opened: DirectoryIndex) -> None:
    delete_articles(opened, ["base-2"])
    assert len(_segment_files(index_dir)) == 2
    _same_as_sqlite(index_dir)


def test_an_index_saved_before_segments_opens_and_takes_segments(index_dir: Path) -> None:
    state = _stamp(index_dir)
    del state["segments"]  # vectors.json as every index before segments wrote it
    (index_dir / VECTORS_STATE).write_text(json.dumps(state))
    index = open_index(index_dir, EMBEDDER)
    try:
        assert index.vectors.stamp == state  # type: ignore[attr-defined]  # loaded, not rebuilt
        add_articles(index, _articles(2, 40, "new"), EMBEDDER, _settings(index_dir))
    finally:
        index.close()
    assert len(_segment_files(index_dir)) == 2
    _same_as_sqlite(index_dir)


# -- merges ------------------------------------------------------------------------------------------------


def test_past_merge_segments_the_segments_are_merged_into_one_and_the_base_kept(
    index_dir: Path, opened: DirectoryIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faiss_backend, "MERGE_SEGMENTS", 2)
    before = (index_dir / "vectors.faiss").read_bytes()
    for n in range(2):
        add_articles(opened, _articles(1, 50 + n, f"new{n}"), EMBEDDER, _settings(index_dir))
    assert len(_segment_files(index_dir)) == 4 and (index_dir / "vectors.faiss").read_bytes() == before
    delete_articles(opened, ["new0-0", opened.catalog.ids[0]])  # a third save, with tombstones of base vectors
    assert len(_segment_files(index_dir)) == 2  # past the limit: one segment per kind
    listed = _stamp(index_dir)["segments"]
    assert isinstance(listed, dict) and all(len(entries) == 1 for entries in listed.values())
    assert (index_dir / "vectors.faiss").read_bytes() == before
    _same_as_sqlite(index_dir)
    for n in range(2):
        add_articles(opened, _articles(1, 60 + n, f"more{n}"), EMBEDDER, _settings(index_dir))
    assert len(_segment_files(index_dir)) == 2 and (index_dir / "vectors.faiss").read_bytes() == before
    _same_as_sqlite(index_dir)


def test_a_write_larger_than_the_merge_fraction_writes_a_new_base(
    index_dir: Path, opened: DirectoryIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faiss_backend, "MERGE_FRACTION", 0.1)
    add_articles(opened, _articles(1, 71, "small"), EMBEDDER, _settings(index_dir))
    assert len(_segment_files(index_dir)) == 2
    add_articles(opened, _articles(20, 70, "big"), EMBEDDER, _settings(index_dir))  # half the corpus again
    assert _segment_files(index_dir) == []
    _same_as_sqlite(index_dir)


def test_optimize_merges_the_segments(runner: CliRunner, index_dir: Path, opened: DirectoryIndex) -> None:
    add_articles(opened, _articles(2, 80, "new"), EMBEDDER, _settings(index_dir))
    delete_articles(opened, ["base-7"])
    assert len(_segment_files(index_dir)) == 4
    # every cache appended its own: vectors, BM25 postings, profiles and duplicate fingerprints; optimize merges all
    every = sorted(p.name for p in index_dir.iterdir() if ".seg-" in p.name)
    assert {name.split(".")[0] for name in every} >= {"vectors", "articles", "lexical-passages", "neighbours"}
    result = invoke(runner, "optimize", "--index", index_dir)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"merged {len(every)} segment files into the base files of {index_dir}")
    assert [p.name for p in index_dir.iterdir() if ".seg-" in p.name] == []
    assert check_index(index_dir) == []
    _same_as_sqlite(index_dir)
    again = invoke(runner, "optimize", "--index", index_dir)
    assert again.exit_code == 0 and again.output.strip() == f"{index_dir}: no segments to merge"
    # the writer that appended them is told by the stamp that its files changed: its next save writes bases
    add_articles(opened, _articles(1, 81, "after"), EMBEDDER, _settings(index_dir))
    _same_as_sqlite(index_dir)


def test_optimize_of_a_missing_index_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    assert_one_line_error(invoke(runner, "optimize", "--index", tmp_path / "nothing"))


# -- damage and cuts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["garbled", "missing"])
def test_a_damaged_segment_is_reported_then_rebuilt(index_dir: Path, how: str) -> None:
    index = open_index(index_dir, EMBEDDER)
    try:
        add_articles(index, _articles(2, 90, "new"), EMBEDDER, _settings(index_dir))
    finally:
        index.close()
    segment = index_dir / _segment_files(index_dir)[-1]
    if how == "missing":
        segment.unlink()
    else:
        data = bytearray(segment.read_bytes())
        data[len(data) // 2] ^= 0x5A
        segment.write_bytes(bytes(data))
    problems = check_index(index_dir)
    assert len(problems) == 1 and segment.name in problems[0], problems
    open_index(index_dir, EMBEDDER).close()  # rebuilds the caches from SQLite, into bases
    _same_as_sqlite(index_dir)
    assert _segment_files(index_dir) == []


class _Cut(BaseException):
    """A process killed between two file operations: nothing after the cut runs, no handler sees it as an error."""


class _CutAt:
    """File operations that raise ``_Cut`` at the ``step``-th call (counted across every wrapped function)."""

    def __init__(self, step: int) -> None:
        self.step, self.calls = step, 0

    def wrap(self, real: Callable[..., object]) -> Callable[..., object]:
        def operation(*args: object, **kwargs: object) -> object:
            self.calls += 1
            if self.calls == self.step:
                raise _Cut
            return real(*args, **kwargs)

        return operation


@pytest.mark.parametrize("merge", ["append", "segments", "base"])
def test_a_save_cut_at_any_step_leaves_the_committed_state(
    tmp_path: Path, built: Path, monkeypatch: pytest.MonkeyPatch, merge: str
) -> None:
    """Every rename and removal of a save (appending a segment), a merge of the segments into one, or a merge into
    a new base is a place a kill can land: cut there, the index opens to exactly SQLite's vectors, and the next
    write's save repairs the files."""
    if merge != "append":
        monkeypatch.setattr(faiss_backend, "MERGE_SEGMENTS", 1)
    if merge == "base":
        monkeypatch.setattr(faiss_backend, "MERGE_FRACTION", 0.0)
    real_replace, real_unlink = os.replace, Path.unlink
    step = 0
    while True:
        step += 1
        target = tmp_path / f"cut-{step}"
        shutil.copytree(built, target)
        index = open_index(target, EMBEDDER)
        add_articles(index, _articles(2, 100, "first"), EMBEDDER, _settings(target))  # a segment to merge
        cut_at = _CutAt(step)
        monkeypatch.setattr(os, "replace", cut_at.wrap(real_replace))
        monkeypatch.setattr(Path, "unlink", cut_at.wrap(real_unlink))
        try:
            add_articles(index, _articles(2, 101, "second"), EMBEDDER, _settings(target))
            cut = False
        except _Cut:
            cut = True
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
            monkeypatch.setattr(Path, "unlink", real_unlink)
            index.close()
        _same_as_sqlite(target)
        reopened = open_index(target, EMBEDDER)
        try:
            assert reopened.store.aid_of("second-1") is not None  # committed before any cache was saved
            add_articles(reopened, _articles(1, 102, "third"), EMBEDDER, _settings(target))
        finally:
            reopened.close()
        _same_as_sqlite(target)
        if not cut:
            break
    assert step > 3  # the save had several steps, and each was cut once


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full for a real ENOSPC")
def test_a_segment_the_disk_cannot_hold_leaves_the_write_committed_and_no_temporary_file(
    index_dir: Path, opened: DirectoryIndex
) -> None:
    generation = opened.store.generation() + 1
    link = index_dir / f".vectors.seg-{generation}.npz.{os.getpid()}.tmp"
    link.symlink_to("/dev/full")
    before = _stamp(index_dir)
    assert add_articles(opened, _articles(1, 110, "full"), EMBEDDER, _settings(index_dir)) == 1
    assert not link.is_symlink() and not [p for p in index_dir.iterdir() if p.name.endswith(".tmp")]
    assert _stamp(index_dir) == before  # stale: the next open rebuilds from SQLite
    _same_as_sqlite(index_dir)
    # and the writer, whose save failed, writes whole bases next rather than a segment on files it never wrote
    add_articles(opened, _articles(1, 111, "after"), EMBEDDER, _settings(index_dir))
    _same_as_sqlite(index_dir)
