"""Web fixtures written in the real formats: RSS 2.0 and Atom 1.0 feeds, HTML pages, WARC crawls (warcio's own
writer), and a local HTTP server on 127.0.0.1 that serves them with ETag/Last-Modified and can fail on purpose."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape


@dataclass
class Item:
    guid: str
    title: str
    date: str  # RFC 822 for RSS, RFC 3339 for Atom
    link: str = ""
    summary: str = ""
    content: str = ""  # HTML; empty: the feed carries only the summary


def rss(title: str, items: list[Item]) -> bytes:
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel>',
        f"<title>{escape(title)}</title><link>https://example.org/</link><description>News</description>",
    ]
    for it in items:
        out.append("<item>")
        out.append(f'<guid isPermaLink="false">{escape(it.guid)}</guid><title>{escape(it.title)}</title>')
        if it.link:
            out.append(f"<link>{escape(it.link)}</link>")
        out.append(f"<pubDate>{it.date}</pubDate><description>{escape(it.summary)}</description>")
        if it.content:
            out.append(f"<content:encoded><![CDATA[{it.content}]]></content:encoded>")
        out.append("</item>")
    out.append("</channel></rss>")
    return "\n".join(out).encode("utf-8")


def atom(title: str, items: list[Item]) -> bytes:
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom">',
        f"<title>{escape(title)}</title><id>urn:feed:{escape(title)}</id><updated>2024-03-06T00:00:00Z</updated>",
    ]
    for it in items:
        out.append(f"<entry><id>{escape(it.guid)}</id><title>{escape(it.title)}</title>")
        out.append(f"<updated>{it.date}</updated><published>{it.date}</published>")
        if it.link:
            out.append(f'<link rel="alternate" href="{escape(it.link)}"/>')
        if it.summary:
            out.append(f"<summary>{escape(it.summary)}</summary>")
        if it.content:
            out.append(f'<content type="html">{escape(it.content)}</content>')
        out.append("</entry>")
    out.append("</feed>")
    return "\n".join(out).encode("utf-8")


def page(title: str, paragraphs: list[str], *, date: str = "", site: str = "", url: str = "") -> bytes:
    """A news page with navigation and footer around the article, as sites publish them."""
    meta = f'<meta property="article:published_time" content="{date}">' if date else ""
    meta += f'<meta property="og:site_name" content="{escape(site)}">' if site else ""
    meta += f'<link rel="canonical" href="{escape(url)}">' if url else ""
    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{escape(title)}</title>{meta}</head><body>'
        f'<nav><a href="/">Home</a> <a href="/world">World</a></nav>'
        f"<article><h1>{escape(title)}</h1>{body}</article>"
        f"<footer>Copyright 2024. All rights reserved.</footer></body></html>"
    ).encode()


def warc(path: Path, records: list[tuple[str, int, str, bytes]]) -> Path:
    """A WARC (gzipped when ``path`` ends in .gz) of (uri, status, content type, body) responses, each after its
    request record, as a crawler writes them."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=path.name.endswith(".gz"))
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "newsdesk tests"}))
        for uri, status, ctype, body in records:
            req = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.org")], is_http_request=True)
            writer.write_record(writer.create_warc_record(uri, "request", http_headers=req))
            reason = {200: "OK", 404: "Not Found"}.get(status, "Status")
            http = StatusAndHeaders(f"{status} {reason}", [("Content-Type", ctype)], protocol="HTTP/1.1")
            rec = writer.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=http)
            writer.write_record(rec)
    return path


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "text/html; charset=utf-8"
    delay: float = 0.0  # seconds before answering (a timeout test)
    modified: float = field(default_factory=time.time)


@dataclass
class WebServer:
    """Routes by path; every request's path and headers are kept in ``requests``."""

    routes: dict[str, Route]
    base: str = ""
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path

    def set(self, path: str, body: bytes, content_type: str = "text/html; charset=utf-8", **kw: object) -> None:
        self.routes[path] = Route(body, content_type=content_type, **kw)  # type: ignore[arg-type]


@contextmanager
def serving(routes: dict[str, Route] | None = None) -> Iterator[WebServer]:
    web = WebServer(routes or {})

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            web.requests.append((self.path, dict(self.headers.items())))
            route = web.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            if route.delay:
                time.sleep(route.delay)
            etag = '"' + hashlib.sha256(route.body).hexdigest()[:16] + '"'
            modified = formatdate(route.modified, usegmt=True)
            if route.status == 200 and self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            if route.status == 200:
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", modified)
            self.end_headers()
            with suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(route.body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    web.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield web
    finally:
        server.shutdown()
        server.server_close()
