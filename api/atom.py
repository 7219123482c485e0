"""An alert's matches as an Atom feed (RFC 4287): ``GET /api/alerts/<id>/feed.atom``, for any feed reader.

Ids are tag URIs (RFC 4151) made of the index's name, the alert's id and the match's id, which never change once a
match is recorded (rows are copied as they are into a rebuilt index), so a reader never shows an entry twice. Each
entry links to the article (its own URL, else its page on this server), carries the answering sentence as its
summary and the passage as its content, and lists the copies and story mates grouped under it.
"""

from __future__ import annotations

from urllib.parse import quote
from xml.etree import ElementTree as ET

from search.alerts.saved import AlertDetail, AlertMatch

ATOM = "http://www.w3.org/2005/Atom"
CONTENT_TYPE = "application/atom+xml; charset=utf-8"
TAG_DATE = "2024"  # the date part of the tag URIs: fixed, so ids stay the same across years


def _iso(value: str | None, fallback: str) -> str:
    """An RFC 3339 date-time for an Atom date element (an article's bare date gets midnight UTC)."""
    if not value:
        return fallback
    if len(value) == 10:
        return value + "T00:00:00Z"
    return value if ("Z" in value or "+" in value[10:] or "-" in value[10:]) else value + "Z"


def _tag(index: str, *parts: object) -> str:
    name = quote(index, safe="") or "index"
    return f"tag:newsdesk,{TAG_DATE}:{name}/" + "/".join(str(p) for p in parts)


def alert_feed(detail: AlertDetail, index: str, base_url: str) -> bytes:
    """The Atom document of ``detail`` (its latest entries, newest first), linked from ``base_url`` (the server's
    root URL, ending in /)."""
    ET.register_namespace("", ATOM)
    alert = detail.alert
    feed = ET.Element(f"{{{ATOM}}}feed")
    updated = detail.matches[0].matched_at if detail.matches else alert.created

    sub(feed, "id", _tag(index, "alert", alert.id))
    sub(feed, "title", f"newsdesk alert: {alert.query}")
    sub(feed, "subtitle", f"New articles matching {alert.query!r} ({alert.mode})")
    sub(feed, "updated", _iso(updated, alert.created))
    author = sub(feed, "author")
    sub(author, "name", "newsdesk")
    sub(feed, "link", rel="self", href=f"{base_url}api/alerts/{alert.id}/feed.atom")
    sub(feed, "link", rel="alternate", href=f"{base_url}alerts#alert-{alert.id}")
    sub(feed, "generator", "newsdesk")
    for match in detail.matches:
        _entry(feed, match, index, alert.id, base_url)
    return bytes(ET.tostring(feed, encoding="utf-8", xml_declaration=True))


def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    """An Atom element under ``parent``."""
    el = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
    if text is not None:
        el.text = text
    return el


def _entry(feed: ET.Element, match: AlertMatch, index: str, alert_id: int, base_url: str) -> None:
    a = match.article
    entry = sub(feed, "entry")
    sub(entry, "id", _tag(index, "alert", alert_id, "match", match.id))
    sub(entry, "title", a.title)
    sub(entry, "updated", _iso(match.matched_at, match.matched_at))
    if a.date:
        sub(entry, "published", _iso(a.date, match.matched_at))
    link = a.url or f"{base_url}article?id={quote(a.id, safe='')}"
    sub(entry, "link", rel="alternate", href=link)
    if a.source:
        sub(sub(entry, "author"), "name", a.source)
    sentence = match.passage[match.highlight.start : match.highlight.end]
    sub(entry, "summary", sentence or a.title)
    also = "".join(
        f"\n\nAlso: {g.article.title} ({g.article.source or 'unknown source'}, {g.article.id})" for g in match.grouped
    )
    sub(entry, "content", match.passage + also, type="text")
