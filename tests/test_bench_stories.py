"""The pure parts of bench/stories.py: purity, completeness, B-cubed and the topic-week reference."""

from __future__ import annotations

from datetime import date

import pytest

from bench.stories import EPOCH, bcubed, dated_rows, purity, reference_groups, scores


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
