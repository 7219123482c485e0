"""Webhook delivery of alert matches: a background thread that posts each pending match, with retries.

The matches to deliver are rows of the index's SQLite store (``delivery = 'pending'``), written by the write that
found them, whichever process wrote: a server that crashes or restarts loses nothing, it posts what is still pending
when it next runs. The thread never runs inside a write's transaction and a write never waits for it: a webhook that
hangs holds only this thread, for at most ``alert_webhook_timeout`` seconds a try. A failed post is logged, counted
(``/metrics``: api/metrics.py reads ``delivery_counts``) and tried again after ``alert_retry_base * 2 ** n`` seconds
(n: the tries so far), up to ``alert_max_attempts`` tries, then marked failed.

Each due match is claimed for a lease in one short transaction before it is posted (``claim_due``), so two server
processes on one index do not post it twice; a process that dies mid-post leaves the claim to expire.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager

from search.alerts.saved import Due, claim_due, record_attempt
from search.errors import NewsdeskError

log = logging.getLogger("newsdesk.alerts")

# The store's connection for this thread, held only for the few statements of a claim or a record (the server
# passes one under its read lock, so a reload does not close the store meanwhile).
Connect = Callable[[], AbstractContextManager[sqlite3.Connection]]


class Deliverer:
    """Posts due matches to their webhooks from one daemon thread; ``wake`` after a write makes it look at once."""

    def __init__(self, connect: Connect, *, timeout: float, retry_base: float, max_attempts: int, poll: float) -> None:
        self._connect = connect
        self.timeout = timeout
        self.retry_base = retry_base
        self.max_attempts = max_attempts
        self.poll = poll
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the thread once (the server's first request or first write does)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="newsdesk-alerts", daemon=True)
                self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def wake(self) -> None:
        self.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except (NewsdeskError, sqlite3.Error, OSError) as exc:  # an index being replaced, a full disk
                log.warning("alert delivery: %s; will retry", exc)
            self._wake.wait(self.poll)
            self._wake.clear()

    def deliver_due(self) -> int:
        """Post every match due now; returns how many posts were tried."""
        tried = 0
        while not self._stop.is_set():
            with self._connect() as conn:
                due = claim_due(conn, time.time(), lease=self.timeout + 30.0)
            if not due:
                return tried
            for item in due:
                error = self._post(item)
                retry = None if item.attempts + 1 >= self.max_attempts else self.retry_base * 2**item.attempts
                with self._connect() as conn:
                    state = record_attempt(conn, item, error, retry)
                if error is not None:
                    log.warning(
                        "webhook of alert %d (match %d) failed on try %d: %s; %s",
                        item.alert,
                        item.match,
                        item.attempts + 1,
                        error,
                        "giving up" if state == "failed" else f"retrying in {retry:g} s",
                    )
                tried += 1
        return tried

    def _post(self, item: Due) -> str | None:
        """Post one match; None when the server answered 2xx, else why not."""
        body = json.dumps(item.payload, ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(
            item.webhook, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return str(getattr(exc, "reason", exc)) or type(exc).__name__
        return None if 200 <= status < 300 else f"HTTP {status}"
