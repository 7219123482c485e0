"""What a query's scan of every passage vector could cost with quantised codes (issue 19, acceptance 1's floor).

```sh
.venv/bin/python bench/scan_floor.py [--vectors V.npy] [--n 109385] [--queries 200] [--out report.json]
```

The exact float32 scan of 109k passages (``IndexFlatIP``: 168 MB read per query) alone costs 1.3-1.6x the query's
embedding (bench/README.md "Search CPU near its floor"), so a dense search cannot reach 1.5x its embedding while it
scans float32. This times, on one thread and the same queries, the scans a quantised prefilter would use instead,
each as a ratio of the float32 scan in the same run:

- ``flat``: ``IndexFlatIP`` top 100 (the baseline);
- ``sq8``: ``IndexScalarQuantizer`` 8-bit codes, inner product, top 100 (a quarter of the bytes);
- ``sq8_rescored``: ``sq8`` top ``--shortlist`` then their float32 vectors scored exactly (what a prefilter with
  exact rescoring costs), top 100;
- ``binary_rescored``: sign bits (``IndexBinaryFlat``, 48 bytes a 384-d vector) top ``--shortlist`` by Hamming
  distance, rescored exactly, top 100.

Recall@10 of each against ``flat``. Vectors: ``--vectors`` (a float32 ``.npy`` of unit rows, e.g. an index's
passage vectors) or, by default, seeded random unit vectors, on which the speed is representative and the recall
is a worst case (real embeddings cluster; random ones have no structure for sign bits to keep). Queries are rows of
the vectors, perturbed, so each has near neighbours as a real query has. Prints the CPU flags beside the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from archive import cpu_flags  # noqa: E402

K = 100


def unit(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), dtype=np.float32)


def timed(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[float, np.ndarray]:
    """Median CPU milliseconds of ``search`` over the queries one at a time, and its top ids per query."""
    search(queries[:1])  # warm
    took, tops = [], []
    for q in queries:
        start = time.process_time()
        tops.append(search(q[None, :]))
        took.append((time.process_time() - start) * 1000)
    return float(np.median(took)), np.stack(tops)


def rescored(vectors: np.ndarray, shortlist: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def search(q: np.ndarray) -> np.ndarray:
        ids = shortlist(q)
        scores = vectors[ids] @ q[0]
        return ids[np.argsort(-scores, kind="stable")[:K]]

    return search


def recall_at_10(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g[:10]) & set(w[:10])) / 10 for g, w in zip(got, want, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=Path, help="a float32 .npy of unit vectors (default: random)")
    parser.add_argument("--n", type=int, default=109_385, help="random vectors (default: the 110k index's count)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--shortlist", type=int, default=1000, help="candidates a prefilter hands to rescoring")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)  # a search runs on one thread (search_threads)
    rng = np.random.default_rng(0)
    if args.vectors:
        vectors = unit(np.load(args.vectors).astype(np.float32))
        source = str(args.vectors)
    else:
        vectors = unit(rng.standard_normal((args.n, args.dim)).astype(np.float32))
        source = f"random unit vectors, seed 0, {args.n} x {args.dim}"
    n, dim = vectors.shape
    picked = rng.choice(n, size=args.queries, replace=False)
    queries = unit(vectors[picked] + 0.05 * rng.standard_normal((args.queries, dim)).astype(np.float32))

    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    sq8 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(vectors)
    sq8.add(vectors)
    binary = faiss.IndexBinaryFlat(dim)
    binary.add(np.packbits(vectors > 0, axis=1))

    def top(index: Any, k: int) -> Callable[[np.ndarray], np.ndarray]:
        return lambda q: index.search(q, k)[1][0]

    def hamming(q: np.ndarray) -> np.ndarray:
        ids: np.ndarray = binary.search(np.packbits(q > 0, axis=1), args.shortlist)[1][0]
        return ids

    methods: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "flat": top(flat, K),
        "sq8": top(sq8, K),
        "sq8_rescored": rescored(vectors, top(sq8, args.shortlist)),
        "binary_rescored": rescored(vectors, hamming),
    }
    results: dict[str, Any] = {}
    baseline_ms, exact = timed(methods["flat"], queries)
    for name, search in methods.items():
        ms, got = (baseline_ms, exact) if name == "flat" else timed(search, queries)
        results[name] = {
            "cpu_ms_p50": round(ms, 3),
            "ratio_to_flat": round(ms / baseline_ms, 3),
            "recall_at_10": round(recall_at_10(got, exact), 4),
        }
    report = {
        "benchmark": "bench/scan_floor.py",
        "cpu_flags": cpu_flags(),
        "faiss": faiss.__version__,
        "vectors": source,
        "passages": n,
        "queries": args.queries,
        "shortlist": args.shortlist,
        "methods": results,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
