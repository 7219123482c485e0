"""What a 10-article write spends on the article catalog and on labelling, on built indexes of two sizes.

    .venv/bin/python bench/write_labels.py /tmp/archive/archive-3000 /tmp/archive/archive-26671 \
        --out bench/results/write_labels.json

Each index (built by ``bench/archive.py``, hash vectors) is opened read-only in memory in its own process, one after
the other; nothing is written. Per round, on 10 articles of the RealTime QA corpus given new ids:

- ``labelled_ms``: ``indexer.update._labelled`` (story and duplicate labels of the rows, as a write gives them
  before its commit: ``label_new`` with the duplicate fingerprints loaded from the index's cache);
- ``updated_ms``: ``ArticleCatalog.updated`` for a write that deleted 10 random stored articles and added the 10,
  reading the changed rows from an in-memory view of the store as it would be after the commit;
- ``rebuild_ms``: the baseline in the same run, ``ArticleCatalog.of`` over every row after that write (what
  ``updated`` cost before it kept its maps: the constructor over every article).

Medians over ``--rounds`` (and minimums: the machine's load swings medians); ``ratios``: the largest index over the
smallest, and rebuild over updated per index. The machine is shared: ``load_average`` and the CPU flags are
recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from archive import DATA, HashVectorEmbedder, cpu_flags, read_articles  # noqa: E402

from indexer.build import make_chunker, new_articles  # noqa: E402
from indexer.update import _labelled  # noqa: E402
from search.news.grouping import load_duplicates  # noqa: E402
from search.ranking.catalog import ArticleCatalog  # noqa: E402
from search.settings import Settings  # noqa: E402
from search.storage.index import open_index  # noqa: E402
from search.storage.store import CatalogRow, Store  # noqa: E402


class AfterWrite:
    """The store as it reads after a write that deleted ``gone`` and added ``new`` (catalog rows and labels by
    key), without writing it: what ``ArticleCatalog.updated`` and ``load`` read."""

    def __init__(
        self, store: Store, gone: Iterable[int], new: dict[int, CatalogRow], labels: dict[int, tuple[str, str]]
    ):
        self.store, self.gone, self.new, self.labels = store, set(gone), new, labels

    def catalog_rows(self, aids: Iterable[int] | None = None) -> list[CatalogRow]:
        keys = [r[0] for r in self.store.catalog_rows()] + list(self.new) if aids is None else list(aids)
        stored = [a for a in keys if a not in self.new and a not in self.gone]
        return sorted(
            (self.store.catalog_rows(stored) if stored else []) + [self.new[a] for a in keys if a in self.new]
        )

    def groups(self) -> dict[int, tuple[str, str]]:
        return self.groups_of([r[0] for r in self.catalog_rows()])

    def groups_of(self, aids: Iterable[int]) -> dict[int, tuple[str, str]]:
        keys = list(aids)
        out = self.store.groups_of([a for a in keys if a not in self.new and a not in self.gone])
        out.update({a: self.labels[a] for a in keys if a in self.labels})
        return out

    def passage_text_rows(self, ids: Iterable[int] | None = None) -> Iterator[tuple[int, str]]:
        return iter(())  # the catalog reads no texts

    def article_text_rows(self, aids: Iterable[int] | None = None) -> Iterator[tuple[int, str, list[str]]]:
        return iter(())


def _median_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 2)


def _min_ms(seconds: list[float]) -> float:
    return round(min(seconds) * 1000, 2)


def measure(directory: Path, rounds: int) -> dict[str, object]:
    """One index's figures (run in a process of its own)."""
    embedder = HashVectorEmbedder()
    settings = Settings(index_dir=directory)
    index = open_index(directory, embedder)
    store, catalog = index.sqlite, index.catalog
    dedup = load_duplicates(directory, store, catalog)
    source = [a for a in read_articles(DATA, 10 * rounds + 40) if a.paragraphs]
    rng = random.Random(7)
    top = int(catalog.aids.max())
    labelled: list[float] = []
    updated: list[float] = []
    rebuilt: list[float] = []
    for r in range(rounds):
        batch = [replace(a, id=f"bench-{r}-{a.id}") for a in source[r * 10 : (r + 1) * 10]]
        rows, _ = new_articles(batch, make_chunker(settings, embedder), embedder, settings, {})
        t = time.perf_counter()
        rows = _labelled(index, dedup, [b.id for b in batch], rows)
        labelled.append(time.perf_counter() - t)
        for b in batch:
            dedup.remove(b.id)
        gone = rng.sample(catalog.aids.tolist(), 10)
        keys = range(top + 1, top + 1 + len(rows))
        new = {
            k: (k, w.article.date, w.article.source, tuple(w.article.tags), w.article.id)
            for k, w in zip(keys, rows, strict=True)
        }
        after = AfterWrite(
            store, gone, new, {k: (str(w.story), str(w.duplicates)) for k, w in zip(keys, rows, strict=True)}
        )
        t = time.perf_counter()
        catalog.updated(after, gone, list(new))
        updated.append(time.perf_counter() - t)
        all_rows, groups = after.catalog_rows(), after.groups()
        t = time.perf_counter()
        ArticleCatalog.of(all_rows, groups)
        rebuilt.append(time.perf_counter() - t)
    return {
        "index": str(directory),
        "articles": len(catalog),
        "passages": int(index.manifest.get("counts", {}).get("passages", 0)),
        "labelled_ms": _median_ms(labelled),
        "updated_ms": _median_ms(updated),
        "rebuild_ms": _median_ms(rebuilt),
        "min_ms": {"labelled": _min_ms(labelled), "updated": _min_ms(updated), "rebuild": _min_ms(rebuilt)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("indexes", nargs="+", type=Path, help="built index directories, smallest first")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child measuring one index
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.indexes[0], args.rounds)))
        return
    load_before = os.getloadavg()[0]
    sizes = []
    for directory in args.indexes:
        cmd = [sys.executable, __file__, str(directory), "--rounds", str(args.rounds), "--one"]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        sizes.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(sizes[-1]), file=sys.stderr)
    small, large = sizes[0], sizes[-1]
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "sizes": sizes,
        "ratios": {
            "articles": round(large["articles"] / small["articles"], 2),
            **{
                f"{k}_large_over_small": round(large[k] / small[k], 2)
                for k in ("labelled_ms", "updated_ms", "rebuild_ms")
            },
            **{f"rebuild_over_updated_{s['articles']}": round(s["rebuild_ms"] / s["updated_ms"], 1) for s in sizes},
        },
        "cpu": {"cores": os.cpu_count(), "flags": cpu_flags()},
        "load_average": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
