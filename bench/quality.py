"""Retrieval quality and hybrid latency, every figure of issue 3 in one command, written to one JSON report.

    .venv/bin/python bench/quality.py --data ../shared/data --out bench/results/quality.json

Sections (each reuses an index already in ``--work``, built by the real ``newsdesk index``):

1. SciFact: every fusion setting in a grid is scored on the **train** split; the best is compared with the shipped
   default; then the **test** split is scored once for dense, lexical, RRF (k=60) and the default. Scores come from
   ``pytrec_eval`` (trec_eval), not from our own evaluator.
2. Lexical engines: SQLite FTS5 (ours) against ``bm25s`` over the same SciFact articles: nDCG@10 and ms/query.
3. RealTime QA: answer recall@k of passages for dense, lexical, RRF (k=60), the convex passage fusion and the
   default answer ranking (search/ranking/answers.py), on an index of the corpus's first 3,000 articles: the
   questions whose search results all lie in them, the earlier half (dev) for choosing among ``DESIGNS``, the later
   half held back (scored for the baselines and the chosen default only).
4. Latency: p50/p99 of hybrid against dense-only on a ~100k-passage index of RealTime QA paragraphs, same process.
   That index holds real text (so BM25 does its real work) and hash-seeded unit vectors in place of model
   embeddings; each query still runs the real model once, so the measured time includes real query embedding.

5. More like this (issue 18, ``bench/mlt_transfer.py``): precision@5 of newsdesk's more like this beside
   whole-article cosine and TF-IDF on BBC sections and Reuters topics, and the candidates tuned on one set and
   scored on the other.

Run a section alone with ``--only scifact|lexical|rtqa|latency|mlt``. ``--store milvus`` builds and reads the SciFact
and RealTime QA indexes with the Milvus backend (``NEWSDESK_STORE=milvus`` for the CLI build; Milvus Lite inside
each index, or the server ``NEWSDESK_MILVUS_URI`` names) into ``scifact-milvus`` and ``rtqa-milvus`` beside the
FAISS ones, so both backends are measured on the same corpus, model and index settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import mlt_transfer  # noqa: E402
from bench.realtimeqa import prefix_slices  # noqa: E402
from bench.scifact import evaluate, read_qrels, read_queries  # noqa: E402
from indexer.build import build_index  # noqa: E402
from search.ranking.catalog import parse_day  # noqa: E402
from search.ranking.evaluation import answer_recall  # noqa: E402
from search.service import SearchService  # noqa: E402
from search.settings import Settings  # noqa: E402
from search.storage.index import open_index  # noqa: E402
from search.text.embedding import Embedder, SentenceTransformerEmbedder  # noqa: E402

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


STORE = "faiss"  # the vector store of the indexes sections build and read (--store)


def index_dir(work: Path, name: str) -> Path:
    """``WORK/<name>`` for FAISS, ``WORK/<name>-milvus`` for Milvus: each backend keeps its own index."""
    return work / (name if STORE == "faiss" else f"{name}-{STORE}")


def ensure_index(corpus: Path, index: Path) -> float | None:
    """Build with the real CLI unless an index is there; returns build seconds (None when reused)."""
    manifest = index / "manifest.json"
    if manifest.is_file():
        built_with = json.loads(manifest.read_text(encoding="utf-8")).get("store") or "faiss"
        if built_with != STORE:
            raise SystemExit(f"{index} was built with store {built_with}, not {STORE}; remove it or use another --work")
        return None
    started = time.perf_counter()
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "newsdesk"), "index", str(corpus), "--index", str(index), "--quiet"],
        check=True,
        env={**os.environ, "NEWSDESK_STORE": STORE},
    )
    return round(time.perf_counter() - started, 1)


def service_for(index: Path, embedder: Embedder, settings: Settings) -> SearchService:
    return SearchService(open_index(index, embedder), embedder, settings)


def article_run(
    service: SearchService, queries: list[tuple[str, str]], vecs: np.ndarray, mode: str
) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for (qid, text), vec in zip(queries, vecs, strict=True):
        ranked = service.rank_articles(text, vec, 100, mode).items
        refs = service.index.store.article_refs(a for a, _ in ranked)
        run[qid] = {refs[a].id: sc.fused for a, sc in ranked}
    return run


def scifact(data: Path, work: Path, embedder: SentenceTransformerEmbedder) -> dict[str, Any]:
    index = index_dir(work, "scifact")
    build_seconds = ensure_index(data / "corpus.jsonl", index)
    base = Settings(index_dir=index)
    service = service_for(index, embedder, base)
    splits: dict[str, tuple[dict[str, dict[str, int]], list[tuple[str, str]], np.ndarray]] = {}
    for split in ("train", "test"):
        qrels = read_qrels(data / "qrels" / f"{split}.tsv")
        queries = read_queries(data / "queries.jsonl", qrels)
        splits[split] = (qrels, queries, embedder.encode([t for _, t in queries]))

    def score(settings: Settings, split: str, mode: str) -> float:
        qrels, queries, vecs = splits[split]
        svc = SearchService(service.index, embedder, settings)
        return round(evaluate(qrels, article_run(svc, queries, vecs, mode))["ndcg_cut_10"], 4)

    grid: list[dict[str, Any]] = []
    for title_weight in (1.0, 2.0):
        for norm in ("max", "minmax", "zscore"):
            for alpha in ALPHAS:
                s = replace(
                    base, fusion="convex", fusion_normalisation=norm, fusion_alpha=alpha, title_weight=title_weight
                )
                grid.append(
                    {
                        "fusion": "convex",
                        "normalisation": norm,
                        "alpha": alpha,
                        "title_weight": title_weight,
                        "train_ndcg@10": score(s, "train", "hybrid"),
                    }
                )
        s = replace(base, fusion="rrf", rrf_k=60, title_weight=title_weight)
        grid.append(
            {"fusion": "rrf", "rrf_k": 60, "title_weight": title_weight, "train_ndcg@10": score(s, "train", "hybrid")}
        )
    best = max(grid, key=lambda g: g["train_ndcg@10"])
    default = {
        "fusion": base.fusion,
        "normalisation": base.fusion_normalisation,
        "alpha": base.fusion_alpha,
        "title_weight": base.title_weight,
    }
    rrf = replace(base, fusion="rrf", rrf_k=60)
    test = {
        "dense": score(base, "test", "dense"),
        "lexical": score(base, "test", "lexical"),
        "rrf_k60": score(rrf, "test", "hybrid"),
        "default_hybrid": score(base, "test", "hybrid"),
    }
    return {
        "index_build_seconds": build_seconds,
        "train_grid": grid,
        "train_best": best,
        "default": default,
        "default_train_ndcg@10": score(base, "train", "hybrid"),
        "test_ndcg@10": test,
        "acceptance": {
            "default >= 0.72": test["default_hybrid"] >= 0.72,
            "default > rrf_k60": test["default_hybrid"] > test["rrf_k60"],
        },
    }


def lexical_engines(data: Path, work: Path, embedder: SentenceTransformerEmbedder) -> dict[str, Any]:
    """Our in-memory BM25 (the query path), FTS5 (the transactional store it mirrors) and bm25s, on the same
    SciFact articles, test split: nDCG@10 and ms per query (top 100), one process."""
    import bm25s
    import Stemmer

    from search.text.fts import Fts5Lexical

    index = index_dir(work, "scifact")
    service = service_for(index, embedder, Settings(index_dir=index))
    qrels = read_qrels(data / "qrels" / "test.tsv")
    queries = read_queries(data / "queries.jsonl", qrels)
    out: dict[str, Any] = {}
    for name, engine in (("memory_bm25", service.lexical), ("fts5", Fts5Lexical(service.index.sqlite))):
        started = time.perf_counter()
        run: dict[str, dict[str, float]] = {}
        for qid, text in queries:
            hits = engine.search_articles(text, 100)
            refs = service.index.store.article_refs(a for a, _ in hits)
            run[qid] = {refs[a].id: s for a, s in hits}
        ms = (time.perf_counter() - started) * 1000 / len(queries)
        out[name] = {"ndcg@10": round(evaluate(qrels, run)["ndcg_cut_10"], 4), "ms_per_query": round(ms, 2)}

    docs = [json.loads(line) for line in (data / "corpus.jsonl").open(encoding="utf-8")]
    stemmer = Stemmer.Stemmer("english")
    tokens = bm25s.tokenize(
        [f"{d['title']}\n{d['text']}" for d in docs], stopwords="en", stemmer=stemmer, show_progress=False
    )
    for method in ("lucene", "robertson"):
        retriever = bm25s.BM25(method=method)
        retriever.index(tokens, show_progress=False)
        started = time.perf_counter()
        run = {}
        for qid, text in queries:
            q = bm25s.tokenize([text], stopwords="en", stemmer=stemmer, show_progress=False)
            res, scores = retriever.retrieve(q, k=100, show_progress=False, n_threads=1)
            run[qid] = {docs[int(i)]["_id"]: float(s) for i, s in zip(res[0], scores[0], strict=True)}
        ms = (time.perf_counter() - started) * 1000 / len(queries)
        out[f"bm25s_{method}"] = {
            "ndcg@10": round(evaluate(qrels, run)["ndcg_cut_10"], 4),
            "ms_per_query": round(ms, 2),
        }
    out["kept"] = "memory_bm25 for queries, fts5 as the transactional store"
    out["why"] = (
        "FTS5's BM25 matches bm25s on quality and is updated by triggers in the same transaction as the passages, "
        "but every query walks all its matches; the in-memory postings give FTS5's exact scores at bm25s-like "
        "speed and are updated per write without re-tokenizing the corpus."
    )
    out["ratio_fts5_over_memory_ms"] = round(
        out["fts5"]["ms_per_query"] / max(out["memory_bm25"]["ms_per_query"], 1e-6), 1
    )
    return out


def read_questions(path: Path) -> list[tuple[str, str, list[str], int | None]]:
    """(id, text, answers, as_of) of each question row; ``as_of`` (days since the epoch) from its ``date``."""
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    return [(r["id"], r["text"], r["answers"], parse_day(r["date"], "date") if r.get("date") else None) for r in rows]


# Answer ranking designs (``answer_signals``, ``answer_rrf_k``) measured on the dev questions alone; the default is
# the best of them there (bench/README.md, "Answer ranking"). The held-back questions are scored only for the
# baselines and the default.
DESIGNS: tuple[tuple[str, int], ...] = (
    ("dense,lexical", 60),
    ("dense,lexical,sentence", 60),
    ("dense,lexical,article", 60),
    ("dense,lexical,headline", 60),
    ("dense,lexical,expanded", 60),
    ("dense,lexical,date", 60),
    ("dense,lexical,sentence,article,headline,expanded,date", 60),
    ("dense,lexical,date:0.5", 60),
    ("dense,lexical,date:2", 60),
    ("dense,lexical,sentence,date", 60),
    ("dense,lexical,expanded,date", 60),
    ("dense,lexical,sentence,expanded,date", 60),
    ("dense,lexical,date", 30),
    ("dense,lexical,date:0.5", 30),
    ("dense,lexical,date", 20),
    ("dense,lexical,date", 10),
    ("fused,date", 20),
    ("dense,lexical,sentence,date", 20),
    ("dense,lexical", 20),
)


def rtqa(
    data: Path,
    work: Path,
    embedder: SentenceTransformerEmbedder,
    articles: int,
    index: Path | None,
    designs: Sequence[tuple[str, int]] = DESIGNS,
) -> dict[str, Any]:
    """Answer recall@k of ranked passages on RealTime QA questions whose search results all lie in the first
    ``articles`` articles of the corpus (``prefix_slices``): the earlier half (dev) tunes, the later half
    (held back) only confirms. One index, one run, every method beside dense, lexical and RRF (k=60)."""
    names = {n: work / f"rtqa-first{articles}-{n}.jsonl" for n in ("dev", "heldback")}
    corpus = work / f"rtqa-first{articles}.jsonl"
    if not corpus.is_file() or not all(p.is_file() for p in names.values()):
        prefix_slices(data, work, articles)
    index = index or index_dir(work, f"rtqa-first{articles}")
    build_seconds = ensure_index(corpus, index)
    base = Settings(index_dir=index)
    service = service_for(index, embedder, base)
    sets: dict[str, tuple[list[tuple[str, str, list[str], int | None]], np.ndarray]] = {}
    for name, path in names.items():
        qs = read_questions(path)
        sets[name] = (qs, embedder.encode([t for _, t, _, _ in qs]))

    def recall_at(settings: Settings, name: str, mode: str, dated: bool = True) -> dict[str, float]:
        qs, vecs = sets[name]
        svc = SearchService(service.index, embedder, settings)
        texts = [
            [sp.passage.text for sp, _ in svc.rank_passages(t, v, 20, mode, as_of=day if dated else None)]
            for (_, t, _, day), v in zip(qs, vecs, strict=True)
        ]
        answers = [a for _, _, a, _ in qs]
        return {f"@{k}": round(answer_recall(texts, answers, k), 4) for k in (1, 5, 10, 20)}

    scored: list[dict[str, Any]] = [
        {
            "answer_signals": d,
            "answer_rrf_k": k,
            "dev": recall_at(replace(base, answer_signals=d, answer_rrf_k=k), "dev", "hybrid"),
        }
        for d, k in designs
    ]
    best = max(scored, key=lambda d: (d["dev"]["@5"], d["dev"]["@10"])) if scored else None
    out: dict[str, Any] = {
        "index": str(index),
        "index_build_seconds": build_seconds,
        "articles": service.index.store.counts()[0],
        "passages": service.index.store.counts()[1],
        "designs_dev": scored,
        "dev_best": best,
        "default_answer_signals": base.answer_signals,
        "default_answer_rrf_k": base.answer_rrf_k,
    }
    rrf = replace(base, fusion="rrf", rrf_k=60, answer_signals="")
    for name, (qs, _) in sets.items():
        figures: dict[str, Any] = {
            "questions": len(qs),
            "dates": [min(d for *_, d in qs if d is not None), max(d for *_, d in qs if d is not None)],
            "dense": recall_at(base, name, "dense"),
            "lexical": recall_at(base, name, "lexical"),
            "rrf_k60": recall_at(rrf, name, "hybrid"),
            "convex_passage_alpha": recall_at(replace(base, answer_signals=""), name, "hybrid"),
            "default_undated": recall_at(base, name, "hybrid", dated=False),
            "default": recall_at(base, name, "hybrid"),
        }
        figures["dates"] = [(date(1970, 1, 1) + timedelta(days=d)).isoformat() for d in figures["dates"]]
        margin = 0.04 if name == "dev" else 0.02
        figures["acceptance"] = {
            f"default@5 >= rrf@5 + {margin}": figures["default"]["@5"] >= figures["rrf_k60"]["@5"] + margin - 1e-9,
        }
        out[name] = figures
    return out


class HashVectors:
    """Deterministic unit vectors seeded by a text's hash, with the real model's name and fingerprint shape.

    For the latency index only: FAISS's flat search costs the same whatever the vector values; ``query_model``
    makes each query pay for one real embedding so measured latency includes it.
    """

    def __init__(self, dimension: int, query_model: SentenceTransformerEmbedder | None = None) -> None:
        self.name = "hash-vectors"
        self.dimension = dimension
        self.max_seq_length = 256
        self._model = query_model

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if self._model is not None:
            self._model.encode(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out

    def encode_spans(
        self, texts: list[str], spans: list[list[tuple[int, int]]], *, batch_size: int = 64
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The texts' vectors, and each span's as the hash vector of its characters (a blank span: the text's)."""
        vectors = self.encode(texts, batch_size=batch_size)
        out: list[np.ndarray] = []
        for text, vector, text_spans in zip(texts, vectors, spans, strict=True):
            pieces = [text[start:end] for start, end in text_spans]
            span_vectors = HashVectors(self.dimension).encode([p for p in pieces if p.strip()])
            rows = iter(span_vectors)
            out.append(
                np.array([next(rows) if p.strip() else vector for p in pieces], dtype=np.float32).reshape(
                    len(pieces), self.dimension
                )
            )
        return vectors, out

    def count_tokens(self, text: str) -> int:
        return int(len(text.split()) * 1.3) + 1

    def fingerprint(self) -> dict[str, Any]:
        probe = self.encode(["probe one", "probe two", "probe three"]) if self._model is None else None
        if probe is None:
            probe = HashVectors(self.dimension).encode(["probe one", "probe two", "probe three"])
        return {"name": self.name, "dimension": self.dimension, "files_sha256": None, "probe": probe.tolist()}


def latency(
    data: Path,
    work: Path,
    embedder: SentenceTransformerEmbedder,
    passages: int,
    queries: int,
    real_index: Path | None = None,
    backend: str = "torch",
) -> dict[str, Any]:
    """p50/p99 of hybrid against dense-only search, same process, interleaved. With ``real_index`` (an index built
    by ``newsdesk index``, e.g. ~100k RealTime QA passages) it uses that index's real vectors and a query embedder
    of ``backend``; otherwise a hash-vector index of ``passages`` RealTime QA paragraphs built here."""
    if real_index is not None:
        from search.text.embedding import make_embedder

        settings = Settings(index_dir=real_index, backend=backend, query_cache_size=0)
        query_embedder = make_embedder(settings)
        service = service_for(real_index, query_embedder, settings)
        return _time_modes(service, data, queries, f"real ({backend} query embedding)")
    import gzip

    index = work / "latency"
    if not (index / "manifest.json").is_file():

        def articles() -> Any:
            total = 0
            with gzip.open(data / "news_corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
                for line in fh:
                    if total >= passages:
                        return
                    rec = json.loads(line)
                    if rec.get("paragraphs"):
                        total += len(rec["paragraphs"]) + 1
                        yield rec

        from indexer.sources import FieldMap, to_article

        items = [a for r in articles() if (a := to_article(r, FieldMap(), "rtqa")) is not None]
        build_index(
            items,
            index,
            Settings(index_dir=index, min_passage_chars=0),
            HashVectors(embedder.dimension),
            progress=False,
        )
    service = service_for(index, HashVectors(embedder.dimension, embedder), Settings(index_dir=index))
    service.settings = replace(service.settings, query_cache_size=0)
    return _time_modes(service, data, queries, "hash-seeded (see module docstring)")


def _time_modes(service: SearchService, data: Path, queries: int, vectors: str) -> dict[str, Any]:
    questions = [json.loads(line)["question"] for line in (data / "questions_dev.jsonl").open(encoding="utf-8")]
    questions = questions[:queries]
    for q in questions[:10]:
        service.search(q, k=10, mode="hybrid")  # warm caches and code paths
    timings: dict[str, list[float]] = {"dense": [], "hybrid": [], "dense_retrieval": [], "hybrid_retrieval": []}
    for q in questions:  # interleaved, so both modes see the same machine state
        for mode in ("dense", "hybrid"):
            service._query_cache.clear()
            started = time.perf_counter()
            service.search(q, k=10, mode=mode)
            timings[mode].append((time.perf_counter() - started) * 1000)
            # retrieval alone (query embedding + ranking), without the highlights and related stories both share
            started = time.perf_counter()
            service.rank_articles(q, service.embedder.encode([q])[0], 10, mode)
            timings[f"{mode}_retrieval"].append((time.perf_counter() - started) * 1000)

    def pct(xs: list[float], p: float) -> float:
        return round(float(np.percentile(xs, p)), 2)

    out: dict[str, Any] = {
        "passages": service.index.store.counts()[1],
        "articles": service.index.store.counts()[0],
        "queries": len(questions),
        "vectors": vectors,
    }
    for mode, xs in timings.items():
        out[mode] = {"p50_ms": pct(xs, 50), "p99_ms": pct(xs, 99), "mean_ms": round(statistics.fmean(xs), 2)}
    for kind in ("", "_retrieval"):
        for p in ("p50", "p99"):
            out[f"ratio{kind}_{p}"] = round(out[f"hybrid{kind}"][f"{p}_ms"] / out[f"dense{kind}"][f"{p}_ms"], 3)
    out["acceptance"] = {
        "search: hybrid within 1.5x of dense (p50 and p99)": max(out["ratio_p50"], out["ratio_p99"]) <= 1.5,
        "retrieval: hybrid within 1.5x of dense (p50 and p99)": max(
            out["ratio_retrieval_p50"], out["ratio_retrieval_p99"]
        )
        <= 1.5,
    }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "quality")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.json")
    parser.add_argument("--only", choices=("scifact", "lexical", "rtqa", "latency", "mlt"), action="append")
    parser.add_argument(
        "--rtqa-articles", type=int, default=3000, help="RealTime QA: index the corpus's first N articles."
    )
    parser.add_argument("--rtqa-index", type=Path, default=None, help="A built index of those articles to reuse.")
    parser.add_argument(
        "--rtqa-no-designs", action="store_true", help="RealTime QA: baselines and the default only, no design sweep."
    )
    parser.add_argument("--latency-passages", type=int, default=100_000)
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--latency-index", type=Path, default=None, help="A real ~100k-passage index to time.")
    parser.add_argument("--latency-backend", default="torch", help="Query embedding backend with --latency-index.")
    parser.add_argument("--store", choices=("faiss", "milvus"), default="faiss", help="Vector store (scifact, rtqa).")
    args = parser.parse_args(argv)
    global STORE
    STORE = args.store
    if not args.data.is_dir():
        print(f"error: no data directory at {args.data}", file=sys.stderr)
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    embedder = SentenceTransformerEmbedder()
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    sections = args.only or ["scifact", "lexical", "rtqa", "latency", "mlt"]
    for section in sections:
        started = time.perf_counter()
        if section == "scifact":
            report["scifact"] = scifact(args.data / "scifact", args.work, embedder)
        elif section == "lexical":
            report["lexical_engines"] = lexical_engines(args.data / "scifact", args.work, embedder)
        elif section == "rtqa":
            report["realtimeqa"] = rtqa(
                args.data / "realtimeqa",
                args.work,
                embedder,
                args.rtqa_articles,
                args.rtqa_index,
                () if args.rtqa_no_designs else DESIGNS,
            )
        elif section == "mlt":  # more like this on BBC sections and Reuters topics against its baselines
            report["more_like_this"] = mlt_transfer.run(
                argparse.Namespace(data=args.data, work=args.work / "mlt", sets="bbc,reuters")
            )
        else:
            report["latency"] = latency(
                args.data / "realtimeqa",
                args.work,
                embedder,
                args.latency_passages,
                args.latency_queries,
                args.latency_index,
                args.latency_backend,
            )
        print(f"{section}: done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
