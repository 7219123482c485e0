"""What ``newsdesk watch`` has seen, kept in the index's SQLite store (indexer/watch.py writes it).

Per source: its HTTP validators (ETag, Last-Modified) and a fingerprint of its last body (for files, and servers
that send no validators), when it last succeeded and what last failed, and cumulative counts (items seen, ingested,
skipped by reason). Per item: its key (guid, link or URL) and a fingerprint of its content. The rows of a poll are
written in the same transaction as the articles they led to (``Store.replace_articles``'s ``also``), so a watcher
killed at any moment restarts knowing exactly what was committed: nothing is ingested twice, nothing is lost.
Servers read the rows for ``/metrics`` (api/metrics.py), whichever process watches.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

WATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS watch_sources (
    source TEXT PRIMARY KEY,
    etag TEXT,
    last_modified TEXT,
    fingerprint TEXT,
    last_success REAL,
    last_attempt REAL,
    last_error TEXT,
    seen INTEGER NOT NULL DEFAULT 0,
    ingested INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    skipped TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS watch_items (
    source TEXT NOT NULL,
    item TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (source, item)
);
"""


@dataclass
class SourceState:
    """One source's row (a source never polled has the defaults)."""

    source: str
    etag: str | None = None
    last_modified: str | None = None
    fingerprint: str | None = None
    last_success: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    seen: int = 0
    ingested: int = 0
    errors: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class PollResult:
    """What one poll of one source adds to its row: new validators, counts, and the items now known."""

    source: str
    at: float
    etag: str | None = None
    last_modified: str | None = None
    fingerprint: str | None = None
    error: str | None = None
    seen: int = 0
    ingested: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    items: dict[str, str] = field(default_factory=dict)  # item key -> fingerprint, of the items written
    unchanged: bool = False  # 304, or the same body: validators and counts only


_COLUMNS = "source, etag, last_modified, fingerprint, last_success, last_attempt, last_error, seen, ingested, errors"


def source_states(conn: sqlite3.Connection, sources: Iterable[str] | None = None) -> dict[str, SourceState]:
    """The rows of ``sources`` (all when None); an index without the tables (read-only, older) has none."""
    try:
        rows = conn.execute(f"SELECT {_COLUMNS}, skipped FROM watch_sources").fetchall()
    except sqlite3.OperationalError:
        return {}
    wanted = None if sources is None else set(sources)
    out: dict[str, SourceState] = {}
    for row in rows:
        if wanted is not None and row[0] not in wanted:
            continue
        skipped = json.loads(row[10]) if row[10] else {}
        out[row[0]] = SourceState(
            source=row[0],
            etag=row[1],
            last_modified=row[2],
            fingerprint=row[3],
            last_success=row[4],
            last_attempt=row[5],
            last_error=row[6],
            seen=int(row[7]),
            ingested=int(row[8]),
            errors=int(row[9]),
            skipped={str(k): int(v) for k, v in skipped.items()},
        )
    return out


def item_fingerprints(conn: sqlite3.Connection, source: str) -> dict[str, str]:
    try:
        rows = conn.execute("SELECT item, fingerprint FROM watch_items WHERE source = ?", (source,)).fetchall()
    except sqlite3.OperationalError:
        return {}
    return {str(r[0]): str(r[1]) for r in rows}


def record_poll(conn: sqlite3.Connection, result: PollResult) -> None:
    """Add one poll to its source's row and items, in the caller's open transaction."""
    conn.execute("INSERT OR IGNORE INTO watch_sources (source) VALUES (?)", (result.source,))
    row = conn.execute("SELECT skipped FROM watch_sources WHERE source = ?", (result.source,)).fetchone()
    skipped: dict[str, int] = json.loads(row[0]) if row and row[0] else {}
    for reason, n in result.skipped.items():
        skipped[reason] = skipped.get(reason, 0) + n
    if result.error is not None:
        conn.execute(
            "UPDATE watch_sources SET last_attempt = ?, last_error = ?, errors = errors + 1 WHERE source = ?",
            (result.at, result.error, result.source),
        )
        return
    conn.execute(
        "UPDATE watch_sources SET etag = ?, last_modified = ?, fingerprint = COALESCE(?, fingerprint), "
        "last_success = ?, last_attempt = ?, last_error = NULL, seen = seen + ?, ingested = ingested + ?, "
        "skipped = ? WHERE source = ?",
        (
            result.etag,
            result.last_modified,
            result.fingerprint,
            result.at,
            result.at,
            result.seen,
            result.ingested,
            json.dumps(skipped, sort_keys=True),
            result.source,
        ),
    )
    conn.executemany(
        "INSERT OR REPLACE INTO watch_items (source, item, fingerprint) VALUES (?, ?, ?)",
        [(result.source, key, fp) for key, fp in result.items.items()],
    )
