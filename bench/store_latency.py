"""Single-query search latency of the vector stores, FAISS against Milvus Lite, in one process, one command.

    .venv/bin/python bench/store_latency.py --sizes 10000 50000 --out bench/results/store-latency.json

For each size: seeded random unit vectors (384-d), one FAISS ``IDMap2,Flat`` store and Milvus Lite collections
(FLAT and HNSW M=32, ef=128) in a temporary directory, filled the way ``newsdesk index`` fills them; then the same
``--queries`` single-vector searches (k=10) against each, after one warm-up. Reports build seconds, p50/p99 ms and
each Milvus figure's ratio to FAISS's p50 in the same run. It feeds the capacity model in ``docs/scale-out.md``:
Milvus Lite is the tests' stand-in for a Milvus server, and this says how far it can stand in.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scifact import git_commit, loadavg, write_report  # noqa: E402

DIM = 384
MILVUS = (("FLAT", None, None), ("HNSW", {"M": 32, "efConstruction": 200}, {"ef": 128}))


def _latencies(search: Any, queries: np.ndarray) -> dict[str, float]:
    search(queries[:1])  # warm-up: first-call costs (collection load, caches) are not a query's
    ms = []
    for q in queries:
        started = time.perf_counter()
        search(q[None])
        ms.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def measure(n: int, queries: int, seed: int = 0) -> dict[str, Any]:
    import faiss as faiss_module

    from search.vectors.faiss import FaissVectorStore
    from search.vectors.milvus.vectors import MilvusConnection, build_store

    faiss_module.omp_set_num_threads(1)  # as the search service runs it (search_threads=1): one query, one thread
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    asked = vectors[rng.choice(n, queries)] + np.float32(0.01)
    batches = [(ids[i : i + 5000], vectors[i : i + 5000]) for i in range(0, n, 5000)]
    out: dict[str, Any] = {"vectors": n}
    started = time.perf_counter()
    faiss = FaissVectorStore.build(DIM, "IDMap2,Flat", batches)
    out["faiss_flat"] = {"build_s": round(time.perf_counter() - started, 2)}
    out["faiss_flat"] |= _latencies(lambda q: faiss.search(q, 10), asked)
    with tempfile.TemporaryDirectory() as tmp:
        connection = MilvusConnection(str(Path(tmp) / "bench.db"), Path(tmp))
        try:
            for index_type, params, search in MILVUS:
                started = time.perf_counter()
                store = build_store(connection, f"bench_{index_type.lower()}", DIM, batches, index_type, params, search)
                row = {"build_s": round(time.perf_counter() - started, 2)}
                row |= _latencies(lambda q, s=store: s.search(q, 10), asked)
                row["p50_vs_faiss_flat"] = round(row["p50_ms"] / out["faiss_flat"]["p50_ms"], 2)
                out[f"milvus_lite_{index_type.lower()}"] = row
        finally:
            connection.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "store-latency.json")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "benchmark": "vector-store-latency",
        "command": [sys.executable, *sys.argv],
        "git_commit": git_commit(),
        "loadavg_1min_start": loadavg(),
        "sizes": [],
    }
    for n in args.sizes:
        print(f"store_latency: {n} vectors ...", file=sys.stderr)
        report["sizes"].append(measure(n, args.queries))
    report["loadavg_1min_end"] = loadavg()
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
