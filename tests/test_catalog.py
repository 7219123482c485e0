"""Filters and facets over the in-memory article catalog, against plain-Python oracles over the source rows."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from search.errors import InvalidInput
from search.ranking.catalog import ArticleCatalog, Filter, parse_day
from search.service import SearchService


def _rows_by_aid(service: SearchService) -> dict[int, dict[str, Any]]:
    rows = service.index.sqlite.connection().execute("SELECT aid, id FROM articles").fetchall()
    return {int(aid): {"id": i} for aid, i in rows}


def test_filter_parse_validates_and_normalises() -> None:
    assert Filter.parse() is None
    f = Filter.parse("1987-03-01", "1987-03-31T23:59:00", [" Reuters "], ["grain"])
    assert f is not None and f.sources == ("Reuters",) and f.date_to == parse_day("1987-03-31", "to")
    assert Filter.parse(sources=["b", "A"]).key() == Filter.parse(sources=["a", "B"]).key()  # type: ignore[union-attr]
    bad: list[dict[str, Any]] = [
        {"date_from": "March 1987"},
        {"date_from": "1987-04-01", "date_to": "1987-03-01"},
        {"sources": [" "]},
        {"tags": ["t"] * 51},
    ]
    for kwargs in bad:
        with pytest.raises(InvalidInput):
            Filter.parse(**kwargs)


def test_mask_matches_the_source_rows(wire_service: SearchService, wire_rows: list[dict[str, Any]]) -> None:
    catalog = wire_service.index.catalog
    by_id = {r["id"]: r for r in wire_rows}
    ids = _rows_by_aid(wire_service)
    cases = [
        Filter.parse("1987-03-01", "1987-05-31"),
        Filter.parse(sources=["reuters", "AFP"]),
        Filter.parse(tags=["grain"]),
        Filter.parse("1987-06-15", None, ["AP"], ["crude", "ship"]),
        Filter.parse(sources=["No Such Wire"]),
    ]
    for flt in cases:
        assert flt is not None
        got = {ids[int(a)]["id"] for a in catalog.allowed(flt)}  # type: ignore[union-attr]
        want = {
            i
            for i, r in by_id.items()
            if (flt.date_from is None or parse_day(r["date"], "d") >= flt.date_from)
            and (flt.date_to is None or parse_day(r["date"], "d") <= flt.date_to)
            and (not flt.sources or r["source"].casefold() in {s.casefold() for s in flt.sources})
            and (not flt.tags or r["category"] in flt.tags)
        }
        assert got == want, flt
    assert catalog.allowed(None) is None


def test_articles_without_a_date_never_pass_a_date_filter() -> None:
    catalog = ArticleCatalog(
        np.asarray([3, 1, 2]), np.asarray([100, np.iinfo(np.int32).min, 50]), ["A", None, "b"], [("x",), (), ()]
    )
    for flt in (Filter(date_from=0), Filter(sources=("a", "B"))):
        allowed = catalog.allowed(flt)
        assert allowed is not None and allowed.tolist() == [2, 3]
    assert catalog.source_of([1, 2, 9]) == [None, "b", None]


def test_facets_count_sources_categories_and_months(
    wire_service: SearchService, wire_rows: list[dict[str, Any]]
) -> None:
    ids = _rows_by_aid(wire_service)
    by_id = {r["id"]: r for r in wire_rows}
    aids = sorted(ids)[:200]
    facets = wire_service.index.catalog.facets(wire_service.index.catalog.rows_of(aids), size=3)
    rows = [by_id[ids[a]["id"]] for a in aids]
    sources = Counter(r["source"] for r in rows)
    assert [(f.value, f.count) for f in facets["source"]] == sorted(sources.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert {f.value: f.count for f in facets["category"]}.items() <= Counter(r["category"] for r in rows).items()
    months = Counter(r["date"][:7] for r in rows)
    assert [(f.value, f.count) for f in facets["month"]] == sorted(months.items())
