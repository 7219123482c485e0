"""Search p99 while this process's writer writes, against its p99 without writes (issue 17, acceptance 2), on one
built index: ``bench/archive.py``'s ``writes_under_load`` called alone, without the rest of the archive benchmark.

Writes go to the index, so give it a copy (``cp -rL /tmp/archive/archive-3000 /tmp/you/idx``):

    PYTHONPATH=. .venv/bin/python bench/write_lock.py /tmp/you/idx --seconds 30

The writes are 10-article batches added and deleted through ``indexer.live.Writer`` (hash vectors: the embedding is
``HashVectorEmbedder``, as the archive was built). The figures: ``p99_ratio``, with searches and writes counted, and
``write_lock_held_ms``, how long the service's write lock was held each time (p50/p99/max): what a search can wait
behind a write, apart from the CPU that the writer and other processes take from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from archive import (
    TimedEmbedder,
    corpus_articles,
    cpu_flags,
    load_questions,
    percentiles,
    write_batch,
    writes_under_load,
)

from indexer.live import Writer
from search.service import SearchService
from search.settings import Settings
from search.storage.index import open_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path, help="a writable copy of a hash-vector archive index")
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/realtimeqa"))
    parser.add_argument("--size", type=int, default=3000, help="how many articles the index was built from")
    parser.add_argument("--largest", type=int, default=26671, help="the largest size of the archive run")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds alone, then as long with writes")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--warm-writes",
        type=int,
        default=1,
        help="10-article batches added and deleted before the timed phases, as archive.py writes alone first: the "
        "first write after an open copies the memory-mapped FAISS base (seconds at 924k) and may merge segments",
    )
    args = parser.parse_args()
    embedder = TimedEmbedder()
    settings = Settings.from_env(index_dir=args.index)
    service = SearchService(open_index(args.index, embedder), embedder, settings)
    questions = load_questions(args.data, args.queries)
    _, held, _ = corpus_articles(args.data, args.size, args.largest)
    for q in questions:  # every query once: the page cache and the query cache, not the lock, are what differ
        service.search(q, k=10, mode="hybrid")
    writer = Writer(service)
    for n in range(args.warm_writes):
        batch = write_batch(held, n, "warm")
        writer.upsert(batch)
        writer.delete([a.id for a in batch])
    held_s: list[float] = []
    writing = service.lock.writing

    @contextmanager
    def timed_writing() -> Iterator[None]:
        """The service's write lock, timed from when it is taken to when it is let go: how long searches wait at
        most behind one write, whatever else (another agent's CPU load, the writer's saves) slows them."""
        with writing():
            start = time.perf_counter()
            try:
                yield
            finally:
                held_s.append(time.perf_counter() - start)

    service.lock.writing = timed_writing  # type: ignore[method-assign]
    swap_s = time_swaps()
    result = writes_under_load(service, embedder, args.index, held, questions, args.seconds)
    result["write_lock_held_ms"] = {
        **percentiles(held_s),
        "times": len(held_s),
        "max": round(max(held_s, default=0) * 1e3, 2),
        "first": round(held_s[0] * 1e3, 2) if held_s else None,
    }
    if swap_s is not None:  # the rest of a hold: the commit (its fsync), the lock hand-over and wrote()
        result["swap_under_lock_ms"] = {**percentiles(swap_s), "max": round(max(swap_s, default=0) * 1e3, 2)}
    result["cpu_flags"] = cpu_flags()
    service.index.close()
    print(json.dumps(result, indent=1))


def time_swaps() -> list[float] | None:
    """Time indexer/update.py ``_swap`` (the objects swapped in and FAISS updated, under the lock after the commit)
    in the code this runs against; None where it has no such step (the code before the write lock was narrowed)."""
    import indexer.update as update

    swap = getattr(update, "_swap", None)
    if swap is None:
        return None
    spent: list[float] = []

    def timed(*args: object) -> None:
        start = time.perf_counter()
        try:
            swap(*args)
        finally:
            spent.append(time.perf_counter() - start)

    update._swap = timed  # type: ignore[assignment]
    return spent


if __name__ == "__main__":
    main()
