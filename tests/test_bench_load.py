"""Unit tests of the mixed read/write load test's pure parts (no server, no model, no shared data):
``.venv/bin/pytest tests/test_bench_load.py``.

The generated articles must be unique, repeatable per seed, accepted by the write API unchanged (else the by-id
check would compare against text the server normalised) and not near-duplicates of each other (else search would
fold them into one group). The verification must find an id wherever a search response may put it and report
everything else as a failure; the report must not claim the criterion for a short, failing or unverified run.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.load import (
    ArticleFactory,
    GeneratedArticle,
    Verification,
    acknowledged,
    article_problem,
    build_report,
    failed,
    headline_rank,
    redacted_settings_env,
    split_by_writes,
)
from bench.serve import TargetRun
from search.intake import Limits, parse_write
from search.news.dedup import body_match, fingerprint

# -- generated articles --------------------------------------------------------------------------------------------


def test_articles_are_deterministic_per_seed() -> None:
    a = [x.payload() for x in ArticleFactory("load-r", 7).take(50)]
    b = [x.payload() for x in ArticleFactory("load-r", 7).take(50)]
    c = [x.payload() for x in ArticleFactory("load-r", 8).take(50)]
    assert a == b
    assert [x["title"] for x in a] != [x["title"] for x in c]


def test_batches_continue_one_sequence() -> None:
    whole = ArticleFactory("load-r", 3).take(12)
    factory = ArticleFactory("load-r", 3)
    parts = factory.take(5) + factory.take(5) + factory.take(2)
    assert parts == whole
    assert [x.id for x in whole] == [f"load-r-{n}" for n in range(12)]


def test_ids_and_headlines_are_unique() -> None:
    # 10,000 draws from ~8M headlines would repeat about 6 of them (birthday bound) if nothing prevented it
    articles = ArticleFactory("load-u", 1).take(10_000)
    assert len({a.id for a in articles}) == 10_000
    assert len({a.title for a in articles}) == 10_000


def test_articles_look_like_news() -> None:
    for a in ArticleFactory("load-n", 2).take(200):
        assert 2 <= len(a.paragraphs) <= 3
        assert all(len(p.split()) >= 12 for p in a.paragraphs)
        assert a.title[0].isupper() and "{" not in a.title
        assert not any("{" in p or "}" in p for p in a.paragraphs)  # every template slot filled
        assert a.date.startswith("2025-") and a.tags and a.source


def test_the_write_api_stores_them_unchanged() -> None:
    articles = ArticleFactory("load-w", 4).take(40)
    parsed = parse_write({"articles": [a.payload() for a in articles]}, Limits())
    for sent, stored in zip(articles, parsed, strict=True):
        assert stored.id == sent.id and stored.title == sent.title
        assert stored.paragraphs == sent.paragraphs and stored.date == sent.date


def test_bodies_are_not_near_duplicates_of_each_other() -> None:
    articles = ArticleFactory("load-d", 5).take(120)
    prints = [fingerprint("\n\n".join(a.paragraphs), a.title) for a in articles]
    pairs = [
        (articles[i].id, articles[j].id)
        for i in range(len(prints))
        for j in range(i + 1, len(prints))
        if body_match(prints[i], prints[j])
    ]
    assert pairs == []


# -- checking responses ---------------------------------------------------------------------------------------------


def _result(article_id: str, also: list[str] | None = None) -> dict[str, Any]:
    return {
        "article": {"id": article_id, "title": "t"},
        "score": 1.0,
        "also_reported": [{"id": i, "source": "s"} for i in also or []],
    }


def _search_body(*results: dict[str, Any]) -> bytes:
    return json.dumps({"query": "q", "results": list(results), "total": len(results)}).encode()


def test_headline_rank_finds_the_article_or_its_copy() -> None:
    body = _search_body(_result("a"), _result("b"), _result("load-1"), _result("c", also=["load-2"]))
    assert headline_rank(200, body, "load-1") == (3, None)
    assert headline_rank(200, body, "load-2") == (4, None)  # shown through its duplicate group's canonical copy


def test_headline_rank_reports_misses_and_bad_answers() -> None:
    rank, problem = headline_rank(200, _search_body(_result("a"), _result("b")), "load-1")
    assert rank is None and problem is not None and "['a', 'b']" in problem
    rank, problem = headline_rank(500, b'{"error": {"code": "internal"}}', "load-1")
    assert rank is None and problem is not None and "HTTP 500" in problem
    rank, problem = headline_rank(200, b"<html>not json</html>", "load-1")
    assert rank is None and problem is not None and "unexpected" in problem
    rank, problem = headline_rank(200, b'{"results": [{"no_article": 1}]}', "load-1")
    assert rank is None and problem is not None


def _article_body(a: GeneratedArticle, **changes: Any) -> bytes:
    return json.dumps({**a.payload(), "url": None, "extra": {}, "canonical_id": a.id, **changes}).encode()


def test_article_problem() -> None:
    (a,) = ArticleFactory("load-p", 1).take(1)
    assert article_problem(200, _article_body(a), a) is None
    assert "headline" in (article_problem(200, _article_body(a, title="Other"), a) or "")
    assert "paragraphs" in (article_problem(200, _article_body(a, paragraphs=a.paragraphs[:1]), a) or "")
    assert "another article" in (article_problem(200, _article_body(a, id="x"), a) or "")
    assert "HTTP 404" in (article_problem(404, b'{"error": {"code": "not_found"}}', a) or "")


def test_acknowledged_needs_exactly_the_batch() -> None:
    batch = ArticleFactory("load-k", 1).take(3)
    ids = [a.id for a in batch]
    assert acknowledged(200, json.dumps({"written": ids, "deleted": [], "generation": 9}).encode(), batch) == (9, None)
    generation, problem = acknowledged(200, json.dumps({"written": ids[:2], "generation": 9}).encode(), batch)
    assert generation is None and problem is not None
    generation, problem = acknowledged(401, b'{"error": {"code": "unauthorized"}}', batch)
    assert generation is None and problem is not None and "401" in problem


def test_verification_counts_each_way_of_failing() -> None:
    v = Verification()
    v.record("a", None, 1, None)
    v.record("b", "HTTP 404", 2, None)
    v.record("c", None, None, "not among the 10 results")
    v.record("d", "HTTP 404", None, "HTTP 500")
    d = v.as_dict()
    assert d["articles"] == 4
    assert d["by_id_failed"] == 2 and d["found_by_id"] == 2
    assert d["by_headline_failed"] == 2 and d["found_by_headline"] == 2
    assert d["failed_articles"] == 3
    assert d["headline_rank"]["first"] == 1 and d["headline_rank"]["max"] == 2
    assert d["failures"] == [
        "b by id: HTTP 404",
        "c by headline: not among the 10 results",
        "d by id: HTTP 404",
        "d by headline: HTTP 500",
    ]


def test_split_by_writes() -> None:
    writes = [(10.0, 11.0), (12.0, 13.0)]
    samples = [
        (9.0, 500.0),  # 9.0-9.5: before any write
        (9.5, 600.0),  # 9.5-10.1: runs into the first write
        (10.5, 100.0),  # inside the first
        (11.2, 100.0),  # 11.2-11.3: between writes
        (12.9, 300.0),  # starts in the second, ends after it
        (13.5, 10.0),  # after the last
    ]
    during, between = split_by_writes(samples, writes)
    assert during == [600.0, 100.0, 300.0]
    assert between == [500.0, 100.0, 10.0]
    assert split_by_writes(samples, []) == ([], [s[1] for s in samples])


# -- the report ------------------------------------------------------------------------------------------------------


def _run(name: str, latencies: list[float], errors: int = 0, elapsed: float = 120.0) -> TargetRun:
    return TargetRun(
        name=name,
        latencies_ms=latencies,
        errors=errors,
        error_messages=["HTTP 500: boom"] * errors,
        elapsed_s=elapsed,
    )


def _report(
    *,
    readers: int = 8,
    seconds: float = 120.0,
    search_errors: int = 0,
    write_errors: int = 0,
    written: int = 40,
    verification: Verification | None = None,
    check_status: int | None = 0,
    reads_only: TargetRun | None = None,
) -> dict[str, Any]:
    if verification is None:
        verification = Verification()
        for n in range(written):
            verification.record(f"load-r-{n}", None, 1, None)
    search = _run("search", [10.0] * 98 + [90.0, 100.0], search_errors)
    return build_report(
        readers=readers,
        seconds=seconds,
        k=10,
        batch=5,
        write_interval=0.0,
        search=search,
        reads_only=reads_only,
        search_samples=[(float(i), ms) for i, ms in enumerate(search.latencies_ms)],
        writes=_run("write", [800.0] * (written // 5), write_errors),
        write_spans=[(0.0, 50.0)],
        articles_written=written,
        verification=verification,
        check={"exit_status": check_status, "output": ["ok"]},
        server={"command": ["newsdesk", "serve"], "workers": 9},
        index={"given": "/idx"},
        queries={"distinct": 6602, "wrapped": False},
        machine={"cpu_count": 2},
        generator={"run_id": "r", "seed": 1},
    )


def test_report_of_a_clean_run_meets_the_criterion() -> None:
    report = _report()
    assert report["load"]["readers"] == 8 and report["load"]["writers"] == 1 and report["load"]["seconds"] == 120.0
    assert report["search"]["latency_ms"]["p99"] == pytest.approx(90.1)  # rank 98.01 of 100
    assert report["search"]["throughput_rps"] == pytest.approx(100 / 120, abs=0.01)
    assert report["search"]["while_writing"]["requests"] == 50  # samples start at 0..99 s, the write spans 0-50 s
    assert report["writes"]["articles_written"] == 40 and report["writes"]["ok"] == 8
    assert report["writes"]["latency_ms"]["p50"] == 800.0
    assert report["errors"] == {"search": 0, "write": 0, "reads_only": 0, "total": 0}
    assert report["search_reads_only"] is None and report["search_vs_reads_only"] is None
    acc = report["acceptance"]
    assert acc["figures_met"] and acc["conditions_met"] and acc["met"]
    assert failed(report) == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"search_errors": 1}, "requests failed"),
        ({"write_errors": 2}, "requests failed"),
        ({"written": 0}, "no write was acknowledged"),
        ({"check_status": 1}, "newsdesk check exited with 1"),
        ({"check_status": None}, "newsdesk check exited with None"),
    ],
)
def test_failures_are_reported_and_never_meet_the_criterion(changes: dict[str, Any], reason: str) -> None:
    report = _report(**changes)
    assert not report["acceptance"]["met"]
    assert any(reason in problem for problem in failed(report))


def test_a_lost_article_fails_the_run() -> None:
    verification = Verification()
    verification.record("load-r-0", None, 1, None)
    verification.record("load-r-1", None, None, "not among the 10 results")
    report = _report(written=2, verification=verification)
    assert report["verification"]["by_headline_failed"] == 1
    assert not report["acceptance"]["all_found_by_headline"] and report["acceptance"]["all_found_by_id"]
    assert not report["acceptance"]["met"]
    assert any("1 written articles failed verification" in p for p in failed(report))


def test_a_short_run_never_claims_the_criterion() -> None:
    acc = _report(readers=2, seconds=10.0)["acceptance"]
    assert acc["figures_met"]
    assert not acc["conditions"]["readers_ok"] and not acc["conditions"]["seconds_ok"]
    assert not acc["met"] and acc["notes"]


def test_keys_are_kept_out_of_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSDESK_API_KEY", "very-secret")
    monkeypatch.setenv("NEWSDESK_READ_API_KEY", "also-secret")
    monkeypatch.setenv("NEWSDESK_THREADS", "2")
    env = redacted_settings_env()
    assert env["NEWSDESK_API_KEY"] == "<set>" and env["NEWSDESK_READ_API_KEY"] == "<set>"
    assert env["NEWSDESK_THREADS"] == "2"
    assert "secret" not in json.dumps(env)


def test_reads_only_baseline_is_compared_and_its_errors_fail_the_run() -> None:
    baseline = _run("search:reads-only", [5.0] * 98 + [45.0, 50.0], errors=0, elapsed=30.0)
    report = _report(reads_only=baseline)
    assert report["load"]["reads_only_seconds"] == 30.0
    assert report["search_reads_only"]["latency_ms"]["p50"] == 5.0
    assert report["search_vs_reads_only"]["p50"] == 2.0  # 10 ms with writes over 5 ms without
    assert report["search_vs_reads_only"]["p99"] == pytest.approx(2.0, abs=0.01)  # 90.1 over 45.05
    assert report["search_vs_reads_only"]["throughput"] == pytest.approx(0.25, abs=0.01)  # 100/120 over 100/30
    broken = _report(reads_only=_run("search:reads-only", [5.0], errors=1, elapsed=30.0))
    assert broken["errors"]["reads_only"] == 1 and broken["errors"]["total"] == 1
    assert any("requests failed" in p for p in failed(broken))
