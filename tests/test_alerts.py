"""Saved searches (issue 21): matched on every write path with the bundled model, collapsed by duplicate group and
story, kept across rebuilds, served by the API, the CLI, an Atom feed and webhooks."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import feedparser
import numpy as np
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

import indexer.update
from api.app import create_app
from api.cli import main
from api.openapi import build_spec
from indexer.build import build_index
from indexer.sources import read_sources
from indexer.sync import sync_index
from indexer.update import add_articles
from indexer.watch import Watcher
from indexer.web import Fetcher
from search.alerts.saved import AlertDetail
from search.alerts.service import AlertService
from search.models import Article
from search.service import SearchService
from search.settings import Settings
from search.text.embedding import Embedder
from tests.conftest import DATED, assert_error, make_service
from tests.webfixtures import Item, rss

ROWS = {r["id"]: r for r in (json.loads(line) for line in DATED.read_text(encoding="utf-8").splitlines() if line)}
BASE = ["wire/opec-background", "gazette/library-opens", "courier/football-final"]
NEW = ["wire/opec-cut-1", "gazette/opec-cut-copy", "courier/opec-vienna", "courier/opec-june", "wire/cocoa-review"]
OPEC = "OPEC oil production cut"
WRITE, READ = "write-key", "read-key"


def _jsonl(path: Path, ids: list[str]) -> Path:
    path.write_text("".join(json.dumps(ROWS[i]) + "\n" for i in ids), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """Background coverage only: the OPEC cut, its copy, its story mate and the cocoa review arrive by writes."""
    work = tmp_path_factory.mktemp("alerts")
    target = work / "idx"
    source = _jsonl(work / "base.jsonl", BASE)
    build_index(read_sources([source]), target, Settings(index_dir=target), embedder, progress=False)
    return target


@pytest.fixture
def index(base_index: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "idx"
    shutil.copytree(base_index, copy, symlinks=False)
    return copy


def _new_articles(ids: list[str] = NEW) -> list[Article]:
    with tempfile.TemporaryDirectory() as work:
        return list(read_sources([_jsonl(Path(work) / "new.jsonl", ids)]))


def _detail(svc: SearchService, alert_id: int) -> AlertDetail:
    return AlertService(svc).get(alert_id)


def _entries(detail: AlertDetail) -> dict[str, list[str]]:
    """Each entry's article id, with the ids grouped under it."""
    return {m.article.id: sorted(g.article.id for g in m.grouped) for m in detail.matches}


def test_a_write_records_matching_articles_and_collapses_copies_and_story_mates(
    index: Path, embedder: Embedder
) -> None:
    svc = make_service(index, embedder)
    alerts = AlertService(svc)
    opec = alerts.create(OPEC, threshold=0.5)
    cocoa = alerts.create("cocoa harvest", threshold=0.5)
    election = alerts.create("election results", threshold=0.5)
    add_articles(svc.index, _new_articles(), embedder, svc.settings)  # newsdesk add's write

    found = _detail(svc, opec.id)
    # the copy (duplicate group) and the Vienna report (same story) are grouped under the first report; the June
    # meeting is another story: an entry of its own; the cocoa review is not about OPEC
    assert _entries(found) == {
        "courier/opec-june": [],
        "wire/opec-cut-1": ["courier/opec-vienna", "gazette/opec-cut-copy"],
    }
    assert found.alert.entries == 2
    first = next(m for m in found.matches if m.article.id == "wire/opec-cut-1")
    sentence = first.passage[first.highlight.start : first.highlight.end]
    assert "cut crude oil production" in sentence  # the passage's sentence that answers, as search marks it
    assert _entries(_detail(svc, cocoa.id)) == {"wire/cocoa-review": []}
    assert _entries(_detail(svc, election.id)) == {}


def test_a_changed_article_already_reported_is_not_reported_again(index: Path, embedder: Embedder) -> None:
    svc = make_service(index, embedder)
    alert = AlertService(svc).create(OPEC, threshold=0.5)
    add_articles(svc.index, _new_articles(["wire/opec-cut-1"]), embedder, svc.settings)
    changed = _new_articles(["wire/opec-cut-1"])[0]
    changed = Article(changed.id, changed.title, (*changed.paragraphs, "Analysts expect further cuts."), changed.date)
    add_articles(svc.index, [changed], embedder, svc.settings)
    assert _entries(_detail(svc, alert.id)) == {"wire/opec-cut-1": []}


def test_matches_commit_with_the_write_or_not_at_all(
    index: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make_service(index, embedder)
    alert = AlertService(svc).create(OPEC, threshold=0.5)

    def broken(*args: object) -> None:
        raise RuntimeError("the write fails after the matching ran")

    monkeypatch.setattr(indexer.update, "_changed", broken)
    with pytest.raises(RuntimeError):
        add_articles(svc.index, _new_articles(), embedder, svc.settings)
    conn = svc.index.sqlite.connection()
    assert conn.execute("SELECT COUNT(*) FROM alert_matches").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM articles WHERE id = 'wire/opec-cut-1'").fetchone()[0] == 0
    monkeypatch.undo()
    svc = make_service(index, embedder)
    add_articles(svc.index, _new_articles(), embedder, svc.settings)
    assert _detail(svc, alert.id).alert.entries == 2


def test_filters_and_top_per_day_apply(index: Path, embedder: Embedder) -> None:
    svc = make_service(index, embedder)
    alerts = AlertService(svc)
    courier = alerts.create(OPEC, threshold=0.5, sources=["daily courier"])
    april = alerts.create(OPEC, threshold=0.5, date_from="2024-04-01", date_to="2024-04-30")
    one_a_day = alerts.create("oil prices", top_per_day=1)
    add_articles(svc.index, _new_articles(), embedder, svc.settings)
    assert _entries(_detail(svc, courier.id)) == {"courier/opec-june": [], "courier/opec-vienna": []}
    assert set(_entries(_detail(svc, april.id))) == {"wire/opec-cut-1"}
    days = [m.article.date[:10] for m in _detail(svc, one_a_day.id).matches if m.article.date]
    assert len(days) == len(set(days)) >= 2  # one entry a day; the cocoa review's day has its own


def test_saved_queries_are_embedded_again_when_the_model_changed(index: Path, embedder: Embedder) -> None:
    svc = make_service(index, embedder)
    alert = AlertService(svc).create(OPEC, threshold=0.5)
    conn = svc.index.sqlite.connection()
    with conn:
        conn.execute("UPDATE alerts SET model = 'another-model', vector = ?", (np.zeros(3, np.float32).tobytes(),))
    add_articles(svc.index, _new_articles(), embedder, svc.settings)
    vector = np.frombuffer(conn.execute("SELECT vector FROM alerts").fetchone()[0], np.float32)
    assert vector.shape == (embedder.dimension,)
    assert np.allclose(vector, embedder.encode([OPEC])[0], atol=1e-5)
    assert _detail(svc, alert.id).alert.entries == 2


def test_a_saved_search_deleted_by_any_statement_is_no_longer_matched(index: Path, embedder: Embedder) -> None:
    """The matrices a process compiled are keyed by the alerts version, which every change to the table moves (a
    trigger), so a saved search deleted outside AlertService (another tool, a manual DELETE) is not matched with
    a stale matrix (a match row for an alert that is gone: a foreign-key failure that would fail the write)."""
    svc = make_service(index, embedder)
    AlertService(svc).create(OPEC, threshold=0.5)
    add_articles(svc.index, _new_articles(["wire/cocoa-review"]), embedder, svc.settings)  # compiled and cached
    conn = svc.index.sqlite.connection()
    with conn:
        conn.execute("DELETE FROM alerts")
    add_articles(svc.index, _new_articles(["wire/opec-cut-1"]), embedder, svc.settings)
    assert conn.execute("SELECT COUNT(*) FROM articles WHERE id = 'wire/opec-cut-1'").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM alert_matches").fetchone()[0] == 0


def test_saving_a_search_beside_a_live_write_waiting_for_its_commit_does_not_deadlock(
    index: Path, embedder: Embedder
) -> None:
    """A live write holds SQLite's write lock and then takes the service's write lock to commit (indexer/live.py).
    Saving a search must not wait for SQLite's lock while holding the service's read lock: the two would wait on each
    other until SQLite's busy timeout (30 s). Here a writer thread takes SQLite's lock, then waits for the service's
    write lock while the search is saved."""
    svc = make_service(index, embedder)
    alerts = AlertService(svc)
    holding, done = threading.Event(), threading.Event()

    def writer() -> None:
        conn = sqlite3.connect(index / "newsdesk.sqlite", timeout=30.0)
        conn.execute("BEGIN IMMEDIATE")
        holding.set()
        time.sleep(0.3)  # the save below is waiting for SQLite by now
        with svc.lock.writing():  # the commit's exclusive section
            conn.commit()
        conn.close()
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert holding.wait(10)
    started = time.monotonic()
    saved: list[int] = []
    saver = threading.Thread(target=lambda: saved.append(alerts.create(OPEC).id), daemon=True)
    saver.start()
    saver.join(10)
    assert done.wait(10) and saved, "the save and the write waited on each other"
    assert time.monotonic() - started < 10


# -- each write path ---------------------------------------------------------------------------------------------


def _app(svc: SearchService) -> FlaskClient:
    return create_app(service=svc).test_client()


def _key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _conforms(name: str, body: Any) -> None:
    """``body`` validates against the document's (closed) schema ``name``, and not with a field added."""
    import jsonschema_rs

    spec = build_spec(Settings())
    validator = jsonschema_rs.validator_for({**spec["components"]["schemas"][name], "components": spec["components"]})
    assert not [str(e) for e in validator.iter_errors(body)], name
    assert not validator.is_valid({**body, "unexpected": 1})


def test_the_api_creates_lists_reads_and_deletes_with_the_write_key_only(index: Path, embedder: Embedder) -> None:
    client = _app(make_service(index, embedder, api_key=WRITE, read_api_key=READ))
    body = {"query": OPEC, "mode": "hybrid", "threshold": 0.5}
    assert_error(client.post("/api/alerts", json=body, headers=_key(READ)), 401)
    assert_error(client.post("/api/alerts", json=body), 401)
    for bad in (
        {"query": OPEC, "mode": "fuzzy"},
        {"query": OPEC, "threshold": 0.5, "top_per_day": 3},
        {"query": OPEC, "threshold": "high"},
        {"query": OPEC, "webhook": "file:///etc/passwd"},
        {"query": OPEC, "from": "yesterday"},
        {"query": OPEC, "colour": "red"},
        {"query": ""},
        [OPEC],
    ):
        assert_error(client.post("/api/alerts", json=bad, headers=_key(WRITE)), 400, "invalid_input")
    created = client.post("/api/alerts", json=body, headers=_key(WRITE))
    assert created.status_code == 201, created.get_json()
    alert_id = created.get_json()["id"]
    default = client.post("/api/alerts", json={"query": "cocoa harvest", "mode": "dense"}, headers=_key(WRITE))
    assert default.get_json()["threshold"] == Settings().alert_threshold_dense
    assert [a["query"] for a in client.get("/api/alerts", headers=_key(READ)).get_json()["alerts"]] == [
        OPEC,
        "cocoa harvest",
    ]
    assert_error(client.get("/api/alerts"), 401)

    written = client.post("/api/articles", json={"articles": [ROWS[i] for i in NEW]}, headers=_key(WRITE))
    assert written.status_code == 200, written.get_json()
    detail = client.get(f"/api/alerts/{alert_id}", headers=_key(READ)).get_json()
    assert {m["article"]["id"] for m in detail["matches"]} == {"wire/opec-cut-1", "courier/opec-june"}
    match = detail["matches"][-1]
    marked = match["passage"][match["highlight"]["start"] : match["highlight"]["end"]]
    assert "OPEC" in marked and match["delivery"] is None

    _conforms("AlertDetail", detail)
    _conforms("AlertList", client.get("/api/alerts", headers=_key(READ)).get_json())
    _conforms("Alert", created.get_json())

    assert_error(client.delete(f"/api/alerts/{alert_id}", headers=_key(READ)), 401)
    deleted = client.delete(f"/api/alerts/{alert_id}", headers=_key(WRITE)).get_json()
    assert deleted == {"deleted": alert_id}
    _conforms("AlertDeleted", deleted)
    assert_error(client.get(f"/api/alerts/{alert_id}", headers=_key(READ)), 404, "not_found")
    assert_error(client.delete(f"/api/alerts/{alert_id}", headers=_key(WRITE)), 404, "not_found")
    for huge in (2**63, 10**20):  # past SQLite's integers: no alert, not a 500
        assert_error(client.get(f"/api/alerts/{huge}", headers=_key(READ)), 404, "not_found")
        assert_error(client.delete(f"/api/alerts/{huge}", headers=_key(WRITE)), 404, "not_found")


def test_the_cli_adds_lists_and_removes_and_newsdesk_add_matches(index: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    added = runner.invoke(main, ["alerts", "add", OPEC, "--index", str(index), "--threshold", "0.5"])
    assert added.exit_code == 0, added.output
    alert_id = json.loads(added.stdout)["id"]
    wrote = runner.invoke(main, ["add", str(_jsonl(tmp_path / "new.jsonl", NEW)), "--index", str(index)])
    assert wrote.exit_code == 0, wrote.output
    listed = runner.invoke(main, ["alerts", "list", "--index", str(index)])
    assert listed.exit_code == 0 and f"{alert_id}\thybrid\tthreshold 0.5\t2 matches\t{OPEC}" in listed.stdout
    as_json = json.loads(runner.invoke(main, ["alerts", "list", "--index", str(index), "--json"]).stdout)
    assert as_json["alerts"][0]["entries"] == 2

    for args in (
        ["alerts", "add", OPEC, "--threshold", "5"],
        ["alerts", "add", OPEC, "--from", "someday"],
        ["alerts", "add", OPEC, "--webhook", "ftp://x"],
        ["alerts", "rm", "999"],
    ):
        bad = runner.invoke(main, [*args, "--index", str(index)])
        assert bad.exit_code == 1 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1, bad.output
    assert runner.invoke(main, ["alerts", "rm", str(alert_id), "--index", str(index)]).exit_code == 0
    assert "no saved searches" in runner.invoke(main, ["alerts", "list", "--index", str(index)]).stderr


def test_newsdesk_watch_matches_a_local_feed(index: Path, embedder: Embedder, tmp_path: Path) -> None:
    svc = make_service(index, embedder)
    alert = AlertService(svc).create(OPEC, threshold=0.5)
    cut, cocoa = ROWS["wire/opec-cut-1"], ROWS["wire/cocoa-review"]
    feed = tmp_path / "wire.rss"
    items = [
        Item(
            "urn:cut",
            cut["title"],
            "Tue, 02 Apr 2024 09:00:00 GMT",
            content="".join(f"<p>{p}</p>" for p in cut["paragraphs"]),
        ),
        Item(
            "urn:cocoa",
            cocoa["title"],
            "Wed, 03 Apr 2024 12:00:00 GMT",
            content="".join(f"<p>{p}</p>" for p in cocoa["paragraphs"]),
        ),
    ]
    feed.write_bytes(rss("Wire", items))
    assert Watcher(svc, [str(feed)], Fetcher(1.0, "newsdesk-tests/1.0"), concurrency=1).poll().ingested == 2
    assert list(_entries(_detail(svc, alert.id))) == ["urn:cut"]


def test_a_reindex_matches_what_it_writes_and_a_rebuild_keeps_alerts_and_matches_only_new_articles(
    index: Path, embedder: Embedder, tmp_path: Path
) -> None:
    svc = make_service(index, embedder)
    alert = AlertService(svc).create(OPEC, threshold=0.5)
    settings = Settings(index_dir=index)
    report = sync_index(read_sources([_jsonl(tmp_path / "a.jsonl", [*BASE, NEW[0]])]), settings, embedder)
    assert report.mode == "incremental" and report.added == 1
    assert set(_entries(_detail(make_service(index, embedder), alert.id))) == {"wire/opec-cut-1"}

    # too much changed to go incrementally: a full build replaces the index; it keeps the saved searches and
    # their matches and matches the articles the replaced index lacked, not those it held (no flood of old news)
    report = sync_index(read_sources([_jsonl(tmp_path / "b.jsonl", BASE + NEW)]), settings, embedder)
    assert report.mode == "full"
    rebuilt = make_service(index, embedder)
    detail = _detail(rebuilt, alert.id)
    assert detail.alert.query == OPEC
    assert _entries(detail) == {
        "courier/opec-june": [],
        "wire/opec-cut-1": ["courier/opec-vienna", "gazette/opec-cut-copy"],
    }
    conn = rebuilt.index.sqlite.connection()
    first = conn.execute("SELECT id, matched_at FROM alert_matches WHERE article = 'wire/opec-cut-1'").fetchall()
    sync_index(read_sources([_jsonl(tmp_path / "b.jsonl", BASE + NEW)]), settings, embedder, rebuild=True)
    again = make_service(index, embedder)
    assert _detail(again, alert.id) == detail  # nothing new: nothing matched again
    assert (
        again.index.sqlite.connection()
        .execute("SELECT id, matched_at FROM alert_matches WHERE article = 'wire/opec-cut-1'")
        .fetchall()
        == first
    )
    late = Article(
        "wire/opec-late",
        "OPEC extends its oil production cut",
        ("OPEC ministers extended the oil production cut to December.",),
        "2024-09-01",
    )
    add_articles(again.index, [late], embedder, again.settings)  # and the rebuilt index goes on matching writes
    assert "wire/opec-late" in _entries(_detail(again, alert.id))


# -- delivery ------------------------------------------------------------------------------------------------------


def test_the_atom_feed_parses_without_bozo_and_its_ids_are_stable(index: Path, embedder: Embedder) -> None:
    svc = make_service(index, embedder, api_key=WRITE)
    client = _app(svc)
    alert_id = client.post("/api/alerts", json={"query": OPEC, "threshold": 0.5}, headers=_key(WRITE)).get_json()["id"]
    empty = feedparser.parse(client.get(f"/api/alerts/{alert_id}/feed.atom").get_data())
    assert not empty.bozo and empty.entries == []
    client.post("/api/articles", json={"articles": [ROWS[i] for i in NEW]}, headers=_key(WRITE))
    first = client.get(f"/api/alerts/{alert_id}/feed.atom")
    assert first.status_code == 200 and first.content_type.startswith("application/atom+xml")
    parsed = feedparser.parse(first.get_data())
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10" and OPEC in parsed.feed.title
    assert [e.title for e in parsed.entries] == [ROWS["courier/opec-june"]["title"], ROWS["wire/opec-cut-1"]["title"]]
    assert "cut crude oil production" in parsed.entries[1].summary
    assert "gazette/opec-cut-copy" in parsed.entries[1].content[0].value
    again = feedparser.parse(client.get(f"/api/alerts/{alert_id}/feed.atom").get_data())
    assert [e.id for e in again.entries] == [e.id for e in parsed.entries] and len({e.id for e in parsed.entries}) == 2
    assert_error(client.get("/api/alerts/99/feed.atom"), 404, "not_found")


class Hook:
    """A local webhook: answers 500 to the first ``failures`` posts, then 200; ``hold`` makes it wait first."""

    def __init__(self, failures: int = 0, hold: threading.Event | None = None) -> None:
        self.failures = failures
        self.hold = hold
        self.bodies: list[dict[str, Any]] = []
        self.arrived = threading.Event()  # a post reached the server (and, with ``hold``, waits there)
        self.delivered = threading.Event()


@contextmanager
def hook_server(hook: Hook) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            hook.arrived.set()
            if hook.hold is not None:
                hook.hold.wait(10)
            hook.bodies.append(body)
            status = 500 if len(hook.bodies) <= hook.failures else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if status == 200:
                hook.delivered.set()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        if hook.hold is not None:
            hook.hold.set()
        server.shutdown()
        server.server_close()


@contextmanager
def delivering(client: FlaskClient) -> Iterator[None]:
    """The app's webhook deliverer stopped when the test ends (its thread would poll the deleted index)."""
    try:
        yield
    finally:
        client.application.extensions["newsdesk.alerts"].deliverer.stop()


FAST = {"alert_retry_base": 0.05, "alert_poll": 0.05, "alert_webhook_timeout": 2.0}


def test_a_webhook_that_fails_twice_is_delivered_on_the_third_try_and_counted(index: Path, embedder: Embedder) -> None:
    hook = Hook(failures=2)
    svc = make_service(index, embedder, api_key=WRITE, **FAST)
    client = _app(svc)
    with hook_server(hook) as url, delivering(client):
        body = {"query": OPEC, "threshold": 0.5, "webhook": url}
        alert_id = client.post("/api/alerts", json=body, headers=_key(WRITE)).get_json()["id"]
        client.post("/api/articles", json={"articles": [ROWS[i] for i in NEW[:3]]}, headers=_key(WRITE))
        assert hook.delivered.wait(20)
    assert len(hook.bodies) == 3 and hook.bodies[0] == hook.bodies[2]  # one entry: the copy and mate are grouped
    assert hook.bodies[2]["alert"] == {"id": alert_id, "query": OPEC, "mode": "hybrid"}
    assert hook.bodies[2]["match"]["article"]["id"] == "wire/opec-cut-1"
    deadline = time.monotonic() + 10
    while client.get(f"/api/alerts/{alert_id}").get_json()["matches"][0]["delivery"] != "delivered":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "newsdesk_alert_webhook_failed_attempts_total 2.0" in metrics
    assert "newsdesk_alert_webhook_delivered_total 1.0" in metrics
    assert "newsdesk_alert_webhook_pending 0.0" in metrics


def test_a_webhook_that_never_answers_does_not_delay_writes(index: Path, embedder: Embedder) -> None:
    hold = threading.Event()
    hook = Hook(hold=hold)
    svc = make_service(index, embedder, api_key=WRITE, **FAST)
    client = _app(svc)
    with hook_server(hook) as url, delivering(client):
        body = {"query": OPEC, "threshold": 0.5, "webhook": url}
        client.post("/api/alerts", json=body, headers=_key(WRITE))
        first = client.post("/api/articles", json=ROWS["wire/opec-cut-1"], headers=_key(WRITE))
        assert first.status_code == 200
        assert hook.arrived.wait(20)  # the deliverer is now stuck in its post
        started = time.monotonic()
        second = client.post("/api/articles", json={"articles": [ROWS[i] for i in NEW[3:]]}, headers=_key(WRITE))
        # the second write's matches are recorded and answered while the webhook still holds the first post
        assert second.status_code == 200 and not hook.bodies
        assert time.monotonic() - started < FAST["alert_webhook_timeout"] * 5
        assert client.get("/api/alerts/1").get_json()["matches"][0]["article"]["id"] == "courier/opec-june"
        hold.set()
        assert hook.delivered.wait(20)


def test_the_alerts_page_lists_alerts_and_their_matches_with_the_answer_marked(index: Path, embedder: Embedder) -> None:
    svc = make_service(index, embedder)
    client = _app(svc)
    assert "No saved searches yet" in client.get("/alerts").get_data(as_text=True)
    alerts = AlertService(svc)
    alerts.create(OPEC, threshold=0.5)
    alerts.create("election results", threshold=0.5, sources=["Harbour Wire"])
    add_articles(svc.index, _new_articles(), embedder, svc.settings)
    page = client.get("/alerts")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert f'<h2 class="card-head">{OPEC}</h2>' in html and "election results" in html
    assert '<mark class="answer">OPEC ministers agreed in Vienna on Tuesday to cut crude oil production' in html
    assert "Also: <a" in html and "Valley Gazette" in html  # the copy, grouped under its first report
    assert "from Harbour Wire" in html and "No new article has matched yet." in html
    assert 'href="/api/alerts/1/feed.atom"' in html
    assert "<script>" not in html and "/alerts" in client.get("/").get_data(as_text=True)


def test_matches_written_elsewhere_are_posted_by_a_server_started_later(index: Path, embedder: Embedder) -> None:
    """Pending posts live in SQLite: matches recorded by ``newsdesk add`` (another process, no server running) are
    posted by the server that starts later, at its first request; nothing is lost with the writer."""
    hook = Hook()
    svc = make_service(index, embedder, **FAST)
    with hook_server(hook) as url:
        AlertService(svc).create(OPEC, threshold=0.5, webhook=url)
        add_articles(svc.index, _new_articles(["wire/opec-cut-1"]), embedder, svc.settings)  # no server meanwhile
        assert not hook.bodies
        client = _app(make_service(index, embedder, **FAST))
        with delivering(client):
            assert client.get("/api/health").status_code == 200  # the first request starts the deliverer
            assert hook.delivered.wait(20)
    assert hook.bodies[0]["match"]["article"]["id"] == "wire/opec-cut-1"
