"""What keeping the FTS5 tables in step costs a write: the same writes into two stores, with and without the triggers.

    .venv/bin/python bench/fts_cost.py --data ../shared/data/bbc --out bench/results/fts-cost.json

Every store keeps ``articles_fts`` and ``passages_fts`` (search/storage/store.py) in step with its rows through
triggers, though no query reads them: they are the independent BM25 that the in-memory one (search/text/bm25.py)
is checked against (search/text/fts.py). This measures their price where it is paid, in the write transaction.

Two stores are made the way a build makes one (``Store(create=True)``); the second then drops the four FTS
triggers, so it writes the same rows without the FTS side. Both get the same base of BBC articles in one bulk write
(not timed), then the same timed writes, one transaction each, as ``newsdesk add`` and ``POST /api/articles`` make
them (``replace_articles``): ``--batches`` writes of ``--batch`` new articles, then as many that replace existing
articles by id (delete and insert: FTS5 indexes the old text again to remove it). The two stores take turns, the
first alternating, so drift in the machine's load falls on both. Passages are the articles' paragraphs with random
unit vectors: the model plays no part in what is measured, and an embedding costs far more per article than either
column (bench/embed.py). Reports the median milliseconds per write of each store, their difference per article, the
ratio to the store without FTS in the same run, the database sizes, the command, the commit and the CPU.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cli_latency import cpu  # noqa: E402
from bench.scifact import git_commit, loadavg, write_report  # noqa: E402
from search.models import PARAGRAPH_SEPARATOR, Article  # noqa: E402
from search.storage.store import NewArticle, Store  # noqa: E402

DIM = 384
TRIGGERS = ("articles_fts_insert", "articles_fts_delete", "passages_fts_insert", "passages_fts_delete")


def read_articles(data: Path, limit: int) -> list[Article]:
    """The first ``limit`` BBC articles with at least one paragraph."""
    out: list[Article] = []
    with gzip.open(data / "articles.jsonl.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            paragraphs = tuple(p for p in row["paragraphs"] if p.strip())
            if paragraphs:
                out.append(Article(id=row["id"], title=row["title"], paragraphs=paragraphs))
            if len(out) == limit:
                break
    return out


def new_article(article: Article, rng: np.random.Generator) -> NewArticle:
    """``article`` as a writer hands it to the store: one passage per paragraph, random unit vectors."""
    passages, start = [], 0
    for position, text in enumerate(article.paragraphs):
        passages.append((position, "body", start, start + len(text), text))
        start += len(text) + len(PARAGRAPH_SEPARATOR)
    vectors = rng.standard_normal((len(passages) + 1, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return NewArticle(article, passages, vectors[1:], vectors[0], story=article.id, duplicates=article.id)


def measure(articles: list[Article], base: int, batch: int, batches: int, directory: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    stores = {"with_fts": Store(directory / "with.sqlite3", create=True)}
    stores["without_fts"] = Store(directory / "without.sqlite3", create=True)
    with stores["without_fts"].connection() as conn:
        for trigger in TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger}")
    bulk = [new_article(a, rng) for a in articles[:base]]
    for store in stores.values():
        store.add_articles(bulk)
    fresh = articles[base : base + batch * batches]
    if len(fresh) < batch * batches:
        raise SystemExit(f"fts_cost: need {base + batch * batches} articles, the data has {len(articles)}")
    phases = {
        "add": [fresh[i : i + batch] for i in range(0, len(fresh), batch)],
        "replace": [articles[i : i + batch] for i in range(0, batch * batches, batch)],  # ids already stored
    }
    out: dict[str, Any] = {"base_articles": base, "batch_articles": batch, "writes_per_phase": batches}
    for phase, writes in phases.items():
        ms: dict[str, list[float]] = {name: [] for name in stores}
        for n, group in enumerate(writes):
            items = [new_article(a, rng) for a in group]
            ids = [a.id for a in group] if phase == "replace" else []
            for name in sorted(stores, reverse=bool(n % 2)):
                started = time.perf_counter()
                stores[name].replace_articles(ids, items)
                ms[name].append((time.perf_counter() - started) * 1000)
        with_ms, without_ms = statistics.median(ms["with_fts"]), statistics.median(ms["without_fts"])
        out[phase] = {
            "with_fts_ms": round(with_ms, 2),
            "without_fts_ms": round(without_ms, 2),
            "fts_ms_per_article": round((with_ms - without_ms) / batch, 3),
            "with_vs_without": round(with_ms / without_ms, 2),
        }
    for name, store in stores.items():
        store.close()
        out[f"{name}_mb"] = round((directory / f"{name.split('_')[0]}.sqlite3").stat().st_size / 2**20, 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "bbc")
    parser.add_argument("--base", type=int, default=1500, help="articles stored before the timed writes")
    parser.add_argument("--batch", type=int, default=20, help="articles per write (tests/test_crash.py adds 20)")
    parser.add_argument("--batches", type=int, default=30, help="timed writes per phase (add, replace)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fts-cost.json")
    args = parser.parse_args(argv)
    articles = read_articles(args.data, args.base + args.batch * args.batches)
    report: dict[str, Any] = {
        "benchmark": "fts-maintenance-cost",
        "command": [sys.executable, *sys.argv],
        "git_commit": git_commit(),
        "cpu": cpu(),
        "loadavg_1min_start": loadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        report |= measure(articles, args.base, args.batch, args.batches, Path(tmp))
    report["loadavg_1min_end"] = loadavg()
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
