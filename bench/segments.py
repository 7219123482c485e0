"""What saving the FAISS caches after a 10-article write costs with vector segments, against the whole-file save.

    .venv/bin/python bench/segments.py --out bench/results/segments.json           # 110k and 1.1M passages
    .venv/bin/python bench/segments.py --sizes 110000 --out bench/results/segments-110k.json

For each size: passage and article vectors (random unit vectors in 384-d: the mechanics of a save do not depend on
the vectors' distribution; one article per 41 passages, the RealTime QA corpus's ratio) in ``IDMap2,Flat`` stores,
saved once as bases in a scratch directory, through ``search.vectors.faiss.FaissVectors`` (what a write's
``save_state`` calls). Then, ``--repeats`` times each:

- ``whole_save_s``: a 10-article write (410 passages added, 10 articles) saved as every write saved before segments:
  both base files rewritten (``FaissVectors.merge``, which writes them whole), with their CRC-32s;
- ``segment_save_s``: the same write saved by ``FaissVectors.save``, which appends one segment per kind;
- ``merge_s``: ``merge`` over 8 segments (what the policy or ``newsdesk optimize`` does);
- ``open_s`` by segment count (0, 4, 8): what ``FaissBackend.open`` does before SQLite's count query: checksum every
  listed file, read the bases, apply the segments.

Reports medians, ``whole_over_segment`` (how many times cheaper a write's save is), the 1.1M/110k ratio of each
figure, the CPU model and flags, and the bytes each save writes. Needs about 2.5x the vectors' size in RAM
(1.1M x 384 x 4 B = 1.6 GiB of vectors) and twice it on disk (``--dir``, default a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cli_latency import cpu  # noqa: E402
from bench.mlt import save  # noqa: E402
from search.storage.manifest import Manifest  # noqa: E402
from search.vectors import faiss as backend  # noqa: E402
from search.vectors.faiss import ARTICLE_FACTORY, FaissVectors, FaissVectorStore  # noqa: E402
from search.vectors.segments import Journal  # noqa: E402

DIMENSION = 384
PASSAGES_PER_ARTICLE = 41  # RealTime QA: 1.1M paragraphs in 26,671 articles
WRITE_ARTICLES = 10


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIMENSION), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def manifest() -> Manifest:
    return {"faiss": {"factory": "IDMap2,Flat", "search": "", "metric": "inner_product", "articles": ARTICLE_FACTORY}}  # type: ignore[typeddict-item]


class Corpus:
    """The in-memory stores, the next free ids, and the generation, as a writer holds them."""

    def __init__(self, directory: Path, passages: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.directory = directory
        articles = max(1, passages // PASSAGES_PER_ARTICLE)
        p = FaissVectorStore.build(DIMENSION, "IDMap2,Flat", self._batches(passages))
        a = FaissVectorStore.build(DIMENSION, ARTICLE_FACTORY, self._batches(articles))
        self.vectors = FaissVectors(p, a)
        self.next_pid, self.next_aid, self.generation = passages, articles, 1
        self.vectors.save(directory, self.generation, manifest())

    def _batches(self, n: int, batch: int = 100_000) -> list[tuple[np.ndarray, np.ndarray]]:
        return [
            (np.arange(start, min(n, start + batch), dtype=np.int64), unit(self.rng, min(n, start + batch) - start))
            for start in range(0, n, batch)
        ]

    def write(self) -> None:
        """A 10-article write applied in memory (what ``apply_changes`` does to the stores), not saved yet."""
        n = WRITE_ARTICLES * PASSAGES_PER_ARTICLE
        self.vectors.passages.add(np.arange(self.next_pid, self.next_pid + n, dtype=np.int64), unit(self.rng, n))
        aids = np.arange(self.next_aid, self.next_aid + WRITE_ARTICLES, dtype=np.int64)
        self.vectors.articles.add(aids, unit(self.rng, WRITE_ARTICLES))
        self.next_pid += n
        self.next_aid += WRITE_ARTICLES
        self.generation += 1

    def timed(self, save: Callable[[Path, int, Manifest], object]) -> float:
        started = time.perf_counter()
        save(self.directory, self.generation, manifest())
        return time.perf_counter() - started

    def segments(self) -> int:
        return sum(len(v) for v in json.loads((self.directory / "vectors.json").read_text())["segments"].values())


def open_time(directory: Path) -> float:
    """``FaissBackend.open``'s work on files it trusts: checksums of every listed file, bases read, segments applied."""
    started = time.perf_counter()
    state = backend._read_state(directory)
    assert backend._intact(directory, state)
    loaded = backend._load(directory, state, manifest())
    assert loaded.passages.count() > 0
    return time.perf_counter() - started


def run_size(passages: int, repeats: int, scratch: Path) -> dict[str, Any]:
    directory = scratch / f"n{passages}"
    directory.mkdir(parents=True)
    started = time.perf_counter()
    corpus = Corpus(directory, passages, seed=passages)
    built_s = time.perf_counter() - started
    base_bytes = sum((directory / n).stat().st_size for n in ("vectors.faiss", "articles.faiss"))
    whole, segment, merge, segment_bytes = [], [], [], []
    opens: dict[int, list[float]] = {0: [], 4: [], 8: []}
    for _ in range(repeats):
        corpus.write()
        whole.append(corpus.timed(corpus.vectors.merge))
        opens[0].append(open_time(directory))
        for n in range(8):
            before = {p.name for p in directory.iterdir()}
            corpus.write()
            segment.append(corpus.timed(corpus.vectors.save))
            new = [p for p in directory.iterdir() if p.name not in before]
            segment_bytes.append(sum(p.stat().st_size for p in new))
            assert corpus.segments() == 2 * (n + 1), "the save merged instead of appending"
            if n + 1 in opens:
                opens[n + 1].append(open_time(directory))
        merge.append(corpus.timed(corpus.vectors.merge))
        assert corpus.segments() == 0
    # the journals are reset by every save: a store never holds a second copy of what is on disk
    assert all(isinstance(s.journal, Journal) and not s.journal.ops for s in (corpus.vectors.passages,))
    med = statistics.median
    figures: dict[str, Any] = {
        "passages": corpus.vectors.passages.count(),
        "articles": corpus.vectors.articles.count(),
        "build_and_first_save_s": round(built_s, 2),
        "base_mib": round(base_bytes / 2**20, 1),
        "whole_save_s": round(med(whole), 4),
        "segment_save_s": round(med(segment), 4),
        "segment_kib": round(med(segment_bytes) / 2**10, 1),
        "whole_over_segment": round(med(whole) / med(segment), 1),
        "merge_8_segments_s": round(med(merge), 3),
        "open_s": {str(n): round(med(t), 3) for n, t in opens.items()},
        "runs": {"whole_save_s": [round(t, 4) for t in whole], "segment_save_s": [round(t, 4) for t in segment]},
    }
    shutil.rmtree(directory)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[110_000, 1_100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    backend._faiss().omp_set_num_threads(2)
    report: dict[str, Any] = {"cpu": cpu(), "dimension": DIMENSION, "write_articles": WRITE_ARTICLES, "sizes": {}}
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        for n in args.sizes:
            report["sizes"][str(n)] = figures = run_size(n, args.repeats, Path(scratch))
            print(json.dumps({str(n): figures}), flush=True)
    sizes = [str(n) for n in args.sizes]
    if len(sizes) == 2:
        small, large = (report["sizes"][s] for s in sizes)
        report["large_over_small"] = {
            key: round(large[key] / small[key], 2) for key in ("whole_save_s", "segment_save_s", "merge_8_segments_s")
        } | {f"open_s_{n}": round(large["open_s"][n] / small["open_s"][n], 2) for n in small["open_s"]}
    print(json.dumps(report, indent=2))
    if args.out:
        save(args.out, report)


if __name__ == "__main__":
    main()
