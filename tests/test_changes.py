"""A process follows another's writes by the change log (search/storage/changes.py ``follow_log``): what it serves
afterwards is what a process opening the index from disk serves, it reads only what changed, and its own later
writes append to the caches the other process saved."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from indexer.build import build_index, make_chunker, new_articles
from indexer.live import Writer
from indexer.update import add_articles, apply_changes, apply_metadata, delete_articles
from search.models import Article
from search.service import SearchService
from search.settings import Settings
from search.storage import changes
from search.storage.index import check_index, open_index
from search.text.embedding import Embedder
from tests.fakes import wire_articles

WORDS = (
    "harbour glacier violin orchard lantern falcon meadow quarry tractor velvet canyon pepper walrus chimney "
    "saddle marble thunder pillow basket comet ribbon anchor"
).split()
QUERIES = ["oil prices rise", "harbour glacier violin", "central bank rates", "walrus chimney saddle", "grain"]


def fresh(rows: int, seed: int, rng: random.Random, prefix: str) -> list[Article]:
    out = []
    for i in range(rows):
        title = " ".join(rng.sample(WORDS, 5)).capitalize()
        body = " ".join(rng.sample(WORDS, 20))
        out.append(Article(id=f"{prefix}-{seed}-{i}", title=title, paragraphs=(f"{body}.",), date="1987-03-02"))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    root = tmp_path_factory.mktemp("follow")
    articles = [
        Article(id=r["id"], title=r["title"], paragraphs=tuple(r["paragraphs"]), date=r["date"], source=r.get("source"))
        for r in wire_articles(40, seed=5)
    ]
    build_index(iter(articles), root / "index", Settings(index_dir=root / "index"), embedder, progress=False)
    return root / "index"


@pytest.fixture
def target(base: Path, tmp_path: Path) -> Path:
    shutil.copytree(base.parent, tmp_path / "copy", symlinks=True)
    return tmp_path / "copy" / base.name


def served(svc: SearchService) -> dict[str, object]:
    """What a service answers, in every mode, and the in-memory parts behind it."""
    index = svc.index
    out: dict[str, object] = {
        "generation": index.generation,
        "catalog": (index.catalog.aids.tolist(), list(index.catalog.ids), list(index.catalog.story_labels)),
        "owners": (index.owners.pids.tolist(), index.owners.aids.tolist()),
        "counts": (index.passages.count(), index.articles.count()),
        "manifest_counts": dict(index.manifest["counts"]),
    }
    for mode in ("dense", "lexical", "hybrid"):
        for q in QUERIES:
            page = svc.search(q, k=10, mode=mode)
            out[f"{mode}:{q}"] = [(r.article.id, round(r.score, 5)) for r in page.results]
    return out


def reopened(target: Path, embedder: Embedder) -> dict[str, object]:
    svc = SearchService(open_index(target, embedder), embedder, Settings(index_dir=target))
    try:
        return served(svc)
    finally:
        svc.index.close()


def test_a_server_follows_another_process_writes_as_a_reopen_would_serve_them(target: Path, embedder: Embedder) -> None:
    """Adds, a replacement, a delete and a metadata change by another process: after each, the server follows in
    place (the same index object: nothing reopened) and serves exactly what a fresh open serves."""
    settings = Settings(index_dir=target)
    svc = SearchService(open_index(target, embedder), embedder, settings)
    other = open_index(target, embedder)
    held = svc.index
    rng = random.Random(3)
    first = fresh(3, 1, rng, "new")
    replacement = Article(id=first[0].id, title="Walrus quarry comet", paragraphs=("Pepper ribbon anchor.",))
    redated = Article(
        id=first[2].id, title=first[2].title, paragraphs=first[2].paragraphs, date="1987-04-09", tags=("late",)
    )
    steps: list[Callable[[], object]] = [
        lambda: add_articles(other, first, embedder, settings),
        lambda: add_articles(other, [replacement], embedder, settings),
        lambda: delete_articles(other, [first[1].id, "wire/0003"]),
        lambda: apply_metadata(other, [redated]),
    ]
    try:
        for step in steps:
            step()
            svc.refresh()
            assert svc.index is held, "the server reopened the index instead of following the change"
            assert served(svc) == reopened(target, embedder)
        assert svc.index.catalog.row_of("wire/0003") < 0
        assert svc.article(first[2].id).date == "1987-04-09"
    finally:
        other.close()
        svc.index.close()
    assert check_index(target) == []


def test_following_reads_what_changed_not_the_caches_it_would_rebuild(
    target: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write committed but not yet saved by its process (it saves after the commit): the follower reads the new
    rows from SQLite and rebuilds nothing; then its own write leaves an index that checks and reopens whole."""
    settings = Settings(index_dir=target)
    svc = SearchService(open_index(target, embedder), embedder, settings)
    other = open_index(target, embedder)
    chunker = make_chunker(settings, embedder)
    rows, _ = new_articles(fresh(2, 2, random.Random(5), "unsaved"), chunker, embedder, settings)
    apply_changes(other, [r.article.id for r in rows], rows, save=False, embedder=embedder)
    stamp = json.loads((target / "vectors.json").read_text())
    assert stamp["generation"] < other.generation  # the caches on disk are behind the store

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("following rebuilt a cache")

    monkeypatch.setattr("search.vectors.faiss.FaissVectorStore.build", no_rebuild)
    monkeypatch.setattr("search.text.bm25.LexicalPostings.build", no_rebuild)
    svc.refresh()
    monkeypatch.undo()
    assert svc.index.generation == other.generation
    for row in rows:
        assert svc.search(row.article.title, k=3, mode="hybrid").results[0].article.id == row.article.id
    Writer(svc).upsert(fresh(1, 3, random.Random(6), "mine"))
    other.close()
    assert check_index(target) == []
    after = reopened(target, embedder)
    svc_state = served(svc)
    svc.index.close()
    assert svc_state == after


def test_a_follower_that_writes_appends_to_the_caches_the_writer_saved(
    target: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer saved its caches before the follower followed: the follower adopts them, so its own write adds a
    segment to the vectors instead of rewriting the base files (as at a million passages, where a write is a tiny
    fraction of the base: here the merge policy is told so)."""
    monkeypatch.setattr("search.vectors.faiss.MERGE_FRACTION", 10.0)
    settings = Settings(index_dir=target)
    svc = SearchService(open_index(target, embedder), embedder, settings)
    other = open_index(target, embedder)
    add_articles(other, fresh(2, 4, random.Random(7), "saved"), embedder, settings)
    svc.refresh()
    before = json.loads((target / "vectors.json").read_text())
    bases = {name: (target / name).stat().st_ino for name in before["segments"]}
    Writer(svc).upsert(fresh(1, 5, random.Random(8), "appended"))
    after = json.loads((target / "vectors.json").read_text())
    assert {name: (target / name).stat().st_ino for name in after["segments"]} == bases  # the bases kept
    assert sum(map(len, after["segments"].values())) > sum(map(len, before["segments"].values()))
    other.close()
    svc.index.close()
    assert check_index(target) == []


def test_a_change_too_big_to_follow_reopens(target: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(index_dir=target)
    svc = SearchService(open_index(target, embedder), embedder, settings)
    held = svc.index
    other = open_index(target, embedder)
    monkeypatch.setattr(changes, "FOLLOW_MOST", 1)
    add_articles(other, fresh(2, 6, random.Random(9), "big"), embedder, settings)
    svc.refresh()
    assert svc.index is not held
    assert served(svc) == reopened(target, embedder)
    other.close()
    svc.index.close()


def test_follow_is_a_no_op_at_the_same_generation(target: Path, embedder: Embedder) -> None:
    index = open_index(target, embedder)
    owners = index.owners
    try:
        assert changes.follow_log(index)
        assert index.owners is owners
        assert np.array_equal(index.owners.pids, owners.pids)
    finally:
        index.close()


def test_a_search_another_process_changed_under_it_is_read_again(
    target: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process deletes the top article after this search ranked it and before the page reads its row (a
    KeyError before): the search is made again on the committed state, without it."""
    settings = Settings(index_dir=target)
    svc = SearchService(open_index(target, embedder), embedder, settings)
    other = open_index(target, embedder)
    query = "oil prices rise"
    top = svc.search(query, k=5, mode="hybrid").results[0].article.id
    store = svc.index.store
    real = type(store).article_refs
    deleted: list[str] = []

    def refs_after_a_delete(self: object, aids: object) -> object:
        if not deleted:
            deleted.append(top)
            delete_articles(other, [top])
        return real(store, aids)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "article_refs", refs_after_a_delete.__get__(store))
    page = svc.search(query, k=5, mode="hybrid")
    assert deleted and top not in [r.article.id for r in page.results]
    assert svc.generation == store.generation()
    other.close()
    svc.index.close()


def test_a_search_waits_for_acknowledged_writes_only(target: Path, embedder: Embedder) -> None:
    """A write another process committed but has not acknowledged (its caches not saved yet) is followed in the
    background, the searches meanwhile served without waiting for it; one it saved (and so may have acknowledged) is
    followed before the next search answers."""
    settings = Settings(index_dir=target)
    svc = SearchService(open_index(target, embedder), embedder, settings)
    other = open_index(target, embedder)
    chunker = make_chunker(settings, embedder)
    rows, _ = new_articles(fresh(1, 7, random.Random(11), "pending"), chunker, embedder, settings)
    title = rows[0].article.title
    apply_changes(other, [rows[0].article.id], rows, save=False, embedder=embedder)
    served = svc.generation
    svc.search(title, k=3, mode="hybrid")
    deadline = time.monotonic() + 30
    while svc.generation == served and time.monotonic() < deadline:
        time.sleep(0.01)  # the background follower
    assert svc.generation == other.generation
    assert svc.search(title, k=3, mode="hybrid").results[0].article.id == rows[0].article.id
    saved = fresh(1, 8, random.Random(12), "saved")
    add_articles(other, saved, embedder, settings)  # saved before it returns: what a writer acknowledges
    assert svc.search(saved[0].title, k=3, mode="hybrid").results[0].article.id == saved[0].id
    other.close()
    svc.index.close()


def test_a_follower_keeps_its_pending_profile_changes_bounded(
    target: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that only follows never updates its profiles; once the list of pending changes is long it is
    recounted as what the profiles lack and what they hold that is gone, so articles added and deleted again (a
    feed's corrections) do not pile up in it."""
    monkeypatch.setattr(changes, "PENDING_MOST", 3)
    settings = Settings(index_dir=target)
    svc = SearchService(open_index(target, embedder), embedder, settings)
    other = open_index(target, embedder)
    for i, article in enumerate(fresh(4, 9, random.Random(13), "churn")):
        add_articles(other, [article], embedder, settings)
        svc.refresh()
        delete_articles(other, [article.id])
        svc.refresh()
        assert sum(map(len, svc.index.neighbour_changes)) <= 3, i
    kept = fresh(1, 10, random.Random(14), "kept")
    add_articles(other, kept, embedder, settings)
    svc.refresh()
    assert svc.index.catalog.aids[svc.index.catalog.row_of(kept[0].id)] in svc.index.neighbour_changes[1]
    other.close()
    svc.index.close()
