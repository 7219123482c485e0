"""The HTTP API end to end through Flask's test client, with the real model and real indexes.

Every error is checked with ``assert_error``: one JSON shape, a 4xx status (5xx only for a genuine crash), no HTML.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient

from api.app import create_app
from search.models import to_json, to_plain
from search.service import SearchService
from search.text.chunking import sentence_spans
from tests.conftest import CORPUS, SAMPLE, assert_error

RATES_QUERY = "interest rate increase by the central bank"
BUSINESS_001 = {"business/001", "copy-of-business-001"}  # an exact duplicate pair: same headline and paragraphs
LEADING_SLASH_ID = "/leading slash & ünïcode id"

SEARCH_KEYS = {"query", "mode", "total", "results", "took_ms", "facets", "next_cursor", "notes"}
RESULT_KEYS = {"article", "score", "scores", "passages", "related", "also_reported"}
ARTICLE_REF_KEYS = {"id", "title", "date", "source", "url", "canonical_id", "story_id"}
PASSAGE_KEYS = {"id", "text", "score", "field", "highlight", "scores"}
RELATED_KEYS = {"id", "title", "score"}
ARTICLE_KEYS = {"id", "title", "date", "source", "url", "tags", "paragraphs", "extra", "canonical_id", "story_id"}


def _records(path: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


CORPUS_RECORDS = _records(CORPUS)
CORPUS_IDS = [r["id"] for r in CORPUS_RECORDS]


def search_json(client: FlaskClient, q: str, **params: Any) -> dict[str, Any]:
    response = client.get("/api/search", query_string={"q": q, **params})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    return body


def result_ids(body: dict[str, Any]) -> list[str]:
    return [r["article"]["id"] for r in body["results"]]


def is_descending(values: list[float]) -> bool:
    return all(a >= b for a, b in itertools.pairwise(values))


# -- /api/search ---------------------------------------------------------------------------------------------


def test_search_and_similar_bodies_are_what_jsonify_writes(app: Flask) -> None:
    """The routes serialise with ``to_json`` (one function, which bench/search_cpu.py times): byte for byte what
    Flask's ``jsonify`` writes of the plain response, non-ASCII text, floats and nulls included."""
    service: SearchService = app.extensions["newsdesk"]
    hybrid = service.search(RATES_QUERY, mode="hybrid", facets=True)
    first = hybrid.results[0]
    unusual = replace(first, article=replace(first.article, title="Zürich \u2014 \u6771\u4eac", date=None))
    responses: list[object] = [hybrid, service.search(RATES_QUERY, mode="lexical"), unusual]
    responses.append(service.similar(first.article.id, k=3))
    with app.app_context():
        for response in responses:
            assert to_json(response) == jsonify(to_plain(response)).get_data()


def test_search_response_has_exactly_the_documented_shape(client: FlaskClient) -> None:
    body = search_json(client, RATES_QUERY, k=8)
    assert set(body) == SEARCH_KEYS
    assert body["query"] == RATES_QUERY
    assert body["total"] == len(body["results"]) >= 2  # the articles that match, the exact copy pair once
    assert body["notes"] == []
    assert isinstance(body["took_ms"], int | float) and body["took_ms"] >= 0
    for result in body["results"]:
        assert set(result) == RESULT_KEYS
        assert set(result["article"]) == ARTICLE_REF_KEYS
        assert isinstance(result["score"], float)
        assert 1 <= len(result["passages"]) <= 3
        for p in result["passages"]:
            assert set(p) == PASSAGE_KEYS
            assert set(p["highlight"]) == {"start", "end"}
            assert isinstance(p["id"], int) and isinstance(p["text"], str) and p["text"]
            assert isinstance(p["score"], float)
            assert p["field"] in ("title", "body")
            assert isinstance(p["highlight"]["start"], int) and isinstance(p["highlight"]["end"], int)
        for rel in result["related"]:
            assert set(rel) == RELATED_KEYS
            assert isinstance(rel["id"], str) and isinstance(rel["title"], str) and isinstance(rel["score"], float)
        assert len(result["related"]) <= 3
    # The article ref carries the real metadata of the indexed record.
    first = body["results"][0]["article"]
    assert first["id"] in BUSINESS_001
    assert first["title"] == "Central bank raises interest rates to fight inflation"
    assert first["date"] == "2024-03-14"


def test_search_scores_are_descending_and_articles_are_unique(client: FlaskClient) -> None:
    for mode in ("hybrid", "dense", "lexical"):
        body = search_json(client, "inflation and interest rates", k=8, mode=mode)
        assert body["mode"] == mode
        scores = [r["score"] for r in body["results"]]
        assert is_descending(scores)
        # every article that matches, the exact copy pair once: lexical mode only those holding a query term
        assert len(set(result_ids(body))) == len(body["results"]) == body["total"]
        assert body["total"] == 2 if mode == "lexical" else body["total"] >= 2
        for r in body["results"]:
            assert r["score"] == r["scores"]["fused"]
            passage_scores = [p["score"] for p in r["passages"]]
            assert is_descending(passage_scores)
            assert all(p["score"] == p["scores"]["fused"] for p in r["passages"])
            if mode == "dense":
                # an article ranks as its best passage: the vector store scores the article, numpy the passages, so
                # the two agree to float32 rounding (at 6 decimals they can differ by 1e-6)
                assert r["score"] == r["scores"]["dense"] == pytest.approx(passage_scores[0], abs=2e-6)
            if mode == "lexical":
                assert r["score"] == r["scores"]["lexical"] > 0
            assert is_descending([rel["score"] for rel in r["related"]])


def test_highlights_are_sentences_inside_their_passage(client: FlaskClient) -> None:
    body = search_json(client, "how high did inflation get in February", k=8, mode="dense")
    seen = 0
    for result in body["results"]:
        for p in result["passages"]:
            start, end = p["highlight"]["start"], p["highlight"]["end"]
            assert 0 <= start < end <= len(p["text"])
            sentence = p["text"][start:end]
            assert sentence.strip() == sentence and sentence
            assert (start, end) in [(s.start, s.end) for s in sentence_spans(p["text"])]
            seen += 1
    assert seen >= len(body["results"]) >= 2
    top = body["results"][0]["passages"][0]
    assert top["text"][top["highlight"]["start"] : top["highlight"]["end"]] == (
        "Officials said inflation, which reached 7 percent in February, remained far above the bank's 2 percent target."
    )


def test_passages_quote_their_article_exactly(client: FlaskClient) -> None:
    body = search_json(client, "electric car batteries", k=8)
    for result in body["results"]:
        article = client.get("/api/article", query_string={"id": result["article"]["id"]}).get_json()
        for p in result["passages"]:
            if p["field"] == "title":
                assert p["text"] == article["title"]
            else:
                assert p["text"] in "\n\n".join(article["paragraphs"])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (RATES_QUERY, BUSINESS_001),
        ("football match goals", {"sport/001"}),
        ("cheaper batteries for electric vehicles", {"https://example.org/news/tech?id=7&lang=en"}),
        ("villagers evacuated after a storm", {LEADING_SLASH_ID}),
    ],
)
def test_search_ranks_by_meaning(client: FlaskClient, query: str, expected: set[str]) -> None:
    body = search_json(client, query, k=3)
    assert result_ids(body)[0] in expected


def test_duplicate_pair_is_shown_once_and_is_never_its_own_related(client: FlaskClient) -> None:
    body = search_json(client, RATES_QUERY, k=3)
    top = body["results"][0]
    assert top["article"]["id"] == "business/001"  # the pair's canonical copy: same date, smaller id
    assert top["article"]["canonical_id"] == "business/001"
    assert top["also_reported"] == [{"id": "copy-of-business-001", "source": "Mirror Wire"}]
    assert not BUSINESS_001 & set(result_ids(body)[1:])
    assert not BUSINESS_001 & {rel["id"] for rel in top["related"]}
    assert top["related"][0]["id"] == "business/003"
    copy = client.get("/api/articles/copy-of-business-001").get_json()
    assert copy["canonical_id"] == "business/001" and copy["story_id"] == top["article"]["story_id"]


def _rounded(value: Any) -> Any:
    """``value`` with every float rounded to 5 decimals: JSON results compared up to float32 rounding."""
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def test_k_and_offset_page_through_one_ranking(client: FlaskClient) -> None:
    q = "news about money and prices"
    full = search_json(client, q, k=100)
    total = full["total"]
    assert len(full["results"]) == total >= 4
    page = search_json(client, q, k=3, offset=1)
    # the same results; a passage's score may differ by float32 rounding (1e-6 at 6 decimals) between two requests
    assert _rounded(page["results"]) == _rounded(full["results"][1:4])
    assert _rounded(search_json(client, q, k=2, offset=2)["results"]) == _rounded(full["results"][2:4])
    assert len(search_json(client, q, k=1)["results"]) == 1
    past_end = search_json(client, q, k=5, offset=total)
    assert past_end["results"] == [] and past_end["total"] == total


def test_query_is_echoed_trimmed_and_1000_characters_are_accepted(client: FlaskClient) -> None:
    assert search_json(client, "  football match goals \n")["query"] == "football match goals"
    long_query = ("rates " * 200)[:999] + "x"
    assert len(long_query) == 1000
    body = search_json(client, long_query, k=1)
    assert body["query"] == long_query and len(body["results"]) == 1
    every = search_json(client, "rates", k=100)  # k=100 is the inclusive upper bound
    assert len(every["results"]) == every["total"] >= 1


# -- the bundled sample ----------------------------------------------------------------------------------------


def test_sample_answers_why_north_korea_accuses_the_us(sample_client: FlaskClient) -> None:
    body = search_json(sample_client, "why is NK accusing the US")
    assert result_ids(body)[0] == "north-korea-accuses-us-asia-style-nato"
    p = body["results"][0]["passages"][0]
    sentence = p["text"][p["highlight"]["start"] : p["highlight"]["end"]]
    assert "NATO" in sentence or "hostility" in sentence


def test_sample_similar_to_a_honduras_headline_is_the_other_honduras_story(sample_client: FlaskClient) -> None:
    by_title = {r["title"]: r["id"] for r in _records(SAMPLE)}
    article_id = by_title["Honduras Election Turmoil Intensifies as Nasralla Blames Trump for Shift in Results"]
    response = sample_client.get(f"/api/articles/{quote(article_id, safe='')}/similar")
    assert response.status_code == 200
    body = response.get_json()
    assert body["article"]["id"] == article_id
    assert body["results"][0]["article"]["title"] == (
        "Honduras Election Turmoil Deepens as Nasralla Alleges Fraud in Tight Presidential Race"
    )


# -- /api/articles/<id>, /api/article?id= ------------------------------------------------------------------------


def expected_article(record: dict[str, Any]) -> dict[str, Any]:
    tags = record.get("tags") or ([record["category"]] if "category" in record else [])
    return {
        "id": record["id"],
        "title": record["title"],
        "date": record["date"],
        "source": record["source"],
        "url": record.get("url"),
        "tags": tags,
        "paragraphs": record["paragraphs"],
    }


@pytest.mark.parametrize("record", CORPUS_RECORDS, ids=CORPUS_IDS)
@pytest.mark.parametrize("safe", ["", "/"], ids=["all-encoded", "raw-slashes"])
def test_article_by_path_for_every_id(client: FlaskClient, record: dict[str, Any], safe: str) -> None:
    response = client.get("/api/articles/" + quote(record["id"], safe=safe))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == ARTICLE_KEYS
    assert {k: body[k] for k in expected_article(record)} == expected_article(record)


@pytest.mark.parametrize("record", CORPUS_RECORDS, ids=CORPUS_IDS)
def test_article_and_similar_by_query_parameter(client: FlaskClient, record: dict[str, Any]) -> None:
    response = client.get("/api/article", query_string={"id": record["id"]})
    assert response.status_code == 200
    assert {k: response.get_json()[k] for k in expected_article(record)} == expected_article(record)
    by_query = client.get("/api/similar", query_string={"id": record["id"], "k": 4})
    by_path = client.get(f"/api/articles/{quote(record['id'], safe='')}/similar?k=4")
    assert by_query.status_code == by_path.status_code == 200
    assert by_query.get_json() == by_path.get_json()
    assert by_query.get_json()["article"]["id"] == record["id"]


def test_article_metadata_survives_indexing(client: FlaskClient) -> None:
    tech = client.get("/api/article", query_string={"id": "https://example.org/news/tech?id=7&lang=en"}).get_json()
    assert tech["date"] == "2024-02-01T09:30:00+00:00"
    assert tech["tags"] == ["tech", "energy"]
    assert tech["url"] is None  # the id looks like a URL, but the record has no url field
    assert client.get("/api/articles/business/001").get_json()["extra"] == {}


# -- /api/articles/<id>/similar ----------------------------------------------------------------------------------


@pytest.mark.parametrize("safe", ["", "/"], ids=["all-encoded", "raw-slashes"])
@pytest.mark.parametrize("record", CORPUS_RECORDS, ids=CORPUS_IDS)
def test_similar_excludes_itself_and_exact_duplicates(client: FlaskClient, record: dict[str, Any], safe: str) -> None:
    article_id = record["id"]
    response = client.get(f"/api/articles/{quote(article_id, safe=safe)}/similar")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"article", "results", "scoring"} and body["scoring"] == "cosine"  # 8 articles: too few
    assert set(body["article"]) == ARTICLE_REF_KEYS and body["article"]["id"] == article_id
    got = [r["article"]["id"] for r in body["results"]]
    for r in body["results"]:
        assert set(r) == {"article", "score", "also_reported"} and set(r["article"]) == ARTICLE_REF_KEYS
    assert article_id not in got
    assert len(got) == len(set(got))
    assert is_descending([r["score"] for r in body["results"]])
    if article_id in BUSINESS_001:
        assert not BUSINESS_001 & set(got)
        assert len(got) == 6  # 8 articles minus itself and its copy
        assert got[0] == "business/003"
    else:
        # every other story once: the two copies of the rates story count as one entry
        assert len(BUSINESS_001 & set(got)) == 1
        assert set(got) | BUSINESS_001 == set(CORPUS_IDS) - {article_id} | BUSINESS_001
        assert len(got) == 6


def test_similar_respects_k(client: FlaskClient) -> None:
    full = client.get("/api/articles/sport/001/similar").get_json()["results"]
    for k in (1, 2, 5):
        body = client.get(f"/api/articles/sport/001/similar?k={k}").get_json()
        assert body["results"] == full[:k]
    assert len(client.get("/api/similar", query_string={"id": "business/003", "k": 3}).get_json()["results"]) == 3


def test_similar_takes_a_scoring(client: FlaskClient) -> None:
    for scoring in ("profile", "cosine"):
        body = client.get(f"/api/articles/sport/001/similar?scoring={scoring}&k=3").get_json()
        assert len(body["results"]) == 3
    assert_error(client.get("/api/articles/sport/001/similar?scoring=bm25"), 400, "invalid_input")


# -- /api/health and / -----------------------------------------------------------------------------------------


def test_health(client: FlaskClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["index"] == "corpus"
    assert body["model"] == "all-MiniLM-L6-v2"
    assert body["dimension"] == 384
    assert body["articles"] == 8
    assert body["passages"] > 8  # a headline passage per article plus body passages
    assert body["newest_date"] == "2024-04-11"


def test_index_page_is_html_with_a_search_form(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "<form" in html and 'name="q"' in html


# -- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("/api/search", 400, "invalid_input"),
        ("/api/search?q=", 400, "invalid_input"),
        ("/api/search?q=%20%09%20", 400, "invalid_input"),
        ("/api/search?q=" + "a" * 1001, 400, "invalid_input"),
        ("/api/search?q=rates&k=0", 400, "invalid_input"),
        ("/api/search?q=rates&k=101", 400, "invalid_input"),
        ("/api/search?q=rates&k=abc", 400, "invalid_input"),
        ("/api/search?q=rates&k=1.5", 400, "invalid_input"),
        ("/api/search?q=rates&mode=semantic", 400, "invalid_input"),
        ("/api/search?q=rates&mode=", 400, "invalid_input"),
        ("/api/search?q=rates&k=%2B5", 400, "invalid_input"),
        ("/api/search?q=rates&k=%D9%A3", 400, "invalid_input"),
        ("/api/search?q=rates&k=%205", 400, "invalid_input"),
        ("/api/search?q=rates&k=99999999999999999999999", 400, "invalid_input"),
        ("/api/search?q=rates&k=", 400, "invalid_input"),
        ("/api/search?q=rates&offset=-1", 400, "invalid_input"),
        ("/api/search?q=rates&offset=x", 400, "invalid_input"),
        ("/api/search?q=rates&offset=10001", 400, "invalid_input"),
        ("/api/search?q=a%00b", 400, "invalid_input"),
        ("/api/articles/no-such-article", 404, "not_found"),
        ("/api/articles/business/999", 404, "not_found"),
        ("/api/articles/no-such-article/similar", 404, "not_found"),
        ("/api/articles/business/999/similar", 404, "not_found"),
        ("/api/article?id=no-such-article", 404, "not_found"),
        ("/api/similar?id=no-such-article", 404, "not_found"),
        ("/api/article", 400, "invalid_input"),
        ("/api/similar", 400, "invalid_input"),
        ("/api/articles/business/001/similar?k=0", 400, "invalid_input"),
        ("/api/articles/business/001/similar?k=101", 400, "invalid_input"),
        ("/api/articles/business/001/similar?k=two", 400, "invalid_input"),
        ("/api/nothing-here", 404, "not_found"),
        ("/api/articles", 405, "method_not_allowed"),  # only POST (writes) lives there
        ("/api/search?q=%FF%FE", 400, "bad_encoding"),
        ("/api/search?q=rates&lang=%C3", 400, "bad_encoding"),
    ],
)
def test_bad_requests_get_the_json_error_shape(client: FlaskClient, url: str, status: int, code: str) -> None:
    assert_error(client.get(url), status, code)


def test_error_messages_name_the_problem(client: FlaskClient) -> None:
    assert "1001" in assert_error(client.get("/api/search?q=" + "a" * 1001), 400)["error"]["message"]
    assert "'abc'" in assert_error(client.get("/api/search?q=x&k=abc"), 400)["error"]["message"]
    missing = assert_error(client.get("/api/articles/business/999"), 404)["error"]["message"]
    assert "business/999" in missing


@pytest.mark.parametrize("url", ["/api/search?q=rates", "/api/articles/business/001", "/api/health"])
def test_wrong_method_is_405_with_allow(client: FlaskClient, url: str) -> None:
    response = client.post(url)
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in {m.strip() for m in response.headers["Allow"].split(",")}


@pytest.mark.parametrize("path", ["/api/articles/\xff", "/api/articles/\xff\xfe/similar", "/api/articles/ok\xc3"])
def test_bad_utf8_in_the_path_is_400(client: FlaskClient, path: str) -> None:
    # A WSGI server (PEP 3333) hands the app the URL's raw bytes as a latin-1 string. Werkzeug's test client cannot
    # produce that from a URL: it percent-decodes "/api/articles/%FF" with errors="replace" (U+FFFD) before the app
    # runs, so the environ is set directly here; test_bad_utf8_over_a_real_server sends the raw URL to waitress.
    response = client.get("/", environ_overrides={"PATH_INFO": path})
    assert_error(response, 400, "bad_encoding")


@pytest.fixture
def live_server(app: Flask) -> Iterator[int]:
    import waitress

    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=1)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield int(server.effective_port)
    finally:
        server.close()
        thread.join(timeout=10)


def raw_get(port: int, target: bytes) -> tuple[int, str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET " + target + b" HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), body


def test_bad_utf8_over_a_real_server(live_server: int) -> None:
    for target in (b"/api/articles/%FF", b"/api/articles/%FF/similar", b"/api/search?q=%FF%FE"):
        status, ctype, body = raw_get(live_server, target)
        assert (status, ctype) == (400, "application/json"), (target, status, body)
        assert json.loads(body)["error"]["code"] == "bad_encoding"
    status, _, body = raw_get(live_server, b"/api/articles/" + quote(LEADING_SLASH_ID, safe="").encode())
    assert status == 200 and json.loads(body)["id"] == LEADING_SLASH_ID


def test_unexpected_exception_is_a_json_500(
    service: SearchService, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = SearchService(service.index, service.embedder, service.settings)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(fresh, "search", boom)
    monkeypatch.setattr(fresh, "article_with_labels", boom)
    client = create_app(service=fresh).test_client()
    with caplog.at_level(logging.ERROR, logger="newsdesk.api"):
        for url in ("/api/search?q=rates", "/api/articles/business/001"):
            body = assert_error(client.get(url), 500, "internal_error")
            assert "secret internal detail" not in body["error"]["message"]
    logged = [r for r in caplog.records if r.name == "newsdesk.api" and r.exc_info]
    assert len(logged) == 2 and isinstance(logged[0].exc_info[1], RuntimeError)  # type: ignore[index]
    # The other routes of the same app still work.
    assert client.get("/api/health").status_code == 200


def test_search_filters_facets_and_cursor_over_http(client: FlaskClient) -> None:
    r = client.get("/api/search", query_string={"q": "interest rates", "category": "business", "facets": "true"})
    assert r.status_code == 200
    body = r.get_json()
    assert body["results"] and all(res["article"]["id"].startswith("business/") for res in body["results"])
    # a category facet counts what picking that category instead would show (the page's facet links replace it)
    for facet in body["facets"]["category"]:
        other = client.get("/api/search", query_string={"q": "interest rates", "category": facet["value"]})
        assert other.get_json()["total"] == facet["count"]
        if facet["value"] == "business":
            assert facet["count"] == body["total"]
    assert body["next_cursor"] is None
    dated = client.get("/api/search", query_string={"q": "news", "from": "2024-03-01", "to": "2024-03-14", "k": 20})
    assert all("2024-03-01" <= res["article"]["date"][:10] <= "2024-03-14" for res in dated.get_json()["results"])
    walk, cursor, ids = 0, "*", []
    while cursor and walk < 10:
        page = client.get("/api/search", query_string={"q": "news", "k": 3, "cursor": cursor}).get_json()
        ids += [res["article"]["id"] for res in page["results"]]
        cursor, walk = page["next_cursor"], walk + 1
    assert len(ids) == len(set(ids)) and cursor is None


@pytest.mark.parametrize(
    "params",
    [
        {"from": "14/03/2024"},
        {"from": "2024-04-01", "to": "2024-03-01"},
        {"facets": "maybe"},
        {"cursor": "not-a-cursor"},
        {"max_per_source": "0"},
        {"max_per_source": "two"},
        {"offset": "10", "cursor": "*"},
    ],
)
def test_bad_search_options_are_400(client: FlaskClient, params: dict[str, str]) -> None:
    assert_error(client.get("/api/search", query_string={"q": "rates", **params}), 400, "invalid_input")


@pytest.mark.parametrize("path", ["/api/health", "/metrics"])
def test_open_endpoints_keep_paths_and_internals_to_the_server_log(
    tmp_path: Any, corpus_index: Any, embedder: Any, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An index broken under a running server (another build swapped in its store, then the manifest was damaged):
    the open endpoints say that the index cannot be served, never where it lives on disk or what the parser said.
    (A commit alone is followed without reading the manifest: search/storage/changes.py.)"""
    import shutil
    import sqlite3

    from search.settings import Settings
    from search.storage.index import open_index

    copy = tmp_path / "secret-place"
    shutil.copytree(corpus_index, copy)
    svc = SearchService(open_index(copy, embedder), embedder, Settings(index_dir=copy, read_api_key="r"))
    client = create_app(service=svc).test_client()
    assert client.get(path).status_code == 200
    source = sqlite3.connect(copy / "newsdesk.sqlite")
    swapped = sqlite3.connect(copy / "swapped.sqlite")
    source.backup(swapped)  # another build's store, renamed over the served one: the server must reopen the index
    source.close()
    swapped.close()
    (copy / "swapped.sqlite").replace(copy / "newsdesk.sqlite")
    (copy / "manifest.json").write_text('{"format_version": 1, "model": ', encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        r = client.get(path)
    text = r.get_data(as_text=True)
    assert "secret-place" not in text and str(tmp_path) not in text and "Expecting" not in text
    if path == "/api/health":
        assert_error(r, 503, "index_corrupt")
    else:  # the scrape still reports the process, and that the index is down
        assert r.status_code == 200 and "newsdesk_index_up 0.0" in text and "process_cpu_seconds_total" in text
    assert "secret-place" in caplog.text  # the operator still learns what is wrong
