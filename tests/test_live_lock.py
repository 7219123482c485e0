"""A live write locks searches out only for its commit and swap (indexer/live.py): searches run while it labels the
batch and runs its SQLite statements, and see the index before the write or after it, never half of it; a write that
fails leaves the store as it was, or, failing after its commit, the service serving the store's state."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import indexer.update as update
from indexer.live import Writer
from search.errors import NotFound
from search.models import Article
from search.service import SearchService
from search.settings import Settings
from search.storage.index import check_index, open_index
from search.storage.store import NewArticle, Store

WAIT = 5.0  # seconds a paused write waits for the search; the search is over in well under one when not locked out

NEW = Article(
    id="world/900",
    title="Volcanic eruption forces evacuation of island villages",
    paragraphs=("Lava flows reached the coast on Monday as thousands of islanders were moved to shelters.",),
    date="2024-05-02",
    source="Example Wire",
)
QUERY = "lava flows volcanic eruption island evacuation"


@pytest.fixture
def live(tmp_path: Path, corpus_index: Path, embedder: Any) -> SearchService:
    copy = tmp_path / "live"
    shutil.copytree(corpus_index, copy)
    return SearchService(open_index(copy, embedder), embedder, Settings(index_dir=copy))


def found(svc: SearchService) -> list[str]:
    return [r.article.id for r in svc.search(QUERY, k=5).results]


def pause_in(stage: str, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event, list[bool]]:
    """Make the next write stop in ``stage`` (its labelling, or its SQLite transaction once a row is inserted) until
    ``searched`` is set, for at most WAIT seconds; returns (it stopped, ``searched``, whether it was set in time)."""
    entered, searched, in_time = threading.Event(), threading.Event(), []

    def pause() -> None:
        if not entered.is_set():
            entered.set()
            in_time.append(searched.wait(WAIT))

    if stage == "labelling":
        labelled = update._labelled

        def slow_labelling(*args: Any) -> list[NewArticle]:
            pause()
            return labelled(*args)

        monkeypatch.setattr(update, "_labelled", slow_labelling)
    else:
        insert = Store._insert

        def slow_insert(conn: sqlite3.Connection, items: Sequence[NewArticle]) -> tuple[list[int], list[int]]:
            written = insert(conn, items)
            pause()
            return written

        monkeypatch.setattr(Store, "_insert", staticmethod(slow_insert))
    return entered, searched, in_time


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


@pytest.mark.parametrize("stage", ["labelling", "statements"])
def test_a_search_runs_while_a_write_is_in_its_slow_part(
    live: SearchService, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    before = found(live)
    assert NEW.id not in before
    served = live.index
    entered, searched, in_time = pause_in(stage, monkeypatch)
    thread, errors = in_thread(lambda: Writer(live).upsert([NEW]))
    assert entered.wait(WAIT)
    during = found(live)  # under a write lock held for the whole write, this waits until the write gives up waiting
    searched.set()
    thread.join()
    assert errors == []
    assert in_time == [True]  # the search was answered while the write stood in its slow part
    assert during == before  # from the index before the write: none of its uncommitted rows
    assert found(live)[0] == NEW.id  # acknowledged, so searchable
    assert live.index is served  # its own commit was not taken for another process's (no reload)
    assert check_index(live.index.writable[0]) == []


def test_a_delete_lets_searches_run_while_its_statements_run(
    live: SearchService, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = Writer(live)
    writer.upsert([NEW])
    assert found(live)[0] == NEW.id
    entered, searched = threading.Event(), threading.Event()
    in_time: list[bool] = []
    original = Store.replace_articles

    def slow_replace(self: Store, delete_ids: Any, items: Any, check: Any = None, **kwargs: Any) -> Any:
        def paused(generation: int) -> None:  # once the transaction holds SQLite's write lock, before it deletes
            if check is not None:
                check(generation)
            entered.set()
            in_time.append(searched.wait(WAIT))

        return original(self, delete_ids, items, paused, **kwargs)

    monkeypatch.setattr(Store, "replace_articles", slow_replace)
    thread, errors = in_thread(lambda: writer.delete([NEW.id]))
    assert entered.wait(WAIT)
    during = found(live)
    searched.set()
    thread.join()
    assert errors == []
    assert in_time == [True]
    assert during[0] == NEW.id  # not deleted until the commit
    assert NEW.id not in found(live)


def test_a_write_failing_before_its_commit_leaves_the_store_and_the_searches_as_they_were(
    live: SearchService, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, counts = found(live), live.index.store.counts()

    def failing_insert(conn: sqlite3.Connection, item: NewArticle) -> tuple[int, list[int]]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Store, "_insert", staticmethod(failing_insert))
    with pytest.raises(sqlite3.OperationalError):
        Writer(live).upsert([NEW])
    monkeypatch.undo()
    assert live.index.store.counts() == counts
    assert found(live) == before
    with pytest.raises(NotFound):
        live.article(NEW.id)
    assert check_index(live.index.writable[0]) == []
    Writer(live).upsert([NEW])  # the writer is not left stuck
    assert found(live)[0] == NEW.id


def test_a_write_failing_after_its_commit_is_served_as_the_store_holds_it(
    live: SearchService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_add(ids: np.ndarray, vectors: np.ndarray) -> None:
        raise RuntimeError("FAISS ran out of memory")

    monkeypatch.setattr(live.index.passages, "add", failing_add)
    failed = live.index
    with pytest.raises(RuntimeError):
        Writer(live).upsert([NEW])
    assert live.index is not failed  # reloaded from the store, whose commit stands
    assert found(live)[0] == NEW.id
    assert check_index(live.index.writable[0]) == []
