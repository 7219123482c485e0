"""The RealTime QA archive through the whole indexer, at two sizes in one run: build, open, memory, search, writes.

    .venv/bin/python bench/archive.py --sizes 2667,5000 --work /tmp/archive [--out bench/results/archive.json]
    .venv/bin/python bench/archive.py --limit-articles 300 --work /tmp/archive      # one small size: a quick run
    .venv/bin/python bench/archive.py --sizes 2667,26671 --work /tmp/archive         # the issue's 110k and 1.1M

Issue 17's benchmark (its first half). Each size is the first N articles of
``../shared/data/realtimeqa/news_corpus.jsonl.gz`` (26,671 articles, 1.1M paragraphs), indexed by
``indexer.build.build_index`` itself: reading, chunking, SQLite, FAISS, BM25, duplicate and story labels,
more-like-this profiles, the manifest and the atomic swap, with the default settings. The one thing swapped is the
model: ``HashVectorEmbedder`` (below, living here only), a deterministic hashed bag of words in 384 dimensions,
because embedding 1.1M passages with the real model takes hours on 2 cores. Vectors of the model's dimension make
every size, memory figure and FAISS cost the real one's; only which passages are near each other differs.

Per size, in two fresh processes (so that one size's memory or caches never count in the other's):

- ``build``: seconds by stage, measured by timing wrappers around the indexer's own functions (behaviour
  unchanged): ``read`` (parsing the corpus into articles), ``chunk`` (``new_articles`` less its embedding),
  ``embed`` (the hash embedder), ``sqlite_write`` (``Store.add_articles``), ``faiss`` (``open_vectors``: building
  both FAISS indexes and saving them), ``labels`` (duplicate and story labels: ``label_unlabelled``,
  ``Store.set_groups``, ``save_duplicates``), ``bm25`` (postings built and saved), ``profiles`` (``load_graph``),
  ``caches_and_swap`` (the rest: manifest, fsyncs, the swap); and ``total``; ``build_peak_rss_bytes`` the build
  process's peak resident size.
- ``serve``: ``open_s`` (``open_index`` + ``SearchService`` + the first answered hybrid search, caches present),
  ``memory`` (resident bytes by component, search/memory.py, right after that first search), ``latency_ms``
  (p50/p99 in process, k=10: ``hybrid`` and ``dense`` over ``--queries`` RealTime QA questions, ``similar`` over as
  many articles), ``write`` (``--rounds`` rounds of a 10-article ``add_articles`` of articles not in the index, and a
  ``delete_articles`` of them: ``add_s`` with the hash embedding included, ``add_excl_embedding_s`` less the time
  inside the embedder, ``real_embedding_s`` the real model (``make_embedder``, loaded after the memory figure)
  chunking and embedding the same 10 articles, ``add_with_real_embedding_s`` = excluded + real; medians).

``ratios``: each figure at the largest size over the smallest, and ``projection``: the full corpus's passages (at
the measured passages per article) and what a straight line through the two sizes gives there (RSS, build time and
peak, open time, write and delete cost, disk). ``load_average``: the machine is shared, so how busy it was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from indexer.sources import read_sources  # noqa: E402
from search.models import Article  # noqa: E402
from search.settings import Settings  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "realtimeqa"
CORPUS = "news_corpus.jsonl.gz"
QUESTIONS = "questions_dev.jsonl"
HELD_OUT = 200  # articles after the largest size: what the writes add (never in the index beforehand)
WRITE_ARTICLES = 10
TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def log(msg: str) -> None:
    print(f"[archive {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class HashVectorEmbedder:
    """A deterministic stand-in for the model: each token (a word or a punctuation mark, as ``TOKEN`` splits the
    casefolded text) adds +1 or -1 (one bit of its CRC-32) to one of 384 dimensions (the CRC-32 modulo 384), and
    the sum is L2-normalised. Texts sharing words get near vectors, so duplicate and story labels, profiles and
    similar articles have real work to do; ``count_tokens`` counts the same tokens, so chunking cuts passages
    of about the model's 256-token window."""

    name = "bench-hash-vectors"

    def __init__(self, dimension: int = 384, max_seq_length: int = 256) -> None:
        self.dimension = dimension
        self.max_seq_length = max_seq_length

    def _vector(self, text: str) -> np.ndarray:
        tokens = TOKEN.findall(text.casefold())
        if not tokens:
            out = np.zeros(self.dimension, np.float32)
            out[0] = 1.0
            return out
        codes = np.fromiter((zlib.crc32(t.encode()) for t in tokens), dtype=np.uint32, count=len(tokens))
        signs = np.where(codes & 0x80000000, 1.0, -1.0)
        v = np.bincount(codes % self.dimension, weights=signs, minlength=self.dimension).astype(np.float32)
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            v[0], norm = 1.0, 1.0
        return v / norm

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        return np.stack([self._vector(t) for t in texts])

    def encode_spans(
        self, texts: list[str], spans: list[list[tuple[int, int]]], *, batch_size: int = 64
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        return self.encode(texts), [self.encode([t[a:b] for a, b in sp]) for t, sp in zip(texts, spans, strict=True)]

    def count_tokens(self, text: str) -> int:
        return len(TOKEN.findall(text)) + 2  # and the model's [CLS] and [SEP]

    def fingerprint(self) -> dict[str, Any]:
        probe = self.encode(["North Korea accuses the United States of building an alliance in Asia."] * 3)
        return {
            "name": self.name,
            "dimension": self.dimension,
            "normalized": True,
            "files_sha256": None,
            "probe": [[round(float(x), 6) for x in v] for v in probe],
        }


def read_articles(data: Path, limit: int) -> list[Article]:
    """The first ``limit`` articles of the corpus, parsed by the indexer's own reader (``read_sources``)."""
    out: list[Article] = []
    for article in read_sources([data / CORPUS]):
        out.append(article)
        if len(out) >= limit:
            break
    return out


# -- timing wrappers around the indexer's own functions --------------------------------------------------------


class Stages:
    """Seconds spent inside patched functions, by stage (nested calls of one stage are counted once)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._depth: dict[str, int] = {}

    def timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            depth = self._depth.get(stage, 0)
            self._depth[stage] = depth + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[stage] = depth
                if depth == 0:
                    self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        return wrapper


@contextlib.contextmanager
def patched(stages: Stages) -> Iterator[None]:
    """Wrap the build's stages in timers for the duration (module attributes and class methods restored after)."""
    import indexer.build as build
    from search.storage.store import Store
    from search.text.bm25 import LexicalPostings

    saved: list[tuple[object, str, Any]] = []

    def wrap(owner: object, name: str, stage: str, kind: str = "function") -> None:
        original = vars(owner)[name] if isinstance(owner, type) else getattr(owner, name)
        saved.append((owner, name, original))
        if kind == "classmethod":
            setattr(owner, name, classmethod(stages.timed(stage, original.__func__)))
        else:
            setattr(owner, name, stages.timed(stage, original))

    wrap(build, "new_articles", "chunk_embed")
    wrap(build, "_embed", "embed")
    wrap(Store, "add_articles", "sqlite_write")
    wrap(build, "open_vectors", "faiss")
    wrap(build, "label_unlabelled", "labels")
    wrap(Store, "set_groups", "labels")
    wrap(build, "save_duplicates", "labels")
    wrap(LexicalPostings, "build", "bm25", "classmethod")
    wrap(LexicalPostings, "save", "bm25")
    wrap(build, "load_graph", "profiles")
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def build_phase(data: Path, size: int, target: Path) -> dict[str, Any]:
    from indexer.build import build_index

    stages = Stages()
    start = time.perf_counter()
    articles = read_articles(data, size)
    read_s = time.perf_counter() - start
    with patched(stages):
        begun = time.perf_counter()
        report = build_index(articles, target, Settings(index_dir=target), HashVectorEmbedder(), progress=False)
        total = time.perf_counter() - begun
    s = stages.seconds
    out = {
        "read": read_s,
        "chunk": s.get("chunk_embed", 0.0) - s.get("embed", 0.0),
        "embed": s.get("embed", 0.0),
        "sqlite_write": s.get("sqlite_write", 0.0),
        "faiss": s.get("faiss", 0.0),
        "labels": s.get("labels", 0.0),
        "bm25": s.get("bm25", 0.0),
        "profiles": s.get("profiles", 0.0),
    }
    out["caches_and_swap"] = total - sum(v for k, v in out.items() if k != "read")
    out["total"] = read_s + total
    return {
        "articles": report.articles,
        "passages": report.passages,
        "seconds": {k: round(v, 3) for k, v in out.items()},
        "on_disk_bytes": sum(p.stat().st_size for p in target.resolve().iterdir() if p.is_file()),
        "peak_rss_bytes": peak_rss(),
    }


def peak_rss() -> int:
    """This process's peak resident size (``getrusage``, KiB on Linux): what a build needs at most."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# -- serving ---------------------------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2)}


def load_questions(data: Path, n: int) -> list[str]:
    with (data / QUESTIONS).open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [str(r["question"]) for r in rows[:n]]


class TimedEmbedder(HashVectorEmbedder):
    """The hash embedder, adding up the seconds spent inside it (what a write spends embedding)."""

    spent = 0.0

    def encode_spans(
        self, texts: list[str], spans: list[list[tuple[int, int]]], *, batch_size: int = 64
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        start = time.perf_counter()
        try:
            return super().encode_spans(texts, spans, batch_size=batch_size)
        finally:
            self.spent += time.perf_counter() - start


def serve_phase(data: Path, target: Path, size: int, queries: int, rounds: int, real_model: bool) -> dict[str, Any]:
    from dataclasses import replace

    from indexer.build import make_chunker, new_articles
    from indexer.update import add_articles, delete_articles
    from search.memory import memory_report
    from search.service import SearchService
    from search.storage.index import open_index

    settings = Settings(index_dir=target)
    questions = load_questions(data, queries)
    embedder = TimedEmbedder()
    start = time.perf_counter()
    service = SearchService(open_index(target, embedder), embedder, settings)
    service.search(questions[0], k=10, mode="hybrid")
    open_s = time.perf_counter() - start
    memory = memory_report(service.index.memory(), embedder)

    latency: dict[str, dict[str, float]] = {}
    for mode in ("hybrid", "dense"):
        for q in questions[:5]:  # warm-up
            service.search(q, k=10, mode=mode)
        times = []
        for q in questions:
            t = time.perf_counter()
            service.search(q, k=10, mode=mode)
            times.append(time.perf_counter() - t)
        latency[mode] = percentiles(times)
    ids = service.index.catalog.ids
    picks = np.random.default_rng(17).choice(len(ids), size=min(queries, len(ids)), replace=False)
    times = []
    for i in picks.tolist():
        t = time.perf_counter()
        service.similar(ids[i], k=10)
        times.append(time.perf_counter() - t)
    latency["similar"] = percentiles(times)

    held = [a for a in read_articles(data, size + HELD_OUT)[size:] if a.paragraphs]
    adds, excl, deletes = [], [], []
    batches = []
    for r in range(rounds):
        batch = [replace(a, id=f"bench-write-{r}-{a.id}") for a in held[r * WRITE_ARTICLES : (r + 1) * WRITE_ARTICLES]]
        batches.append(batch)
        embedder.spent = 0.0
        t = time.perf_counter()
        add_articles(service.index, batch, embedder, settings)
        adds.append(time.perf_counter() - t)
        excl.append(adds[-1] - embedder.spent)
        t = time.perf_counter()
        delete_articles(service.index, [a.id for a in batch])
        deletes.append(time.perf_counter() - t)
    write: dict[str, Any] = {
        "articles": WRITE_ARTICLES,
        "rounds": rounds,
        "add_s": round(statistics.median(adds), 4),
        "add_excl_embedding_s": round(statistics.median(excl), 4),
        "delete_s": round(statistics.median(deletes), 4),
    }
    if real_model:
        from search.text.embedding import make_embedder

        real = make_embedder(settings)
        chunker = make_chunker(settings, real)
        spent = []
        for batch in batches:
            t = time.perf_counter()
            new_articles(batch, chunker, real, settings, {})
            spent.append(time.perf_counter() - t)
        write["real_model"] = real.name + f" ({real.fingerprint().get('backend', 'torch')})"
        write["real_embedding_s"] = round(statistics.median(spent), 4)
        write["add_with_real_embedding_s"] = round(write["add_excl_embedding_s"] + write["real_embedding_s"], 4)
    service.index.close()
    return {"open_s": round(open_s, 3), "memory": memory, "latency_ms": latency, "write": write}


# -- the run ---------------------------------------------------------------------------------------------------


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "fma", "sse4_2")
                return " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
    except OSError:
        pass
    return ""


def child(args: argparse.Namespace, phase: str, size: int) -> dict[str, Any]:
    """One phase in a fresh process, its JSON read from stdout."""
    command = [sys.executable, __file__, "--phase", phase, "--size", str(size), "--work", str(args.work)]
    command += ["--data", str(args.data), "--queries", str(args.queries), "--rounds", str(args.rounds)]
    if not args.real_model:
        command.append("--no-real-model")
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def ratios(small: dict[str, Any], large: dict[str, Any]) -> dict[str, float]:
    def r(a: float, b: float) -> float:
        return round(b / a, 2) if a else float("nan")

    out = {
        "passages": r(small["passages"], large["passages"]),
        "build_total": r(small["build"]["total"], large["build"]["total"]),
        "open_s": r(small["open_s"], large["open_s"]),
        "rss": r(small["memory"]["rss"], large["memory"]["rss"]),
    }
    for mode, lat in large["latency_ms"].items():
        for p in ("p50", "p99"):
            out[f"{mode}_{p}"] = r(small["latency_ms"][mode][p], lat[p])
    out["build_peak_rss"] = r(small["build_peak_rss_bytes"], large["build_peak_rss_bytes"])
    for key in ("add_s", "add_excl_embedding_s", "delete_s", "add_with_real_embedding_s"):
        if key in large["write"]:
            out[f"write_{key}"] = r(small["write"][key], large["write"][key])
    return out


def projection(small: dict[str, Any], large: dict[str, Any], full_passages: int) -> dict[str, Any]:
    """RSS and build time at ``full_passages``, on the straight line through the two measured sizes."""
    dp = large["passages"] - small["passages"]

    def line(a: float, b: float) -> float:
        return a + (b - a) * (full_passages - small["passages"]) / dp if dp else float("nan")

    return {
        "passages": full_passages,
        "rss_gib": round(line(small["memory"]["rss"], large["memory"]["rss"]) / 2**30, 2),
        "build_min": round(line(small["build"]["total"], large["build"]["total"]) / 60, 1),
        "build_peak_rss_gib": round(line(small["build_peak_rss_bytes"], large["build_peak_rss_bytes"]) / 2**30, 2),
        "open_s": round(line(small["open_s"], large["open_s"]), 1),
        "write_add_excl_embedding_s": round(
            line(small["write"]["add_excl_embedding_s"], large["write"]["add_excl_embedding_s"]), 2
        ),
        "write_delete_s": round(line(small["write"]["delete_s"], large["write"]["delete_s"]), 2),
        "on_disk_gib": round(line(small["on_disk_bytes"], large["on_disk_bytes"]) / 2**30, 2),
        "method": "linear through the two sizes (passages); the corpus's passages estimated at the measured "
        "passages per article",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2667,26671", help="articles per size, comma-separated (first N)")
    parser.add_argument("--limit-articles", type=int, help="one size of N articles (overrides --sizes)")
    parser.add_argument("--work", type=Path, required=True, help="where the indexes are built (kept for reuse)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--queries", type=int, default=200, help="questions (and similar articles) timed per mode")
    parser.add_argument("--rounds", type=int, default=3, help="10-article writes (and deletes) per size")
    parser.add_argument("--no-real-model", dest="real_model", action="store_false", help="skip the real model")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--phase", choices=("build", "serve"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.phase is not None:
        target = args.work / f"archive-{args.size}"
        if args.phase == "build":
            result = build_phase(args.data, args.size, target)
        else:
            result = serve_phase(args.data, target, args.size, args.queries, args.rounds, args.real_model)
        print(json.dumps(result))
        return

    sizes = [args.limit_articles] if args.limit_articles else [int(s) for s in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    for size in sizes:
        log(f"{size} articles: building")
        built = child(args, "build", size)
        log(f"{size} articles: {built['passages']} passages in {built['seconds']['total']:.0f} s; serving")
        served = child(args, "serve", size)
        runs.append(
            {
                "articles": built["articles"],
                "passages": built["passages"],
                "build": built["seconds"],
                "on_disk_bytes": built["on_disk_bytes"],
                "build_peak_rss_bytes": built["peak_rss_bytes"],
                **served,
            }
        )
        log(f"{size} articles: open {served['open_s']} s, hybrid {served['latency_ms']['hybrid']}")
    report: dict[str, Any] = {
        "benchmark": "bench/archive.py",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "embedder": f"{HashVectorEmbedder.name} (bench/archive.py HashVectorEmbedder, 384 dimensions)",
        "cpu": {"model": platform.processor() or platform.machine(), "cores": os.cpu_count(), "flags": cpu_flags()},
        # the machine is shared: the 1-minute load average before and after the run says how busy it was
        "load_average": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "corpus": str(args.data / CORPUS),
        "sizes": runs,
    }
    if len(runs) > 1:
        small, large = runs[0], runs[-1]
        report["ratios"] = ratios(small, large)
        per_article = large["passages"] / large["articles"]
        report["projection"] = projection(small, large, round(26_671 * per_article))
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
