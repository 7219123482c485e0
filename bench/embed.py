"""Embedding throughput: a plain sentence-transformers loop against the indexer's embedding path, per backend.

    .venv/bin/python bench/embed.py --data ../shared/data/bbc --limit 3000

Prints one JSON object. BBC articles are chunked into passages with the indexer's own chunker (``make_chunker``,
``embedding_input``: headline in front of body passages), the first ``--limit`` passages kept; then, in this one
process and on the same passages:

- ``baseline``: ``SentenceTransformer(path).encode(passages, batch_size=32)``, the plain torch loop;
- ``torch`` / ``onnx-int8``: the indexer's embedding step (``indexer.build._embed``: identical inputs embedded
  once, batches of ``--batch-size``, and whatever else the indexer computes in that step) with each backend.

Each reports seconds and passages per second (all passages, duplicates included, so deduplication counts as the
saving it is), and ``ratio_to_baseline`` = its passages/s over the baseline's. Model loading, the int8 export (timed
on its own as ``load_seconds``) and a short warm-up are outside the timings. ``cosine_to_torch`` compares each
method's passage vectors with the torch backend's.

``--scifact DIR --work DIR`` adds a quality check: for each backend a SciFact index built with the real CLI
(``newsdesk index DIR/corpus.jsonl --backend X``), the test queries searched with the same backend, nDCG@10 scored
by ``bench.scifact.evaluate`` (trec_eval). That part embeds ~16,500 passages per backend: 10+ minutes of CPU each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.scifact import evaluate, read_qrels, read_queries, read_trec_run, run_cli, write_jsonl  # noqa: E402
from indexer.build import _embed, embedding_input, make_chunker  # noqa: E402
from indexer.sources import read_sources  # noqa: E402
from search.models import Article  # noqa: E402
from search.settings import BACKENDS, Settings  # noqa: E402
from search.text.chunking import Chunk  # noqa: E402
from search.text.embedding import Embedder, make_embedder, resolve_model  # noqa: E402

BASELINE_BATCH = 32
WARMUP = 64  # passages embedded once before each timed run (first-call allocations, lazy initialisation)


def load_passages(data: Path, limit: int, settings: Settings, embedder: Embedder) -> list[tuple[Article, list[Chunk]]]:
    """Articles with their chunks, in corpus order, holding ``limit`` passages in all (the last article cut)."""
    source = data / "articles.jsonl.gz" if data.is_dir() else data
    chunker = make_chunker(settings, embedder)
    out: list[tuple[Article, list[Chunk]]] = []
    total = 0
    for article in read_sources([source]):
        chunks = chunker.chunk(article)[: limit - total]
        if chunks:
            out.append((article, chunks))
            total += len(chunks)
        if total >= limit:
            break
    return out


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a * b, axis=1)
    return {
        "min": round(float(cos.min()), 5),
        "p01": round(float(np.percentile(cos, 1)), 5),
        "mean": round(float(cos.mean()), 5),
    }


def throughput(data: Path, limit: int, settings: Settings, backends: Sequence[str]) -> dict[str, Any]:
    loaded, load_seconds = timed(lambda: make_embedder(settings.replace(backend="torch")))
    embedders: dict[str, Embedder] = {"torch": loaded}
    loads = {"torch": round(load_seconds, 2)}
    chunked = load_passages(data, limit, settings, embedders["torch"])
    passages = [embedding_input(a, c, settings.title_context) for a, chunks in chunked for c in chunks]
    n = len(passages)

    from sentence_transformers import SentenceTransformer

    baseline_model = SentenceTransformer(resolve_model(settings.model), device="cpu")
    baseline_model.encode(passages[:WARMUP], batch_size=BASELINE_BATCH)
    baseline, seconds = timed(
        lambda: baseline_model.encode(passages, batch_size=BASELINE_BATCH, normalize_embeddings=True)
    )
    methods: dict[str, dict[str, Any]] = {
        "baseline": {"seconds": round(seconds, 2), "passages_per_second": round(n / seconds, 1)}
    }
    vectors: dict[str, np.ndarray] = {"baseline": np.asarray(baseline, dtype=np.float32)}

    for backend in backends:
        if backend not in embedders:
            embedders[backend], load_seconds = timed(lambda b=backend: make_embedder(settings.replace(backend=b)))
            loads[backend] = round(load_seconds, 2)
        embedder = embedders[backend]
        embedder.encode(passages[:WARMUP], batch_size=settings.batch_size)
        result, seconds = timed(lambda e=embedder: _embed(chunked, e, settings))
        vectors[backend] = result[0]
        methods[backend] = {
            "seconds": round(seconds, 2),
            "passages_per_second": round(n / seconds, 1),
            "embedded": int(result[-1]),
            "load_seconds": loads[backend],
            "ratio_to_baseline": round(methods["baseline"]["seconds"] / seconds, 3),
        }
    if "torch" in vectors:
        for name, vecs in vectors.items():
            if name != "torch":
                methods[name]["cosine_to_torch"] = cosine_stats(vectors["torch"], vecs)
    return {
        "passages": n,
        "unique_inputs": len(set(passages)),
        "articles": len(chunked),
        "mean_passage_tokens": round(float(np.mean([embedders["torch"].count_tokens(p) for p in passages[:500]])), 1),
        "batch_size": {"baseline": BASELINE_BATCH, "ours": settings.batch_size},
        "methods": methods,
    }


def remove_index(index: Path) -> None:
    """An index is a symlink to a versioned directory beside it: remove both."""
    if index.is_symlink():
        shutil.rmtree(index.parent / os.readlink(index), ignore_errors=True)
        index.unlink()
    elif index.exists():
        shutil.rmtree(index)


def _built_with(index: Path, backend: str) -> bool:
    """An index already in ``--work`` whose vectors this backend made (an index without the field is torch's)."""
    try:
        manifest = json.loads((index / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(manifest["model"].get("backend", "torch") == backend)


def scifact(data: Path, work: Path, backends: Sequence[str], reuse: bool = False) -> dict[str, Any]:
    """Build a SciFact index per backend with the real CLI (or reuse one with ``reuse``) and score the test
    split's nDCG@10 with trec_eval."""
    data, work = data.resolve(), work.absolute()
    qrels = read_qrels(data / "qrels" / "test.tsv")
    queries = read_queries(data / "queries.jsonl", qrels)
    work.mkdir(parents=True, exist_ok=True)
    query_file = work / "queries-test.jsonl"
    write_jsonl(query_file, ({"_id": q, "text": t} for q, t in queries))
    out: dict[str, Any] = {}
    for backend in backends:
        index = work / f"scifact-{backend}"
        run_path = work / f"run-test-{backend}.trec"
        index_seconds: float | None = None
        if not (reuse and _built_with(index, backend)):
            remove_index(index)  # a fresh build, not an update that would keep another backend's vectors
            index_seconds = run_cli(
                ["index", str(data / "corpus.jsonl"), "--index", str(index), "--backend", backend, "-q"]
            )
        search_args = ["search", "--index", str(index), "--queries", str(query_file), "--k", "100"]
        search_seconds = run_cli([*search_args, "--run", str(run_path), "--backend", backend])
        manifest = json.loads((index / "manifest.json").read_text(encoding="utf-8"))
        metrics = evaluate(qrels, read_trec_run(run_path))
        out[backend] = {
            "ndcg_cut_10": round(metrics["ndcg_cut_10"], 5),
            "recall_100": round(metrics["recall_100"], 5),
            "index_seconds": None if index_seconds is None else round(index_seconds, 1),
            "search_seconds": round(search_seconds, 1),
            "index_backend": manifest["model"].get("backend"),
            "passages": manifest["counts"]["passages"],
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, required=True, help="BBC folder (articles.jsonl.gz) or a source file.")
    parser.add_argument("--limit", type=int, default=3000, help="Passages to embed (default 3000).")
    parser.add_argument("--batch-size", type=int, default=None, help="Our batch size (default: the setting's).")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="Comma-separated backends to time.")
    parser.add_argument("--scifact", type=Path, default=None, help="BEIR SciFact folder: also score nDCG@10.")
    parser.add_argument("--work", type=Path, default=None, help="Where the SciFact indexes go (with --scifact).")
    parser.add_argument(
        "--reuse", action="store_true", help="Keep a SciFact index in --work built by the same backend (no rebuild)."
    )
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if args.scifact is not None and args.work is None:
        parser.error("--scifact needs --work")
    settings = Settings.from_env(batch_size=args.batch_size)
    report: dict[str, Any] = {
        "benchmark": "embed",
        "data": str(args.data),
        "limit": args.limit,
        "threads": settings.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()[0]},
    }
    report["throughput"] = throughput(args.data, args.limit, settings, backends)
    if args.scifact is not None:
        report["scifact"] = scifact(args.scifact, args.work, backends, args.reuse)
        if {"torch", "onnx-int8"} <= set(report["scifact"]):
            fp32, int8 = (report["scifact"][b]["ndcg_cut_10"] for b in ("torch", "onnx-int8"))
            report["scifact"]["onnx_int8_relative_to_torch"] = round(int8 / fp32, 4)
    report["machine"]["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
