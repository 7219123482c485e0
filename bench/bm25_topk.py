"""Lexical top k with block-max pruning against the exhaustive BM25 (issue 17: "lexical top 10 identical to the
exhaustive BM25" at 1.1M passages).

One command runs the whole benchmark::

    .venv/bin/python bench/bm25_topk.py --data ../shared/data --out bench/results/bm25_topk.json [--limit 200000]

1. SciFact: the corpus read by the indexer's own reader (``indexer.sources.read_sources``) into the articles'
   postings (title and body, as the index holds them); its test queries;
2. RealTime QA: ``realtimeqa/news_corpus.jsonl.gz`` read the same way, every paragraph one passage (1.1M; the first
   ``--limit`` paragraphs for a quick run) and every article one row (title and body); the dev questions
   (``--queries`` of them) as queries;
3. for each table and each k (10 and the service's 100 lexical candidates): every query answered by the exhaustive
   scorer (``Segment.top_exhaustive``: every posting of every query term scored) and by ``Segment.top`` (block-max
   pruning), in turn, each timed; the share of queries whose top k is identical (same rows, same float32 scores,
   same order; must be 1.0), p50/p99 ms of each and their ratio, postings scored by each; for RealTime QA also
   with keyword queries (each question's first three words), where one common word meets rarer ones;
4. the one-off cost of the block-max bounds (computed from the postings on the first pruned query) per table;
5. for SciFact, nDCG@10 of the pruned top 100 by ``pytrec_eval`` (bench/README.md's lexical figure, 0.6888, must
   not move);
6. the JSON report (with the command, the CPU flags avx2/avx512f/avx512_vnni and the load average) printed and
   written to ``--out``; exit status 1 if any top k differs.

Tokenizing 1.1M paragraphs takes minutes, so the postings are kept in ``--work`` (default
``bench/results/bm25_topk``) and reused when the same corpus and limit are asked for again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scifact import evaluate, git_commit, loadavg, read_qrels, read_queries  # noqa: E402
from bench.slow import cpu_flags  # noqa: E402
from indexer.sources import read_sources  # noqa: E402
from search.models import Article  # noqa: E402
from search.text.bm25 import BlockMax, Segment, _phrases  # noqa: E402

KS = (10, 100)
SHORT_WORDS = 3


def articles(path: Path, limit: int | None) -> Iterator[Article]:
    """The corpus's articles as the indexer reads them; with ``limit``, until that many paragraphs are read."""
    paragraphs = 0
    for article in read_sources([path]):
        if limit is not None and paragraphs >= limit:
            return
        paragraphs += len(article.paragraphs)
        yield article


def cached(work: Path, name: str, build: Any) -> tuple[Segment, float | None]:
    """``work/name.npz`` if there, else built (timed) and saved."""
    path = work / f"{name}.npz"
    if path.is_file():
        return Segment.load(path), None
    started = time.perf_counter()
    postings: Segment = build()
    seconds = round(time.perf_counter() - started, 1)
    work.mkdir(parents=True, exist_ok=True)
    postings.save(path)
    return postings, seconds


def article_postings(items: Sequence[Article]) -> Segment:
    """Two columns, title and the paragraphs joined by newlines, as ``search.text.bm25._article_rows`` gives them."""
    return Segment.build(((i + 1, (a.title, "\n".join(a.paragraphs))) for i, a in enumerate(items)), 2)


def passage_postings(items: Sequence[Article], limit: int | None) -> Segment:
    paragraphs = itertools.chain.from_iterable(a.paragraphs for a in items)
    return Segment.build(((i + 1, (p,)) for i, p in enumerate(itertools.islice(paragraphs, limit))), 1)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3)


def compare(postings: Segment, weights: tuple[float, ...], queries: list[str], k: int) -> dict[str, Any]:
    """Each query by both scorers, alternately, timed; identical top k share, latencies, postings read."""
    exhaustive_ms: list[float] = []
    pruned_ms: list[float] = []
    identical = 0
    scanned = lookups = every = 0
    for text in queries:
        phrases = _phrases(text)
        started = time.perf_counter()
        rows, scores = postings.top_exhaustive(phrases, weights, k)
        exhaustive_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        top = postings.top(phrases, weights, k)
        pruned_ms.append((time.perf_counter() - started) * 1000)
        identical += int(np.array_equal(rows, top.rows) and np.array_equal(scores, top.scores))
        terms, _ = postings._terms(phrases)
        every += int((postings.indptr[terms + 1] - postings.indptr[terms]).sum())
        scanned += top.scored
        lookups += top.checked
    e50, p50 = statistics.median(exhaustive_ms), statistics.median(pruned_ms)
    return {
        "k": k,
        "queries": len(queries),
        "identical_share": round(identical / max(len(queries), 1), 4),
        "exhaustive_ms": {
            "p50": round(e50, 3),
            "p99": pct(exhaustive_ms, 99),
            "mean": round(np.mean(exhaustive_ms), 3),
        },
        "pruned_ms": {"p50": round(p50, 3), "p99": pct(pruned_ms, 99), "mean": round(np.mean(pruned_ms), 3)},
        "speedup_p50": round(e50 / max(p50, 1e-9), 2),
        "speedup_p99": round(pct(exhaustive_ms, 99) / max(pct(pruned_ms, 99), 1e-9), 2),
        "postings_per_query": {
            "exhaustive": round(every / max(len(queries), 1)),
            "pruned_scored": round(scanned / max(len(queries), 1)),
            "pruned_checked": round(lookups / max(len(queries), 1)),
            "scored_share": round(scanned / max(every, 1), 4),
        },
    }


def table(
    name: str, postings: Segment, weights: tuple[float, ...], queries: list[str], short: bool = False
) -> dict[str, Any]:
    started = time.perf_counter()
    BlockMax.build(postings, weights)
    bounds_s = round(time.perf_counter() - started, 3)
    postings.block_max(weights)  # the cached copy the pruned queries use
    out: dict[str, Any] = {
        "rows": postings.rows,
        "postings": len(postings.docs),
        "terms": len(postings.vocab),
        "block_max_build_s": bounds_s,
        "by_k": [compare(postings, weights, queries, k) for k in KS],
    }
    if short:  # keyword searches: each question's first three words
        out["short_queries_by_k"] = [
            compare(postings, weights, [" ".join(q.split()[:SHORT_WORDS]) for q in queries], k) for k in KS
        ]
    print(name, json.dumps(out["by_k"]), json.dumps(out.get("short_queries_by_k")), flush=True)
    return out


def scifact(data: Path, work: Path) -> dict[str, Any]:
    corpus = data / "scifact" / "corpus.jsonl"
    postings, built = cached(work, "scifact-articles", lambda: article_postings(list(articles(corpus, None))))
    qrels = read_qrels(data / "scifact" / "qrels" / "test.tsv")
    queries = read_queries(data / "scifact" / "queries.jsonl", qrels)
    weights = (1.0, 1.0)
    out = table("scifact articles", postings, weights, [t for _, t in queries])
    ids = [a.id for a in articles(corpus, None)]
    run = {}
    for qid, text in queries:
        top = postings.top(_phrases(text), weights, 100)
        run[qid] = {ids[int(postings.rowids[r]) - 1]: float(s) for r, s in zip(top.rows, top.scores, strict=True)}
    out["pruned_ndcg@10"] = round(evaluate(qrels, run)["ndcg_cut_10"], 4)
    out["tokenize_s"] = built
    return out


def realtimeqa(data: Path, work: Path, limit: int | None, n_queries: int) -> dict[str, Any]:
    corpus = data / "realtimeqa" / "news_corpus.jsonl.gz"
    tag = "all" if limit is None else str(limit)
    items: list[Article] = []

    def read() -> list[Article]:
        if not items:
            items.extend(articles(corpus, limit))
        return items

    passages, passages_s = cached(work, f"rtqa-passages-{tag}", lambda: passage_postings(read(), limit))
    article_rows, articles_s = cached(work, f"rtqa-articles-{tag}", lambda: article_postings(read()))
    with (data / "realtimeqa" / "questions_dev.jsonl").open(encoding="utf-8") as f:
        queries = [json.loads(line)["question"] for line in itertools.islice(f, n_queries)]
    return {
        "passages": table("rtqa passages", passages, (1.0,), queries, short=True) | {"tokenize_s": passages_s},
        "articles": table("rtqa articles", article_rows, (1.0, 1.0), queries, short=True) | {"tokenize_s": articles_s},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "bm25_topk")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bm25_topk.json")
    parser.add_argument("--limit", type=int, default=None, help="RealTime QA paragraphs to index (default: all)")
    parser.add_argument("--queries", type=int, default=500, help="RealTime QA questions to run")
    parser.add_argument("--only", choices=("scifact", "realtimeqa"), default=None)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "command": " ".join([".venv/bin/python bench/bm25_topk.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": git_commit(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8")),
        "loadavg_start": loadavg(),
    }
    if args.only in (None, "scifact"):
        report["scifact"] = scifact(args.data, args.work)
    if args.only in (None, "realtimeqa"):
        report["realtimeqa"] = realtimeqa(args.data, args.work, args.limit, args.queries)
    report["loadavg_end"] = loadavg()
    shares = [
        by_k["identical_share"]
        for section in (report.get("scifact"), *(report.get("realtimeqa") or {}).values())
        if section
        for by_k in section["by_k"] + section.get("short_queries_by_k", [])
    ]
    report["all_identical"] = all(s == 1.0 for s in shares)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0 if report["all_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
