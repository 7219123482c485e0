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
    [
        ("{not json}\n", r"a\.jsonl:1:2: invalid JSON: Expecting property name"),
        ('{"id": 1}\n[1, 2]\n', r"a\.jsonl:2: expected a JSON object"),
    ],
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
    with pytest.raises(SourceError, match=r"bad\.jsonl:1:23: not UTF-8 text \(byte 0xff"):
        list(read_sources([bad]))


def _lines(n: int) -> bytes:
    return b"".join(
        json.dumps({"id": f"a{i}", "title": f"Headline {i}", "text": "x" * 3000}).encode() + b"\n" for i in range(n)
    )


@pytest.mark.parametrize("gz", [False, True])
def test_a_bad_byte_is_reported_at_its_own_line_and_column(tmp_path: Path, gz: bool) -> None:
    # five long lines, then a Latin-1 byte in line 6's headline: a text stream reads ahead and reported line 4 (or 1)
    data = _lines(5) + b'{"id": "a5", "title": "caf\xe9 au lait"}\n' + _lines(2)
    path = tmp_path / ("a.jsonl.gz" if gz else "a.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(SourceError) as caught:
        list(read_sources([path]))
    assert caught.value.message == f"{path}:6:27: not UTF-8 text (byte 0xe9: invalid continuation byte)"


def test_a_broken_json_line_gives_its_line_column_and_whole_reason(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(_lines(3) + b'\n{"id": "x", "title": "tab\there"}\n{"id": "y" "title": "z"}\n')
    with pytest.raises(SourceError) as caught:
        list(read_sources([path]))
    message = caught.value.message
    assert message.startswith(f"{path}:5:26: invalid JSON: Invalid control character U+0009 (a tab)"), message
    assert not message.endswith(" at")  # json's own msg is cut off: "Invalid control character at"


def test_skip_bad_records_reads_the_rest_and_lists_what_it_left_out(tmp_path: Path) -> None:
    from indexer.sources import ReadReport  # here, not above: each test must fail alone on the code before it

    path = tmp_path / "a.jsonl"
    path.write_bytes(
        b'{"id": "1", "title": "one"}\n{"id": "2", "title": "caf\xe9"}\n[1]\n{"id": "3", "title": "three"}\n'
        b'{"id": "4", "title": "t\tab"}\n'
    )
    report = ReadReport()
    got = [a.id for a in read_sources([path], report=report, skip_bad=True)]
    assert got == ["1", "3"]
    assert [m.split(": ")[0] for m in report.skipped] == [f"{path}:2:26", f"{path}:3", f"{path}:5:24"]
    lines = report.lines()
    assert lines[0] == "skipped 3 bad record(s) (--skip-bad-records):"
    assert lines[1:] == [f"  {m}" for m in report.skipped]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2005-01-08", "2005-01-08"),
        ("2005-01-08T10:00:00Z", "2005-01-08T10:00:00+00:00"),  # RFC 3339
        ("2005-01-08 10:00:00+01:00", "2005-01-08T10:00:00+01:00"),
        ("Sat, 08 Jan 2005 10:00:00 GMT", "2005-01-08T10:00:00+00:00"),  # RFC 822, every RSS feed
        ("08 Jan 2005 10:00:00 +0100", "2005-01-08T10:00:00+01:00"),  # RFC 2822 without a weekday
        ("8 Jan 2005", "2005-01-08"),
        ("8th January 2005", "2005-01-08"),
        ("January 8, 2005", "2005-01-08"),
        ("Saturday, 8 January 2005 10:30", "2005-01-08T10:30:00"),
        ("26-FEB-1987 15:01:01.79", "1987-02-26T15:01:01.790000"),  # Reuters-21578
        ("2005/01/08", "2005-01-08"),
        ("01/02/2005", "2005-02-01"),  # numeric dates are day first
        ("12/25/2005", None),  # ... so a month-first one is unreadable, not half misread
        ("January 2005", None),  # no day: nothing is made up
        ("8 Jan", None),
        ("2005", None),
        ("2005-02-30", None),
        ("Sun, 31 Feb 2005 10:00:00 GMT", None),
        ("yesterday", None),
        ("\u0661/\u0661/\u0662\u0660\u0660\u0660", None),  # Arabic-Indic digits are not read as a date
    ],
)
def test_one_date_parser_reads_the_common_formats(raw: str, expected: str | None) -> None:
    from search.text.dates import parse_date

    assert parse_date(raw) == expected


def test_unreadable_dates_are_counted_per_field_in_the_report(write_jsonl) -> None:
    from indexer.sources import ReadReport

    path = write_jsonl(
        "a.jsonl",
        [
            {"id": "1", "title": "a", "published": "8 Jan 2005"},
            {"id": "2", "title": "b", "published": "Sat, 08 Jan 2005 10:00:00 GMT"},
            {"id": "3", "title": "c", "published": "soon"},
            {"id": "4", "title": "d", "published": "12/25/2005"},
        ],
    )
    report = ReadReport()
    got = {a.id: a.date for a in read_sources([path], report=report)}
    assert got == {"1": "2005-01-08", "2": "2005-01-08T10:00:00+00:00", "3": None, "4": None}
    assert report.unreadable == {"published": [(f"{path}:3", "soon"), (f"{path}:4", "12/25/2005")]}
    assert report.lines()[0].startswith("field 'published': 2 value(s) could not be read as dates")
