"""Saved searches as the API, the CLI and the web page use them: create, list, read, delete, and the deliverer.

Beside ``SearchService``, on the index it serves: a saved search is validated as a search is (query, mode,
filters), its query embedded by the served model, and it is stored in the index's SQLite store, which a read-only
index or a replica refuses (``Index.writable``). Matching happens on writes (search/alerts/matcher.py), delivery in
a background thread started on first use (search/alerts/delivery.py).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

from search.alerts.delivery import Deliverer
from search.alerts.saved import (
    Alert,
    AlertDeleted,
    AlertDetail,
    AlertFilters,
    AlertList,
    alert_of,
    delete_alert,
    entry_counts,
    insert_alert,
    latest_matches,
    model_key,
    saved_search,
    saved_searches,
)
from search.errors import InvalidInput, NewsdeskError
from search.models import Mode
from search.ranking.catalog import Filter
from search.service import SearchService
from search.settings import Settings
from search.storage.index import SQLITE

MAX_WEBHOOK_CHARS = 2000


def default_threshold(settings: Settings, mode: Mode) -> float:
    """The threshold a saved search gets when it names neither one nor ``top_per_day`` (settings, by mode)."""
    return {
        "hybrid": settings.alert_threshold_hybrid,
        "dense": settings.alert_threshold_dense,
        "lexical": settings.alert_threshold_lexical,
    }[mode]


class AlertService:
    def __init__(self, service: SearchService) -> None:
        self.service = service
        self.settings = service.settings
        s = self.settings
        self.deliverer = Deliverer(
            self._connected,
            timeout=s.alert_webhook_timeout,
            retry_base=s.alert_retry_base,
            max_attempts=s.alert_max_attempts,
            poll=s.alert_poll,
        )
        self._create_lock = threading.Lock()
        self._checked = float("-inf")  # when deliver_lazily last looked for webhooks (monotonic seconds)

    def deliver_lazily(self) -> None:
        """Start the webhook deliverer once the index has an alert with a webhook: looked up at most once per
        ``alert_poll`` seconds (a request hook), so a server without webhooks runs no thread and no query per
        request, and one whose webhooks were saved by another process starts delivering within that time."""
        now = time.monotonic()
        if self.deliverer.started or now - self._checked < self.settings.alert_poll:
            return
        self._checked = now
        try:
            with self._reading() as conn:
                found = conn.execute("SELECT 1 FROM alerts WHERE webhook IS NOT NULL LIMIT 1").fetchone()
        except (NewsdeskError, sqlite3.Error):  # a replica, a damaged or replaced index: the request says so
            return
        if found is not None:
            self.deliverer.start()

    def wrote(self) -> None:
        """After a write of this process: post its matches now rather than at the next poll."""
        if self.deliverer.started:
            self.deliverer.wake()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection to the served store, which no reload closes meanwhile (the read lock)."""
        self.service.refresh()
        with self.service.lock.reading():
            yield self.service.index.sqlite.connection()

    @contextmanager
    def _connected(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own to the index's store, for statements that write (saved searches, delivery
        states), opened and used with no lock of the service held: a live write holds SQLite's write lock until it
        takes the service's write lock to commit, so a thread that waited for SQLite's lock while holding the
        service's read lock would wait on that write while it waits on the thread (until SQLite's busy timeout).
        Opened through the index directory's name, so it reaches the build serving now, even one a rebuild swapped
        in since this process loaded the index; refused (403) where the index cannot be written."""
        with self.service.lock.reading():
            self.service.index.writable  # noqa: B018 -- a read-only index or a replica refuses here
        conn = sqlite3.connect(self.settings.index_dir / SQLITE, timeout=30.0)
        try:
            conn.execute("PRAGMA foreign_keys=ON")  # a deleted alert takes its matches with it
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """``_connected`` in one transaction, holding SQLite's write lock from its start."""
        with self._connected() as conn, conn:
            conn.execute("BEGIN IMMEDIATE")
            yield conn

    def create(
        self,
        query: str,
        mode: str | None = None,
        *,
        date_from: str | None = None,
        date_to: str | None = None,
        sources: Sequence[str] = (),
        categories: Sequence[str] = (),
        threshold: float | None = None,
        top_per_day: int | None = None,
        webhook: str | None = None,
    ) -> Alert:
        """Save a search; InvalidInput naming the first bad value. Without ``threshold`` and ``top_per_day`` it gets
        the mode's default threshold (settings ``alert_threshold_*``)."""
        svc = self.service
        query = svc.validate_query(query)
        checked = svc.validate_mode(mode)
        flt = Filter.parse(date_from, date_to, sources, categories)  # InvalidInput for a bad date or value
        filters: AlertFilters = {
            "from": date_from or None,
            "to": date_to or None,
            "source": list(flt.sources) if flt else [],
            "category": list(flt.tags) if flt else [],
        }
        if threshold is not None and top_per_day is not None:
            raise InvalidInput("give either threshold or top_per_day, not both")
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise InvalidInput(f"threshold must be between -1 and 1 (a score), got {threshold}")
        if top_per_day is not None and not 1 <= top_per_day <= self.settings.max_k:
            raise InvalidInput(f"top_per_day must be between 1 and {self.settings.max_k}, got {top_per_day}")
        if top_per_day is None and threshold is None:
            threshold = default_threshold(self.settings, checked)
        if webhook is not None:
            check_webhook(webhook)
        vector = svc.embed_query(query)
        with self._create_lock, self._writing() as conn:
            n = conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
            if int(n) >= self.settings.max_alerts:
                raise InvalidInput(f"the index keeps at most {self.settings.max_alerts} saved searches (max_alerts)")
            model = model_key(svc.index.manifest["model"])
            alert_id = insert_alert(conn, query, checked, filters, threshold, top_per_day, webhook, vector, model)
            saved = saved_search(conn, alert_id)
        return alert_of(saved, 0)

    def saved(self) -> AlertList:
        with self._reading() as conn:
            counts = entry_counts(conn)
            return AlertList([alert_of(a, counts.get(a.id, 0)) for a in saved_searches(conn)])

    def get(self, alert_id: int, k: int | None = None) -> AlertDetail:
        """The alert and its latest ``k`` entries (``alert_entries`` by default), newest first; NotFound if none."""
        k = self.settings.alert_entries if k is None else self.service.validate_k(k)
        with self._reading() as conn:
            saved = saved_search(conn, alert_id)
            counts = entry_counts(conn)
            return AlertDetail(alert_of(saved, counts.get(alert_id, 0)), latest_matches(conn, alert_id, k))

    def details(self, k: int) -> list[AlertDetail]:
        """Every alert with its latest ``k`` entries (the web page's alerts list), by id."""
        with self._reading() as conn:
            counts = entry_counts(conn)
            return [
                AlertDetail(alert_of(a, counts.get(a.id, 0)), latest_matches(conn, a.id, k))
                for a in saved_searches(conn)
            ]

    def delete(self, alert_id: int) -> AlertDeleted:
        with self._writing() as conn:
            delete_alert(conn, alert_id)
        return AlertDeleted(alert_id)


def check_webhook(url: str) -> None:
    """An http(s) URL with a host: what the deliverer can post to (no file:, no relative paths)."""
    parts = urlsplit(url)
    if len(url) > MAX_WEBHOOK_CHARS or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"webhook must be an http or https URL with a host, got {url[:200]!r}")
