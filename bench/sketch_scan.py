"""An exact range search through the int8 sketch against FAISS's float32 scan (issue 19 acceptance 1).

```sh
.venv/bin/python bench/sketch_scan.py --vectors V.npy [--sizes 10000,20000,50000,109385] [--floors 0.22,0.5]
    [--queries 200] [--out report.json]
.venv/bin/python bench/sketch_scan.py            # seeded random unit vectors, 109,385 x 384
```

For each size (the first N rows of the vectors), an exact base (``IDMap2,Flat``) is written and loaded as a search
loads it (memory-mapped), and each query's ``FaissVectorStore.range`` at each floor is timed (``time.process_time``,
one thread, median) twice in the same run, interleaved query by query: FAISS's own range search over the float32
codes (the baseline), and the sketch's candidates rescored by FAISS's kernel (search/vectors/sketch.py); then the
same for ``matches`` (what a search calls: every hit's id, the best 200 scored), where the sketch scores only the
candidates near the floor and those that may be among the best. Every answer is compared: the ids and the score
floats must be equal, or the run fails. Also reported: the candidates rescored
per query against the hits, the sketch's build seconds and bytes. Queries are rows of the vectors, perturbed, so each
has near neighbours as a real query has. The CPU flags are printed beside the figures (MLAS picks its int8 kernel
by them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from archive import cpu_flags  # noqa: E402
from scan_floor import unit  # noqa: E402

from search.vectors.faiss import FaissVectorStore  # noqa: E402

T = TypeVar("T")
BEST = 200  # the best hits a search keeps scored (the candidates setting's default)


def clocked(into: list[float], call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``, its CPU milliseconds appended to ``into``."""
    start = time.process_time()
    out = call(*args)
    into.append((time.process_time() - start) * 1000)
    return out


def one_size(vectors: np.ndarray, queries: np.ndarray, floors: list[float], work: Path) -> dict[str, Any]:
    n, d = vectors.shape
    path = work / f"base-{n}.faiss"
    FaissVectorStore.build(d, "IDMap2,Flat", [(np.arange(n, dtype=np.int64), vectors)]).save(path)
    store = FaissVectorStore.load(path, "IDMap2,Flat")
    started = time.perf_counter()
    store.range(queries[0], floors[0])  # starts the sketch's build (none below SKETCH_FROM)
    sketched = store.wait_for_sketch(600)
    build_s = time.perf_counter() - started
    held = store._sketch
    out: dict[str, Any] = {
        "vectors": n,
        "sketched": sketched,
        "sketch_build_s": round(build_s, 3),
        "sketch_mib": round(held.nbytes / 2**20, 1) if held is not None else 0.0,
    }
    for floor in floors:
        flat_ms: list[float] = []
        sketch_ms: list[float] = []
        flat_best_ms: list[float] = []
        best_ms: list[float] = []
        hits, candidates = [], []
        for q in queries:
            saved, store._sketch = store._sketch, None
            want = clocked(flat_ms, store.range, q, floor)
            want_best = clocked(flat_best_ms, store.matches, q, floor, BEST)
            store._sketch = saved
            got = clocked(sketch_ms, store.range, q, floor)
            got_best = clocked(best_ms, store.matches, q, floor, BEST)
            if got[1].tolist() != want[1].tolist() or got[0].tobytes() != want[0].tobytes():
                raise SystemExit(f"the sketch's answer differs from FAISS's at {n} vectors, floor {floor}")
            if (
                sorted(got_best.ids.tolist()) != sorted(want_best.ids.tolist())
                or got_best.best_ids.tolist() != want_best.best_ids.tolist()
                or got_best.best_scores.tobytes() != want_best.best_scores.tobytes()
            ):
                raise SystemExit(f"the sketch's matches differ from FAISS's at {n} vectors, floor {floor}")
            hits.append(len(want[1]))
            if held is not None:
                candidates.append(len(held.sketch.candidates(q, floor)))
        flat, fast = float(np.median(flat_ms)), float(np.median(sketch_ms))
        flat_best, fast_best = float(np.median(flat_best_ms)), float(np.median(best_ms))
        out[f"floor_{floor}"] = {
            "flat_ms": round(flat, 3),
            "sketch_ms": round(fast, 3),
            "ratio": round(fast / flat, 3),
            "matches_flat_ms": round(flat_best, 3),
            "matches_sketch_ms": round(fast_best, 3),
            "matches_ratio": round(fast_best / flat_best, 3),
            "hits_mean": round(float(np.mean(hits)), 1),
            "candidates_mean": round(float(np.mean(candidates)), 1) if candidates else None,
            "identical": True,
        }
        print(json.dumps({"vectors": n, "floor": floor, **out[f"floor_{floor}"]}), file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=Path, help="float32 .npy of unit rows (default: seeded random)")
    parser.add_argument("--n", type=int, default=109_385, help="random vectors when --vectors is not given")
    parser.add_argument("--sizes", default="", help="comma-separated prefixes of the vectors (default: all)")
    parser.add_argument("--floors", default="0.22,0.5")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    vectors = unit(np.load(args.vectors) if args.vectors is not None else rng.normal(size=(args.n, 384)))
    sizes = [int(s) for s in args.sizes.split(",") if s] or [len(vectors)]
    floors = [float(f) for f in args.floors.split(",")]
    picked = rng.choice(min(sizes), args.queries, replace=False)
    queries = unit(vectors[picked] + rng.normal(scale=0.02, size=(args.queries, vectors.shape[1])))
    report: dict[str, Any] = {"cpu_flags": cpu_flags(), "vectors": str(args.vectors or "random"), "sizes": []}
    with tempfile.TemporaryDirectory(prefix="sketch-scan-") as work:
        for n in sizes:
            report["sizes"].append(one_size(np.ascontiguousarray(vectors[:n]), queries, floors, Path(work)))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
