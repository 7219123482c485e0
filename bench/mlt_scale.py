"""More like this above 50,000 articles: what pooled profiles cost and what they keep of the exact ones, one command.

    .venv/bin/python bench/mlt_scale.py --sizes 50000,100000,250000 --sample 512 \\
        --bbc-index bench/results/mlt/index --out bench/results/mlt_scale.json

Issue 17 ("more like this and related stories above 50,000 articles"). ``search/news/neighbours.py`` builds every
profile exactly (all pairs of articles) up to ``EXACT_ARTICLES`` and pools them above (``PoolConfig``: each article
scored against the articles of the clusters nearest its own). Two parts:

- **cost**, on synthetic corpora of each size (random unit vectors of 384 dimensions and Zipfian term postings,
  about 120 distinct terms an article over a 200,000-term vocabulary; what costs is the shape, not the meaning):
  the pooled build (``NeighbourGraph.build`` with ``DEFAULT_POOL``), the exact build it replaces (all pairs, timed
  on ``--sample`` rows against every article and scaled by ``n / sample``: its cost is linear in the rows at a
  fixed corpus, and a whole run takes hours at 250k), their ratio, the share of the exact profiles' neighbours the
  pooled profiles hold on those sampled rows, a 10-article write and a 10-article delete on the pooled graph (the
  write path ``indexer/update.py`` takes), and the graph's bytes per article. The recall on these corpora is no
  measure of quality: random vectors have no neighbourhoods for clusters to follow (each article's exact
  neighbours are spread over every cluster), so it only shows the pools are not the whole corpus.
- **quality**, on a built BBC News index (``--bbc-index``, ``bench/mlt.py``'s): BBC has 2,225 articles, so the
  pooling is forced with pools scaled to the corpus (``--bbc-pools``: cluster size x clusters each article probes x
  clusters a pool holds at most). A profile holds 160 articles, 7% of BBC, so a pool must hold a large share of it
  (32x16x32: about 1,045 articles, 6.5 profiles' worth) where at 250,000 articles the default pool of 4,096 holds
  25 profiles' worth: BBC is the harder test. The report gives the share of exact neighbours kept and the category
  precision@5 of ``similar()`` (the protocol of ``bench/mlt.py``) with the exact and the pooled profiles, in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.scifact import git_commit, git_dirty, loadavg  # noqa: E402
from bench.slow import cpu_flags  # noqa: E402
from search.news import neighbours  # noqa: E402
from search.news.neighbours import (  # noqa: E402
    DEFAULT_NEIGHBOURS,
    DEFAULT_POOL,
    EXACT_ARTICLES,
    NeighbourGraph,
    PoolConfig,
    _idf,
    _probed,
    _profiles,
    _term_rows,
)
from search.text.bm25 import Postings, Segment  # noqa: E402
from search.vectors.faiss import FaissVectorStore  # noqa: E402

DIMENSION = 384
VOCABULARY = 200_000
TERMS = 120  # term draws an article (fewer distinct after duplicates merge)
WRITE = 10


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, Postings]:
    """Keys 1..n, random unit vectors, and article postings whose term draws follow Zipf's law (rank^-1)."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    p = 1 / np.arange(1, VOCABULARY + 1)
    terms = rng.choice(VOCABULARY, size=n * TERMS, p=p / p.sum()).astype(np.int64)
    docs = np.repeat(np.arange(n, dtype=np.int64), TERMS)
    pairs, counts = np.unique(terms * n + docs, return_counts=True)  # sorted by term, then document
    term_of, doc_of = pairs // n, pairs % n
    indptr = np.zeros(VOCABULARY + 1, dtype=np.int64)
    np.cumsum(np.bincount(term_of, minlength=VOCABULARY), out=indptr[1:])
    tfs = np.zeros((2, len(pairs)), dtype=np.float32)
    tfs[1] = counts
    postings = Postings(  # one base segment, as an index holds its postings after a build or a merge
        Segment(
            rowids=np.arange(1, n + 1, dtype=np.int64),
            lengths=np.full(n, TERMS, dtype=np.float32),
            vocab={f"t{i}": i for i in range(VOCABULARY)},
            indptr=indptr,
            docs=doc_of.astype(np.int32),
            tfs=tfs,
        )
    )
    return np.arange(1, n + 1, dtype=np.int64), vectors, postings


def graph_bytes(graph: NeighbourGraph) -> dict[str, int]:
    """Bytes the graph holds, by part."""

    def csr(m: sp.csr_matrix) -> int:
        return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes)

    extra = sum(int(a.nbytes) for a in (graph.centroids, graph.clusters) if a is not None)
    return {
        "profiles": csr(graph.profiles),
        "inverse": csr(graph.transposed()),
        "terms": csr(graph.terms),
        "keys_idf_clusters": int(graph.keys.nbytes + graph.idf.nbytes) + extra,
    }


def mean_pool(graph: NeighbourGraph, vectors: np.ndarray) -> float:
    """Articles each article is scored against, on average (the pools ``_pooled_profiles`` forms)."""
    assert graph.centroids is not None and graph.clusters is not None
    sizes = np.bincount(graph.clusters, minlength=len(graph.centroids))
    total = 0
    for cluster in np.flatnonzero(sizes):
        mine = np.flatnonzero(graph.clusters == cluster)
        total += len(mine) * int(sizes[_probed(vectors[mine], graph.centroids, int(cluster), graph.pool)].sum())
    return round(total / len(graph.clusters), 1)


def neighbour_recall(got: sp.csr_matrix, exact: sp.csr_matrix, rows: np.ndarray) -> float:
    """Share of the exact profiles' neighbours (the article itself left out) that ``got`` holds, over ``rows``."""
    hits = total = 0
    for i, r in enumerate(rows):
        want = set(exact[i].indices.tolist()) - {int(r)}
        have = set(got[int(r)].indices.tolist())
        hits += len(want & have)
        total += len(want)
    return hits / total if total else 1.0


def cost(n: int, sample: int, seed: int) -> dict[str, Any]:
    """Pooled build, sampled exact build, a write and a delete, memory, on a synthetic corpus of ``n`` articles."""
    config = DEFAULT_NEIGHBOURS
    keys, vectors, postings = synthetic(n + WRITE, seed)
    print(f"mlt_scale: {n} articles ...", file=sys.stderr)
    started = time.perf_counter()
    graph = NeighbourGraph.build(keys[:n], vectors[:n], postings, 1, config, DEFAULT_POOL)
    pooled_s = time.perf_counter() - started

    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    started = time.perf_counter()
    terms = _term_rows(postings, keys[:n], _idf(postings, config.max_df))
    terms_s = time.perf_counter() - started
    neighbours.BLOCK = 128  # the exact build's rows at once: its memory is BLOCK x n floats a side
    started = time.perf_counter()
    exact_rows = _profiles(rows, vectors[:n], terms, config)
    exact_rows_s = time.perf_counter() - started
    exact_s = terms_s + exact_rows_s * n / len(rows)

    store = FaissVectorStore(DIMENSION)
    store.add(keys, vectors)
    started = time.perf_counter()
    written = graph.updated([], keys[n:].tolist(), store, postings, 2)
    write_s = time.perf_counter() - started
    gone = keys[np.random.default_rng(seed + 1).choice(n, size=WRITE, replace=False)]
    store.remove(gone)
    remaining = postings.without(gone.tolist())
    started = time.perf_counter()
    deleted = written.updated(gone.tolist(), [], store, remaining, 3)
    delete_s = time.perf_counter() - started
    parts = graph_bytes(graph)
    return {
        "articles": n,
        "clusters": len(graph.centroids) if graph.centroids is not None else None,
        "mean_pool_articles": mean_pool(graph, vectors[:n]),
        "pooled_build_seconds": round(pooled_s, 2),
        "exact_build_seconds_estimated": round(exact_s, 1),
        "exact_build_how": f"tf-idf rows {terms_s:.2f} s + {len(rows)} rows against all articles {exact_rows_s:.2f} s "
        f"x {n}/{len(rows)}",
        "exact_over_pooled": round(exact_s / pooled_s, 2),
        "neighbour_recall_vs_exact_on_sampled_rows": round(neighbour_recall(graph.profiles, exact_rows, rows), 4),
        "write_10_articles_seconds": round(write_s, 3),
        "delete_10_articles_seconds": round(delete_s, 3),
        "profiles_recomputed_by_the_write": int(
            (written.profiles[:n] != _kept_like(graph.profiles, written.profiles.shape[1]))
            .sum(axis=1)
            .astype(bool)
            .sum()
        ),
        "bytes": parts,
        "bytes_per_article": round(sum(parts.values()) / n, 1),
        "max_rss_mib_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "deleted_graph_articles": len(deleted.keys),
    }


def _kept_like(profiles: sp.csr_matrix, width: int) -> sp.csr_matrix:
    m = profiles.tocsr()
    return sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], width))


def quality(index: Path, data: Path, pools: list[PoolConfig]) -> dict[str, Any]:
    """BBC precision@5 of ``similar()`` with exact and with forced pooled profiles, and the neighbours kept."""
    from bench.mlt import (
        duplicate_groups,
        evaluate,
        newsdesk_rankings,
        open_service,
        read_articles,
        read_duplicate_groups,
    )

    articles = read_articles(data)
    groups = duplicate_groups(articles, read_duplicate_groups(data / "duplicate_groups.json"))
    category_of = {a.id: a.category for a in articles}
    ids = [a.id for a in articles]
    loaded = open_service(index)
    service = loaded.service
    exact = service.index.neighbours
    assert exact is not None and exact.centroids is None
    postings = service.index.lexical.articles
    out: dict[str, Any] = {"index": str(index), "articles": len(exact.keys)}
    rankings, _, _ = newsdesk_rankings(service, ids, groups, 10)
    out["exact"] = {"precision@5": evaluate(rankings, category_of, groups)["precision@5"]}
    vectors = service.index.articles.reconstruct_batch(exact.keys)
    for pool in pools:
        started = time.perf_counter()
        graph = NeighbourGraph.build(exact.keys, vectors, postings, exact.generation, exact.config, pool)
        seconds = time.perf_counter() - started
        service.index.neighbours = graph
        fresh = type(service)(service.index, service.embedder, service.settings)  # its own related-articles cache
        rankings, _, _ = newsdesk_rankings(fresh, ids, groups, 10)
        pool_sizes = np.bincount(graph.clusters if graph.clusters is not None else np.zeros(0, np.int64))
        everyone = np.arange(len(exact.keys))
        out[f"pooled_{pool.cluster_size}x{pool.probe}x{pool.widest}"] = {
            "clusters": len(pool_sizes),
            "mean_pool_articles": mean_pool(graph, vectors),
            "neighbour_recall_vs_exact": round(neighbour_recall(graph.profiles, exact.profiles, everyone), 4),
            "precision@5": evaluate(rankings, category_of, groups)["precision@5"],
            "build_seconds": round(seconds, 2),
        }
    service.index.neighbours = exact
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50000,100000,250000", help="Comma-separated synthetic corpus sizes.")
    parser.add_argument("--sample", type=int, default=1024, help="Rows the exact build is timed on.")
    parser.add_argument("--bbc-index", type=Path, default=None, help="A BBC News index (bench/mlt.py's).")
    parser.add_argument("--bbc-data", type=Path, default=ROOT.parent / "shared" / "data" / "bbc")
    parser.add_argument(
        "--bbc-pools", default="32x16x32,32x8x24,32x16x69", help="cluster_size x probe x widest of the forced pools."
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mlt_scale.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "more-like-this-at-scale",
        "command": [sys.executable, *sys.argv],
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "cpu_flags": cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8"))
            if Path("/proc/cpuinfo").exists()
            else None,
            "loadavg_1min_start": loadavg(),
        },
        "neighbours": vars(DEFAULT_NEIGHBOURS) | {"exact_articles": EXACT_ARTICLES},
        "pool": vars(DEFAULT_POOL),
        "synthetic": {"dimension": DIMENSION, "vocabulary": VOCABULARY, "term_draws": TERMS, "zipf_exponent": 1.0},
    }
    if args.bbc_index is not None:
        pools = [
            PoolConfig(cluster_size=int(a), probe=int(b), widest=int(c))
            for a, b, c in (p.split("x") for p in args.bbc_pools.split(","))
        ]
        report["bbc"] = quality(args.bbc_index, args.bbc_data, pools)
        save(args.out, report)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    report["sizes"] = {}
    for n in sizes:
        report["sizes"][str(n)] = cost(n, args.sample, seed=n)
        save(args.out, report)
    if sizes:
        low, high = report["sizes"][str(sizes[0])], report["sizes"][str(sizes[-1])]
        report["ratios"] = {
            f"exact / pooled build at {sizes[0]}": low["exact_over_pooled"],
            f"exact / pooled build at {sizes[-1]}": high["exact_over_pooled"],
            f"pooled build {sizes[-1]} / {sizes[0]} (articles x{sizes[-1] / sizes[0]:g})": round(
                high["pooled_build_seconds"] / low["pooled_build_seconds"], 2
            ),
            f"10-article write {sizes[-1]} / {sizes[0]}": round(
                high["write_10_articles_seconds"] / low["write_10_articles_seconds"], 2
            ),
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["machine"]["loadavg_1min_end"] = loadavg()
    save(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


def save(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
