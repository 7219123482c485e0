"""How many IVF lists a search must probe as the archive grows (issue 17): recall@10 of ``IVF{nlist},Flat`` by the
share of its lists probed, on question queries, over prefixes of an index's stored passage vectors.

    .venv/bin/python bench/probes.py --index /tmp/archive/archive-26671 --sizes 109000,400000

The tuning sample behind ``faiss_ann_probe_share`` (search/settings.py). Queries are RealTime QA questions
``--first`` .. ``--first + --queries`` (1000-1199 by default: disjoint from the 200 that bench/archive.py times and
the 50 it measures recall on), embedded with bench/archive.py's hash vectors as that index was. Each size takes the
first N stored vectors (the oldest articles), builds the index as newsdesk does (``FaissVectorStore.build``: a
seeded k-means sample, nlist from ``ivf_lists``), and counts a returned passage as found when its exact score reaches
the exact 10th score less 1e-5 (bench/archive.py's ``quality_phase`` measure, so ties count).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from archive import DATA, HashVectorEmbedder, load_questions  # noqa: E402

from search.storage.index import SQLITE  # noqa: E402
from search.storage.store import Store  # noqa: E402
from search.vectors.faiss import FaissVectorStore, ivf_lists  # noqa: E402

SHARES = (1 / 32, 1 / 16, 3 / 32, 1 / 8, 3 / 16, 1 / 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True, help="a newsdesk index built with hash vectors")
    ap.add_argument("--sizes", default="109000,400000", help="comma-separated prefix sizes")
    ap.add_argument("--data", type=Path, default=DATA, help="the RealTime QA directory (its questions)")
    ap.add_argument("--first", type=int, default=1000, help="first question used (default 1000)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    questions = load_questions(args.data, args.first + args.queries)[args.first :]
    queries = HashVectorEmbedder().encode(questions).astype(np.float32)
    store = Store(args.index / SQLITE)
    parts_i, parts_v, have = [], [], 0
    try:
        for ids, vecs in store.iter_vectors("passages"):
            parts_i.append(ids)
            parts_v.append(np.asarray(vecs, np.float32))
            have += len(ids)
            if have >= max(sizes):
                break
    finally:
        store.close()
    all_ids, all_vecs = np.concatenate(parts_i), np.concatenate(parts_v)
    rows = []
    for n in sizes:
        ids, vecs = all_ids[:n], all_vecs[:n]
        exact = queries @ vecs.T
        kth = -np.sort(-exact, axis=1)[:, 9]
        nlist = ivf_lists(n)
        started = time.perf_counter()
        index = FaissVectorStore.build(vecs.shape[1], f"IVF{nlist},Flat", [(ids, vecs)])
        build_s = time.perf_counter() - started
        position = {int(i): j for j, i in enumerate(ids)}
        for share in SHARES:
            nprobe = max(1, round(nlist * share))
            index.set_search_params(f"nprobe={nprobe}")
            _, found = index.search(queries, 10)
            recall = np.mean(
                [
                    sum(exact[q, position[int(i)]] >= kth[q] - 1e-5 for i in row if i >= 0) / 10
                    for q, row in enumerate(found)
                ]
            )
            row = {"n": n, "nlist": nlist, "share": share, "nprobe": nprobe, "recall_at_10": round(float(recall), 4)}
            rows.append({**row, "build_s": round(build_s, 1)})
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"index": str(args.index), "rows": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
