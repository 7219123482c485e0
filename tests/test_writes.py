"""Live writes: validation of whole requests, keys, limits, visibility to searches, concurrency, other processes."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from indexer.live import Writer
from search.errors import InvalidInput
from search.intake import Limits, parse_write
from search.models import Article
from search.service import SearchService
from search.settings import Settings
from search.storage.index import check_index, open_index
from search.storage.store import NewArticle, Store
from tests.conftest import assert_error

KEY = "s3cret-write-key"
READ_KEY = "read-only-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
NEW = {
    "id": "world/900",
    "title": "Volcanic eruption forces evacuation of island villages",
    "paragraphs": ["Lava flows reached the coast on Monday as thousands of islanders were moved to shelters."],
    "date": "2024-05-02",
    "source": "Example Wire",
    "tags": ["world"],
}


def _service(tmp_path: Path, corpus_index: Path, embedder: Any, **settings: Any) -> SearchService:
    copy = tmp_path / "live"
    if not copy.exists():
        shutil.copytree(corpus_index, copy)
    return SearchService(open_index(copy, embedder), embedder, Settings(index_dir=copy, **settings))


@pytest.fixture
def live(tmp_path: Path, corpus_index: Path, embedder: Any) -> SearchService:
    return _service(tmp_path, corpus_index, embedder, api_key=KEY, max_body_bytes=200_000, max_field_chars=100_000)


@pytest.fixture
def live_app(live: SearchService) -> Flask:
    app = create_app(service=live)
    app.config["TESTING"] = False
    return app


@pytest.fixture
def wclient(live_app: Flask) -> FlaskClient:
    return live_app.test_client()


def _count(svc: SearchService) -> int:
    return int(svc.index.store.counts()[0])


# -- what a request may carry ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "article object"),
        ({"articles": []}, "must not be empty"),
        ({"articles": "x"}, "must be a list"),
        ({"title": "no id"}, "article.id is required"),
        ({"id": " ", "title": "t"}, "must not be empty"),
        ({"id": "a", "title": 5}, "article.title must be a string"),
        ({"id": "a", "title": "t", "body": "x"}, "unknown fields: body"),
        ({"id": "a", "title": "t", "date": "yesterday"}, "ISO 8601"),
        ({"id": "a", "title": "t", "paragraphs": ["ok", 3]}, "paragraphs[1] must be a string"),
        ({"id": "a", "title": "t" * 101}, "the limit is 100"),
        ({"id": "a", "title": "t\x00"}, "NUL"),
        ({"id": "a", "title": "\ud800"}, "lone surrogate"),
        ({"id": "a", "title": "", "paragraphs": []}, "neither a title nor any text"),
        ({"id": "a", "title": "t", "extra": {"a": {"b": {"c": {"d": {"e": {"f": {}}}}}}}}, "nested deeper"),
        ({"articles": [{"id": "a", "title": "t"}, {"id": "a", "title": "u"}]}, "appears twice"),
        ({"articles": [{"id": str(i), "title": "t"} for i in range(4)]}, "at most 3 articles"),
    ],
)
def test_bad_articles_are_refused_with_their_place(payload: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_write(payload, Limits(max_articles=3, max_field_chars=100))


def test_a_good_article_is_normalised() -> None:
    (a,) = parse_write({**NEW, "text": None, "date": "2024-05-02T10:00:00Z"} | {"paragraphs": [" a  b ", ""]}, Limits())
    assert a.paragraphs == ("a b",) and a.date == "2024-05-02T10:00:00+00:00" and a.tags == ("world",)


# -- keys ----------------------------------------------------------------------------------------------------------


def test_writes_need_the_key_and_are_off_without_one(
    wclient: FlaskClient, tmp_path: Path, corpus_index: Path, embedder: Any
) -> None:
    r = wclient.post("/api/articles", json=NEW)
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(wclient.post("/api/articles", json=NEW, headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(wclient.delete("/api/articles/business/001"), 401, "unauthorized")
    closed = create_app(service=_service(tmp_path, corpus_index, embedder)).test_client()
    assert_error(closed.post("/api/articles", json=NEW, headers=AUTH), 403, "writes_disabled")


def test_a_read_key_closes_reads_but_not_health(tmp_path: Path, corpus_index: Path, embedder: Any) -> None:
    svc = _service(tmp_path, corpus_index, embedder, api_key=KEY, read_api_key=READ_KEY)
    client = create_app(service=svc).test_client()
    assert_error(client.get("/api/search?q=rates"), 401, "unauthorized")
    assert client.get("/api/search?q=rates", headers={"Authorization": f"Bearer {READ_KEY}"}).status_code == 200
    assert client.get("/api/search?q=rates", headers=AUTH).status_code == 200  # the write key reads too
    assert client.get("/api/health").status_code == 200
    assert_error(client.post("/api/articles", json=NEW, headers={"Authorization": f"Bearer {READ_KEY}"}), 401)


# -- writing -------------------------------------------------------------------------------------------------------


def test_an_acknowledged_write_is_stored_and_searchable_then_deleted(wclient: FlaskClient, live: SearchService) -> None:
    r = wclient.post("/api/articles", json=NEW, headers=AUTH)
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["written"] == ["world/900"] and body["generation"] == live.index.store.generation()
    got = wclient.get("/api/search", query_string={"q": "lava volcano evacuation"}).get_json()
    assert got["results"][0]["article"]["id"] == "world/900"
    assert wclient.get("/api/articles/world/900").get_json()["story_id"]
    assert check_index(live.index.writable[0]) == []
    changed = {**NEW, "title": "Eruption ends as islanders return home"}
    assert wclient.post("/api/articles", json={"articles": [changed]}, headers=AUTH).status_code == 200
    assert wclient.get("/api/articles/world/900").get_json()["title"] == changed["title"]
    assert wclient.delete("/api/articles/world/900", headers=AUTH).get_json()["deleted"] == ["world/900"]
    assert_error(wclient.get("/api/articles/world/900"), 404, "not_found")
    assert_error(wclient.delete("/api/articles/world/900", headers=AUTH), 404, "not_found")
    assert check_index(live.index.writable[0]) == []


def test_a_batch_delete_is_one_write_all_or_nothing(wclient: FlaskClient, live: SearchService) -> None:
    batch = [NEW, {**NEW, "id": "world/901", "title": "Second eruption alert"}]
    assert wclient.post("/api/articles", json={"articles": batch}, headers=AUTH).status_code == 200
    before, generation = _count(live), live.index.store.generation()
    # one unknown id: 404, and both articles still there
    r = wclient.delete("/api/articles", json={"ids": ["world/900", "world/999"]}, headers=AUTH)
    assert_error(r, 404, "not_found")
    assert _count(live) == before and live.index.store.generation() == generation
    bodies: list[dict[str, Any]] = [{"ids": []}, {"ids": ["world/900"] * 2}, {"ids": [""]}, {"ids": "x"}, {"id": "x"}]
    for bad in bodies:
        assert_error(wclient.delete("/api/articles", json=bad, headers=AUTH), 400, "invalid_input")
    assert_error(wclient.delete("/api/articles", json={"ids": ["world/900"]}), 401)
    assert _count(live) == before
    r = wclient.delete("/api/articles", json={"ids": ["world/900", "world/901"]}, headers=AUTH)
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["deleted"] == ["world/900", "world/901"] and body["generation"] == generation + 1
    assert live.index.store.aid_of("world/900") is None and live.index.store.aid_of("world/901") is None
    assert_error(wclient.get("/api/articles/world/901"), 404, "not_found")
    assert check_index(live.index.writable[0]) == []


@pytest.mark.parametrize(
    "body",
    [
        {"articles": [NEW, {**NEW, "id": "world/901", "date": "not a date"}]},  # one bad article: none stored
        {"articles": [NEW, {"id": "world/902", "title": "x" * 300_000}]},  # too big: 413 before parsing
        "not json at all",
    ],
)
def test_a_rejected_request_stores_nothing(wclient: FlaskClient, live: SearchService, body: Any) -> None:
    before, generation = _count(live), live.index.store.generation()
    if isinstance(body, str):
        r = wclient.post("/api/articles", data=body, headers={**AUTH, "Content-Type": "application/json"})
    else:
        r = wclient.post("/api/articles", json=body, headers=AUTH)
    assert 400 <= r.status_code < 500
    assert_error(r, r.status_code)
    assert _count(live) == before and live.index.store.generation() == generation
    assert live.index.store.aid_of("world/900") is None


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 50_000,  # RecursionError in the parser: was a 500
        '{"id": "world/903", "title": "t", "extra": {"x": NaN}}',
        '{"id": "world/903", "title": "t", "extra": {"x": Infinity}}',
        '{"id": "world/903", "title": "t", "extra": {"x": -Infinity}}',
        '{"id": "world/903", "title": "t", "extra": {"x": 1e999}}',
        '{"id": "world/903", "title": "t", "extra": {"x": ' + "9" * 400 + "}}",  # past a double: Infinity in JS
    ],
)
def test_bodies_that_cannot_round_trip_as_json_are_refused(wclient: FlaskClient, live: SearchService, raw: str) -> None:
    """Whatever is stored must come back as JSON a browser can read: no NaN or Infinity, no parser crash."""
    before = _count(live)
    r = wclient.post("/api/articles", data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert_error(r, 400, "invalid_input")
    assert _count(live) == before and live.index.store.aid_of("world/903") is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 10**400])
def test_extra_numbers_must_be_finite_doubles(value: float) -> None:
    """The same check for articles that reach ``parse_write`` without the API's parser (``newsdesk add``)."""
    with pytest.raises(InvalidInput, match="finite number"):
        parse_write({"id": "a", "title": "t", "extra": {"v": [value]}}, Limits())


def test_searches_keep_working_during_writes_and_see_every_write(live: SearchService) -> None:
    writer = Writer(live)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                live.search("central bank interest rates", k=5)
                live.similar("business/001", k=3)
            except BaseException as exc:
                errors.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for i in range(6):
            writer.upsert(parse_write({**NEW, "id": f"world/9{i:02d}", "title": f"{NEW['title']} {i}"}, Limits()))
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
    for i in range(6):
        assert live.article(f"world/9{i:02d}").title.endswith(str(i))
    assert check_index(live.index.writable[0]) == []


def test_another_process_sees_a_write_on_its_next_request(
    live: SearchService, tmp_path: Path, corpus_index: Path, embedder: Any
) -> None:
    other = _service(tmp_path, corpus_index, embedder)  # same directory, its own in-memory FAISS and postings
    Writer(live).upsert(parse_write(NEW, Limits()))
    hits = other.search("lava volcano evacuation", k=3).results
    assert hits[0].article.id == "world/900"
    assert json.dumps(other.health()["generation"]) == json.dumps(live.index.store.generation())


def test_cli_add_and_delete(runner: Any, tmp_path: Path, corpus_index: Path, write_jsonl: Any) -> None:
    from api.cli import main

    copy = tmp_path / "cli"
    shutil.copytree(corpus_index, copy)
    source = write_jsonl("new.jsonl", [NEW])
    r = runner.invoke(main, ["add", str(source), "--index", str(copy)])
    assert r.exit_code == 0, r.output
    assert open_index(copy, None).store.aid_of("world/900") is not None
    bad = runner.invoke(main, ["delete", "world/900", "no-such-id", "--index", str(copy)])
    assert bad.exit_code == 1 and "no-such-id" in bad.output
    assert open_index(copy, None).store.aid_of("world/900") is not None  # nothing deleted
    assert runner.invoke(main, ["delete", "world/900", "--index", str(copy)]).exit_code == 0
    assert open_index(copy, None).store.aid_of("world/900") is None
    assert check_index(copy) == []


# -- a fuzz run over the write endpoints: only 4xx, nothing stored --------------------------------------------------

_VALID = {"id": "fuzz/1", "title": "A headline", "paragraphs": ["A paragraph of text."]}
_BAD_TEXT = st.one_of(
    st.text(min_size=1).map(lambda t: t + "\x00"),  # NUL anywhere
    st.sampled_from(["\ud800", "a\udfffb", "\udbff"]),  # lone surrogates (valid JSON escapes, not Unicode text)
    st.integers(min_value=100_001, max_value=150_000).map(lambda n: "x" * n),  # over max_field_chars (100k here)
)
# (an empty list is no wrong type: paragraphs [] is a headline-only article, tags [] none)
_WRONG_TYPE = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), min_size=1, max_size=3)
)


@st.composite
def _bad_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["raw", "field-type", "field-text", "unknown", "missing", "batch", "shape"]))
    if kind == "raw":  # not JSON at all, or truncated JSON
        raw = draw(st.one_of(st.binary(max_size=200), st.just(json.dumps(_VALID)[:-3].encode())))
        return kind, raw
    article: dict[str, Any] = dict(_VALID)
    if kind == "field-type":
        article[draw(st.sampled_from(["id", "title", "paragraphs", "date", "source", "tags", "extra"]))] = draw(
            _WRONG_TYPE
        )
    elif kind == "field-text":
        field = draw(st.sampled_from(["id", "title", "source"]))
        article[field] = draw(_BAD_TEXT)
    elif kind == "unknown":
        article[
            draw(
                st.text(min_size=1, max_size=10).filter(
                    lambda k: (
                        k
                        not in {
                            "id",
                            "title",
                            "paragraphs",
                            "text",
                            "date",
                            "source",
                            "url",
                            "tags",
                            "category",
                            "extra",
                        }
                    )
                )
            )
        ] = "x"
    elif kind == "missing":
        del article[draw(st.sampled_from(["id", "title"]))]
    elif kind == "shape":
        return kind, json.dumps(draw(st.one_of(st.lists(st.integers()), st.text(), st.integers()))).encode()
    body: Any = article
    if kind == "batch":  # one bad article among good ones: the whole batch is refused
        bad = {
            **_VALID,
            "id": "fuzz/bad",
            # not a date (a blank one is: it means "undated")
            "date": draw(st.text(min_size=1, max_size=20).filter(lambda t: "-" not in t and t.strip() != "")),
        }
        body = {"articles": [{**_VALID, "id": f"fuzz/{i}"} for i in range(draw(st.integers(0, 3)))] + [bad]}
    return kind, json.dumps(body).encode()


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # the 100 kB fields make long reprs
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_bad_bodies())
def test_fuzzed_writes_get_only_4xx_and_store_nothing(wclient: FlaskClient, live: SearchService, case: Any) -> None:
    kind, raw = case
    before = live.index.store.generation()
    r = wclient.post("/api/articles", data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (kind, raw[:200], r.get_data(as_text=True))
    assert_error(r, r.status_code)
    assert live.index.store.generation() == before


@pytest.mark.parametrize("raw", ["Sat, 08 Jan 2005 10:00:00 GMT", "8 Jan 2005", "2005-01-08T10:00:00Z", "08/01/2005"])
def test_the_api_reads_the_dates_the_indexer_reads(raw: str, tmp_path: Path) -> None:
    """One parser (search/text/dates.py): a date a corpus may carry is a date a client may send, with the same value."""
    from indexer.sources import read_sources

    (a,) = parse_write({**NEW, "date": raw}, Limits())
    source = tmp_path / "a.jsonl"
    source.write_text(json.dumps({**NEW, "date": raw}) + "\n", encoding="utf-8")
    (b,) = read_sources([source])
    assert a.date is not None and a.date[:10] == "2005-01-08" and a.date == b.date


def test_the_api_refuses_a_month_first_date_as_the_indexer_leaves_it_unread() -> None:
    with pytest.raises(InvalidInput, match=re.escape("article.date is not a date newsdesk can read")):
        parse_write({**NEW, "date": "12/25/2005"}, Limits())


def test_an_api_write_is_recorded_as_such(live: SearchService) -> None:
    """So that a later ``newsdesk index`` can warn before deleting it (issue 15, defect 7)."""
    Writer(live).upsert(parse_write(NEW, Limits()))
    conn = live.index.sqlite.connection()
    assert conn.execute("SELECT origin FROM articles WHERE id = ?", (NEW["id"],)).fetchone() == ("api",)
    assert {o for (o,) in conn.execute("SELECT origin FROM articles WHERE id != ?", (NEW["id"],))} == {None}


def _row(article_id: str, title: str) -> NewArticle:
    vec = np.ones(4, dtype=np.float32) / 2.0
    return NewArticle(
        article=Article(id=article_id, title=title, paragraphs=("Body text.",)),
        passages=[(0, "title", 0, len(title), title), (1, "body", 0, 10, "Body text.")],
        passage_vectors=np.stack([vec, vec]),
        article_vector=vec,
        origin="api",
    )


def test_the_change_log_holds_one_row_per_written_id_and_a_builds_bulk_load_none(tmp_path: Path) -> None:
    """What a rebuild carries into its new build is read from the change log: every write records its ids with
    their latest generation (a delete as such, a write again after it as an upsert), and the log stays bounded by
    the ids written since the store's build, since a build's own bulk load records nothing."""
    store = Store(tmp_path / "s.sqlite", create=True)
    try:
        store.add_articles([_row("built", "Built")])
        assert store.changed_since(-1) == []
        first = store.replace_articles((), [_row("a", "A"), _row("b", "B")]).generation
        store.replace_articles(["a", "built", "unknown"], [])
        last = store.replace_articles(["b"], [_row("b", "B again")]).generation
        rows = store.connection().execute("SELECT id, generation, op FROM changes ORDER BY id").fetchall()
        assert rows == [("a", first + 1, "delete"), ("b", last, "upsert"), ("built", first + 1, "delete")]
        assert sorted(store.changed_since(first)) == ["a", "b", "built"]
        assert store.changed_since(last) == []
        (copied,) = store.stored_rows(["a", "b", "built"])  # the deleted ones are not stored
        assert (copied.article.title, copied.origin, len(copied.passages)) == ("B again", "api", 2)
        assert np.array_equal(copied.passage_vectors, _row("b", "x").passage_vectors)
    finally:
        store.close()


# -- a server's write process (api/writes.py): serving workers forward their writes to it -------------------------


@pytest.fixture
def write_process(live_app: Flask, tmp_path: Path) -> Any:
    """``live_app`` serving on a Unix socket in a thread, as a server's write process serves the others."""
    from waitress.server import create_server

    path = tmp_path / "writer.sock"
    server = create_server(live_app, unix_socket=str(path), unix_socket_perms="600", threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield path
    server.close()
    thread.join(timeout=10)


def test_a_serving_worker_forwards_writes_and_answers_what_the_write_process_did(
    write_process: Path, live: SearchService, tmp_path: Path, corpus_index: Path, embedder: Any
) -> None:
    """The serving worker parses and refuses bad bodies itself, hands good ones to the write process, answers its
    refusals with their own status and code, and its searches see an acknowledged write at once."""
    from api.writes import WRITER, WriteForwarder, forward_writes

    other = _service(tmp_path, corpus_index, embedder, api_key=KEY)  # the serving worker: same index, own memory
    app = create_app(service=other)
    app.config["TESTING"] = False
    forward_writes(app, write_process)
    assert isinstance(app.extensions[WRITER], WriteForwarder)
    client = app.test_client()
    generation = live.index.store.generation()
    r = client.post("/api/articles", json=NEW, headers=AUTH)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json() == {"written": ["world/900"], "deleted": [], "generation": generation + 1}
    assert live.index.store.aid_of("world/900") is not None  # written by the write process's service
    got = client.get("/api/search", query_string={"q": "lava volcano evacuation"}).get_json()
    assert got["results"][0]["article"]["id"] == "world/900"  # followed before the read
    missing = {"ids": ["world/900", "world/999"]}
    assert_error(client.delete("/api/articles", json=missing, headers=AUTH), 404, "not_found")
    assert_error(client.post("/api/articles", json={**NEW, "date": "not a date"}, headers=AUTH), 400, "invalid_input")
    assert_error(client.post("/api/articles", json=NEW), 401, "unauthorized")  # checked here, never forwarded
    assert live.index.store.generation() == generation + 1  # none of those wrote
    r = client.delete("/api/articles", json={"ids": ["world/900"]}, headers=AUTH)
    assert r.get_json() == {"written": [], "deleted": ["world/900"], "generation": generation + 2}
    assert_error(client.get("/api/articles/world/900"), 404, "not_found")
    assert check_index(live.index.writable[0]) == []


def test_a_write_without_a_write_process_is_a_503_in_the_one_error_shape(
    live: SearchService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.writes
    from api.writes import forward_writes

    monkeypatch.setattr(api.writes, "WAIT_FOR_WRITER", 0.3)
    app = create_app(service=live)
    app.config["TESTING"] = False
    forward_writes(app, tmp_path / "nobody.sock")
    before = _count(live)
    assert_error(app.test_client().post("/api/articles", json=NEW, headers=AUTH), 503, "write_process_unavailable")
    assert _count(live) == before


def test_an_error_answer_comes_back_as_its_own_class() -> None:
    from api.writes import error_of
    from search.errors import NotFound, StorageError, WritesDisabled

    assert type(error_of("not_found", "no article", 404)) is NotFound
    assert type(error_of("writes_disabled", "off", 403)) is WritesDisabled
    assert type(error_of("storage_error", "disk full", 507)) is StorageError
    unknown = error_of("teapot", "", 418)
    assert (unknown.code, unknown.status) == ("teapot", 418) and "418" in unknown.message


@pytest.mark.parametrize(
    "reply",
    [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot"],
    ids=["closed", "cut-short", "not-json"],
)
def test_a_write_process_that_dies_mid_answer_is_a_503(live: SearchService, tmp_path: Path, reply: bytes) -> None:
    """The write process died (or answered garbage) with the write in hand: its outcome is unknown, so the serving
    worker answers 503 in the one error shape, never a 500 or a success."""
    import socket

    from api.writes import forward_writes

    path = tmp_path / "dying.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer_once() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(reply)
        conn.close()

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    app = create_app(service=live)
    app.config["TESTING"] = False
    forward_writes(app, path)
    try:
        response = app.test_client().post("/api/articles", json=NEW, headers=AUTH)
        assert_error(response, 503, "write_process_unavailable")
    finally:
        thread.join(timeout=10)
        listener.close()


def test_prepare_loads_the_duplicate_fingerprints_a_first_write_would(
    live: SearchService, corpus_index: Path, embedder: Any
) -> None:
    """A write process calls ``Writer.prepare`` before it listens, so no write loads the fingerprints niced under
    load; an index that cannot be written loads nothing."""
    assert live.index.duplicates is None
    Writer(live).prepare()
    assert live.index.duplicates is not None
    Writer(live).upsert(parse_write(NEW, Limits()))  # writes with them
    assert live.index.store.aid_of("world/900") is not None and check_index(live.index.writable[0]) == []
    frozen = SearchService(
        open_index(corpus_index, embedder, read_only=True), embedder, Settings(index_dir=corpus_index)
    )
    Writer(frozen).prepare()
    assert frozen.index.duplicates is None
