"""The pure parts of bench/stories.py (purity, completeness, B-cubed, the topic-week reference), of bench/timeline.py's
scoring and of bench/story_choice.py's blind choice."""

from __future__ import annotations

import argparse
from datetime import date
from typing import Any

import pytest

from bench.stories import EPOCH, bcubed, dated_rows, purity, reference_groups, scores, vector_kind
from bench.story_choice import choose
from bench.timeline import Entry, prf


def test_purity_and_bcubed_on_a_known_clustering() -> None:
    clusters = ["a", "a", "a", "b", "b"]
    classes = ["x", "x", "y", "y", "y"]
    assert purity(clusters, classes) == pytest.approx(4 / 5)
    assert purity(classes, clusters) == pytest.approx(4 / 5)  # completeness: roles swapped
    p, r = bcubed(clusters, classes)
    assert p == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 + 1) / 5)
    assert r == pytest.approx((1 + 1 + 1 / 3 + 2 / 3 + 2 / 3) / 5)
    perfect = scores(classes, classes)
    assert perfect["purity"] == perfect["completeness"] == perfect["f"] == 1.0


def test_reference_is_first_topic_and_iso_week_and_skips_unknowns() -> None:
    monday = date(1987, 3, 2).toordinal() - EPOCH
    got = reference_groups(
        [monday, monday + 6, monday + 7, None, monday], [["grain", "corn"], ["grain"], ["grain"], ["x"], []]
    )
    assert got[0] == got[1] == "grain|1987-W10" and got[2] == "grain|1987-W11"
    assert got[3] is None and got[4] is None
    alone = scores(["1", "2", "3"], ["k", "k", None])
    assert alone["purity"] == 1.0 and alone["completeness"] == 0.5 and alone["singleton_share"] == 1.0


def test_a_dated_split_keeps_the_articles_of_its_part_and_no_undated_one() -> None:
    day = date(1987, 3, 30).toordinal() - EPOCH
    days = [day - 1, day, None, day + 5, day - 30]
    assert dated_rows(days, None, None).tolist() == [0, 1, 2, 3, 4]  # no split: every article
    assert dated_rows(days, None, date(1987, 3, 30)).tolist() == [0, 4]  # before: the tuning part
    assert dated_rows(days, date(1987, 3, 30), None).tolist() == [1, 3]  # on or after: the confirming part
    assert dated_rows(days, date(1987, 3, 1), date(1987, 4, 1)).tolist() == [0, 1]


def test_vector_kinds_are_checked() -> None:
    assert vector_kind("stored") == "stored" and vector_kind("mix:0.25") == "mix:0.25"
    for bad in ("mean", "mix:", "mix:1.5", "mix:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            vector_kind(bad)


def test_a_timeline_rule_that_floors_the_story_too() -> None:
    lists = [[Entry(0.9, True, False), Entry(0.2, False, True), Entry(0.3, True, True), Entry(0.1, True, False)]]
    keep = prf(lists, 0.5)  # the story's two articles stay whatever their score
    assert keep["precision"] == pytest.approx(2 / 3, abs=1e-4) and keep["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert keep["entries_per_timeline"] == 3
    floor = prf(lists, 0.5, keep_story=False)
    assert floor["precision"] == 1.0 and floor["recall"] == pytest.approx(1 / 3, abs=1e-4)
    assert floor["entries_per_timeline"] == 1


def _line(threshold: float, window: int, keep: dict[str, float], floor: dict[str, float]) -> dict[str, Any]:
    grid = {
        rule: {"grid": {"tuning": {k: {"f1": v} for k, v in f1s.items()}}}
        for rule, f1s in (("keep", keep), ("floor", floor))
    }
    return {"threshold": threshold, "window_days": window, **grid}


def test_the_blind_choice_keeps_only_settings_as_pure_and_timelines_as_good_as_the_baseline() -> None:
    stories = [
        {"threshold": 0.5, "window_days": 2, "purity": 0.80, "completeness": 0.3, "f": 0.44},  # impure: out
        {"threshold": 0.6, "window_days": 2, "purity": 0.92, "completeness": 0.2, "f": 0.33},
        {"threshold": 0.6, "window_days": 3, "purity": 0.91, "completeness": 0.21, "f": 0.34},  # timelines worse: out
        {"threshold": 0.7, "window_days": 2, "purity": 0.95, "completeness": 0.1, "f": 0.18},
    ]
    timelines = [
        _line(0.5, 2, {"0.45": 0.7}, {"0.45": 0.7}),
        _line(0.6, 2, {"0.45": 0.58, "0.5": 0.59}, {"0.45": 0.61, "0.5": 0.61}),  # floor rule, the higher floor
        _line(0.6, 3, {"0.45": 0.59}, {"0.45": 0.59}),
        _line(0.7, 2, {"0.45": 0.62}, {"0.45": 0.6}),
    ]
    chosen, candidates = choose(stories, timelines, base_purity=0.9, base_f1=0.60)
    assert chosen is not None and (chosen["threshold"], chosen["window_days"]) == (0.6, 2)
    assert (chosen["rule"], chosen["floor"], chosen["timeline_f1"]) == ("floor", 0.5, 0.61)
    assert [c["kept"] for c in candidates] == [False, True, False, True]
    assert choose(stories, timelines, base_purity=0.99, base_f1=0.60)[0] is None  # nothing passes: the protocol fails
