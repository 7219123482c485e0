"""Filters, timelines and cursor paging on real Reuters-21578 wire stories (skipped without ../shared/data).

A deterministic sample (every 20th story: about 1,080, dated February to October 1987, with their topics as tags)
is indexed with the hashing embedder: what is checked here is filtering and ordering, not meaning.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from indexer.build import build_index
from indexer.sources import read_sources
from search.ranking.catalog import Filter
from search.service import SearchService
from search.settings import Settings
from search.storage.index import open_index
from tests.fakes import HashEmbedder

REUTERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "reuters21578" / "articles.jsonl.gz"
pytestmark = pytest.mark.skipif(not REUTERS.is_file(), reason=f"Reuters-21578 not found at {REUTERS}")


@pytest.fixture(scope="module")
def reuters(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchService, dict[str, dict[str, Any]]]:
    rows: dict[str, dict[str, Any]] = {}
    with gzip.open(REUTERS, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if n % 20 == 0:
                r = json.loads(line)
                if r.get("paragraphs") and r.get("date"):
                    rows[r["id"]] = {k: r[k] for k in ("id", "date", "title", "paragraphs", "topics")}
    work = tmp_path_factory.mktemp("reuters")
    source = work / "sample.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows.values()), encoding="utf-8")
    target = work / "index"
    embedder = HashEmbedder()
    build_index(read_sources([source]), target, Settings(index_dir=target), embedder, progress=False)
    # hash vectors: the timeline floors, measured as cosines of the real model, mean nothing here (what this file
    # tests is filtering, ordering and paging), so they are off
    settings = Settings(index_dir=target, timeline_min_similarity=-1.0, timeline_min_relevance=-1.0)
    return SearchService(open_index(target, embedder), embedder, settings), rows


def test_date_and_topic_filters_return_only_matching_stories(reuters: tuple[SearchService, dict[str, Any]]) -> None:
    service, rows = reuters
    assert len(rows) > 900
    months = {r["date"][:7] for r in rows.values()}
    assert len(months) >= 5  # the sample spans the year (Reuters-21578 has gaps in May and from July)
    for mode in ("hybrid", "dense", "lexical"):
        flt = Filter.parse("1987-03-01", "1987-04-15", tags=["earn"])
        got = service.search("net profit shares quarter", k=50, mode=mode, filters=flt).results
        assert got
        for r in got:
            row = rows[r.article.id]
            assert "1987-03-01" <= row["date"][:10] <= "1987-04-15" and "earn" in row["topics"]
        matching = [
            i for i, r in rows.items() if "1987-03-01" <= r["date"][:10] <= "1987-04-15" and "earn" in r["topics"]
        ]
        if mode != "lexical":  # every matching story has a dense score: a full page when enough match
            assert len(got) == min(50, len(matching))


def test_a_topic_timeline_is_in_date_order(reuters: tuple[SearchService, dict[str, Any]]) -> None:
    service, rows = reuters
    line = service.query_timeline("crude oil prices opec", k=30, filters=Filter.parse(tags=["crude"]))
    dates = [rows[e.article.id]["date"] for e in line.entries]
    crude = sum("crude" in r["topics"] for r in rows.values())
    assert 20 <= len(dates) <= min(30, crude) and dates == sorted(dates)
    assert all("crude" in rows[e.article.id]["topics"] for e in line.entries)


def test_paging_through_500_results_returns_each_once(reuters: tuple[SearchService, dict[str, Any]]) -> None:
    service, _ = reuters
    seen: list[str] = []
    cursor: str | None = "*"
    while cursor is not None and len(seen) < 500:
        page = service.search("company said shares market", k=50, cursor=cursor)
        seen += [r.article.id for r in page.results]
        cursor = page.next_cursor
    assert len(seen) >= 500
    assert len(set(seen)) == len(seen)
