"""Saved searches and their matches as rows of the index's SQLite store (tables: search/alerts/schema.py).

Every function takes a connection and runs in the caller's transaction where it writes: matching records its rows in
the write's own transaction (``search.alerts.matcher``), the API's create and delete run their own. The response
types the API serialises are here too, built from the rows.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from typing_extensions import TypedDict

from search.errors import NotFound
from search.jsontypes import JSONObject, JSONValue
from search.models import Highlight, Mode, is_mode, to_plain

AlertFilters = TypedDict(
    "AlertFilters", {"from": str | None, "to": str | None, "source": list[str], "category": list[str]}
)
"""A saved search's filters, as the search API's parameters of the same names take them."""


@dataclass(frozen=True)
class SavedSearch:
    """One saved search as stored, its query vector included (what the matcher scores with)."""

    id: int
    query: str
    mode: Mode
    filters: AlertFilters
    threshold: float | None
    top_per_day: int | None
    webhook: str | None
    vector: np.ndarray
    model: str
    created: str


@dataclass(frozen=True)
class Alert:
    """A saved search: what a new article must match to be reported."""

    id: int
    query: str
    mode: Mode
    filters: AlertFilters
    threshold: float | None
    """The score a new article must reach; null when the alert keeps the top_per_day best instead."""
    top_per_day: int | None
    """At most this many entries a day (by the article's date), each above the mode's floor; null with a threshold."""
    webhook: str | None
    created: str
    entries: int
    """How many matches it recorded (copies and story mates grouped under one count once)."""


@dataclass(frozen=True)
class AlertArticle:
    """The article a match reports, as it was when it matched."""

    id: str
    title: str
    date: str | None
    source: str | None
    url: str | None
    story_id: str | None


@dataclass(frozen=True)
class GroupedMatch:
    """A copy or a story mate of a match's article, grouped under it rather than reported again."""

    article: AlertArticle
    score: float
    matched_at: str


@dataclass(frozen=True)
class AlertMatch:
    """A new article that matched, with its best passage and the sentence that answers the query."""

    id: int
    article: AlertArticle
    score: float
    passage: str
    highlight: Highlight
    """Where the answering sentence lies in passage (code points)."""
    matched_at: str
    delivery: str | None
    """pending, delivered or failed for an alert with a webhook; null without one."""
    grouped: list[GroupedMatch]


@dataclass(frozen=True)
class AlertDetail:
    """An alert and its latest matches, newest first."""

    alert: Alert
    matches: list[AlertMatch]


@dataclass(frozen=True)
class AlertList:
    alerts: list[Alert]


@dataclass(frozen=True)
class AlertDeleted:
    deleted: int


def model_key(fingerprint: JSONObject) -> str:
    """A short stable name of a model fingerprint (the manifest's ``model``): equal for the same model files and
    backend, so a saved query's vector is known to be comparable with the index's passage vectors."""
    text = json.dumps(json.loads(json.dumps(fingerprint)), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_ALERT_COLUMNS = "id, query, mode, filters, threshold, top_per_day, webhook, vector, model, created"


def _saved(row: Sequence[object]) -> SavedSearch:
    found = str(row[2])
    mode: Mode = found if is_mode(found) else "hybrid"
    raw = json.loads(str(row[3]))
    filters: AlertFilters = {
        "from": raw.get("from"),
        "to": raw.get("to"),
        "source": list(raw.get("source", [])),
        "category": list(raw.get("category", [])),
    }
    blob = row[7]
    return SavedSearch(
        id=int(str(row[0])),
        query=str(row[1]),
        mode=mode,
        filters=filters,
        threshold=None if row[4] is None else float(str(row[4])),
        top_per_day=None if row[5] is None else int(str(row[5])),
        webhook=None if row[6] is None else str(row[6]),
        vector=np.frombuffer(blob if isinstance(blob, bytes) else b"", dtype=np.float32),
        model=str(row[8]),
        created=str(row[9]),
    )


def saved_searches(conn: sqlite3.Connection) -> list[SavedSearch]:
    """Every saved search, by id; none in an index without the tables (read-only, made before them)."""
    try:
        rows = conn.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    return [_saved(r) for r in rows]


MAX_ID = 2**63 - 1  # SQLite's largest integer key: a larger id names no alert (and would not bind)


def saved_search(conn: sqlite3.Connection, alert_id: int) -> SavedSearch:
    if not 0 <= alert_id <= MAX_ID:
        raise NotFound(f"no alert with id {alert_id}")
    try:
        row = conn.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = ?", (alert_id,)).fetchone()
    except sqlite3.OperationalError:
        row = None
    if row is None:
        raise NotFound(f"no alert with id {alert_id}")
    return _saved(row)


def alerts_version(conn: sqlite3.Connection) -> int:
    """A counter every change to ``alerts`` moves (triggers: search/alerts/schema.py): what the matcher's cached
    matrices are keyed by."""
    try:
        row = conn.execute("SELECT value FROM alert_counts WHERE name = 'version'").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0]) if row else 0


def _bump(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
    conn.execute(
        "INSERT INTO alert_counts (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
        (name, by, by),
    )


def insert_alert(
    conn: sqlite3.Connection,
    query: str,
    mode: Mode,
    filters: AlertFilters,
    threshold: float | None,
    top_per_day: int | None,
    webhook: str | None,
    vector: np.ndarray,
    model: str,
) -> int:
    """Store a saved search in the caller's transaction; returns its id."""
    cur = conn.execute(
        "INSERT INTO alerts (query, mode, filters, threshold, top_per_day, webhook, vector, model, created) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            query,
            mode,
            json.dumps(filters, sort_keys=True),
            threshold,
            top_per_day,
            webhook,
            np.ascontiguousarray(vector, dtype=np.float32).tobytes(),
            model,
            now_text(),
        ),
    )
    return int(cur.lastrowid or 0)


def delete_alert(conn: sqlite3.Connection, alert_id: int) -> None:
    """Delete a saved search and its matches; NotFound if there is none with that id."""
    if not 0 <= alert_id <= MAX_ID or conn.execute("DELETE FROM alerts WHERE id = ?", (alert_id,)).rowcount == 0:
        raise NotFound(f"no alert with id {alert_id}")


def set_vectors(conn: sqlite3.Connection, vectors: dict[int, np.ndarray], model: str) -> None:
    """Replace saved query vectors (a new model's), in the caller's transaction."""
    conn.executemany(
        "UPDATE alerts SET vector = ?, model = ? WHERE id = ?",
        [(np.ascontiguousarray(v, dtype=np.float32).tobytes(), model, i) for i, v in vectors.items()],
    )


def entry_counts(conn: sqlite3.Connection) -> dict[int, int]:
    """How many entries (matches not grouped under another) each alert has."""
    rows = conn.execute("SELECT alert, COUNT(*) FROM alert_matches WHERE parent IS NULL GROUP BY alert")
    return {int(a): int(n) for a, n in rows}


def alert_of(saved: SavedSearch, entries: int) -> Alert:
    return Alert(
        saved.id,
        saved.query,
        saved.mode,
        saved.filters,
        saved.threshold,
        saved.top_per_day,
        saved.webhook,
        saved.created,
        entries,
    )


_MATCH_COLUMNS = (
    "id, article, title, date, source, url, story, score, passage, sentence_start, sentence_end, matched_at, "
    "delivery, parent"
)


def _article(row: Sequence[object]) -> AlertArticle:
    def text(v: object) -> str | None:
        return None if v is None else str(v)

    return AlertArticle(str(row[1]), str(row[2]), text(row[3]), text(row[4]), text(row[5]), text(row[6]))


def latest_matches(conn: sqlite3.Connection, alert_id: int, limit: int) -> list[AlertMatch]:
    """The alert's ``limit`` newest entries, newest first, each with what was grouped under it."""
    rows = conn.execute(
        f"SELECT {_MATCH_COLUMNS} FROM alert_matches WHERE alert = ? AND parent IS NULL ORDER BY id DESC LIMIT ?",
        (alert_id, limit),
    ).fetchall()
    grouped: dict[int, list[GroupedMatch]] = {int(r[0]): [] for r in rows}
    if grouped:
        marks = ",".join("?" * len(grouped))
        for g in conn.execute(
            f"SELECT {_MATCH_COLUMNS} FROM alert_matches WHERE parent IN ({marks}) ORDER BY id", list(grouped)
        ):
            grouped[int(g[13])].append(GroupedMatch(_article(g), round(float(g[7]), 6), str(g[11])))
    return [
        AlertMatch(
            id=int(r[0]),
            article=_article(r),
            score=round(float(r[7]), 6),
            passage=str(r[8]),
            highlight=Highlight(int(r[9]), int(r[10])),
            matched_at=str(r[11]),
            delivery=None if r[12] is None else str(r[12]),
            grouped=grouped[int(r[0])],
        )
        for r in rows
    ]


# -- delivery (search/alerts/delivery.py) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    """A match whose webhook post is due: claimed by one deliverer until ``claimed_until``."""

    match: int
    alert: int
    webhook: str
    attempts: int
    payload: JSONObject


def claim_due(conn: sqlite3.Connection, now: float, lease: float, limit: int = 20) -> list[Due]:
    """Pending matches whose next attempt is due and that no other deliverer holds, claimed for ``lease`` seconds
    (one short transaction: two server processes never post the same match at once; a deliverer that dies leaves
    its claim to expire, and the match is posted again)."""
    out: list[Due] = []
    with conn:
        rows = conn.execute(
            "SELECT m.id, m.alert, a.webhook, m.attempts FROM alert_matches m JOIN alerts a ON a.id = m.alert "
            "WHERE m.delivery = 'pending' AND COALESCE(m.next_attempt, 0) <= ? "
            "AND COALESCE(m.claimed_until, 0) <= ? AND a.webhook IS NOT NULL ORDER BY m.id LIMIT ?",
            (now, now, limit),
        ).fetchall()
        for match, alert, webhook, attempts in rows:
            conn.execute("UPDATE alert_matches SET claimed_until = ? WHERE id = ?", (now + lease, match))
            out.append(Due(int(match), int(alert), str(webhook), int(attempts), {}))
    return [Due(d.match, d.alert, d.webhook, d.attempts, _payload(conn, d.alert, d.match)) for d in out]


def _payload(conn: sqlite3.Connection, alert_id: int, match_id: int) -> JSONObject:
    """The JSON a webhook receives: the alert and the match, as ``GET /api/alerts/<id>`` shows them."""
    saved = saved_search(conn, alert_id)
    row = conn.execute(f"SELECT {_MATCH_COLUMNS} FROM alert_matches WHERE id = ?", (match_id,)).fetchone()
    match: JSONValue = None
    if row is not None:
        match = to_plain(
            AlertMatch(
                int(row[0]),
                _article(row),
                round(float(row[7]), 6),
                str(row[8]),
                Highlight(int(row[9]), int(row[10])),
                str(row[11]),
                None if row[12] is None else str(row[12]),
                [],
            )
        )
    return {"alert": {"id": saved.id, "query": saved.query, "mode": saved.mode}, "match": match}


def record_attempt(
    conn: sqlite3.Connection, due: Due, error: str | None, retry_in: float | None, now: float | None = None
) -> str:
    """The outcome of one post: delivered, retried at ``now + retry_in``, or failed (``retry_in`` None); counted in
    ``alert_counts``. Returns the match's delivery state."""
    now = time.time() if now is None else now
    with conn:
        if error is None:
            state = "delivered"
            conn.execute(
                "UPDATE alert_matches SET delivery = 'delivered', attempts = attempts + 1, claimed_until = NULL, "
                "last_error = NULL WHERE id = ?",
                (due.match,),
            )
            _bump(conn, "delivered")
        else:
            state = "pending" if retry_in is not None else "failed"
            conn.execute(
                "UPDATE alert_matches SET delivery = ?, attempts = attempts + 1, claimed_until = NULL, "
                "next_attempt = ?, last_error = ? WHERE id = ?",
                (state, None if retry_in is None else now + retry_in, error[:500], due.match),
            )
            _bump(conn, "failed_attempts")
            if retry_in is None:
                _bump(conn, "gave_up")
    return state


def delivery_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Cumulative delivered / failed_attempts / gave_up counters, and the matches pending now."""
    try:
        counts = {str(n): int(v) for n, v in conn.execute("SELECT name, value FROM alert_counts")}
        row = conn.execute("SELECT COUNT(*) FROM alert_matches WHERE delivery = 'pending'").fetchone()
    except sqlite3.OperationalError:
        return {}
    counts.pop("version", None)
    counts["pending"] = int(row[0]) if row else 0
    return counts
