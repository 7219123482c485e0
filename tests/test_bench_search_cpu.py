"""Unit tests of bench/search_cpu.py's pure parts (no index, no model): how queries are dealt to the modes, the CPU
summaries and ratios, the acceptance check and the profile table."""

from __future__ import annotations

import json

import pytest

from bench.rankings import differences
from bench.scifact import BenchError
from bench.search_cpu import acceptance, cpu_ratios, cpu_summary, interleave, profile_top


def test_interleave_deals_distinct_texts_side_by_side() -> None:
    texts = [f"q{i}" for i in range(12)]
    dealt = interleave(texts, ["hybrid", "dense", "embed"], per_slot=3, warmup=1)
    assert dealt == {
        "hybrid": ["q0", "q3", "q6", "q9"],
        "dense": ["q1", "q4", "q7", "q10"],
        "embed": ["q2", "q5", "q8", "q11"],
    }


def test_interleave_never_repeats_a_text() -> None:
    texts = ["a", "b", "a", " ", "c", "b", "d", "e", "f", "g"]  # 7 distinct, one blank
    dealt = interleave(texts, ["x", "y"], per_slot=3)
    used = [t for slot in dealt.values() for t in slot]
    assert len(used) == len(set(used)) == 6
    assert " " not in used
    with pytest.raises(BenchError, match="distinct"):
        interleave(texts, ["x", "y"], per_slot=4)  # 8 needed, 7 distinct: an error, not a repeat


def test_cpu_summary_in_milliseconds() -> None:
    summary = cpu_summary([0.001, 0.002, 0.003, 0.010])
    assert summary["n"] == 4
    assert summary["mean_ms"] == pytest.approx(4.0)
    assert summary["p50_ms"] == pytest.approx(2.5)
    assert summary["p90_ms"] == pytest.approx(7.9)  # rank 2.7 between 3 and 10
    assert summary["total_ms"] == pytest.approx(16.0)
    assert cpu_summary([])["mean_ms"] is None


def test_ratios_and_acceptance() -> None:
    summaries = {"hybrid": {"mean_ms": 7.0}, "dense": {"mean_ms": 5.0}, "lexical": {"mean_ms": 3.0}}
    summaries["embed"] = {"mean_ms": 3.5}
    ratios = cpu_ratios(summaries)
    assert ratios == {"hybrid/embed": 2.0, "dense/embed": pytest.approx(1.429, abs=1e-3), "lexical/embed": 0.857}
    assert acceptance(ratios)["met"] is True
    slower = cpu_ratios({**summaries, "dense": {"mean_ms": 5.6}})
    result = acceptance(slower)
    assert result["met"] is False
    assert result["checks"]["dense"]["met"] is False and result["checks"]["hybrid"]["met"] is True
    assert acceptance({"hybrid/embed": 1.0})["met"] is False  # dense not measured: not met
    assert cpu_ratios({"hybrid": {"mean_ms": 7.0}, "embed": {"mean_ms": 0.0}}) == {"hybrid/embed": None}


def test_profile_top_orders_and_scales_per_search() -> None:
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = {
        ("/x/search/service.py", 10, "search"): (10, 10, 0.010, 0.200, {}),
        ("/x/search/ranking/fusion.py", 5, "fuse"): (10, 10, 0.050, 0.060, {}),
        ("~", 0, "<built-in method numpy.core.multiarray.dot>"): (30, 30, 0.080, 0.080, {}),
    }
    cumulative = profile_top(stats, 2, calls=10, sort="cumulative")
    assert [e["function"].rsplit("(", 1)[-1] for e in cumulative] == [
        "search)",
        "<built-in method numpy.core.multiarray.dot>",
    ]
    assert cumulative[0]["cumtime_ms"] == pytest.approx(20.0)
    assert cumulative[0]["calls_per_search"] == 1.0
    own = profile_top(stats, 3, calls=10, sort="tottime")
    assert [e["tottime_ms"] for e in own] == [8.0, 5.0, 1.0]
    assert own[0]["function"] == "<built-in method numpy.core.multiarray.dot>"
    with pytest.raises(ValueError):
        profile_top(stats, 1, calls=1, sort="ncalls")


def test_rankings_compare_finds_every_difference() -> None:
    old = {"a": [{"id": 1, "score": 0.5}, {"id": 2, "score": 0.25}], "b": 1}
    assert list(differences(old, json.loads(json.dumps(old)))) == []
    moved = {"a": [{"id": 2, "score": 0.5}, {"id": 1, "score": 0.2500001}], "c": 1}
    assert sorted(differences(old, moved)) == [
        "/a/0/id: 1 against 2",
        "/a/1/id: 2 against 1",
        "/a/1/score: 0.25 against 0.2500001",
        "/b: only in old",
        "/c: only in new",
    ]
    assert list(differences({"x": [1, 2]}, {"x": [1]})) == ["/x: 2 items against 1"]
    assert list(differences({"x": 1}, {"x": 1.0})) == ["/x: 1 against 1.0"]
