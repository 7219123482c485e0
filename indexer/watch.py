"""``newsdesk watch``: poll feed URLs, feed files, pages, WARC crawls and directories, and ingest what is new.

Each poll fetches every source at once, at most ``watch_concurrency`` at a time, each request bounded by
``fetch_timeout``; a source that fails (a timeout, a 500, garbage) is counted and logged and the others go on.
Articles go through the API's write path (indexer/live.py ``Writer``: duplicates, stories, labels). What a source
answered and which items were written (search/storage/watchstate.py) commit in the same SQLite transaction as the
articles, so a watcher killed at any moment and restarted ingests nothing twice and loses nothing: an item counts
as seen only once its article is committed.

HTTP caching is honoured: the ETag and Last-Modified of each answer are sent back (If-None-Match,
If-Modified-Since), and a 304 costs no parsing. A body identical to the last one (a server without validators, a
file) is not parsed either. An item is written when its key (guid, link or URL) is new or its fingerprint changed.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from indexer.live import Writer
from indexer.sources import DIRECTORY_SUFFIXES, ReadReport, read_sources
from indexer.web import (
    FEED_SUFFIXES,
    WARC_SUFFIXES,
    Fetched,
    Fetcher,
    FetchError,
    Skip,
    feed_entries,
    kind_of,
    page_article,
    warc_articles,
)
from search.errors import NewsdeskError, SourceError
from search.models import Article
from search.service import SearchService
from search.storage.watchstate import PollResult, SourceState, item_fingerprints, record_poll, source_states

log = logging.getLogger("newsdesk.watch")


@dataclass
class Polled:
    """One source's poll before it is written: the articles to write with their item keys, and the row update."""

    result: PollResult
    articles: list[Article] = field(default_factory=list)


@dataclass(frozen=True)
class PollSummary:
    sources: int
    failed: int
    seen: int
    ingested: int
    skipped: dict[str, int]

    def line(self) -> str:
        skipped = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) or "none"
        return (
            f"polled {self.sources} source(s), {self.failed} failed: {self.seen} items seen, {self.ingested} "
            f"ingested, skipped: {skipped}"
        )


class Watcher:
    """Polls ``sources`` (URLs, files, directories) into the service's index."""

    def __init__(self, service: SearchService, sources: list[str], fetcher: Fetcher, concurrency: int) -> None:
        self.service = service
        self.writer = Writer(service)
        self.sources = list(dict.fromkeys(sources))
        self.fetcher = fetcher
        self.concurrency = concurrency

    def _conn(self) -> sqlite3.Connection:
        _, store = self.service.index.writable  # a read-only index refuses here: watch writes
        return store.connection()

    def poll(self) -> PollSummary:
        """One round: fetch every source (bounded concurrency), then write each one's new items in one transaction
        with its record."""
        states = source_states(self._conn(), self.sources)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="watch") as pool:
            polled = list(pool.map(lambda s: self._fetch(s, states.get(s) or SourceState(s)), self.sources))
        failed = seen = ingested = 0
        skipped: dict[str, int] = {}
        for p in polled:
            r = p.result
            if r.error is None and p.articles:
                try:
                    self._write(p)
                except NewsdeskError as exc:
                    r.error, r.ingested, r.items = f"write failed: {exc.message}", 0, {}
            if r.error is not None or not p.articles:
                self._record(r)
            if r.error is not None:
                failed += 1
                log.warning("watch %s: %s", r.source, r.error)
            else:
                log.info(
                    "watch %s: %s, %d items seen, %d ingested%s",
                    r.source,
                    "not modified" if r.unchanged else "fetched",
                    r.seen,
                    r.ingested,
                    f", skipped {r.skipped}" if r.skipped else "",
                )
            seen += r.seen
            ingested += r.ingested
            for reason, n in r.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
        return PollSummary(len(polled), failed, seen, ingested, skipped)

    def _write(self, p: Polled) -> None:
        articles = list({a.id: a for a in p.articles}.values())  # one item twice in a feed: its last version
        p.result.ingested = len(articles)

        def also(conn: sqlite3.Connection) -> None:
            record_poll(conn, p.result)

        self.writer.upsert(articles, also=also)

    def _record(self, result: PollResult) -> None:
        """A poll that wrote no article: its record alone, in its own transaction (no new generation)."""
        conn = self._conn()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            record_poll(conn, result)

    def _fetch(self, source: str, state: SourceState) -> Polled:
        result = PollResult(source, time.time())
        try:
            return self._read(source, state, result)
        except (FetchError, SourceError, OSError) as exc:
            result.error = str(exc) if not isinstance(exc, NewsdeskError) else exc.message
        except Exception as exc:  # a broken source must never stop the others: named in the log and the metrics
            log.exception("watch %s: unexpected failure", source)
            result.error = f"{type(exc).__name__}: {exc}"
        return Polled(result)

    def _read(self, source: str, state: SourceState, result: PollResult) -> Polled:
        if source.startswith(("http://", "https://")):
            fetched = self.fetcher.get(source, state.etag, state.last_modified)
            result.etag, result.last_modified = fetched.etag, fetched.last_modified
            if fetched.not_modified:
                result.unchanged = True
                return Polled(result)
            return self._parse(source, fetched, state, result)
        path = Path(source)
        if not path.exists():
            raise FetchError("missing", f"{path}: no such file or directory")
        if path.is_dir():
            return self._directory(path, state, result)
        body = path.read_bytes()
        return self._parse(source, Fetched(source, body, "", None, None), state, result)

    def _parse(self, source: str, fetched: Fetched, state: SourceState, result: PollResult) -> Polled:
        body = fetched.body
        result.fingerprint = hashlib.sha256(body).hexdigest()
        if result.fingerprint == state.fingerprint:
            result.unchanged = True
            return Polled(result)
        kind = kind_of(fetched.url, body[:512], fetched.content_type)
        report = ReadReport()
        known = item_fingerprints(self._conn(), source)
        polled = Polled(result)
        if kind == "feed":
            for entry in feed_entries(body, source, report):
                result.seen += 1
                key = entry.key or entry.fingerprint
                if known.get(key) == entry.fingerprint:
                    continue
                try:
                    article = entry.article(report, self.fetcher)
                except Skip as skip:
                    report.skip(entry.where, skip.reason, skip.detail)
                    continue
                result.items[key] = entry.fingerprint
                polled.articles.append(article)
        elif kind == "page":
            try:
                self._keep(polled, known, [page_article(body, fetched.url, source, fetched.content_type)])
            except Skip as skip:
                report.skip(source, skip.reason, skip.detail)
        elif kind == "warc":
            import io

            self._keep(polled, known, warc_articles(io.BytesIO(body), source, report))
        else:
            raise FetchError("garbage", "not a feed, an HTML page or a WARC crawl")
        result.skipped = dict(report.reasons)
        if kind == "feed" and report.reasons.get("malformed feed"):
            raise FetchError("garbage", report.dropped[0])
        return polled

    def _keep(self, polled: Polled, known: dict[str, str], articles: Iterator[Article] | list[Article]) -> None:
        """Articles keyed by their id, fingerprinted by their content and date: the new and changed ones."""
        for article in articles:
            polled.result.seen += 1
            fingerprint = f"{article.content_hash()}:{article.date or ''}"
            if known.get(article.id) != fingerprint:
                polled.result.items[article.id] = fingerprint
                polled.articles.append(article)

    def _directory(self, root: Path, state: SourceState, result: PollResult) -> Polled:
        """A directory of pages, text files, feeds and crawls: read again only when a file changed (its names,
        sizes and modification times are the fingerprint)."""
        suffixes = (*DIRECTORY_SUFFIXES, *FEED_SUFFIXES, *WARC_SUFFIXES)
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
        listing = [(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        result.fingerprint = hashlib.sha256(repr(listing).encode()).hexdigest()
        if result.fingerprint == state.fingerprint:
            result.unchanged = True
            return Polled(result)
        report = ReadReport()
        polled = Polled(result)
        known = item_fingerprints(self._conn(), str(root))
        self._keep(polled, known, read_sources([root, *_feeds_and_crawls(files)], report=report, fetcher=self.fetcher))
        result.skipped = dict(report.reasons)
        return polled

    def run(self, every: float, stop: Callable[[], bool], on_poll: Callable[[PollSummary], None]) -> None:
        """Poll every ``every`` seconds (from the start of one poll to the next) until ``stop()``."""
        while not stop():
            started = time.monotonic()
            on_poll(self.poll())
            while not stop() and time.monotonic() - started < every:
                time.sleep(min(0.2, every))


def _feeds_and_crawls(files: list[Path]) -> list[Path]:
    """The feeds and crawls of a directory, which ``read_sources`` on the directory does not read itself."""
    return [p for p in files if p.name.lower().endswith((*FEED_SUFFIXES, *WARC_SUFFIXES))]


def parse_every(text: str) -> float:
    """``--every``: seconds, or a number with s, m, h or d (``5m``)."""
    from search.text.dates import parse_duration

    return parse_duration(text, "--every")
