"""``/metrics`` (Prometheus text format, parsed by prometheus_client's own parser) and the JSON request logs."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from search.service import SearchService

ARTICLE_RULE = "/api/articles/<article_id:article_id>"


def scrape(client: FlaskClient) -> dict[str, Any]:
    """Every metric family of one scrape by name, parsed as Prometheus itself would read the text."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain" and "version=0.0.4" in response.headers["Content-Type"]
    return {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}


def sample(families: dict[str, Any], name: str, suffix: str = "", **labels: str) -> float:
    """The value of one sample (0.0 if that label set has not been seen yet)."""
    family = families.get(name)
    for s in family.samples if family else []:
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return 0.0


def test_metrics_is_prometheus_text_with_index_figures(client: FlaskClient, service: SearchService) -> None:
    families = scrape(client)
    assert families["newsdesk_http_requests"].type == "counter"
    assert families["newsdesk_http_request_duration_seconds"].type == "histogram"
    health = service.health()
    assert sample(families, "newsdesk_index_articles", index="corpus") == 8
    assert sample(families, "newsdesk_index_passages", index="corpus") == health["passages"] > 8
    assert sample(families, "newsdesk_index_generation", index="corpus") == health["generation"]
    updated = datetime.fromisoformat(service.index.manifest["updated_at"]).timestamp()
    assert sample(families, "newsdesk_index_last_update_timestamp_seconds", index="corpus") == updated
    (info,) = families["newsdesk_index_info"].samples  # an info metric is a gauge of 1 in the text format
    assert info.value == 1 and info.labels["index"] == "corpus" and info.labels["model"] == "all-MiniLM-L6-v2"
    assert info.labels["faiss_factory"] == "IDMap2,Flat"
    assert "process_resident_memory_bytes" in families  # the process collector, for memory and CPU dashboards


def test_openmetrics_when_the_scraper_asks_for_it(client: FlaskClient) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.mimetype == "application/openmetrics-text"
    text = response.get_data(as_text=True)
    assert text.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(text)}  # type: ignore[no-untyped-call]
    assert {"newsdesk_http_requests", "newsdesk_index_articles"} <= names


def test_counters_and_histograms_move_as_requests_are_served(client: FlaskClient) -> None:
    before = scrape(client)
    for _ in range(3):
        assert client.get("/api/health").status_code == 200
    assert client.get("/api/search?q=rates&k=0").status_code == 400
    assert client.get("/api/articles/business/001").status_code == 200
    assert client.get("/api/articles/no-such-id-123").status_code == 404
    after = scrape(client)

    def delta(name: str, suffix: str = "", **labels: str) -> float:
        return sample(after, name, suffix, **labels) - sample(before, name, suffix, **labels)

    requests = "newsdesk_http_requests"
    assert delta(requests, "_total", endpoint="/api/health", status="200", method="GET") == 3
    assert delta(requests, "_total", endpoint="/api/search", status="400") == 1
    # one series per route, not per article id
    assert delta(requests, "_total", endpoint=ARTICLE_RULE, status="200") == 1
    assert delta(requests, "_total", endpoint=ARTICLE_RULE, status="404") == 1
    latency = "newsdesk_http_request_duration_seconds"
    assert delta(latency, "_count", endpoint="/api/health") == 3
    assert delta(latency, "_sum", endpoint="/api/health") > 0
    assert delta(latency, "_bucket", endpoint="/api/health", le="+Inf") == 3
    assert sample(after, requests, "_total", endpoint="/metrics", status="200") >= 1  # the first scrape


def test_unmatched_paths_share_one_label(client: FlaskClient) -> None:
    for path in ("/api/nothing-1", "/api/nothing-2", "/wp-login.php"):
        assert client.get(path).status_code == 404
    text = client.get("/metrics").get_data(as_text=True)
    assert "nothing-1" not in text and "wp-login" not in text
    assert sample(scrape(client), "newsdesk_http_requests", "_total", endpoint="<unmatched>", status="404") == 3


def test_invented_methods_share_one_label(client: FlaskClient) -> None:
    """Any token may be a request's method: invented ones are counted under ``other``, so a client cannot grow the
    scrape with one series per method it makes up."""
    for n in range(40):
        client.open("/api/health", method=f"X{n}METHOD")
    client.get("/api/health")
    families = scrape(client)
    methods = {s.labels["method"] for f in families.values() for s in f.samples if "method" in s.labels}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "other"}
    assert "GET" in methods
    others = families["newsdesk_http_requests"].samples
    assert sum(s.value for s in others if s.name.endswith("_total") and s.labels["method"] == "other") == 40


def test_early_answers_are_counted(client: FlaskClient) -> None:
    """The bad-encoding check answers before the view: the request is still counted and timed."""
    assert client.get("/api/search?q=%FF").status_code == 400
    families = scrape(client)
    assert sample(families, "newsdesk_http_requests", "_total", endpoint="/api/search", status="400") == 1
    assert sample(families, "newsdesk_http_request_duration_seconds", "_count", endpoint="/api/search") == 1


def test_each_app_has_its_own_registry(app: Flask, service: SearchService) -> None:
    client = app.test_client()
    client.get("/api/health")
    other = create_app(service=service).test_client()  # would raise on a shared registry (duplicate names)
    assert sample(scrape(client), "newsdesk_http_requests", "_total", endpoint="/api/health") == 1
    assert sample(scrape(other), "newsdesk_http_requests", "_total", endpoint="/api/health") == 0


def test_several_processes_are_merged_with_a_multiprocess_directory(
    service: SearchService, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two server processes (gunicorn workers) sharing PROMETHEUS_MULTIPROC_DIR: a scrape of either counts both.

    The processes are simulated in this one: prometheus_client keys its value files by process id, taken from the
    value class that its metrics read when a labelled series is created."""
    from prometheus_client import values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 1001))  # type: ignore[no-untyped-call]
    first = create_app(service=service).test_client()
    first.get("/api/health")
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 1002))  # type: ignore[no-untyped-call]
    second = create_app(service=service).test_client()
    second.get("/api/health")
    second.get("/api/health")
    for client in (first, second):
        families = scrape(client)
        assert sample(families, "newsdesk_http_requests", "_total", endpoint="/api/health", status="200") == 3
        assert sample(families, "newsdesk_http_request_duration_seconds", "_count", endpoint="/api/health") == 3
        assert sample(families, "newsdesk_index_articles", index="corpus") == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_1001.db",
        "counter_1002.db",
        "histogram_1001.db",
        "histogram_1002.db",
    ]


# -- request logs --------------------------------------------------------------------------------------------------


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "newsdesk.access"]


def test_one_json_line_per_request_with_its_id(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="newsdesk.access"):
        response = client.get("/api/articles/business/001?k=1")
    (line,) = access_lines(caplog)
    rid = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert line["request_id"] == rid
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/articles/business/001", 200)
    assert line["rule"] == ARTICLE_RULE
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert datetime.fromisoformat(line["ts"]).tzinfo is not None
    other = client.get("/api/health").headers["X-Request-ID"]
    assert other != rid


@pytest.mark.parametrize("sent", ["abc-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "trace.1:span_2", "x" * 128])
def test_a_sane_request_id_is_kept(client: FlaskClient, caplog: pytest.LogCaptureFixture, sent: str) -> None:
    with caplog.at_level(logging.INFO, logger="newsdesk.access"):
        response = client.get("/api/health", headers={"X-Request-ID": sent})
    assert response.headers["X-Request-ID"] == sent
    assert access_lines(caplog)[0]["request_id"] == sent


@pytest.mark.parametrize("sent", ["", "has space", "x" * 129, 'quote"', "ünï", "a;b=c", '{"json":1}'])
def test_an_insane_request_id_is_replaced(client: FlaskClient, caplog: pytest.LogCaptureFixture, sent: str) -> None:
    with caplog.at_level(logging.INFO, logger="newsdesk.access"):
        response = client.get("/api/health", headers={"X-Request-ID": sent})
    rid = response.headers["X-Request-ID"]
    assert rid != sent and re.fullmatch(r"[0-9a-f]{32}", rid)
    assert access_lines(caplog)[0]["request_id"] == rid


def test_errors_are_logged_with_status_and_id(
    service: SearchService, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = SearchService(service.index, service.embedder, service.settings)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(fresh, "similar", boom)
    client = create_app(service=fresh).test_client()
    with caplog.at_level(logging.INFO):
        bad = client.get("/api/search?q=%FF")  # answered by a before_request hook
        missing = client.get("/api/nothing")
        crashed = client.get("/api/similar?id=business/001", headers={"X-Request-ID": "req-500"})
    lines = access_lines(caplog)
    assert [(line["status"], line["request_id"]) for line in lines] == [
        (400, bad.headers["X-Request-ID"]),
        (404, missing.headers["X-Request-ID"]),
        (500, "req-500"),
    ]
    assert lines[1]["rule"] is None
    assert crashed.headers["X-Request-ID"] == "req-500"
    tracebacks = [r for r in caplog.records if r.name == "newsdesk.api" and r.exc_info]
    assert len(tracebacks) == 1 and "req-500" in tracebacks[0].getMessage()


def test_queries_stay_out_of_the_log(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="newsdesk.access"):
        client.get("/api/search", query_string={"q": "my private question"})
    (line,) = access_lines(caplog)
    assert line["path"] == "/api/search" and "private" not in json.dumps(line)
