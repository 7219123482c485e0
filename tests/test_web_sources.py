"""Feeds, pages and WARC crawls as sources (indexer/web.py through indexer/sources.py), written in the real formats."""

from __future__ import annotations

from pathlib import Path

from indexer.sources import ReadReport, read_sources
from indexer.web import Fetcher
from search.models import Article
from tests.webfixtures import Item, atom, page, rss, serving, warc

FLOOD = [
    "Heavy rain caused the river to burst its banks on Tuesday, flooding hundreds of homes along the valley floor.",
    "Rescue teams worked through the night to move residents to shelters set up in local schools and church halls.",
]
VOTE = [
    "The council voted by a narrow margin to approve the new budget after a debate that lasted well into the night.",
    "Opposition members said the plan cut too deeply into library and park services across the city's districts.",
]
TUE = "Tue, 05 Mar 2024 10:00:00 GMT"
FETCHER = Fetcher(5.0, "newsdesk-tests/1.0")


def _read(paths: list[Path], fetcher: Fetcher | None = None) -> tuple[list[Article], ReadReport]:
    report = ReadReport()
    return list(read_sources(paths, report=report, fetcher=fetcher)), report


def test_rss_items_with_content_and_summary_only_fetch_their_page(tmp_path: Path) -> None:
    with serving() as web:
        web.set("/vote", page("Council approves budget", VOTE, date="2024-03-04", site="City Times"))
        html = "".join(f"<p>{p}</p>" for p in FLOOD)
        items = [
            Item(
                "urn:flood", "Floods hit the valley", "Tue, 05 Mar 2024 10:00:00 GMT", "https://x.org/f", content=html
            ),
            Item("", "Council approves budget", "Mon, 04 Mar 2024 09:30:00 GMT", web.url("/vote"), summary="Short."),
            Item("urn:empty", "", "Mon, 04 Mar 2024 09:30:00 GMT"),
        ]
        feed = tmp_path / "city.rss"
        feed.write_bytes(rss("City Times", items))
        articles, report = _read([feed], FETCHER)
        assert web.requests and web.requests[0][1]["User-Agent"] == "newsdesk-tests/1.0"
    flood, vote = articles
    assert (flood.id, flood.title, flood.source, flood.url) == (
        "urn:flood",
        "Floods hit the valley",
        "City Times",
        "https://x.org/f",
    )
    assert flood.date == "2024-03-05T10:00:00+00:00"
    assert list(flood.paragraphs) == FLOOD
    assert vote.id == web.url("/vote")  # no guid: the link
    assert list(vote.paragraphs) == VOTE  # the page, not the one-word summary
    assert vote.date == "2024-03-04T09:30:00+00:00"
    assert report.reasons == {"no text": 1}
    assert any("item 3" in line and "no text" in line for line in report.lines())


def test_summary_is_kept_when_the_page_cannot_be_fetched(tmp_path: Path) -> None:
    with serving() as web:
        web.set("/gone", b"oops", status=500)
        feed = tmp_path / "feed.xml"
        item = Item("g1", "Storm warning", "Tue, 05 Mar 2024 10:00:00 GMT", web.url("/gone"), summary="<p>Winds.</p>")
        feed.write_bytes(rss("Weather", [item]))
        (article,), report = _read([feed], FETCHER)
    assert article.paragraphs == ("Winds.",)
    assert any("HTTP 500" in n for n in report.notes)


def test_atom_entries(tmp_path: Path) -> None:
    feed = tmp_path / "news.atom"
    content = "<p>" + FLOOD[0] + "</p><ul><li>" + FLOOD[1] + "</li></ul>"
    feed.write_bytes(atom("Valley News", [Item("tag:v,2024:1", "Floods", "2024-03-05T08:00:00Z", content=content)]))
    (article,), report = _read([feed])
    assert (article.id, article.title, article.source, article.date) == (
        "tag:v,2024:1",
        "Floods",
        "Valley News",
        "2024-03-05T08:00:00+00:00",
    )
    assert list(article.paragraphs) == FLOOD
    assert not report.reasons


def test_feed_detected_by_content_and_malformed_feed_skipped(tmp_path: Path) -> None:
    good = tmp_path / "feed.txt.download"
    good.write_bytes(rss("Wire", [Item("w1", "A headline", "Tue, 05 Mar 2024 10:00:00 GMT", summary="Body text.")]))
    bad = tmp_path / "broken.rss"
    bad.write_bytes(b"\x00\x01\x02 this is no feed <<<")
    cut = tmp_path / "cut.rss"  # a truncated feed: feedparser recovers the items it could read, and says so
    cut.write_bytes(b"<rss><channel><title>C</title><item><guid>c1</guid><title>Kept</title></item><item><ti")
    articles, report = _read([bad, good, cut])
    assert [a.id for a in articles] == ["w1", "c1"]
    assert report.reasons == {"malformed feed": 1, "no text": 1}  # the cut item
    assert "broken.rss" in report.dropped[0]
    assert any("cut.rss" in n and "not well-formed" in n for n in report.notes)


def test_pages_and_directories_of_saved_pages(tmp_path: Path) -> None:
    root = tmp_path / "saved"
    (root / "2024").mkdir(parents=True)
    (root / "2024" / "flood.html").write_bytes(
        page("Floods hit the valley", FLOOD, date="2024-03-05T10:00:00Z", site="Valley News", url="https://v.org/f")
    )
    (root / "2024" / "vote.htm").write_bytes(page("Council approves budget", VOTE))  # no date, no URL
    (root / "empty.html").write_bytes(b"<html><body><nav>Home</nav></body></html>")
    (root / "latin.html").write_bytes(page("Caf\xe9", FLOOD).replace(b"caf\xc3\xa9", b"x") + b"\xe9\xff")
    (root / "notes.txt").write_text("Plain headline\nPlain body.\n", encoding="utf-8")
    articles, report = _read([root])
    by_id = {a.id: a for a in articles}
    flood = by_id["https://v.org/f"]
    assert (flood.title, flood.date, flood.source) == ("Floods hit the valley", "2024-03-05", "Valley News")
    assert list(flood.paragraphs) == FLOOD
    vote = by_id["2024/vote"]  # no URL: the path, as for text files
    assert vote.title == "Council approves budget" and list(vote.paragraphs) == VOTE and vote.date is None
    assert "notes" in by_id
    assert report.reasons == {"no text": 1, "bad encoding": 1}
    assert any("latin.html" in d and "not valid utf-8" in d for d in report.dropped)


def test_htmldate_finds_a_date_trafilatura_leaves(tmp_path: Path) -> None:
    html = page("Council approves budget", VOTE).replace(
        b"<footer>", b"<p class='byline'>Published: 2023-11-14</p><footer>"
    )
    f = tmp_path / "vote.html"
    f.write_bytes(html)
    (article,), _ = _read([f])
    assert article.date == "2023-11-14"


def test_warc_and_warc_gz(tmp_path: Path) -> None:
    records = [
        ("https://v.org/flood", 200, "text/html; charset=utf-8", page("Floods hit the valley", FLOOD, site="V")),
        ("https://v.org/logo.png", 200, "image/png", b"\x89PNG\r\n\x1a\n"),
        ("https://v.org/missing", 404, "text/html", b"<html><body>Not found</body></html>"),
        ("https://v.org/blank", 200, "text/html", b"<html><body></body></html>"),
        ("https://v.org/vote", 200, "text/html; charset=utf-8", page("Council approves budget", VOTE)),
    ]
    for name in ("crawl.warc", "crawl.warc.gz"):
        (flood, vote), report = _read([warc(tmp_path / name, records)])
        assert (flood.id, flood.title, flood.source, list(flood.paragraphs)) == (
            "https://v.org/flood",
            "Floods hit the valley",
            "V",
            FLOOD,
        )
        assert vote.id == "https://v.org/vote" and list(vote.paragraphs) == VOTE
        assert report.reasons == {"not an HTML response": 1, "HTTP 404": 1, "no text": 1}


def test_a_damaged_warc_keeps_what_was_read(tmp_path: Path) -> None:
    records = [
        ("https://v.org/flood", 200, "text/html", page("Floods", FLOOD)),
        ("https://v.org/vote", 200, "text/html", page("Vote", VOTE)),
    ]
    whole = warc(tmp_path / "whole.warc.gz", records).read_bytes()
    last = whole.rindex(b"\x1f\x8b\x08")  # each record is a gzip member: the last one, the second response
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(whole[: last + 30] + b"\xff" * 64 + whole[last + 94 :])  # its deflate stream broken
    articles, report = _read([cut])
    assert [a.id for a in articles] == ["https://v.org/flood"]
    assert report.reasons == {"damaged archive": 1}
