"""News as the web publishes it: RSS and Atom feeds, HTML pages (saved or fetched) and WARC crawls.

Each format is read by the library made for it: feedparser for feeds (every RSS and Atom dialect, with its own
date and encoding handling), trafilatura for a page's main text and metadata (title, date, author, site), htmldate
for a page's date where trafilatura found none, warcio for WARC and WARC.gz records. A record that cannot be used
(a page with no text, bytes that are not the declared encoding, a feed that is not XML, a WARC response that is
not HTML) is skipped with a named reason counted in the ``ReadReport``; the rest of the source is still read.

``Fetcher`` is the one HTTP client, shared with ``newsdesk watch`` (indexer/watch.py): a User-Agent naming
newsdesk, a timeout on every request, conditional requests (ETag, Last-Modified) and a size cap.
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import json
import logging
import re
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, Protocol

from search.jsontypes import JSONObject
from search.models import Article
from search.settings import Settings
from search.text.chunking import split_paragraphs
from search.text.dates import parse_date

log = logging.getLogger("newsdesk.web")

Kind = Literal["feed", "page", "warc"]
FEED_SUFFIXES = (".rss", ".atom", ".xml", ".feed")
PAGE_SUFFIXES = (".html", ".htm", ".xhtml")
WARC_SUFFIXES = (".warc", ".warc.gz")
MIN_UNTITLED_WORDS = 10  # a page without a headline needs this many words of main text to be an article
MAX_FETCH_BYTES = 20 * 1024 * 1024  # a feed or page larger than this is refused rather than read into memory
_BLOCKS = ("p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "dd", "dt", "td", "figcaption")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_:.\-]+)""", re.IGNORECASE)
_HTTP_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_:.\-]+)", re.IGNORECASE)


class Skip(Exception):
    """A record that cannot be used; ``reason`` is the short name it is counted under (``no text``, ``bad
    encoding``, ...), ``detail`` what the summary says about this one."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Skipped(Protocol):
    """Where skipped records are counted (indexer/sources.py ``ReadReport``)."""

    def skip(self, where: str, reason: str, detail: str = "") -> None: ...

    def note(self, where: str, message: str) -> None: ...


class FetchError(Exception):
    """A request that did not answer usable content: a timeout, a refused connection, an HTTP error status, a body
    over ``MAX_FETCH_BYTES``. ``reason`` is short and stable (``timeout``, ``HTTP 500``), for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Fetched:
    """One answer: ``not_modified`` for a 304 (no body), else the body with the headers caching needs."""

    url: str
    body: bytes
    content_type: str
    etag: str | None
    last_modified: str | None
    not_modified: bool = False


@dataclass(frozen=True)
class Fetcher:
    """HTTP GET with a User-Agent, a timeout and conditional headers; urllib (the standard library) is enough for
    one GET at a time, and follows redirects itself."""

    timeout: float
    user_agent: str

    @classmethod
    def of(cls, settings: Settings) -> Fetcher:
        return cls(settings.fetch_timeout, settings.user_agent)

    def get(self, url: str, etag: str | None = None, last_modified: str | None = None) -> Fetched:
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "gzip"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                body = resp.read(MAX_FETCH_BYTES + 1)
                if len(body) > MAX_FETCH_BYTES:
                    raise FetchError("too large", f"over {MAX_FETCH_BYTES} bytes")
                if resp.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = _gunzip(body)
                return Fetched(
                    resp.geturl(),
                    body,
                    resp.headers.get("Content-Type", ""),
                    resp.headers.get("ETag"),
                    resp.headers.get("Last-Modified"),
                )
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return Fetched(url, b"", "", etag, last_modified, not_modified=True)
            raise FetchError(f"HTTP {exc.code}", str(exc.reason)) from None
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise FetchError("timeout", f"no answer within {self.timeout:g} s") from None
            raise FetchError("unreachable", str(reason)) from None


def _gunzip(body: bytes) -> bytes:
    try:
        return gzip.decompress(body)
    except (OSError, EOFError) as exc:
        raise FetchError("bad gzip", str(exc)) from None


def kind_of(name: str, head: bytes, content_type: str = "") -> Kind | None:
    """Which web format a file or an answer is: by suffix first (as for JSONL and CSV), then by content type, then
    by its first bytes (a feed saved as ``.txt``, a URL without a suffix). None: not one of them."""
    lower = name.lower().split("?")[0]
    if lower.endswith(WARC_SUFFIXES):
        return "warc"
    if lower.endswith(FEED_SUFFIXES):
        return "feed"
    if lower.endswith(PAGE_SUFFIXES):
        return "page"
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in ("application/rss+xml", "application/atom+xml", "application/rdf+xml", "application/feed+xml"):
        return "feed"
    if ctype == "application/warc":
        return "warc"
    if head[:2] == b"\x1f\x8b":
        try:
            head = gzip.decompress(head)[:64]
        except (OSError, EOFError):
            head = _gunzip_head(head)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"warc/"):
        return "warc"
    if b"<rss" in text or b"<feed" in text or b"<rdf:rdf" in text:
        return "feed"
    if text.startswith((b"<!doctype html", b"<html")) or ctype in ("text/html", "application/xhtml+xml"):
        return "page"
    if text.startswith(b"<?xml"):
        return "feed"  # XML that is not XHTML: feedparser tells whether it is a feed
    return None


def _gunzip_head(head: bytes) -> bytes:
    """The first bytes of a gzip stream of which only the start is at hand."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 64)
    except zlib.error:
        return b""


# -- feeds -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedEntry:
    """One item of a feed before it becomes an article: its key (guid, else link) and a fingerprint of what the
    feed says of it, so that ``newsdesk watch`` can tell a new or changed item from one it has, before fetching
    its page."""

    key: str | None
    fingerprint: str
    entry: dict[str, object]
    feed_title: str | None
    where: str

    def article(self, report: Skipped, fetcher: Fetcher | None) -> Article:
        """The article (``Skip`` when it has neither title nor text)."""
        return _entry_article(self.entry, self.feed_title, self.where, report, fetcher)


def feed_articles(data: bytes, where: str, report: Skipped, fetcher: Fetcher | None = None) -> Iterator[Article]:
    """The items of an RSS or Atom feed as articles: id = guid (or link), title, date (published, else updated),
    source = the feed's title, body = the item's full content, else its page fetched and extracted (when
    ``fetcher`` is given and the feed carries only a summary), else the summary. A feed that is not one (not XML,
    no items) is one skipped record; an item with neither title nor text is skipped."""
    for entry in feed_entries(data, where, report):
        try:
            yield entry.article(report, fetcher)
        except Skip as skip:
            report.skip(entry.where, skip.reason, skip.detail)


def feed_entries(data: bytes, where: str, report: Skipped) -> Iterator[FeedEntry]:
    """The items of a feed, unread (``feed_articles``); a feed that is not one is counted as skipped."""
    import feedparser

    parsed = feedparser.parse(data, sanitize_html=True, resolve_relative_uris=True)
    if parsed.get("bozo") and not parsed.entries:
        exc = parsed.get("bozo_exception")
        report.skip(where, "malformed feed", str(exc) if exc else "not RSS or Atom")
        return
    if not parsed.get("version") and not parsed.entries:
        report.skip(where, "malformed feed", "not RSS or Atom")
        return
    feed_title = _clean(str(parsed.feed.get("title", ""))) or None
    if parsed.get("bozo"):  # feedparser's lenient parser recovered items from a feed that is not well-formed
        report.note(where, f"not well-formed ({parsed.get('bozo_exception')}); {len(parsed.entries)} items recovered")
    for n, raw in enumerate(parsed.entries, 1):
        entry = dict(raw)  # its own keys only: FeedParserDict maps a missing "updated" to "published", and warns
        fields = [str(entry.get(k) or "") for k in ("id", "link", "title", "summary", "published", "updated")]
        content = entry.get("content")
        fields += (
            [str(c.get("value") or "") for c in content if isinstance(c, dict)] if isinstance(content, list) else []
        )
        fingerprint = hashlib.sha256(json.dumps(fields).encode("utf-8")).hexdigest()
        key = _clean(fields[0]) or _clean(fields[1]) or None
        yield FeedEntry(key, fingerprint, entry, feed_title, f"{where} item {n}")


def _entry_article(
    entry: dict[str, object], feed_title: str | None, where: str, report: Skipped, fetcher: Fetcher | None
) -> Article:
    link = _clean(str(entry.get("link") or "")) or None
    guid = _clean(str(entry.get("id") or "")) or link
    title = _clean(_html_text(str(entry.get("title") or "")))
    paragraphs: list[str] = []
    content = entry.get("content")
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                paragraphs += html_paragraphs(str(part.get("value") or ""))
    extra: JSONObject = {}
    author = _clean(str(entry.get("author") or ""))
    if author:
        extra["author"] = author
    page_date: str | None = None
    if not paragraphs and link and fetcher is not None:
        try:
            fetched = fetcher.get(link)
            page = page_article(fetched.body, link, where, fetched.content_type)
            paragraphs, page_date = list(page.paragraphs), page.date
            extra["page"] = "fetched"
        except (FetchError, Skip) as exc:
            report.note(where, f"its page {link} could not be used ({exc}); the feed's summary is indexed")
    if not paragraphs:
        paragraphs = html_paragraphs(str(entry.get("summary") or ""))
    if not title and not paragraphs:
        raise Skip("no text", "neither a title nor a summary or content")
    date = _entry_date(entry) or page_date
    article = Article(
        id="",
        title=title,
        paragraphs=tuple(paragraphs),
        date=date,
        source=feed_title,
        url=link,
        tags=tuple(_tags(entry)),
        extra=extra,
    )
    return Article(**{**vars(article), "id": guid or article.content_hash()[:16]})


def _entry_date(entry: dict[str, object]) -> str | None:
    """The item's date as search/text/dates.py reads it, from the raw text; feedparser's parsed tuple (UTC) where
    the text is a form that module does not take."""
    for key in ("published", "updated", "created"):
        raw = entry.get(key)
        if isinstance(raw, str) and raw.strip():
            parsed = parse_date(raw)
            if parsed is not None:
                return parsed
        tup = entry.get(f"{key}_parsed")
        if isinstance(tup, time.struct_time):
            return parse_date(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(calendar.timegm(tup))))
    return None


def _tags(entry: dict[str, object]) -> list[str]:
    tags = entry.get("tags")
    if not isinstance(tags, list):
        return []
    out = [_clean(str(t.get("term") or "")) for t in tags if isinstance(t, dict)]
    return [t for t in dict.fromkeys(out) if t]


def html_paragraphs(fragment: str) -> list[str]:
    """The paragraphs of an HTML fragment (a feed item's content or summary): the text of each block element, or
    the whole text split as plain text when it has none (a summary that is one line of text)."""
    if not fragment.strip():
        return []
    if "<" not in fragment:
        return split_paragraphs(_unescape(fragment))
    import lxml.etree
    import lxml.html

    try:
        root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    except (lxml.etree.ParserError, ValueError):
        return split_paragraphs(_unescape(re.sub(r"<[^>]*>", " ", fragment)))
    blocks = [el for el in root.iter(*_BLOCKS) if not any(a.tag in _BLOCKS for a in el.iterancestors())]
    if blocks:
        paragraphs = [_clean(el.text_content()) for el in blocks]
        tail = _clean(" ".join(t for t in (root.text, *(el.tail for el in root)) if t))
        return [p for p in (*paragraphs, tail) if p]
    return split_paragraphs(root.text_content())


def _html_text(value: str) -> str:
    return html_paragraphs(value)[0] if "<" in value and html_paragraphs(value) else _unescape(value)


def _unescape(value: str) -> str:
    import html

    return html.unescape(value)


def _clean(value: str) -> str:
    return " ".join(value.split())


# -- pages -----------------------------------------------------------------------------------------------------


def page_article(data: bytes, url: str | None, where: str, content_type: str = "", fallback_id: str = "") -> Article:
    """One HTML page as an article: trafilatura's main text (one paragraph per block), title, date, author and
    site; htmldate's date where trafilatura found none. Id: the page's URL (its canonical one when the page names
    it), else ``fallback_id``. ``Skip`` when the bytes are not the declared encoding, or the page has no main text."""
    import trafilatura
    from trafilatura.settings import Document

    text = decode_html(data, content_type)
    doc = trafilatura.bare_extraction(text, url=url, with_metadata=True)  # a Document (a dict only when asked)
    body = str(doc.text or "") if isinstance(doc, Document) else ""
    if not isinstance(doc, Document) or not body.strip():
        raise Skip("no text", "no main text found in the page")
    title = _clean(str(doc.title or ""))
    paragraphs = split_paragraphs(body)
    if paragraphs and title and _clean(paragraphs[0]) == title:
        paragraphs = paragraphs[1:]  # trafilatura repeats the page's <h1> as the first line of the text
    if not paragraphs:
        raise Skip("no text", "the page holds a headline only")
    words = sum(len(p.split()) for p in paragraphs)
    if not title and words < MIN_UNTITLED_WORDS:
        raise Skip("no text", f"no headline and {words} words (a menu or an error page, not an article)")
    found = str(doc.date or "")
    if found.endswith("-01-01") and not _says_new_year(text, found[:4]):
        found = ""  # trafilatura runs htmldate's extensive search, which reads "Copyright 2024" as 2024-01-01
    date = parse_date(found) if found else None
    if date is None:
        date = _htmldate(text, url)
    page_url = str(doc.url or url or "") or None
    extra: JSONObject = {"author": _clean(str(doc.author))} if doc.author else {}
    article_id = page_url or fallback_id
    if not article_id:
        raise Skip("no id", "the page has no URL")
    source = _clean(str(doc.sitename or doc.hostname or "")) or None
    return Article(
        id=article_id, title=title, paragraphs=tuple(paragraphs), date=date, source=source, url=page_url, extra=extra
    )


def _htmldate(text: str, url: str | None) -> str | None:
    """htmldate's publication date of a page: from its markup and URL first, then from its text (extensive
    search). A 1 January found only in the text is dropped: it is htmldate's reading of a copyright year
    ("Copyright 2024"), and a date is never made up from a year alone (search/text/dates.py)."""
    import htmldate

    found = htmldate.find_date(text, url=url, original_date=True, extensive_search=False)
    if found is None:
        found = htmldate.find_date(text, url=url, original_date=True, extensive_search=True)
        if found is not None and found.endswith("-01-01") and not _says_new_year(text, found[:4]):
            found = None
    return parse_date(found) if found else None


def _says_new_year(text: str, year: str) -> bool:
    """Whether the page writes 1 January ``year`` in a form with day and month, not the year alone."""
    lower = text.lower()
    forms = (
        f"{year}-01-01",
        f"{year}/01/01",
        f"01/01/{year}",
        f"1 january {year}",
        f"january 1, {year}",
        f"jan 1, {year}",
    )
    return any(f in lower for f in forms)


def decode_html(data: bytes, content_type: str = "") -> str:
    """The page as text: in the charset its HTTP header or its ``<meta charset>`` declares, else UTF-8. ``Skip``
    (bad encoding) when the bytes are not that charset: guessing would index mojibake."""
    found = _HTTP_CHARSET.search(content_type) or _META_CHARSET.search(data[:4096])
    charset = found.group(1) if found else "utf-8"
    charset = charset.decode("ascii", "replace") if isinstance(charset, bytes) else charset
    try:
        text = data.decode(charset)
    except LookupError:
        raise Skip("bad encoding", f"unknown charset {charset!r}") from None
    except UnicodeDecodeError as exc:
        raise Skip("bad encoding", f"not valid {charset} (byte 0x{data[exc.start]:02x} at {exc.start})") from None
    if "\x00" in text:
        raise Skip("bad encoding", "binary data, not a page")
    return text.lstrip("\ufeff")


# -- WARC --------------------------------------------------------------------------------------------------------


def warc_articles(stream: IO[bytes], where: str, report: Skipped) -> Iterator[Article]:
    """The HTML responses of a WARC or WARC.gz crawl as articles, each extracted as ``page_article`` does (id: the
    record's target URI). Requests, metadata and ``warcinfo`` records are not articles; a response that is not an
    HTML page or not a 200 is skipped with its reason. A damaged archive ends the reading there, with what was read
    kept."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    n = 0
    try:
        for record in ArchiveIterator(stream):
            if record.rec_type != "response":
                continue
            n += 1
            uri = str(record.rec_headers.get_header("WARC-Target-URI") or "")
            at = f"{where} record {n} ({uri})" if uri else f"{where} record {n}"
            http = record.http_headers
            status = http.get_statuscode() if http is not None else None
            ctype = str(http.get_header("Content-Type") or "") if http is not None else ""
            body = record.content_stream().read()
            if status is not None and status != "200":
                report.skip(at, f"HTTP {status}")
                continue
            if "html" not in ctype.lower() and kind_of("", body[:256]) != "page":
                report.skip(at, "not an HTML response", ctype or "no content type")
                continue
            try:
                yield page_article(body, uri or None, at, ctype, fallback_id=f"{Path(where).name}#{n}")
            except Skip as skip:
                report.skip(at, skip.reason, skip.detail)
    except (ArchiveLoadFailed, OSError, EOFError, ValueError, zlib.error) as exc:
        report.skip(f"{where} after record {n}", "damaged archive", str(exc).splitlines()[0] if str(exc) else "")
