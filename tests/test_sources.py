from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from indexer.sources import FieldMap, read_sources
from search.errors import SourceError


def test_jsonl_detects_field_spellings(write_jsonl) -> None:
    path = write_jsonl(
        "a.jsonl",
        [
            {
                "_id": "x1",
                "headline": "H1",
                "body": "Para one.\n\nPara two.",
                "publish_date": "2024-05-01",
                "outlet": "W",
            },
            {
                "id": "x2",
                "title": "H2",
                "paragraphs": ["p1", " ", "p2"],
                "published": "2024-05-02T10:00:00Z",
                "link": "https://e.x/2",
                "category": "world",
                "authors": ["A"],
            },
        ],
    )
    a, b = read_sources([path])
    assert (a.id, a.title, a.paragraphs, a.date, a.source) == (
        "x1",
        "H1",
        ("Para one.", "Para two."),
        "2024-05-01",
        "W",
    )
    assert (b.id, b.paragraphs, b.url, b.tags) == ("x2", ("p1", "p2"), "https://e.x/2", ("world",))
    assert b.date == "2024-05-02T10:00:00+00:00"
    assert b.extra == {"authors": ["A"]}  # unmapped fields are kept, not dropped


def test_gzip_jsonl_and_unparseable_dates_kept_raw(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "r1", "title": "T", "text": "x", "date": "26-FEB-1987 15:01:01.79"}) + "\n")
        fh.write(json.dumps({"id": "r2", "title": "T2", "text": "y", "date": "sometime in spring"}) + "\n")
    a, b = read_sources([path])
    assert a.date == "1987-02-26T15:01:01.790000"
    assert b.date is None and b.extra["date_raw"] == "sometime in spring"


def test_csv_with_mapped_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text('key,head,story,when\nk1,"Head, one","First para.\n\nSecond para.",2020-01-02\n', encoding="utf-8")
    (a,) = read_sources([path], FieldMap(id="key", title="head", text="story", date="when"))
    assert (a.id, a.title, a.paragraphs, a.date) == ("k1", "Head, one", ("First para.", "Second para."), "2020-01-02")


def test_mapped_field_missing_is_a_clear_error(write_jsonl) -> None:
    path = write_jsonl("a.jsonl", [{"id": "1", "title": "t", "text": "x"}])
    with pytest.raises(SourceError, match="'story'"):
        list(read_sources([path], FieldMap(text="story")))


def test_directory_of_text_and_markdown(tmp_path: Path) -> None:
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "001.txt").write_text("\nFloods hit town\nWater rose.\n\nCrews came.\n", encoding="utf-8")
    (tmp_path / "002.md").write_text("# Markdown headline\n\nBody text here.\n", encoding="utf-8")
    (tmp_path / "ignored.json").write_text("{}", encoding="utf-8")
    got = {a.id: a for a in read_sources([tmp_path])}
    assert set(got) == {"world/001", "002"}
    assert got["world/001"].title == "Floods hit town"
    assert got["world/001"].paragraphs == ("Water rose.", "Crews came.")
    assert got["002"].title == "Markdown headline"


def test_empty_records_skipped_and_missing_id_gets_content_hash(write_jsonl) -> None:
    path = write_jsonl("a.jsonl", [{"id": "e", "title": " ", "text": ""}, {"title": "No id", "text": "Some text."}])
    (a,) = read_sources([path])
    assert len(a.id) == 16 and a.id == a.content_hash()[:16]


@pytest.mark.parametrize(
    ("content", "match"),
    [("{not json}\n", r"a\.jsonl:1: invalid JSON"), ('{"id": 1}\n[1, 2]\n', r"a\.jsonl:2: expected a JSON object")],
)
def test_malformed_jsonl_names_file_and_line(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SourceError, match=match):
        list(read_sources([path]))


def test_unknown_format_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").touch()
    with pytest.raises(SourceError, match="unknown source format"):
        list(read_sources([tmp_path / "x.parquet"]))
    with pytest.raises(SourceError, match="no such file"):
        list(read_sources([tmp_path / "missing.jsonl"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "1", "title": "\xff\xfe"}\n')
    with pytest.raises(SourceError, match="unreadable"):
        list(read_sources([bad]))
