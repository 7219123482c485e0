"""Online backups: ``newsdesk backup --index DIR OUT`` while servers write, ``newsdesk restore OUT --index DIR``.

SQLite is the index's source of truth, so a backup is its store copied by SQLite's online backup API
(``sqlite3.Connection.backup``): one step under a read transaction, which in WAL mode never blocks a writer, gives a
snapshot of exactly the transactions committed when it began, so every write acknowledged before the backup started
is in it and no write is half in it. Beside it go the manifest (the model, the settings the index was built with)
and ``backup.json`` (what the snapshot holds). The derived caches (vectors, BM25 postings, profiles, duplicate
fingerprints) are optional (``caches=True``): copied under the caches lock, so that no save is half copied, and
stamped with the generation they reflect; the store is then copied, at that generation or later, and a restore
rebuilds what lags it. Without them a restore rebuilds every cache from SQLite.

A backup is written to a temporary directory beside OUT and renamed into place, so OUT is whole or absent; a
restore is an atomic build (``building``): the index at DIR is replaced only once the restored one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

from indexer.update import save_state
from search.errors import IndexCorrupt, IndexMissing, InvalidInput, StaleIndex
from search.storage.files import fsync_path
from search.storage.index import MARKER, SQLITE, building, now_iso, open_index
from search.storage.manifest import MANIFEST, read_manifest, write_manifest
from search.storage.store import CACHES_LOCK, Store

BACKUP_INFO = "backup.json"
BACKUP_TRIES = 5  # a rebuild swapping the index in between the manifest and the store makes a backup start again
_NOT_CACHES = {SQLITE, f"{SQLITE}-wal", f"{SQLITE}-shm", MANIFEST, CACHES_LOCK, MARKER}


@dataclass(frozen=True)
class BackupInfo:
    generation: int
    articles: int
    passages: int
    caches: int  # cache files copied

    def line(self, out: Path) -> str:
        caches = f", {self.caches} cache files" if self.caches else " (caches are rebuilt on restore)"
        return (
            f"backed up generation {self.generation} ({self.articles} articles, {self.passages} passages) to "
            f"{out}{caches}"
        )


def backup(directory: Path, out: Path, *, caches: bool = False) -> BackupInfo:
    """Copy the index at ``directory`` to the new directory ``out`` while it serves and takes writes."""
    out = out.absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"{out} exists and is not an empty directory; a backup goes to a new one")
    link = directory.absolute()
    for _ in range(BACKUP_TRIES):
        real = link.resolve()  # one build's directory, as open_index reads it
        manifest = read_manifest(real)
        work = out.parent / f".{out.name}.backup-{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True)
        try:
            copied = _copy_caches(real, work) if caches else 0
            build = _copy_store(real / SQLITE, work / SQLITE)
            if manifest.get("build", build) != build:
                shutil.rmtree(work)
                continue  # a rebuild replaced the index between the two reads: take the new one whole
            store = Store(work / SQLITE)
            try:
                generation = store.generation()
                n_articles, n_passages = store.counts()
            finally:
                store.close()
            manifest["counts"] = {"articles": n_articles, "passages": n_passages}
            write_manifest(work, manifest)
            info = BackupInfo(generation, n_articles, n_passages, copied)
            text = json.dumps({**vars(info), "build": build, "taken_at": now_iso(), "source": str(real)}, indent=2)
            (work / BACKUP_INFO).write_text(text + "\n", encoding="utf-8")
            for f in work.iterdir():
                fsync_path(f)
            fsync_path(work)
            if out.exists():
                out.rmdir()  # empty, checked above
            os.replace(work, out)
            fsync_path(out.parent)
            return info
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    raise StaleIndex(f"{link} kept being replaced while it was backed up ({BACKUP_TRIES} tries)")


def _copy_store(source: Path, target: Path) -> str:
    """SQLite's online backup of ``source`` into ``target`` in one step (``pages=-1``: one read transaction, so
    one consistent snapshot); returns the build id it holds."""
    if not source.is_file():
        raise IndexMissing(f"{source} is missing")
    src = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True, timeout=30.0)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            row = dst.execute("SELECT value FROM meta WHERE key = 'build'").fetchone()
        finally:
            dst.close()
    except sqlite3.DatabaseError as exc:
        raise IndexCorrupt(f"cannot back up {source}: {exc}") from None
    finally:
        src.close()
    return str(row[0]) if row else ""


def _copy_caches(real: Path, work: Path) -> int:
    """Every derived cache file of the index, under the caches lock (no save writes meanwhile); returns how many."""
    import fcntl

    fd = os.open(real / CACHES_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        n = 0
        for f in sorted(real.iterdir()):
            if f.is_file() and not f.is_symlink() and f.name not in _NOT_CACHES and not f.name.startswith("."):
                shutil.copy2(f, work / f.name)
                n += 1
        return n
    finally:
        os.close(fd)


def restore(backup_dir: Path, directory: Path) -> tuple[int, int, int]:
    """Make the index at ``directory`` (new, empty, or an index, which is replaced atomically) the backup's;
    returns (generation, articles, passages). The caches it lacks or that lag its store are rebuilt from SQLite
    and saved before the swap, so the restored index opens and passes ``newsdesk check`` at once."""
    backup_dir = backup_dir.absolute()
    if not (backup_dir / SQLITE).is_file() or not (backup_dir / MANIFEST).is_file():
        raise InvalidInput(f"{backup_dir} is not a newsdesk backup (no {SQLITE} and {MANIFEST})")
    try:
        conn = sqlite3.connect(f"{(backup_dir / SQLITE).as_uri()}?mode=ro", uri=True)
        try:
            verdict = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise IndexCorrupt(f"{backup_dir / SQLITE} is damaged ({exc}); nothing was restored") from None
    if verdict is None or verdict[0] != "ok":
        raise IndexCorrupt(f"{backup_dir / SQLITE} is damaged ({verdict[0] if verdict else '?'}); nothing restored")
    with building(directory) as work:
        for f in backup_dir.iterdir():
            if f.is_file() and f.name not in (BACKUP_INFO, CACHES_LOCK, MARKER):
                shutil.copy2(f, work / f.name)
        index = open_index(work, None)  # rebuilds what is missing or stale from SQLite
        try:
            save_state(index)  # and writes it, stamped with the store's generation
            generation = index.generation
            n_articles, n_passages = index.sqlite.counts()
        finally:
            index.close()
    return generation, n_articles, n_passages
