"""What the SQLite side of a 10-article write costs, driven on the Store alone: one copy of an index's database.

    cp /tmp/archive/archive-26671/newsdesk.sqlite /tmp/sqlite/s924.sqlite    # a copy: this script writes to it
    .venv/bin/python bench/sqlite_write.py /tmp/sqlite/s109.sqlite /tmp/sqlite/s924.sqlite --rounds 8 --cold

Issue 17 measured a 10-article ``add_articles`` at 924k passages spending 0.52 s in ``Store.replace_articles``
against far less at 109k. This times that call alone, as ``indexer.update.add_articles`` makes it (the same
delete-then-insert of the ids in one transaction, labels and origin set), then the delete of the same ids, for
``--rounds`` rounds of 10 RealTime QA articles (chunked by the indexer's own chunker, hash vectors from
bench/archive.py: the model plays no part in what SQLite does). Each database is opened in a fresh process; the
first round after the open (cold SQLite page cache; with ``--cold`` the OS page cache of the file is also dropped
first, by ``posix_fadvise(DONTNEED)``, since /proc/sys/vm/drop_caches is not writable here) is reported apart
from the min and median of the later rounds. Wall time on a shared 2-core machine is mostly waiting for a core, so
each add is also split (from /proc/thread-self/schedstat) into the writing thread's time on a CPU (SQLite's own
work, FTS5 included), its time runnable but queued for a core, and the rest, blocked (page reads, fsync).
Every round's writes are deleted again, so the copy ends as it began
(apart from the change log's rows and the generation). Prints one JSON object per database, then the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "realtimeqa"
ARTICLES = 10


def drop_file_cache(path: Path) -> None:
    """Evict the file's (clean) pages from the OS page cache, the nearest thing to a cold start allowed here."""
    for p in (path, path.with_name(path.name + "-wal")):
        if p.exists():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def schedstat() -> tuple[float, float]:
    """This thread's seconds on a CPU and seconds runnable but waiting for one (/proc/thread-self/schedstat)."""
    with open("/proc/thread-self/schedstat") as fh:
        on_cpu, queued, _ = fh.read().split()
    return int(on_cpu) / 1e9, int(queued) / 1e9


def one(path: Path, rounds: int, cold: bool, data: Path) -> dict[str, Any]:
    """Time ``rounds`` add+delete rounds on the database at ``path`` (in this process)."""
    from bench.archive import HashVectorEmbedder, read_articles
    from indexer.build import make_chunker, new_articles
    from search.settings import Settings
    from search.storage.store import Store

    emb = HashVectorEmbedder()
    settings = Settings()
    src = [a for a in read_articles(data, ARTICLES * rounds + 20) if a.paragraphs][: ARTICLES * rounds]
    chunker = make_chunker(settings, emb)
    batches = []
    for r in range(rounds):
        arts = [replace(a, id=f"sqlw-{r}-{a.id}") for a in src[r * ARTICLES : (r + 1) * ARTICLES]]
        rows, _ = new_articles(arts, chunker, emb, settings)
        batches.append([replace(x, story=x.article.id, duplicates=x.article.id, origin="add") for x in rows])
    if cold:
        drop_file_cache(path)
    t = time.perf_counter()
    store = Store(path)
    store.counts()
    open_s = time.perf_counter() - t
    adds: list[float] = []
    add_cpu: list[float] = []
    add_queued: list[float] = []  # runnable but waiting for a core
    add_blocked: list[float] = []  # neither: waiting on I/O (page reads, fsync) or a lock
    deletes: list[float] = []
    passages = 0
    for batch in batches:
        ids = [x.article.id for x in batch]
        c, q, t = *schedstat(), time.perf_counter()
        store.replace_articles(ids, batch)
        adds.append(time.perf_counter() - t)
        c2, q2 = schedstat()
        add_cpu.append(c2 - c)
        add_queued.append(q2 - q)
        add_blocked.append(max(adds[-1] - add_cpu[-1] - add_queued[-1], 0.0))
        t = time.perf_counter()
        store.replace_articles(ids, ())
        deletes.append(time.perf_counter() - t)
        passages += sum(len(x.passages) for x in batch)
    articles, total = store.counts()
    store.close()

    def ms(xs: list[float]) -> dict[str, float]:
        return {"min": round(min(xs) * 1000, 1), "median": round(statistics.median(xs) * 1000, 1)}

    return {
        "db": str(path),
        "passages": total,
        "articles": articles,
        "open_ms": round(open_s * 1000, 1),
        "passages_per_write": passages / rounds,
        "first_add_ms": round(adds[0] * 1000, 1),
        "first_delete_ms": round(deletes[0] * 1000, 1),
        "later_add_ms": ms(adds[1:]),
        "later_add_cpu_ms": ms(add_cpu[1:]),
        "add_cpu_total_ms": round(sum(add_cpu) * 1000, 1),
        "later_add_queued_ms": ms(add_queued[1:]),
        "later_add_blocked_ms": ms(add_blocked[1:]),
        "later_delete_ms": ms(deletes[1:]),
        "adds_ms": [round(x * 1000, 1) for x in adds],
        "deletes_ms": [round(x * 1000, 1) for x in deletes],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dbs", nargs="+", type=Path, help="copies of newsdesk.sqlite (written to)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--cold", action="store_true", help="drop the file's OS page cache before opening")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.dbs[0], args.rounds, args.cold, args.data)))
        return
    results = []
    for db in args.dbs:
        cmd = [sys.executable, __file__, str(db), "--rounds", str(args.rounds), "--data", str(args.data), "--child"]
        out = subprocess.run(cmd + (["--cold"] if args.cold else []), check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if len(results) > 1:
        first, last = results[0], results[-1]

        def ratio(key: str, sub: str | None = None) -> float:
            a, b = first[key], last[key]
            if sub is not None:
                a, b = a[sub], b[sub]
            return round(float(b) / float(a), 2)

        report = {
            "later_add_median_ratio": ratio("later_add_ms", "median"),
            "later_add_cpu_median_ratio": ratio("later_add_cpu_ms", "median"),
            "add_cpu_total_ratio": ratio("add_cpu_total_ms"),
            "first_add_ratio": ratio("first_add_ms"),
            "command": " ".join(sys.argv),
            "cpu": platform.processor() or platform.machine(),
            "loadavg": os.getloadavg(),
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main()
