"""Unit tests of the HTTP load test's pure parts (no server, no model): ``.venv/bin/pytest tests/test_bench_serve.py``.

Percentiles are checked against hand-computed linear interpolation (numpy's default method), the query feed against
its no-repeat promise under concurrent takes, and the report against synthetic runs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from bench.scifact import BenchError
from bench.serve import (
    QueryFeed,
    TargetRun,
    acceptance,
    acceptance_issue19,
    build_report,
    cpu_stats,
    deal,
    embedding_floor,
    group_cpu_seconds,
    percentile,
    picked_processes,
    read_query_texts,
    server_pick,
    summarize,
)


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


# -- issue 19: the HTTP figures against the in-process ones ------------------------------------------------------


def _inprocess(hybrid_ms: float = 20.0, hybrid_p50: float = 19.0, embed_ms: float = 4.0) -> dict[str, Any]:
    return {
        "cpu": {
            "hybrid": {"n": 200, "mean_ms": hybrid_ms, "p50_ms": hybrid_p50},
            "embed": {"n": 200, "mean_ms": embed_ms, "p50_ms": embed_ms},
        }
    }


def _issue19(
    four: list[TargetRun], one: list[TargetRun], inprocess: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    args: dict[str, Any] = {"cores": 2, "clients": 4, "seconds": 60.0, "default_serve": True, **kw}
    return acceptance_issue19(
        targets={r.name: summarize(r) for r in four},
        single={r.name: summarize(r) for r in one},
        inprocess=_inprocess() if inprocess is None else inprocess,
        **args,
    )


def test_issue19_met_when_throughput_tail_and_one_client_are_within_bars() -> None:
    # 2 cores / 20 ms = 100 searches/s bound; 75 in 1 s is 0.75 of it; p99 40 <= 3 x 20; one client 21 <= 19 + 3
    acc = _issue19([_run("search:hybrid", [20.0] * 70 + [40.0] * 5, elapsed=1.0)], [_run("search:hybrid", [21.0])])
    hybrid = acc["modes"]["hybrid"]
    assert hybrid["throughput_bound_rps"] == 100.0 and hybrid["throughput_share"] == 0.75
    assert hybrid["throughput_ok"] and hybrid["p99_ok"] and hybrid["errors_ok"] and hybrid["single_ok"]
    assert hybrid["single_overhead_ms"] == 2.0
    assert acc["figures_met"] and acc["conditions_met"] and acc["met"] and not acc["notes"]


def test_issue19_each_bar_can_fail() -> None:
    slow = _issue19([_run("search:hybrid", [20.0] * 69, elapsed=1.0)], [_run("search:hybrid", [21.0])])
    assert not slow["modes"]["hybrid"]["throughput_ok"] and not slow["met"]  # 69 < 0.7 x 100
    tail = _issue19([_run("search:hybrid", [20.0] * 90 + [61.0] * 10, elapsed=1.0)], [_run("search:hybrid", [21.0])])
    assert tail["modes"]["hybrid"]["throughput_ok"] and not tail["modes"]["hybrid"]["p99_ok"] and not tail["met"]
    far = _issue19([_run("search:hybrid", [20.0] * 80, elapsed=1.0)], [_run("search:hybrid", [22.5])])
    assert not far["modes"]["hybrid"]["single_ok"] and far["modes"]["hybrid"]["single_overhead_ms"] == 3.5
    failing = _issue19([_run("search:hybrid", [20.0] * 80, elapsed=1.0)], [_run("search:hybrid", [20.0], errors=1)])
    assert not failing["modes"]["hybrid"]["errors_ok"] and not failing["met"]
    alone = _issue19([_run("search:hybrid", [20.0] * 80, elapsed=1.0)], [])
    assert not alone["modes"]["hybrid"]["single_ok"]  # no one-client run: bar 3 unmeasured, never assumed


def test_issue19_conditions_and_a_missing_inprocess_measurement() -> None:
    four, one = [_run("search:hybrid", [20.0] * 80, elapsed=1.0)], [_run("search:hybrid", [21.0])]
    told = _issue19(four, one, default_serve=False)
    assert told["figures_met"] and not told["conditions_met"] and not told["met"] and told["notes"]
    short = _issue19(four, one, seconds=20.0, clients=2)
    assert not short["conditions"]["seconds_ok"] and not short["conditions"]["clients_ok"] and not short["met"]
    blind = _issue19(four, one, inprocess={})
    assert not blind["modes"]["hybrid"]["throughput_ok"] and not blind["met"]
    assert any("in-process" in n for n in blind["notes"])


def test_server_pick_is_read_from_the_start_up_line() -> None:
    log = (
        "loading\nserving /idx with spaces/ with x on http://127.0.0.1:8000/ with gunicorn with waitress workers, "
        "3 process(es) x 1 thread(s): 2 usable cores\n[INFO] Booting worker\n"
    )
    assert server_pick(log) == "gunicorn with waitress workers, 3 process(es) x 1 thread(s): 2 usable cores"
    assert server_pick("serving /idx on http://127.0.0.1:8000/ (1 process(es) x 4 threads)\n") is None
    assert picked_processes(server_pick(log)) == 3
    assert picked_processes("waitress, 1 process(es) x 4 thread(s): as asked") == 1
    assert picked_processes(None) is None and picked_processes("something else") is None


def test_embedding_floor_and_dealing_distinct_texts() -> None:
    floor = embedding_floor(_inprocess(embed_ms=4.0), clients=4, cores=2)
    assert floor is not None and floor["mean_latency_floor_ms"] == 8.0 and floor["queries"] == 200
    assert embedding_floor(None, clients=4, cores=2) is None
    dealt = deal(["a", "b", "a", "c", "d", " ", "e", "f"], ["hybrid", "embed"], 3)
    assert dealt == {"hybrid": ["a", "c", "e"], "embed": ["b", "d", "f"]}
    with pytest.raises(BenchError):
        deal(["a", "b", "c"], ["hybrid", "embed"], 2)
    assert cpu_stats([0.001, 0.003]) == {"n": 2, "mean_ms": 2.0, "p50_ms": 2.0, "p90_ms": 2.8}


def test_server_cpu_of_a_process_group_and_per_request(tmp_path: Path) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    for pid, name, pgrp, utime, stime in (
        (10, "newsdesk", 10, 3 * tick, tick),
        (11, "a) b", 10, tick, 0),
        (12, "x", 99, 50, 50),
    ):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) S 1 {pgrp} 0 0 0 0 0 0 0 0 {utime} {stime} 0 0\n")
    (tmp_path / "self").mkdir()
    assert group_cpu_seconds(10, tmp_path) == 5.0  # the group's two processes, a ")" in a name included
    run = _run("search:hybrid", [10.0] * 95, elapsed=2.0)
    run.server_cpu_s = 1.0
    assert summarize(run)["server_cpu"] == {"ms_per_request": 10.0, "cores_busy": 0.5}  # 95 timed + 5 warm-up
    acc = _issue19([run], [_run("search:hybrid", [10.0])])
    assert acc["modes"]["hybrid"]["server_cores_busy"] == 0.5 and any("cores busy" in n for n in acc["notes"])
