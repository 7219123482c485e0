"""SQLite, the source of truth: articles, passages, their float32 embeddings and a generation counter.

Everything else in an index directory (the FAISS files) can be rebuilt from this one file. Connections are per
thread because the WSGI server answers requests on several threads and sqlite3 connections must not be shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from search.alerts.schema import ALERTS_SCHEMA
from search.errors import IndexCorrupt, StaleIndex, StorageError
from search.jsontypes import JSONObject
from search.models import Article, ArticleRef, Passage
from search.storage.watchstate import WATCH_SCHEMA

T = TypeVar("T")

# Sentence vectors of multi-sentence passages, for marking the answering sentence without running the model at
# query time. Made at index time from the passage's own forward pass (late chunking); float16 (they only rank the
# few sentences of one passage). Indexes built before this table existed get it empty, and fall back to
# embedding sentences when a result is shown.
SENTENCES_SCHEMA = """
CREATE TABLE IF NOT EXISTS sentences (
    pid INTEGER PRIMARY KEY REFERENCES passages(id) ON DELETE CASCADE,
    spans TEXT NOT NULL,
    vectors BLOB NOT NULL
);
"""

# Story and duplicate-group labels of each article (search/news/stories.py, search/news/dedup.py): written with the
# article,
# in the same transaction; indexes made before the table existed get it on open and are labelled then.
GROUPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS article_groups (
    aid INTEGER PRIMARY KEY REFERENCES articles(aid) ON DELETE CASCADE,
    story TEXT NOT NULL,
    duplicates TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS article_groups_story ON article_groups(story);
"""

# The change log: the article ids each write touched (one row per id: its latest generation and operation), written in
# the write's own transaction. A full build reads the store it replaces for the ids written after the build began
# reading it, and carries them into the new build before the swap (indexer/build.py), so a write acknowledged during
# a rebuild is not lost with the old store. One row per id keeps it bounded by the ids written since the store's
# build (a new build starts with an empty log; its bulk load writes none). Older stores get it empty on open.
CHANGES_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('upsert', 'delete'))
);
CREATE INDEX IF NOT EXISTS changes_generation ON changes(generation);
"""

# The columns of the article catalog (search/ranking/catalog.py) as an index of their own, so that an open reads
# them without the article rows, whose text and vector make SQLite walk each row's overflow pages to reach the date
# and tags stored after them: 8 ms against 60 ms at 5,000 articles. Indexes made before it get it on open.
CATALOG_SCHEMA = """
CREATE INDEX IF NOT EXISTS articles_catalog ON articles(aid, date, source, tags, id);
"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS articles (
    aid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    paragraphs TEXT NOT NULL,
    date TEXT,
    source TEXT,
    url TEXT,
    tags TEXT NOT NULL,
    extra TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    origin TEXT
);
CREATE INDEX IF NOT EXISTS articles_hash ON articles(content_hash);
CREATE INDEX IF NOT EXISTS articles_date ON articles(date);
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY,
    aid INTEGER NOT NULL REFERENCES articles(aid) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    field TEXT NOT NULL CHECK (field IN ('title', 'body')),
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS passages_aid ON passages(aid, position);
"""
    + SENTENCES_SCHEMA
    + GROUPS_SCHEMA
    + CHANGES_SCHEMA
    + CATALOG_SCHEMA
    + WATCH_SCHEMA
    + ALERTS_SCHEMA
)

# BM25 tables (queried by search/text/fts.py), kept in step with articles and passages by triggers, so the
# lexical side changes in the same transaction as the rows it indexes. No query reads them: searches score with the
# in-memory BM25 (search/text/bm25.py, 8x faster than FTS5 on SciFact). They stay as the independent reference it
# is checked against: SQLite's own tokenizer and bm25(), updated by SQLite on every write, which the in-memory
# postings must equal score for score after builds, adds and deletes (tests/test_bm25.py; bench/quality.py --only
# lexical), and which `newsdesk check` holds to the stored rows (integrity_problems). A drift in the postings'
# incremental updates or tokenizer shows there instead of as quietly worse rankings. Their price, measured by
# bench/fts_cost.py (bench/README.md): about 1-2 ms per article written (a 20-article write about 4x the SQLite
# time without them, 1-2% of what embedding the article costs) and a fifth more database. Dropping them would
# also change the index format (FORMAT_VERSION 2 is "BM25 tables").
TOKENIZE = "porter unicode61 remove_diacritics 2"

LEXICAL_SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS articles_fts USING fts5(title, body, content='', tokenize='{TOKENIZE}');
CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts USING fts5(
    text, content='passages', content_rowid='id', tokenize='{TOKENIZE}'
);
CREATE TRIGGER IF NOT EXISTS articles_fts_insert AFTER INSERT ON articles BEGIN
    INSERT INTO articles_fts(rowid, title, body)
    VALUES (new.aid, new.title, (SELECT group_concat(value, char(10)) FROM json_each(new.paragraphs)));
END;
CREATE TRIGGER IF NOT EXISTS articles_fts_delete AFTER DELETE ON articles BEGIN
    INSERT INTO articles_fts(articles_fts, rowid, title, body)
    VALUES ('delete', old.aid, old.title, (SELECT group_concat(value, char(10)) FROM json_each(old.paragraphs)));
END;
CREATE TRIGGER IF NOT EXISTS passages_fts_insert AFTER INSERT ON passages BEGIN
    INSERT INTO passages_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS passages_fts_delete AFTER DELETE ON passages BEGIN
    INSERT INTO passages_fts(passages_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""


# Where an article came from: NULL for the sources of ``newsdesk index`` (and for every article of an index made
# before the column existed, which gets it on open), else one of these. ``newsdesk index`` deletes articles missing
# from its sources, and warns first about those that came another way (indexer/sync.py).
ORIGINS = ("add", "api")  # newsdesk add, POST /api/articles


@dataclass(frozen=True)
class StoredPassage:
    """A passage row joined with its article's internal key."""

    passage: Passage
    aid: int


SentenceVectors = tuple[list[tuple[int, int]], np.ndarray]
SQLValue = int | float | str | bytes | None  # what a SQLite column holds
Row = tuple[SQLValue, ...]
CatalogRow = tuple[int, str | None, str | None, tuple[str, ...], str]  # key, date, source, tags, id
ArticleText = tuple[str, list[str], str | None, np.ndarray | None]  # title, paragraphs, date, headline vector


@dataclass(frozen=True)
class NewArticle:
    """What the indexer writes for one article: the article, its passages and all their vectors."""

    article: Article
    passages: Sequence[tuple[int, str, int, int, str]]  # position, field, start, end, text
    passage_vectors: np.ndarray
    article_vector: np.ndarray
    # per passage: its sentences' (start, end) spans in the passage text and their vectors, or None (one sentence)
    sentences: Sequence[SentenceVectors | None] = ()
    # its story and duplicate-group labels, when the writer assigned them (a full build labels after writing)
    story: str | None = None
    duplicates: str | None = None
    origin: str | None = None  # None: the sources of newsdesk index; else one of ORIGINS


class ReadStore(Protocol):
    """What the query side reads from a store: ``Store`` (SQLite, an index directory) and
    ``search.vectors.milvus.replica.MilvusReadStore`` (a stateless replica) both implement it."""

    def generation(self) -> int: ...
    def counts(self) -> tuple[int, int]: ...
    def groups(self) -> dict[int, tuple[str, str]]: ...
    def newest_date(self) -> str | None: ...
    def aid_of(self, article_id: str) -> int | None: ...
    def article(self, aid: int) -> Article: ...
    def article_refs(self, aids: Iterable[int]) -> dict[int, ArticleRef]: ...
    def content_hashes(self, aids: Iterable[int]) -> dict[int, str]: ...
    def passages(self, ids: Iterable[int]) -> dict[int, StoredPassage]: ...
    def passages_of(self, aid: int) -> list[Passage]: ...
    def passage_vectors(self, ids: Iterable[int]) -> dict[int, np.ndarray]: ...
    def sentence_vectors(self, pids: Iterable[int]) -> dict[int, SentenceVectors]: ...
    def article_vector(self, aid: int) -> np.ndarray: ...
    def passage_owners(self) -> tuple[np.ndarray, np.ndarray]: ...
    def catalog_rows(self) -> list[CatalogRow]: ...
    def keys(self, table: str) -> np.ndarray: ...
    def close(self) -> None: ...


class ChangedRows(Protocol):
    """What the in-memory parts of an index read to follow a change (search/storage/changes.py): the texts of the
    rows it added (BM25) and the catalog as it now stands. ``Store`` after a write's commit, and a replica's
    delta fetched from the engine (search/vectors/milvus/replica.py)."""

    def passage_text_rows(self, ids: Iterable[int] | None = None) -> Iterator[tuple[int, str]]: ...
    def article_text_rows(self, aids: Iterable[int] | None = None) -> Iterator[tuple[int, str, list[str]]]: ...
    def catalog_rows(self, aids: Iterable[int] | None = None) -> list[CatalogRow]: ...
    def groups(self) -> dict[int, tuple[str, str]]: ...
    def groups_of(self, aids: Iterable[int]) -> dict[int, tuple[str, str]]: ...


@dataclass(frozen=True)
class Replaced:
    """What one ``replace_articles`` transaction removed and wrote (new articles in the order given)."""

    deleted_aids: list[int]
    deleted_pids: list[int]
    new_aids: list[int]
    new_pids: list[int]
    generation: int = -1  # the store's generation once the transaction committed


CACHES_LOCK = ".caches.lock"  # held while the derived caches of a directory are written (Store.saving)


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (the C type cannot): ``Store`` tracks its connections without
    keeping a finished thread's connection open."""


class Store:
    """One SQLite file, and only that file: the path is resolved when the store is opened, so every thread's
    connection reaches the same file even after the index directory's symlink is swapped by a rebuild.

    Its ``build`` id (a ``meta`` row written when a full build creates the store) names the build; a connection
    opened later that finds another build (a plain directory replaced under the same path) is refused.

    ``read_only`` opens the file without write access (``mode=ro``), and where SQLite cannot create the WAL index
    (``-shm``) beside it, as immutable: see ``_connect``."""

    def __init__(self, path: Path, *, create: bool = False, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        if not create and not path.is_file():
            raise IndexCorrupt(f"{path.name} is missing from the index directory {path.parent}")
        self._real = path.resolve()
        self._local = threading.local()
        self._open: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._open_lock = threading.Lock()
        self.build = ""
        if read_only:
            self._conn()  # fails now, with the file named, rather than on the first query
        elif create:
            with self._conn() as conn:
                conn.executescript(SCHEMA + LEXICAL_SCHEMA)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('build', ?)", (uuid.uuid4().hex,))
        else:
            with contextlib.suppress(sqlite3.OperationalError), self._conn() as conn:  # read-only: reads fall back
                conn.executescript(
                    SENTENCES_SCHEMA + GROUPS_SCHEMA + CHANGES_SCHEMA + CATALOG_SCHEMA + WATCH_SCHEMA + ALERTS_SCHEMA
                )
                columns = {row[1] for row in conn.execute("PRAGMA table_info(articles)")}
                if "origin" not in columns:  # an index from before origins: its articles count as from sources
                    conn.execute("ALTER TABLE articles ADD COLUMN origin TEXT")
        row = self._query_one("SELECT value FROM meta WHERE key = 'build'")
        if row is None:  # an index built before build ids gets one (once: concurrent openers agree on the first)
            with contextlib.suppress(sqlite3.OperationalError), self._conn() as conn:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('build', ?)", (uuid.uuid4().hex,))
            row = self._query_one("SELECT value FROM meta WHERE key = 'build'")
        self.build = str(row[0]) if row else ""
        stat = os.stat(self._real)
        self.identity = (stat.st_dev, stat.st_ino)  # which file this is (Index.current compares the directory's)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect()
                found = conn.execute("SELECT value FROM meta WHERE key = 'build'").fetchone() if self.build else None
            except sqlite3.DatabaseError as exc:
                raise IndexCorrupt(f"cannot open {self.path}: {exc}") from None
            if found is not None and str(found[0]) != self.build:
                conn.close()
                raise StaleIndex(f"{self.path} now holds another build of the index")
            with self._open_lock:
                self._open.add(conn)
            self._local.conn = conn
        return conn

    def _connect(self) -> _Connection:
        # not bound to its thread (check_same_thread) only so that close() can close every thread's connection
        if not self.read_only:
            conn = sqlite3.connect(self._real, timeout=30.0, check_same_thread=False, factory=_Connection)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss, not only a crash
            return conn
        # A WAL database opened read-only still needs its -shm and -wal files: they must exist already or SQLite must
        # be able to create them (https://sqlite.org/wal.html#readonly). In a directory nobody may write and with no
        # -shm left by a writer, the only way in is ``immutable=1``: no locks and no WAL, which is exact for a
        # read-only copy or mount, since nothing can commit there.
        uri = self._real.as_uri()
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30.0, check_same_thread=False, factory=_Connection)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            conn.close()
            conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False, factory=_Connection)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, for modules that run their own SQL on the store (the lexical index)."""
        return self._conn()

    def close(self) -> None:
        """Close every thread's connection (a reloaded index's store would otherwise keep one per request thread
        open for ever). Only when nothing uses the store: the service closes a replaced index under its write lock.
        A later use opens a new connection."""
        with self._open_lock:
            conns, self._open = list(self._open), weakref.WeakSet()
            self._local = threading.local()
        for conn in conns:
            conn.close()

    @contextmanager
    def saving(self, generation: int) -> Iterator[bool]:
        """Hold the lock on this store's directory caches; yields whether caches of ``generation`` may be written:
        only while the store is still at that generation, so a cache is never stamped with a generation whose
        changes it lacks, and two processes never interleave the files and the stamp of one cache. False (nothing
        to write) where the lock cannot be taken, as in a read-only directory."""
        try:
            fd = os.open(self._real.parent / CACHES_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.generation() == generation
        finally:
            os.close(fd)  # releases the lock

    # -- writing ---------------------------------------------------------------------------------------------

    def add_articles(self, items: Iterable[NewArticle]) -> list[int]:
        """Insert articles with their passages in one transaction and bump the generation; returns passage ids.
        A full build's bulk load: no change log (nobody reads a build's log before the build is swapped in)."""
        return self.replace_articles((), items, log=False).new_pids

    def delete_articles(self, article_ids: Iterable[str]) -> tuple[list[int], list[int]]:
        """Delete articles (their passages and BM25 entries go with them) in one transaction.

        Returns the (article keys, passage ids) removed, so the caller can drop the same ids from FAISS.
        """
        done = self.replace_articles(article_ids, ())
        return done.deleted_aids, done.deleted_pids

    def replace_articles(
        self,
        delete_ids: Iterable[str],
        items: Iterable[NewArticle],
        check: Callable[[int], None] | None = None,
        *,
        log: bool = True,
        before_commit: Callable[[Replaced, Callable[[], None]], None] | None = None,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> Replaced:
        """Delete ``delete_ids`` and insert ``items`` in one transaction, so a reader sees either the old or the new
        version of a replaced article, never neither.

        ``check`` is called with the store's generation once the transaction holds SQLite's write lock (``BEGIN
        IMMEDIATE``: no other process can commit until this one ends), before anything is written; it raises
        (``StaleIndex``) to roll back when the caller's in-memory state does not reflect that generation. ``log``
        records the ids in the change log (``CHANGES_SCHEMA``) in the same transaction.

        ``before_commit`` is called with what was written and the transaction's commit, the transaction still open
        (this thread's reads see the write, other connections do not): a live writer builds its in-memory side there
        and commits under its service's write lock, so that searches run while the statements execute. It may raise
        to roll back; if it does not commit, the transaction commits when it returns.

        ``also`` runs its own statements in the transaction, after the articles': what a caller must commit together
        with them (``newsdesk watch`` records the items it ingested, search/storage/watchstate.py)."""
        conn = self._conn()
        aids: list[int] = []
        pids: list[int] = []
        items = list(items)
        gone: list[str] = []  # the ids deleted and not written again
        with _disk_full_is_storage_error(self.path), conn:
            conn.execute("BEGIN IMMEDIATE")
            if check is not None:
                check(self._generation(conn))
            for article_id in dict.fromkeys(delete_ids):
                row = conn.execute("SELECT aid FROM articles WHERE id = ?", (article_id,)).fetchone()
                if row is None:
                    continue
                aids.append(int(row[0]))
                gone.append(article_id)
                pids += [int(r[0]) for r in conn.execute("SELECT id FROM passages WHERE aid = ?", (row[0],))]
                conn.execute("DELETE FROM passages WHERE aid = ?", (row[0],))
                conn.execute("DELETE FROM articles WHERE aid = ?", (row[0],))
            new_aids, new_pids = self._insert(conn, items)
            if also is not None:
                also(conn)
            if aids or new_pids:
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            generation = self._generation(conn)
            if log and (aids or new_aids):
                written = {n.article.id for n in items}
                self._log(conn, generation, [i for i in gone if i not in written], "delete")
                self._log(conn, generation, [n.article.id for n in items], "upsert")
            done = Replaced(aids, pids, new_aids, new_pids, generation)
            if before_commit is not None:
                before_commit(done, conn.commit)
        return done

    @staticmethod
    def _log(conn: sqlite3.Connection, generation: int, article_ids: Iterable[str], op: str) -> None:
        _insert_rows(
            conn, "INSERT OR REPLACE INTO changes (id, generation, op)", [(i, generation, op) for i in article_ids]
        )

    @staticmethod
    def _generation(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _insert(conn: sqlite3.Connection, items: Sequence[NewArticle]) -> tuple[list[int], list[int]]:
        """Write articles and their passages; returns (their article keys, their passage ids), in order.

        A few multi-row statements per table (``_insert_rows``) rather than one ``execute`` per row (a 10-article write
        is ~400 passage rows and as many sentence rows): the keys are given, not read back from ``lastrowid`` row by
        row, and are the ones SQLite would pick itself (an ``INTEGER PRIMARY KEY`` without AUTOINCREMENT takes the
        largest key + 1, read here inside the write transaction, so no other writer can take them). What this saves is
        the per-statement work of the Python driver; SQLite does the same inserts and fires the same FTS5 triggers row
        by row, so the FTS5 tables stay exact (tests/test_store_writes.py).

        Measured by bench/sqlite_write.py (10 rounds of 10 RealTime QA articles, ~358 passages a write, on copies of
        the 109k- and 924k-passage archives, old and new code alternated twice; executemany against a statement per
        row): the writing thread's CPU for the 10 adds 536 -> 485 ms at 109k and 495 -> 474 ms at 924k (-5 to -10%,
        within the shared machine's noise). What the write costs does not grow with the corpus: CPU
        924k/109k 0.92 before, 0.98 after; the thread was blocked on I/O (page reads, fsync) ~2 ms a write at both
        sizes; the rest of its wall time (median 120-290 ms against 30-45 ms on a CPU at a load average of 10 on 2
        cores) was queueing for a core.
        Without the FTS5 triggers the same adds take 0.3x the CPU: indexing the text is most of a write's cost."""
        if not items:
            return [], []
        first_aid = _next_key(conn, "SELECT MAX(aid) FROM articles")
        first_pid = _next_key(conn, "SELECT MAX(id) FROM passages")
        aids = list(range(first_aid, first_aid + len(items)))
        _insert_rows(
            conn,
            "INSERT INTO articles (aid, id, title, paragraphs, date, source, url, tags, extra, content_hash, "
            "vector, origin)",
            [
                (
                    aid,
                    item.article.id,
                    item.article.title,
                    json.dumps(list(item.article.paragraphs), ensure_ascii=False),
                    item.article.date,
                    item.article.source,
                    item.article.url,
                    json.dumps(list(item.article.tags), ensure_ascii=False),
                    json.dumps(item.article.extra, ensure_ascii=False, default=str),
                    item.article.content_hash(),
                    _blob(item.article_vector),
                    item.origin,
                )
                for aid, item in zip(aids, items, strict=True)
            ],
        )
        _insert_rows(
            conn,
            "INSERT INTO article_groups (aid, story, duplicates)",
            [
                (aid, item.story, item.duplicates if item.duplicates is not None else item.article.id)
                for aid, item in zip(aids, items, strict=True)
                if item.story is not None
            ],
        )
        passages: list[tuple[int, int, int, str, int, int, str, bytes]] = []
        sentences: list[tuple[int, str, bytes]] = []
        for aid, item in zip(aids, items, strict=True):
            spans = list(item.sentences) or [None] * len(item.passages)
            for (position, field, start, end, text), vec, sent in zip(
                item.passages, item.passage_vectors, spans, strict=True
            ):
                pid = first_pid + len(passages)
                passages.append((pid, aid, position, field, start, end, text, _blob(vec)))
                if sent is not None and len(sent[0]) > 1:
                    vectors = np.ascontiguousarray(sent[1], dtype=np.float16).tobytes()
                    sentences.append((pid, json.dumps(sent[0]), vectors))
        _insert_rows(conn, 'INSERT INTO passages (id, aid, position, field, start, "end", text, vector)', passages)
        _insert_rows(conn, "INSERT INTO sentences (pid, spans, vectors)", sentences)
        return aids, [row[0] for row in passages]

    def update_metadata(self, articles: Sequence[Article]) -> list[int]:
        """Write the date, source, url, tags and extra of stored articles whose text did not change, in one
        transaction with a new generation (servers reload); returns their keys. Passages, vectors and the BM25
        tables hold none of these fields, so nothing else is written; an unknown id is skipped."""
        conn = self._conn()
        aids: list[int] = []
        with conn:
            for a in articles:
                cur = conn.execute(
                    "UPDATE articles SET date = ?, source = ?, url = ?, tags = ?, extra = ? WHERE id = ? RETURNING aid",
                    (
                        a.date,
                        a.source,
                        a.url,
                        json.dumps(list(a.tags), ensure_ascii=False),
                        json.dumps(a.extra, ensure_ascii=False, default=str),
                        a.id,
                    ),
                )
                aids += [int(row[0]) for row in cur.fetchall()]
            if aids:
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                self._log(conn, self._generation(conn), [a.id for a in articles], "upsert")
        return aids

    def set_origins(self, origins: Mapping[str, str | None]) -> None:
        """Record where articles came from (by id; None: the sources). Readers never see origins, so this is no new
        generation."""
        with self._conn() as conn:
            conn.executemany("UPDATE articles SET origin = ? WHERE id = ?", [(o, i) for i, o in origins.items()])

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold SQLite's write lock on this store (``BEGIN IMMEDIATE`` on this thread's connection) until the block
        ends, then roll back: no process commits here meanwhile, and this thread's reads see one state. What a full
        build holds on the store it replaces from copying the last writes until its swap (indexer/build.py)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.rollback()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """This thread's reads see one committed state until the block ends (a deferred transaction, rolled back:
        under WAL it takes no lock a writer waits on). What a process following another's writes reads the change
        log and the changed rows in (search/storage/changes.py ``follow_log``), so the two agree whatever commits
        meanwhile. Inside a transaction this thread already holds, its reads are one state already: nothing is
        begun."""
        conn = self._conn()
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.ProgrammingError):  # closed meanwhile (a reopen): nothing to end
                conn.rollback()

    def passage_keys(self, aids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(article, passage id) of every stored passage of the given articles, by passage id."""
        pairs: list[tuple[int, int]] = []
        for chunk in _chunks(sorted({int(a) for a in aids}), 500):
            marks = ",".join("?" * len(chunk))
            pairs += self._conn().execute(f"SELECT aid, id FROM passages WHERE aid IN ({marks})", chunk).fetchall()
        pairs.sort(key=lambda pair: pair[1])
        return np.asarray([a for a, _ in pairs], dtype=np.int64), np.asarray([p for _, p in pairs], dtype=np.int64)

    def changed_since(self, generation: int) -> list[str]:
        """The ids of the articles written (inserted, replaced, deleted or given new metadata) after ``generation``,
        from the change log."""
        rows = self._conn().execute("SELECT id FROM changes WHERE generation > ? ORDER BY generation", (generation,))
        return [str(row[0]) for row in rows]

    def stored_rows(self, article_ids: Iterable[str]) -> list[NewArticle]:
        """The stored articles among ``article_ids`` as rows another store can take as they are: text, metadata,
        origin, passages and every vector (sentences too), without their labels (a build labels its own stories).
        Ids not stored are left out."""
        out: list[NewArticle] = []
        for article_id in dict.fromkeys(article_ids):
            row = self._query_one("SELECT aid, vector, origin FROM articles WHERE id = ?", (article_id,))
            if row is None:
                continue
            aid, vector = _int(row[0]), _bytes(row[1])
            passages = (
                self._conn()
                .execute(
                    'SELECT id, position, field, start, "end", text, vector FROM passages WHERE aid = ? '
                    "ORDER BY position",
                    (aid,),
                )
                .fetchall()
            )
            sentences = self.sentence_vectors(int(p[0]) for p in passages)
            dim = len(vector) // 4
            out.append(
                NewArticle(
                    article=self.article(aid),
                    passages=[(int(p[1]), str(p[2]), int(p[3]), int(p[4]), str(p[5])) for p in passages],
                    passage_vectors=np.stack([np.frombuffer(p[6], dtype=np.float32) for p in passages])
                    if passages
                    else np.zeros((0, dim), dtype=np.float32),
                    article_vector=np.frombuffer(vector, dtype=np.float32).copy(),
                    sentences=[sentences.get(int(p[0])) for p in passages],
                    origin=_opt_text(row[2]),
                )
            )
        return out

    # -- reading ---------------------------------------------------------------------------------------------

    def generation(self) -> int:
        row = self._query_one("SELECT value FROM meta WHERE key = 'generation'")
        return _int(row[0]) if row else 0

    def counts(self) -> tuple[int, int]:
        a = self._query_one("SELECT COUNT(*) FROM articles")
        p = self._query_one("SELECT COUNT(*) FROM passages")
        return _int(a[0]) if a else 0, _int(p[0]) if p else 0

    def groups(self) -> dict[int, tuple[str, str]]:
        """(story, duplicate group) of every labelled article."""
        rows = self._conn().execute("SELECT aid, story, duplicates FROM article_groups").fetchall()
        return {int(aid): (story, dup) for aid, story, dup in rows}

    def set_groups(self, labels: dict[int, tuple[str, str]]) -> None:
        """Label articles that have no labels yet (a finished build, or an index older than the labels); one
        transaction, and no new generation: the articles themselves did not change."""
        with self._conn() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO article_groups (aid, story, duplicates) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM articles WHERE aid = ?)",
                [(aid, story, dup, aid) for aid, (story, dup) in labels.items()],
            )

    def newest_date(self) -> str | None:
        row = self._query_one("SELECT MAX(date) FROM articles WHERE date IS NOT NULL AND date != ''")
        return _opt_text(row[0]) if row else None

    def aid_of(self, article_id: str) -> int | None:
        row = self._query_one("SELECT aid FROM articles WHERE id = ?", (article_id,))
        return _int(row[0]) if row else None

    def article(self, aid: int) -> Article:
        row = self._query_one(
            "SELECT id, title, paragraphs, date, source, url, tags, extra FROM articles WHERE aid = ?", (aid,)
        )
        if row is None:
            raise KeyError(aid)
        return Article(
            id=_text(row[0]),
            title=_text(row[1]),
            paragraphs=tuple(json.loads(_text(row[2]))),
            date=_opt_text(row[3]),
            source=_opt_text(row[4]),
            url=_opt_text(row[5]),
            tags=tuple(json.loads(_text(row[6]))),
            extra=json.loads(_text(row[7])),
        )

    def article_refs(self, aids: Iterable[int]) -> dict[int, ArticleRef]:
        out: dict[int, ArticleRef] = {}
        for chunk in _chunks(list(dict.fromkeys(int(a) for a in aids)), 500):
            marks = ",".join("?" * len(chunk))
            rows = self._conn().execute(
                f"SELECT aid, id, title, date, source, url FROM articles WHERE aid IN ({marks})", chunk
            )
            for aid, id_, title, date, source, url in rows:
                out[aid] = ArticleRef(id=id_, title=title, date=date, source=source, url=url)
        return out

    def content_hashes(self, aids: Iterable[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for chunk in _chunks(list(dict.fromkeys(int(a) for a in aids)), 500):
            marks = ",".join("?" * len(chunk))
            rows = self._conn().execute(f"SELECT aid, content_hash FROM articles WHERE aid IN ({marks})", chunk)
            out.update({int(aid): h for aid, h in rows})
        return out

    def article_hashes(self) -> dict[str, str]:
        """Every article's id and content hash (what an incremental re-index compares its sources with)."""
        return {str(i): str(h) for i, h in self._conn().execute("SELECT id, content_hash FROM articles")}

    def article_metadata(self) -> dict[str, tuple[str, str | None]]:
        """Every article's id, with ``metadata_key`` of its stored date, source, url, tags and extra and its origin:
        what a re-index compares with its sources to find metadata changes."""
        rows = self._conn().execute("SELECT id, date, source, url, tags, extra, origin FROM articles")
        return {
            str(i): (metadata_key(date, source, url, json.loads(tags), json.loads(extra)), origin)
            for i, date, source, url, tags, extra, origin in rows
        }

    def passage_texts(
        self, article_ids: Iterable[str]
    ) -> Iterator[tuple[str, str, str, np.ndarray, SentenceVectors | None]]:
        """(headline, field, text, vector, sentences) of every passage of the given articles: what an incremental
        re-index can reuse for passages whose text did not change."""
        for chunk in _chunks(list(dict.fromkeys(article_ids)), 500):
            marks = ",".join("?" * len(chunk))
            rows = self._conn().execute(
                f"SELECT a.title, p.field, p.text, p.vector, s.spans, s.vectors FROM passages p "
                f"JOIN articles a ON a.aid = p.aid LEFT JOIN sentences s ON s.pid = p.id WHERE a.id IN ({marks})",
                chunk,
            )
            for title, field, text, blob, spans, vectors in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                yield title, field, text, vec, _sentences(spans, vectors, len(vec))

    def sentence_vectors(self, pids: Iterable[int]) -> dict[int, SentenceVectors]:
        """Stored sentence spans and vectors of the given passages (those with more than one sentence)."""
        out: dict[int, SentenceVectors] = {}
        for chunk in _chunks(list(dict.fromkeys(int(i) for i in pids)), 500):
            marks = ",".join("?" * len(chunk))
            try:
                rows = self._conn().execute(f"SELECT pid, spans, vectors FROM sentences WHERE pid IN ({marks})", chunk)
                for pid, spans, vectors in rows:
                    found = _sentences(spans, vectors, None)
                    if found is not None:
                        out[int(pid)] = found
            except sqlite3.OperationalError:  # an index from before the sentences table, opened read-only
                return {}
        return out

    def article_vector(self, aid: int) -> np.ndarray:
        row = self._query_one("SELECT vector FROM articles WHERE aid = ?", (aid,))
        if row is None:
            raise KeyError(aid)
        return np.frombuffer(_bytes(row[0]), dtype=np.float32).copy()

    def passages(self, ids: Iterable[int]) -> dict[int, StoredPassage]:
        out: dict[int, StoredPassage] = {}
        for chunk in _chunks(list(dict.fromkeys(int(i) for i in ids)), 500):
            marks = ",".join("?" * len(chunk))
            rows = self._conn().execute(
                f'SELECT p.id, p.aid, a.id, p.position, p.field, p.start, p."end", p.text '
                f"FROM passages p JOIN articles a ON a.aid = p.aid WHERE p.id IN ({marks})",
                chunk,
            )
            for pid, aid, article_id, position, field, start, end, text in rows:
                out[pid] = StoredPassage(Passage(pid, article_id, position, field, start, end, text), aid)
        return out

    def passages_of(self, aid: int) -> list[Passage]:
        rows = self._conn().execute(
            'SELECT p.id, a.id, p.position, p.field, p.start, p."end", p.text FROM passages p '
            "JOIN articles a ON a.aid = p.aid WHERE p.aid = ? ORDER BY p.position",
            (aid,),
        )
        return [Passage(*row) for row in rows]

    def passage_vectors(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Stored embeddings of the given passages (to score a candidate that only the lexical side found)."""
        out: dict[int, np.ndarray] = {}
        for chunk in _chunks(list(dict.fromkeys(int(i) for i in ids)), 500):
            marks = ",".join("?" * len(chunk))
            for pid, blob in self._conn().execute(f"SELECT id, vector FROM passages WHERE id IN ({marks})", chunk):
                out[int(pid)] = np.frombuffer(blob, dtype=np.float32)
        return out

    def iter_vectors(self, table: str, batch: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) batches of ``passages`` or ``articles``, in key order."""
        key = {"passages": "id", "articles": "aid"}[table]
        last = -1
        while True:
            rows = (
                self._conn()
                .execute(f"SELECT {key}, vector FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?", (last, batch))
                .fetchall()
            )
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            yield ids, vecs
            last = int(ids[-1])

    def passage_owners(self) -> tuple[np.ndarray, np.ndarray]:
        """(passage ids ascending, the article key of each): what ``PassageOwners`` is built from.

        Read as one row per article, not per passage: an article's passages are inserted one after another in one
        transaction, and SQLite gives a new row the largest id plus one, so their ids are one run, known from its
        first id and its count. The query reads only the ``passages_aid`` index (no passage row, whose vector makes
        it large) and aggregates in SQLite: 0.26 s at 1.1M passages where a row per passage took 3-6 s. An article
        whose ids are not one run (none written by this code) has its passages read one by one."""
        with self.snapshot():  # the rows and their edge check (``_check_ends``) read one state: see there
            return self._passage_owners()

    def _passage_owners(self) -> tuple[np.ndarray, np.ndarray]:
        sql = "SELECT aid, MIN(id), MAX(id), COUNT(*) FROM passages INDEXED BY passages_aid GROUP BY aid"
        table = np.asarray(self._conn().execute(sql).fetchall(), dtype=np.int64).reshape(-1, 4)
        aids, first, last, counts = table.T
        run = last - first + 1 == counts
        n = counts[run]
        starts = np.cumsum(n) - n  # where each run begins in the output
        pids = np.repeat(first[run] - starts, n) + np.arange(int(n.sum()), dtype=np.int64)
        owners = np.repeat(aids[run], n)
        if not run.all():
            rows = np.asarray(list(self._rows("SELECT id, aid FROM passages", "aid", aids[~run].tolist())), np.int64)
            pids, owners = np.concatenate([pids, rows[:, 0]]), np.concatenate([owners, rows[:, 1]])
            order = np.argsort(pids, kind="stable")
            pids, owners = pids[order], owners[order]
        elif len(pids) and not bool((pids[1:] > pids[:-1]).all()):
            order = np.argsort(pids, kind="stable")
            pids, owners = pids[order], owners[order]
        self._check_ends("passages", "id", pids)
        return pids, owners

    def _check_ends(self, table: str, key: str, keys: np.ndarray) -> None:
        """The first and last key of ``table`` itself (its b-tree's two edges: O(log n)) are those read from an index
        of it. The owners and the catalog read indexes only, so without this an open would not touch the tables, and
        a damaged table (or an index that disagrees with it) would show at the first search instead of as the open's
        one ``IndexCorrupt`` naming the file (a damaged page raises ``sqlite3.DatabaseError``, which ``open_index``
        turns into that). Called inside the snapshot the keys were read in: between two autocommit statements another
        process may commit articles, and its new last key then looked like damage (an ``add`` beside another
        ``add`` failed so, one run in a few hundred)."""
        edges = f"SELECT (SELECT MIN({key}) FROM {table} NOT INDEXED), (SELECT MAX({key}) FROM {table} NOT INDEXED)"
        ends = self._query_one(edges)
        want = (int(keys[0]), int(keys[-1])) if len(keys) else (None, None)
        if ends is None or tuple(ends) != want:
            raise IndexCorrupt(f"{self.path.name}: the {table} table and its index disagree; rebuild the index")

    def catalog_rows(self, aids: Iterable[int] | None = None) -> list[CatalogRow]:
        """(key, date, source, tags, id) of every article, or of those with the given keys (a write's changed rows:
        ``ArticleCatalog.updated``), in key order: what ``ArticleCatalog`` is built from. Read from the
        ``articles_catalog`` index (``CATALOG_SCHEMA``), each row converted in one expression (no tags: no JSON)."""
        conn, sql = self._conn(), "SELECT aid, date, source, tags, id FROM articles"
        if aids is None:
            with self.snapshot():  # the rows and their edge check read one state (``_check_ends``)
                found = conn.execute(f"{sql} ORDER BY aid").fetchall()
                self._check_ends("articles", "aid", np.asarray([r[0] for r in found[:1] + found[-1:]], np.int64))
        else:
            found = []
            for chunk in _chunks(sorted({int(a) for a in aids}), 500):
                marks = ",".join("?" * len(chunk))
                found += conn.execute(f"{sql} WHERE aid IN ({marks}) ORDER BY aid", chunk).fetchall()
        loads = json.loads
        return [(int(r[0]), r[1], r[2], () if r[3] == "[]" else tuple(loads(r[3])), str(r[4])) for r in found]

    def groups_of(self, aids: Iterable[int]) -> dict[int, tuple[str, str]]:
        """(story, duplicate group) of the labelled articles among ``aids``: ``groups`` for a write's rows."""
        sql = "SELECT aid, story, duplicates FROM article_groups"
        return {_int(r[0]): (_text(r[1]), _text(r[2])) for r in self._rows(sql, "aid", aids)}

    def keys(self, table: str) -> np.ndarray:
        """Every key of ``passages`` or ``articles``, ascending."""
        key = {"passages": "id", "articles": "aid"}[table]
        rows = self._conn().execute(f"SELECT {key} FROM {table} ORDER BY {key}")
        return np.fromiter((r[0] for r in rows), np.int64)

    def passage_text_rows(self, ids: Iterable[int] | None = None) -> Iterator[tuple[int, str]]:
        """(passage id, text) in ascending id order: all passages, or those with the given ids."""
        for pid, text in self._rows("SELECT id, text FROM passages", "id", ids):
            yield _int(pid), _text(text)

    def article_text_rows(self, aids: Iterable[int] | None = None) -> Iterator[tuple[int, str, list[str]]]:
        """(article key, title, paragraphs) in ascending key order: all articles, or those with the given keys."""
        for aid, title, paragraphs in self._rows("SELECT aid, title, paragraphs FROM articles", "aid", aids):
            yield _int(aid), _text(title), list(json.loads(_text(paragraphs)))

    def article_texts(self, aids: Sequence[int]) -> dict[int, ArticleText]:
        """(title, paragraphs, date, headline passage vector or None) of the given articles, for duplicate
        detection."""
        out: dict[int, ArticleText] = {}
        for chunk in _chunks([int(a) for a in aids], 500):
            marks = ",".join("?" * len(chunk))
            rows = (
                self._conn()
                .execute(
                    "SELECT a.aid, a.title, a.paragraphs, a.date, (SELECT p.vector FROM passages p WHERE p.aid = a.aid "
                    f"AND p.field = 'title' ORDER BY p.position LIMIT 1) FROM articles a WHERE a.aid IN ({marks})",
                    chunk,
                )
                .fetchall()
            )
            for aid, title, paragraphs, date, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32) if blob is not None else None
                out[int(aid)] = (title, list(json.loads(paragraphs)), date, vec)
        return out

    # -- exporting: what the Milvus record collections mirror (search/vectors/milvus/records.py) -----------------------

    def article_documents(self, aids: Iterable[int] | None = None) -> Iterator[tuple[int, JSONObject]]:
        """(key, every stored field of the article with its story and duplicate labels), ascending keys."""
        sql = (
            "SELECT a.aid, a.id, a.title, a.paragraphs, a.date, a.source, a.url, a.tags, a.extra, a.content_hash, "
            "g.story, g.duplicates FROM articles a LEFT JOIN article_groups g ON g.aid = a.aid"
        )
        for aid, id_, title, paragraphs, date, source, url, tags, extra, hash_, story, dup in self._rows(
            sql, "a.aid", aids
        ):
            yield (
                _int(aid),
                {
                    "id": id_,
                    "title": title,
                    "paragraphs": json.loads(_text(paragraphs)),
                    "date": date,
                    "source": source,
                    "url": url,
                    "tags": json.loads(_text(tags)),
                    "extra": json.loads(_text(extra)),
                    "content_hash": hash_,
                    "story": story,
                    "duplicates": dup,
                },
            )

    def passage_documents(self, pids: Iterable[int] | None = None) -> Iterator[tuple[int, int, JSONObject]]:
        """(passage id, article key, position, field, span and text), ascending ids."""
        sql = 'SELECT id, aid, position, field, start, "end", text FROM passages'
        for pid, aid, position, field, start, end, text in self._rows(sql, "id", pids):
            yield _int(pid), _int(aid), {"position": position, "field": field, "start": start, "end": end, "text": text}

    def sentence_rows(
        self, pids: Iterable[int] | None = None
    ) -> Iterator[tuple[int, int, list[tuple[int, int]], np.ndarray]]:
        """(passage id, article key, sentence spans, sentence vectors) of multi-sentence passages, ascending ids."""
        sql = "SELECT s.pid, p.aid, s.spans, s.vectors FROM sentences s JOIN passages p ON p.id = s.pid"
        for pid, aid, spans, vectors in self._rows(sql, "s.pid", pids):
            found = _sentences(_opt_text(spans), None if vectors is None else _bytes(vectors), None)
            if found is not None:
                yield _int(pid), _int(aid), found[0], found[1]

    def _rows(self, sql: str, key: str, ids: Iterable[int] | None) -> Iterator[Row]:
        """Rows in ascending key order: all of them, or those with the given keys."""
        conn = self._conn()
        if ids is None:
            yield from conn.execute(f"{sql} ORDER BY {key}")
            return
        wanted = sorted({int(i) for i in ids})
        for chunk in _chunks(wanted, 500):
            yield from conn.execute(f"{sql} WHERE {key} IN ({','.join('?' * len(chunk))}) ORDER BY {key}", chunk)

    def integrity_problems(self) -> list[str]:
        try:
            rows = self._conn().execute("PRAGMA integrity_check").fetchall()
            orphans = self._query_one("SELECT COUNT(*) FROM passages WHERE aid NOT IN (SELECT aid FROM articles)")
        except sqlite3.DatabaseError as exc:
            return [f"{self.path.name}: {exc}"]
        problems = [f"{self.path.name}: {r[0]}" for r in rows if r[0] != "ok"]
        if orphans and orphans[0]:
            problems.append(f"{_int(orphans[0])} passages belong to no article")
        problems += self._lexical_problems()
        return problems

    def _lexical_problems(self) -> list[str]:
        """The BM25 tables must index exactly the stored articles and passages."""
        conn = self._conn()
        problems: list[str] = []
        try:
            if not self.read_only:  # written as an INSERT, which a read-only connection refuses; the counts below stay
                with conn:  # end the check's implicit transaction so no lock is kept
                    conn.execute("INSERT INTO passages_fts(passages_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError as exc:
            problems.append(f"passage BM25 index disagrees with the passages: {exc}")
        for table, fts in (("articles", "articles_fts"), ("passages", "passages_fts")):
            try:
                indexed = conn.execute(f"SELECT COUNT(*) FROM {fts}_docsize").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                problems.append(f"{fts}: {exc}")
                continue
            stored = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            if indexed != stored:
                problems.append(f"BM25 index holds {indexed} {table}, SQLite {stored}")
        return problems

    def cursor_secret(self) -> bytes | None:
        """A cursor key (search/ranking/paging.py) for an index whose manifest predates them: made once, by the first
        writable open that asks, in the meta table every process of this index reads; None where none is kept and
        this store is read-only."""
        with contextlib.suppress(sqlite3.OperationalError), self._conn() as conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('cursor_key', ?)", (secrets.token_hex(32),))
        row = self._query_one("SELECT value FROM meta WHERE key = 'cursor_key'")
        return bytes.fromhex(str(row[0])) if row else None

    def _query_one(self, sql: str, params: tuple[object, ...] = ()) -> Row | None:
        try:
            row: Row | None = self._conn().execute(sql, params).fetchone()
        except sqlite3.DatabaseError as exc:
            raise IndexCorrupt(f"{self.path.name}: {exc}") from None
        return row


@contextlib.contextmanager
def _disk_full_is_storage_error(path: Path) -> Iterator[None]:
    """SQLite's "database or disk is full" (the transaction rolled back: nothing was written) as a ``StorageError``,
    which the API answers as a JSON 507 and the CLI as one line, instead of an unexpected error."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
            raise
        raise StorageError(f"{path.name}: {exc}; nothing was written") from None


def metadata_key(date: str | None, source: str | None, url: str | None, tags: Sequence[str], extra: JSONObject) -> str:
    """An article's metadata as one comparable string, serialised as the store serialises it (``default=str``), so
    a source record and its stored row compare equal when nothing changed."""
    return json.dumps([date, source, url, list(tags), json.loads(json.dumps(extra, default=str))], sort_keys=True)


# Rows per multi-row INSERT at most (also bounded by SQLite's variable limit): statements of a few hundred rows
# parse in well under a millisecond and a write's rows take one or two of them.
INSERT_CHUNK_ROWS = 500


def _insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[object]]) -> None:
    """``head VALUES (...), (...), ...``: the rows inserted, in order, by a few multi-row statements.

    Why not ``executemany``: it steps its statement once per row, and Python's sqlite3 gives the GIL up around each
    step and takes it back after. Beside a thread running Python (a search, in the serving process) each take-back
    waits up to the interpreter's switch interval (5 ms), so 3,000 rows that insert in 8.8 ms alone took 2.7 s
    beside a busy thread, and a 10-article write beside searches took seconds (bench/README.md, "Search p99 beside
    writes over HTTP"). One statement is one step: 17 ms for the same rows beside the same thread. SQLite inserts
    the rows one by one, in order, and fires the same triggers (FTS5) for each, as before."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, min(INSERT_CHUNK_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    marks = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        conn.execute(f"{head} VALUES {', '.join([marks] * len(chunk))}", [v for row in chunk for v in row])


def _next_key(conn: sqlite3.Connection, sql: str) -> int:
    """The key SQLite gives the next row of a rowid table: its largest key + 1 (1 when empty)."""
    row = conn.execute(sql).fetchone()
    return int(row[0]) + 1 if row and row[0] is not None else 1


def _blob(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype=np.float32).tobytes()


def _sentences(spans: str | None, vectors: bytes | None, dimension: int | None) -> SentenceVectors | None:
    if spans is None or vectors is None:
        return None
    pairs = [(int(a), int(b)) for a, b in json.loads(spans)]
    vecs = np.frombuffer(vectors, dtype=np.float16).astype(np.float32).reshape(len(pairs), -1)
    if dimension is not None and vecs.shape[1] != dimension:
        return None
    return pairs, vecs


def _int(value: SQLValue) -> int:
    """A whole-number column (a key, a count, the generation); IndexCorrupt where the file holds something else."""
    if isinstance(value, int | float | str):
        return int(value)
    raise IndexCorrupt(f"the store holds {value!r} where a number belongs")


def _text(value: SQLValue) -> str:
    """A text column (ids, titles, JSON documents)."""
    return value if isinstance(value, str) else str(value)


def _opt_text(value: SQLValue) -> str | None:
    """A text column that may be NULL (a date, a source, a url, an origin)."""
    return None if value is None else _text(value)


def _bytes(value: SQLValue) -> bytes:
    """A BLOB column (a vector); IndexCorrupt where the file holds something else."""
    if isinstance(value, bytes):
        return value
    raise IndexCorrupt(f"the store holds {type(value).__name__} where a vector belongs")


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
