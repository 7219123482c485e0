"""``newsdesk watch`` (indexer/watch.py) against a local HTTP server serving feeds, a page and a WARC crawl."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from indexer.build import build_index
from indexer.watch import Watcher
from indexer.web import Fetcher
from search.models import Article
from search.service import SearchService
from search.settings import Settings
from search.storage.index import check_index
from search.storage.watchstate import source_states
from search.text.embedding import Embedder
from tests.conftest import make_service
from tests.procs import PRODUCT_ENV, kill, spawn
from tests.webfixtures import Item, atom, page, rss, serving, warc

FLOOD = [
    "Heavy rain caused the river to burst its banks on Tuesday, flooding hundreds of homes along the valley floor.",
    "Rescue teams worked through the night to move residents to shelters set up in local schools and church halls.",
]
VOLCANO = [
    "The volcano on the northern island erupted before dawn, sending a column of ash eight kilometres into the sky.",
    "Flights across the region were grounded as the ash cloud drifted south over the capital and its airport.",
]
FETCHER = Fetcher(1.0, "newsdesk-watch-tests/1.0")


def _item(n: int, title: str, body: str) -> Item:
    return Item(f"urn:wire:{n}", title, f"Tue, 0{1 + n % 9} Mar 2024 10:00:00 GMT", content=f"<p>{body}</p>")


@pytest.fixture
def tiny(tmp_path: Path, embedder: Embedder) -> Path:
    target = tmp_path / "idx"
    seed = [Article(id="seed", title="Markets steady", paragraphs=("Shares closed flat in quiet trading.",))]
    build_index(seed, target, Settings(index_dir=target), embedder, progress=False)
    return target


def _ids(svc: SearchService) -> set[str]:
    return {r[0] for r in svc.index.sqlite.connection().execute("SELECT id FROM articles")}


def test_new_and_changed_items_are_searchable_and_failures_stop_nothing(tiny: Path, embedder: Embedder) -> None:
    svc = make_service(tiny, embedder)
    with serving() as web:
        web.set("/wire.rss", rss("Wire", [_item(1, "Floods hit the valley", FLOOD[0])]), "application/rss+xml")
        web.set("/valley.atom", atom("Valley", [_item(2, "Rescue teams at work", FLOOD[1])]), "application/atom+xml")
        web.set("/story", page("Volcano erupts", VOLCANO, date="2024-03-02", url="https://v.org/volcano"))
        crawl = warc(Path(str(tiny) + ".warc.gz"), [("https://v.org/v2", 200, "text/html", page("Ash", VOLCANO))])
        web.set("/crawl.warc.gz", crawl.read_bytes(), "application/warc")
        web.set("/down", b"boom", status=500)
        web.set("/slow.rss", rss("Slow", [_item(9, "Late", "Too late.")]), delay=3.0)
        web.set("/garbage", bytes(random.Random(1).randrange(256) for _ in range(2000)), "application/octet-stream")
        sources = [web.url(p) for p in ("/down", "/slow.rss", "/garbage", "/wire.rss", "/valley.atom", "/story")]
        sources.append(web.url("/crawl.warc.gz"))
        watcher = Watcher(svc, sources, FETCHER, concurrency=3)
        first = watcher.poll()
        assert (first.failed, first.ingested) == (3, 4), first
        assert {"urn:wire:1", "urn:wire:2", "https://v.org/volcano", "https://v.org/v2"} <= _ids(svc)
        top = svc.search("volcanic ash grounded flights", k=1).results[0]
        assert top.article.id in ("https://v.org/volcano", "https://v.org/v2")
        states = source_states(svc.index.sqlite.connection())
        assert states[web.url("/down")].last_error == "HTTP 500: Internal Server Error"
        assert states[web.url("/slow.rss")].last_error is not None
        assert "timeout" in str(states[web.url("/slow.rss")].last_error)
        assert states[web.url("/garbage")].errors == 1
        assert states[web.url("/wire.rss")].last_success is not None
        assert all(h["User-Agent"] == "newsdesk-watch-tests/1.0" for _, h in web.requests)

        # unchanged: 304s (the ETag is sent back), nothing ingested, the generation does not move
        generation = svc.index.sqlite.generation()
        web.requests.clear()
        again = watcher.poll()
        assert again.ingested == 0
        assert svc.index.sqlite.generation() == generation
        assert any(p == "/wire.rss" and "If-None-Match" in h for p, h in web.requests)

        # an item added and one changed on the server: both ingested on the next poll, the rest not again
        changed = _item(1, "Floods hit the valley again", FLOOD[0] + " The water is still rising.")
        web.set("/wire.rss", rss("Wire", [changed, _item(3, "Volcano ash grounds flights", VOLCANO[1])]))
        third = watcher.poll()
        assert third.ingested == 2
        assert svc.article("urn:wire:1").title == "Floods hit the valley again"
        assert "urn:wire:3" in _ids(svc)
    assert check_index(tiny) == []
    metrics = _metrics(create_app(service=svc).test_client())
    wire = sources[3]
    assert f'newsdesk_watch_items_ingested_total{{source="{wire}"}} 3.0' in metrics
    assert f'newsdesk_watch_errors_total{{source="{sources[0]}"}} 3.0' in metrics
    assert f'newsdesk_watch_last_success_timestamp_seconds{{source="{wire}"}}' in metrics


def _metrics(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_skipped_items_are_counted_by_reason(tiny: Path, embedder: Embedder, tmp_path: Path) -> None:
    svc = make_service(tiny, embedder)
    feed = tmp_path / "local.rss"
    feed.write_bytes(
        rss("Local", [_item(1, "Floods", FLOOD[0]), Item("urn:empty", "", "Tue, 05 Mar 2024 10:00:00 GMT")])
    )
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "volcano.html").write_bytes(page("Volcano erupts", VOLCANO))
    (pages / "blank.html").write_bytes(b"<html><body></body></html>")
    watcher = Watcher(svc, [str(feed), str(pages)], FETCHER, concurrency=2)
    summary = watcher.poll()
    assert (summary.ingested, summary.skipped) == (2, {"no text": 2})
    assert {"urn:wire:1", "volcano"} <= _ids(svc)
    assert watcher.poll().ingested == 0  # the file and the directory unchanged
    (pages / "ash.html").write_bytes(page("Ash cloud", VOLCANO[::-1]))
    assert watcher.poll().ingested == 1
    states = source_states(svc.index.sqlite.connection())
    assert states[str(feed)].skipped == {"no text": 1} and states[str(pages)].ingested == 2


def test_kill_9_and_restart_ingest_nothing_twice(tiny: Path, embedder: Embedder, tmp_path: Path) -> None:
    items = [_item(n, f"Report number {n} from the wire", f"{FLOOD[n % 2]} Update {n}.") for n in range(1, 13)]
    with serving() as web:
        web.set("/wire.rss", rss("Wire", items[:4]), "application/rss+xml")
        log = tmp_path / "watch.log"
        proc = spawn(["watch", web.url("/wire.rss"), "--index", str(tiny), "--every", "0.2"], log, env=PRODUCT_ENV)
        try:
            deadline = time.monotonic() + 120
            shown = 4
            while time.monotonic() < deadline and proc.poll() is None:
                if _ingested(tiny, web.url("/wire.rss")) >= 4 and shown < len(items):
                    shown += 4
                    web.set("/wire.rss", rss("Wire", items[:shown]), "application/rss+xml")
                    time.sleep(random.Random(shown).uniform(0.0, 0.6))  # the kill lands during a poll, or not
                    if shown == 12:
                        break
                time.sleep(0.05)
        finally:
            kill(proc)
        assert shown == 12, log.read_text()
        svc = make_service(tiny, embedder)
        Watcher(svc, [web.url("/wire.rss")], FETCHER, concurrency=1).poll()  # the restart
    state = source_states(svc.index.sqlite.connection())[web.url("/wire.rss")]
    assert state.ingested == 12, state  # each item written once across the kill and the restart
    assert {f"urn:wire:{n}" for n in range(1, 13)} <= _ids(svc)
    assert check_index(tiny) == []


def _ingested(index: Path, source: str) -> int:
    """What the watcher has committed for ``source``, read from SQLite as it runs (no index opened)."""
    conn = sqlite3.connect(f"{(index.resolve() / 'newsdesk.sqlite').as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT ingested FROM watch_sources WHERE source = ?", (source,)).fetchone()
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()
    return int(row[0]) if row else 0


def test_cli_watch_once_and_errors(tiny: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from api.cli import main

    runner = CliRunner()
    bad = runner.invoke(main, ["watch", str(tmp_path / "nope.rss"), "--index", str(tiny), "--once"])
    assert bad.exit_code == 1 and "no such file" in bad.output and len(bad.output.strip().splitlines()) == 1
    every = runner.invoke(main, ["watch", str(tiny), "--index", str(tiny), "--every", "soon"])
    assert every.exit_code == 1 and "--every takes a positive duration" in every.output
    feed = tmp_path / "f.rss"
    feed.write_bytes(rss("Local", [_item(1, "Floods", FLOOD[0])]))
    ok = runner.invoke(main, ["watch", str(feed), "--index", str(tiny), "--once"])
    assert ok.exit_code == 0, ok.output
    assert "1 items seen, 1 ingested" in ok.output


def test_an_unwritable_source_row_does_not_break_polling(tiny: Path, embedder: Embedder) -> None:
    """A source answering a body that is a feed of only broken items still records a success with its skips."""
    svc = make_service(tiny, embedder)
    with serving() as web:
        web.set("/empty.rss", rss("Empty", [Item("urn:x", "", "Tue, 05 Mar 2024 10:00:00 GMT")]))
        summary = Watcher(svc, [web.url("/empty.rss")], FETCHER, concurrency=1).poll()
    assert (summary.failed, summary.ingested, summary.skipped) == (0, 0, {"no text": 1})
    assert source_states(svc.index.sqlite.connection())[web.url("/empty.rss")].skipped == {"no text": 1}
