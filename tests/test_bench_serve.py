"""Unit tests of the HTTP load test's pure parts (no server, no model): ``.venv/bin/pytest tests/test_bench_serve.py``.

Percentiles are checked against hand-computed linear interpolation (numpy's default method), the query feed against
its no-repeat promise under concurrent takes, and the report against synthetic runs.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from bench.scifact import BenchError
from bench.serve import QueryFeed, TargetRun, acceptance, build_report, percentile, read_query_texts, summarize


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 99) == pytest.approx(3.97)  # rank 2.97: 3 + 0.97 * (4 - 3)


def test_percentile_one_hundred_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)


def test_percentile_edge_cases() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_feed_never_repeats_until_exhausted_across_threads() -> None:
    feed = QueryFeed([f"q{i}" for i in range(400)])
    taken: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(100):
            text = feed.take()
            with lock:
                taken.append(text)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(f"q{i}" for i in range(400))
    assert not feed.wrapped
    assert feed.repeats_between(0, feed.position) == 0


def test_feed_spans_targets_then_wraps_and_counts_repeats() -> None:
    feed = QueryFeed(["a", "b", "a", " ", "c"])  # duplicates and blanks dropped, order kept
    assert feed.texts == ["a", "b", "c"]
    first = [feed.take(), feed.take()]  # one target
    start = feed.position
    second = [feed.take(), feed.take(), feed.take()]  # the next target continues, then wraps
    assert first == ["a", "b"]
    assert second == ["c", "a", "b"]
    assert feed.wrapped
    assert feed.repeats_between(0, start) == 0
    assert feed.repeats_between(start, feed.position) == 2
    assert feed.repeats_between(0, feed.position) == 2


def test_feed_needs_texts() -> None:
    with pytest.raises(BenchError):
        QueryFeed(["", "  "])


def test_read_query_texts(tmp_path: Path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text('{"_id": "1", "text": "rates"}\n\n{"question": "who won?"}\n', encoding="utf-8")
    assert read_query_texts(p) == ["rates", "who won?"]
    with pytest.raises(BenchError, match=":1:"):
        read_query_texts(p, ("question",))


def _run(name: str, latencies: list[float], errors: int = 0, elapsed: float = 2.0) -> TargetRun:
    return TargetRun(
        name=name,
        example=f"/{name}",
        latencies_ms=latencies,
        errors=errors,
        error_messages=["HTTP 500: boom"] if errors else [],
        elapsed_s=elapsed,
        warmup_requests=5,
    )


def _report(runs: list[TargetRun], passages: int, clients: int = 4, seconds: float = 60.0) -> dict[str, Any]:
    return build_report(
        runs=runs,
        health={"status": "ok", "passages": passages},
        index=Path("/idx"),
        clients=clients,
        seconds=seconds,
        k=10,
        modes=["hybrid", "dense"],
        workers=4,
        server={"command": ["newsdesk", "serve"]},
        queries={"distinct": 100, "wrapped": False},
        machine={"cpu_count": 2},
    )


def test_summarize() -> None:
    s = summarize(_run("health", [1.0, 2.0, 3.0, 4.0], errors=1))
    assert s["requests"] == 5 and s["ok"] == 4 and s["errors"] == 1
    assert s["throughput_rps"] == 2.0  # successful responses per second
    assert s["latency_ms"]["p50"] == 2.5 and s["latency_ms"]["max"] == 4.0 and s["latency_ms"]["mean"] == 2.5
    assert s["error_messages"] == ["HTTP 500: boom"]
    assert "queries" not in s


def test_report_ratios_and_acceptance_met() -> None:
    runs = [
        _run("health", [1.0] * 100),
        _run("search:hybrid", [10.0] * 98 + [50.0, 50.0]),  # p99 at rank 98.01: 50
        _run("search:dense", [5.0] * 98 + [25.0, 25.0]),
        _run("similar", [2.0] * 100),
    ]
    report = _report(runs, passages=100_000)
    assert report["machine"]["cpu_count"] == 2
    assert report["server"]["workers"] == 4
    assert report["index"]["health"]["passages"] == 100_000
    assert report["ratios"]["vs_health"]["search:hybrid"] == {"p50": 10.0, "p99": 50.0}
    assert report["ratios"]["hybrid_vs_dense"]["p50"] == 2.0
    assert report["ratios"]["hybrid_vs_dense"]["p99"] == 2.0
    assert report["ratios"]["hybrid_vs_dense"]["throughput"] == 1.0
    acc = report["acceptance"]
    assert acc["hybrid_p50_ms"] == 10.0 and acc["hybrid_p99_ms"] == 50.0
    assert acc["p50_ok"] and acc["p99_ok"] and acc["errors_ok"]
    assert acc["figures_met"] and acc["conditions_met"] and acc["met"]
    assert report["errors"] == 0


def test_acceptance_not_met_on_slow_p99_or_errors() -> None:
    slow = _report([_run("search:hybrid", [10.0] * 90 + [100.0] * 10)], passages=100_000)["acceptance"]
    assert slow["p50_ok"] and not slow["p99_ok"] and not slow["met"]
    failing = _report([_run("health", [1.0]), _run("search:hybrid", [1.0] * 10, errors=1)], passages=100_000)
    assert failing["errors"] == 1
    assert not failing["acceptance"]["errors_ok"] and not failing["acceptance"]["met"]


def test_acceptance_small_run_never_claims_the_target() -> None:
    report = _report([_run("search:hybrid", [1.0] * 10)], passages=28, clients=2, seconds=5.0)
    acc = report["acceptance"]
    assert acc["figures_met"]
    assert not acc["conditions"]["passages_ok"] and not acc["conditions"]["clients_ok"]
    assert not acc["conditions"]["seconds_ok"]
    assert not acc["met"] and acc["notes"]


def test_acceptance_without_hybrid() -> None:
    acc = acceptance({}, passages=100_000, clients=4, seconds=60.0)
    assert acc["hybrid_p50_ms"] is None and not acc["met"]
    assert any("hybrid" in n for n in acc["notes"])


def test_warmup_errors_count() -> None:
    run = _run("search:hybrid", [1.0] * 10)
    run.warmup_errors = 1
    assert _report([run], passages=100_000)["acceptance"]["errors"] == 1
