"""The tables of saved searches and their matches, created with the store's other tables (search/storage/store.py).

Here, apart from the code that reads and writes them (``search.alerts.saved``), because the store creates them:
this module imports nothing, so the store can name it without an import cycle.

``alerts``: one row per saved search, with its query's embedding and the fingerprint of the model that made it (a
new build with another model has every saved query embedded again before it is matched). ``alert_matches``: what
each write's articles matched, recorded in the write's transaction; a row whose ``parent`` is set is a copy or a
story mate grouped under an earlier match of the same alert (shown with it, never delivered on its own).
``delivery`` is ``pending`` (a webhook will be posted), ``delivered``, ``failed`` (gave up after the retries), or
NULL (nothing to deliver: no webhook, or grouped). ``alert_counts``: cumulative delivery counters for ``/metrics``,
kept in SQLite so every server process reports the same and a deleted alert does not make them go backwards, and
the alerts version (triggers below).
"""

ALERTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    query TEXT NOT NULL,
    mode TEXT NOT NULL,
    filters TEXT NOT NULL,
    threshold REAL,
    top_per_day INTEGER,
    webhook TEXT,
    vector BLOB NOT NULL,
    model TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_matches (
    id INTEGER PRIMARY KEY,
    alert INTEGER NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
    article TEXT NOT NULL,
    title TEXT NOT NULL,
    date TEXT,
    source TEXT,
    url TEXT,
    story TEXT,
    duplicates TEXT,
    score REAL NOT NULL,
    passage TEXT NOT NULL,
    sentence_start INTEGER NOT NULL,
    sentence_end INTEGER NOT NULL,
    day TEXT NOT NULL,
    parent INTEGER REFERENCES alert_matches(id) ON DELETE CASCADE,
    matched_at TEXT NOT NULL,
    generation INTEGER NOT NULL,
    delivery TEXT CHECK (delivery IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL,
    claimed_until REAL,
    last_error TEXT,
    UNIQUE (alert, article)
);
CREATE INDEX IF NOT EXISTS alert_matches_story ON alert_matches(alert, story);
CREATE INDEX IF NOT EXISTS alert_matches_duplicates ON alert_matches(alert, duplicates);
CREATE INDEX IF NOT EXISTS alert_matches_due ON alert_matches(delivery, next_attempt);
CREATE TABLE IF NOT EXISTS alert_counts (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# The alerts version (what each process's compiled matrices are keyed by) moves with every row of ``alerts`` that
# changes, whatever statement changed it: a delete or an edit made outside the code would otherwise leave a
# process matching with saved searches that are gone.
for _event in ("INSERT", "DELETE", "UPDATE"):
    ALERTS_SCHEMA += f"""
CREATE TRIGGER IF NOT EXISTS alerts_version_{_event.lower()} AFTER {_event} ON alerts BEGIN
    INSERT OR IGNORE INTO alert_counts (name, value) VALUES ('version', 0);
    UPDATE alert_counts SET value = value + 1 WHERE name = 'version';
END;
"""
