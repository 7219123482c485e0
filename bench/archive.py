"""The RealTime QA archive through the whole indexer, at two sizes in one run: issue 17's whole benchmark.

    .venv/bin/python bench/archive.py --sizes 2667,26671 --real-subset 3000 --work /tmp/archive \
        --out bench/results/archive.json                                    # the issue's 110k and 1.1M passages
    .venv/bin/python bench/archive.py --sizes 20,40 --http-seconds 3 --write-seconds 3 --work /tmp/a  # a check

Each size is the first N articles of ``../shared/data/realtimeqa/news_corpus.jsonl.gz`` (26,671 articles, 1.1M
paragraphs), indexed by ``indexer.build.build_index`` itself: reading, chunking, SQLite, FAISS, BM25, duplicate and
story labels, more-like-this profiles, the manifest and the atomic swap, with the default settings. The one thing
swapped is the model: ``HashVectorEmbedder`` (below, living here only), a deterministic hashed bag of words in 384
dimensions, because embedding 1.1M passages with the real model takes hours on 2 cores. Vectors of the model's
dimension make every size, memory figure and FAISS cost the real one's; only which passages are near each other
differs. Only public entry points are used (``build_index``, ``indexer.update``, ``indexer.live.Writer``,
``SearchService``, the ``newsdesk`` CLI and the HTTP API), so changes to the index internals flow in unedited.

Per size, each phase in a fresh process (so that one size's memory or caches never count in the other's):

- ``build``: seconds by stage, measured by timing wrappers around the indexer's own functions (behaviour
  unchanged): ``read``, ``chunk`` (``new_articles`` less its embedding), ``embed`` (the hash embedder),
  ``sqlite_write``, ``faiss`` (``open_vectors``), ``labels`` (duplicate and story labels), ``bm25``, ``profiles``
  (``load_graph``), ``caches_and_swap`` (the rest); ``total``; the build process's peak resident size.
- ``serve`` (in process): ``open_s`` (``open_index`` + ``SearchService`` + the first answered hybrid search),
  ``memory`` (resident bytes by component, search/memory.py); ``latency_ms``: p50/p99, k=10, of hybrid and dense
  search over ``--queries`` RealTime QA questions, and of similar, timeline and story over as many articles;
  ``quality`` (``quality_phase``): dense recall@10 of the served vector index against an exact search over the
  vectors SQLite stores, and the share of questions whose lexical top 10 (the service's lexical path) is the FTS5
  reference's (SQLite's exhaustive BM25); ``write``: ``--rounds`` 10-article ``add_articles`` of articles not in the
  index and their ``delete_articles``, with and without the hash embedding, and the real model's chunking and
  embedding of the same articles added; ``writes_under_load``: hybrid search p50/p99 for ``--write-seconds`` alone
  and then while a writer thread adds and deletes 10-article batches through ``indexer.live.Writer`` (the API's
  write path in a server of one process), with those writes' costs, split into writes that appended segments and
  writes that merged them; ``writes_beside_process``: the same with the writes in another process at
  ``write_nice``, as the default server of several processes does them (its write process, api/writes.py).
- ``newsdesk optimize`` (merging what the writes appended) and ``newsdesk check``, timed.
- ``http``: ``newsdesk serve`` (the default server for the cores here) with the hash embedder swapped in
  (``--hash-newsdesk``, ``hash_newsdesk``): seconds from the command to its first answered search, resident and
  peak memory summed over its processes, then hybrid searches from ``--http-clients`` client threads and from one,
  ``--http-seconds`` each.

``--real-subset N``: the first N articles built with the real model through ``newsdesk index`` (resumed: skipped
when a checked build of N is there), then served in process: search, similar, timeline, story, a 10-article write
with real embedding and its delete through ``Writer``, ``optimize``, ``newsdesk check``, and RealTime QA answer
recall@5 (questions with an evidence article in the subset) as built and after the writes and merge.

``ratios``: each figure at the largest size over the smallest; ``per_passage``: each size's memory components,
disk and build cost per passage (what docs/scale-out.md projects from); ``projection``: a straight line through
the two sizes to the whole corpus; ``acceptance``: issue 17's acceptance 1-4, each figure with its bar and pass or
fail. ``load_average`` and the CPU flags: the machine is shared. A text summary ends the run on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from functools import partial
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
HELD_OUT = 200  # articles the writes draw from (corpus_articles)
MIN_NOVEL = 50  # fewer articles after the largest size than this: the writes add copies
WRITE_ARTICLES = 10
FULL_CORPUS_ARTICLES = 26_671
SERVED = ("hybrid", "dense", "similar", "timeline", "story")  # what acceptance 1 says the index serves
HASH_CLI = "--hash-newsdesk"  # first argument: run the newsdesk CLI with the hash embedder (``hash_newsdesk``)
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
        report = build_index(
            articles, target, Settings.from_env(index_dir=target), HashVectorEmbedder(), progress=False
        )
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


def corpus_articles(data: Path, size: int, largest: int) -> tuple[list[Article], list[Article], str]:
    """The ``size`` articles the index was built from; the pool the writes draw their 10-article batches from (ids
    renamed: ``write_batch``), the same at every size of a run so that a ratio compares the same writes; and which
    pool it is. ``novel``: the articles after the run's ``largest`` size, in no index of the run, when the corpus
    has ``MIN_NOVEL`` of them; ``copies``: else (the whole corpus is indexed, nothing is left after it) the first
    ``HELD_OUT`` articles again, copies of articles every size holds, as wire copies reach a newsroom."""
    articles = read_articles(data, max(size, largest + HELD_OUT, HELD_OUT))
    after = [a for a in articles[largest:] if a.paragraphs]
    if len(after) >= MIN_NOVEL:
        return articles[:size], after, "novel"
    return articles[:size], [a for a in articles[:HELD_OUT] if a.paragraphs], "copies"


def timed_calls(call: Callable[[str], object], keys: list[str]) -> dict[str, Any]:
    """p50/p99 of ``call`` over ``keys``; a key the index lacks (``NotFound``: an id the build replaced) is counted,
    not timed."""
    from search.errors import NotFound

    times, missing = [], 0
    for key in keys:
        t = time.perf_counter()
        try:
            call(key)
        except NotFound:
            missing += 1
            continue
        times.append(time.perf_counter() - t)
    out: dict[str, Any] = percentiles(times) if times else {"p50": None, "p99": None}
    out["calls"] = len(times)
    if missing:
        out["not_found"] = missing
    return out


def serving_latency(service: Any, questions: list[str], ids: list[str]) -> dict[str, dict[str, Any]]:
    """p50/p99 in process, k=10: hybrid and dense search over ``questions`` (after 5 warm-up queries), similar
    articles, an article's timeline and its story over ``ids`` (acceptance 1: the index serves all of them)."""
    latency: dict[str, dict[str, Any]] = {}
    for mode in ("hybrid", "dense"):
        for q in questions[:5]:  # warm-up
            service.search(q, k=10, mode=mode)
        latency[mode] = timed_calls(partial(service.search, k=10, mode=mode), questions)
    latency["similar"] = timed_calls(lambda i: service.similar(i, k=10), ids)
    latency["timeline"] = timed_calls(lambda i: service.timeline(i, k=20), ids)
    stories: list[str] = []
    for i in ids:
        with contextlib.suppress(Exception):
            story = service.article_with_labels(i)[1].story_id
            if story:
                stories.append(story)
    latency["story"] = timed_calls(service.story, stories)
    return latency


def exact_top(directory: Path, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` passages (scores, ids; best first) of each query by inner product over every vector
    SQLite stores (the source of truth, whatever index type serves them), read in batches."""
    from search.storage.index import open_store

    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    store = open_store(directory)
    try:
        for ids, vectors in store.iter_vectors("passages", batch=32768):
            scores = queries @ vectors.T
            all_s = np.concatenate([best_s, scores], axis=1)
            all_i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
            keep = np.argpartition(-all_s, k - 1, axis=1)[:, :k] if all_s.shape[1] > k else np.arange(k)[None]
            best_s = np.take_along_axis(all_s, keep, axis=1)
            best_i = np.take_along_axis(all_i, keep, axis=1)
    finally:
        store.close()
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def same_top(served: list[tuple[int, float]], reference: list[tuple[int, float]]) -> bool:
    """Whether two top-k lists are the same ranking: the same ids in order, or (scores equal to 1e-4 relative, as
    FTS5's float64 and the postings' float32 round) the same score at every rank and the same ids within each tied
    score, the last tie group excepted (which of several tied rows fills the cut is arbitrary)."""
    if [i for i, _ in served] == [i for i, _ in reference]:
        return True
    if len(served) != len(reference):
        return False

    def key(score: float) -> float:
        return float(f"{score:.4g}")

    if [key(s) for _, s in served] != [key(s) for _, s in reference]:
        return False
    last = key(served[-1][1]) if served else None
    groups: dict[float, tuple[set[int], set[int]]] = {}
    for (a, sa), (b, _) in zip(served, reference, strict=True):
        pair = groups.setdefault(key(sa), (set(), set()))
        pair[0].add(a)
        pair[1].add(b)
    return all(x == y for score, (x, y) in groups.items() if score != last)


def quality_phase(service: Any, directory: Path, questions: list[str], k: int = 10) -> dict[str, Any]:
    """Exactness of what the served index answers, on ``questions``.

    ``dense_recall_at_10``: the passages the served vector index returns (``index.passages.search``, whatever
    type it is: exact, or ANN above a threshold) against the exact top 10 over the stored vectors; a returned
    passage counts when its exact score reaches the exact 10th score (less 1e-5, so ties count as found).
    ``lexical_identical``: the share of questions whose lexical top 10 from the service's lexical path
    (``service.lexical``, pruned or not as the settings say) is the ranking of the FTS5 reference
    (search/text/fts.py, SQLite's own exhaustive BM25 over the same rows), for passages and for articles."""
    from search.text.fts import Fts5Lexical

    if not questions:
        return {}
    started = time.perf_counter()
    qvecs = np.stack([service.embed_query(q) for q in questions]).astype(np.float32)
    exact_s, _ = exact_top(directory, qvecs, k)
    exact_s_elapsed = time.perf_counter() - started
    recalls, served_ms = [], []
    for qi, qvec in enumerate(qvecs):
        t = time.perf_counter()
        _, ids = service.index.passages.search(qvec[None, :], k)
        served_ms.append(time.perf_counter() - t)
        got = [int(i) for i in ids[0] if i >= 0]
        stored = service.index.store.passage_vectors(got)
        scores = [float(stored[i] @ qvec) for i in got if i in stored]
        kth = float(exact_s[qi][min(k, len(exact_s[qi])) - 1])
        recalls.append(sum(s >= kth - 1e-5 for s in scores) / k)
    reference = Fts5Lexical(service.index.store, service.settings.title_weight)
    identical = {"passages": 0, "articles": 0}
    mismatches: list[str] = []
    t = time.perf_counter()
    for q in questions:
        for table in identical:
            mine = getattr(service.lexical, f"search_{table}")(q, k)
            theirs = getattr(reference, f"search_{table}")(q, k)
            if same_top(mine, theirs):
                identical[table] += 1
            elif len(mismatches) < 3:
                mismatches.append(f"{table}: {q!r}")
    return {
        "queries": len(questions),
        "related": related_recall(service),
        "dense_recall_at_10": round(float(np.mean(recalls)), 4),
        "dense_recall_min": round(float(np.min(recalls)), 4),
        "served_vector_search_ms": percentiles(served_ms),
        "exact_search_s": round(exact_s_elapsed, 2),
        "lexical_identical": {t_: round(n / len(questions), 4) for t_, n in identical.items()},
        "lexical_mismatches": mismatches,
        "lexical_check_s": round(time.perf_counter() - t, 2),
        "lexical_pruning": bool(service.settings.lexical_pruning),
        "reference": "exact inner product over SQLite's vectors; FTS5 bm25() (search/text/fts.py)",
    }


def related_recall(service: Any, sample: int = 200) -> dict[str, Any]:
    """What related stories re-ranked from the more-like-this profiles (``RelatedFinder.from_profiles``) keep of
    the scan over every article vector (``scan``), for ``sample`` articles: the share of the scan's top
    ``related_per_result`` they list, and each method's time per 10 articles (a page). ``served_from_profiles``:
    whether this index's size puts search pages on the profiles (setting ``related_from_profiles``). On hash
    vectors the figure understates it: their cosine carries none of the meaning the profiles' tf-idf side does."""
    graph = service.index.neighbours
    if graph is None or not len(graph.keys):
        return {"profiles": False}
    k = max(1, service.settings.related_per_result)
    rng = np.random.default_rng(23)
    aids = rng.choice(graph.keys, size=min(sample, len(graph.keys)), replace=False).tolist()
    finder = service.related
    timed: dict[str, float] = {}
    answers: dict[str, list[list[tuple[int, float]]]] = {}
    for name, method in (("scan", finder.scan), ("from_profiles", finder.from_profiles)):
        t = time.perf_counter()
        answers[name] = [row for i in range(0, len(aids), 10) for row in method(aids[i : i + 10], k)]
        timed[name] = round((time.perf_counter() - t) * 1000 / len(aids) * 10, 2)
    kept = [
        len({a for a, _ in exact} & {a for a, _ in mine}) / len(exact)
        for exact, mine in zip(answers["scan"], answers["from_profiles"], strict=True)
        if exact
    ]
    threshold = service.settings.related_from_profiles
    return {
        "articles": len(aids),
        "k": k,
        "recall": round(float(np.mean(kept)), 4) if kept else None,
        "ms_per_10": timed,
        "served_from_profiles": threshold >= 0 and len(graph.keys) >= threshold,
    }


def segment_files(directory: Path) -> int:
    """Segment files in the index directory now (``*.seg-*``: vector segments, and any other cache's written the
    same way): a write that leaves no more of them than before merged instead of appending."""
    return sum(1 for p in directory.resolve().iterdir() if ".seg-" in p.name)


class WriteLog:
    """Each timed write: seconds, seconds less the embedding, and whether it merged segments (see
    ``segment_files``)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, bool]] = []

    def summary(self) -> dict[str, Any]:
        def med(values: list[float]) -> float | None:
            return round(statistics.median(values), 4) if values else None

        adds = [r for r in self.rows if r[0] == "add"]
        deletes = [r for r in self.rows if r[0] == "delete"]
        return {
            "adds": len(adds),
            "deletes": len(deletes),
            "add_s": med([r[1] for r in adds]),
            "add_p99_s": round(float(np.percentile([r[1] for r in adds], 99)), 4) if adds else None,
            "add_excl_embedding_s": med([r[2] for r in adds]),
            "delete_s": med([r[1] for r in deletes]),
            "appending_write_s": med([r[2] for r in self.rows if not r[3]]),
            "merging_write_s": med([r[2] for r in self.rows if r[3]]),
            "merging_writes": sum(r[3] for r in self.rows),
        }


def write_batch(held: list[Article], n: int, tag: str) -> list[Article]:
    """The ``n``-th 10-article batch of the held-out articles (cycling), under ids no other batch of the run has."""
    from dataclasses import replace

    start = (n * WRITE_ARTICLES) % max(len(held) - WRITE_ARTICLES + 1, 1)
    return [replace(a, id=f"bench-{tag}-{n}-{a.id}") for a in held[start : start + WRITE_ARTICLES]]


def searches_until(service: Any, questions: list[str], stop: Callable[[], bool]) -> list[float]:
    """Seconds of each hybrid search (k=10) made back to back over ``questions`` until ``stop()``."""
    times, n = [], 0
    while not stop():
        t = time.perf_counter()
        service.search(questions[n % len(questions)], k=10, mode="hybrid")
        times.append(time.perf_counter() - t)
        n += 1
    return times


def add_and_delete(writer: Any, embedder: TimedEmbedder, directory: Path, batch: list[Article], log: WriteLog) -> None:
    """One round of the writers under load: ``batch`` added, then deleted, through ``writer`` (an
    ``indexer.live.Writer``), each write's time (less its embedding) and whether it appended logged."""
    for kind in ("add", "delete"):
        before = segment_files(directory)
        embedder.spent = 0.0
        t = time.perf_counter()
        if kind == "add":
            writer.upsert(batch)
        else:
            writer.delete([a.id for a in batch])
        took = time.perf_counter() - t
        log.rows.append((kind, took, took - embedder.spent, segment_files(directory) <= before))


def writes_under_load(
    service: Any, embedder: TimedEmbedder, directory: Path, held: list[Article], questions: list[str], seconds: float
) -> dict[str, Any]:
    """Acceptance 2's second half, in process: hybrid searches back to back for ``seconds`` alone, then for
    ``seconds`` while a writer thread adds a 10-article batch and deletes it, again and again, through
    ``indexer.live.Writer`` (the API's write path: embedding outside the lock, the commit under it, the caches
    saved with searches running). Search p50/p99 both ways, and the writes' costs under that load."""
    from indexer.live import Writer

    writer = Writer(service)
    log = WriteLog()

    service.search(questions[0], k=10, mode="hybrid")  # a reload after earlier writes is not timed
    end = time.perf_counter() + seconds
    alone = searches_until(service, questions, lambda: time.perf_counter() >= end)

    done = threading.Event()
    failures: list[str] = []

    def write_loop() -> None:
        n = 0
        try:
            while not done.is_set():
                add_and_delete(writer, embedder, directory, write_batch(held, n, "load"), log)
                n += 1
        except Exception as exc:  # reported, and the run goes on: a failed write is a finding, not a crash
            failures.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=write_loop, name="bench-writer", daemon=True)
    end = time.perf_counter() + seconds
    thread.start()
    loaded = searches_until(service, questions, lambda: time.perf_counter() >= end)
    done.set()
    thread.join()
    p_alone, p_loaded = percentiles(alone), percentiles(loaded)
    return {
        "where": "in process (one search thread; one writer thread through indexer.live.Writer)",
        "seconds": seconds,
        "search_without_writes_ms": {**p_alone, "searches": len(alone)},
        "search_with_writes_ms": {**p_loaded, "searches": len(loaded)},
        "p99_ratio": round(p_loaded["p99"] / p_alone["p99"], 2) if p_alone["p99"] else None,
        "writes": log.summary(),
        "write_failures": failures,
    }


def writer_phase(data: Path, target: Path, size: int, largest: int, seconds: float) -> dict[str, Any]:
    """The writer process of ``writes_beside_process``: opens the index as a second server process would, says
    ``ready`` on stderr, then adds a 10-article batch and deletes it, again and again, through
    ``indexer.live.Writer`` for ``seconds``; its writes' costs as JSON."""
    from indexer.live import Writer
    from search.service import SearchService
    from search.storage.index import open_index

    embedder = TimedEmbedder()
    settings = Settings.from_env(index_dir=target)
    # niced as a server's write process is (api/server.py WriteProcess.claim), before loading anything
    os.setpriority(os.PRIO_PROCESS, 0, max(settings.write_nice, os.getpriority(os.PRIO_PROCESS, 0)))
    service = SearchService(open_index(target, embedder), embedder, settings)
    writer = Writer(service)
    writer.prepare()  # as the write process does before it listens
    _, held, _ = corpus_articles(data, size, largest)
    write_log = WriteLog()
    print("ready", file=sys.stderr, flush=True)
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        add_and_delete(writer, embedder, target, write_batch(held, n, "process"), write_log)
        n += 1
    print("done", file=sys.stderr, flush=True)  # the searches beside stop here, not after this process's exit
    service.index.close()
    return {**write_log.summary(), "nice": os.getpriority(os.PRIO_PROCESS, 0)}


def writes_beside_process(
    service: Any, data: Path, target: Path, size: int, largest: int, questions: list[str], seconds: float
) -> dict[str, Any]:
    """Acceptance 2's second half with the writer in another process, as the default server writes (its write process,
    api/writes.py, at ``write_nice``; or ``newsdesk watch``): hybrid searches back to back for ``seconds`` alone,
    then for ``seconds`` while that process adds and deletes 10-article batches without pausing. Each search first
    follows the writes committed since the one before (``SearchService.refresh``: search/storage/changes.py
    ``follow_log``), so its time includes reading what changed; how often that happened and what it cost are
    reported beside."""
    followed: list[float] = []
    refresh = service.refresh

    def timed_refresh() -> None:
        generation = service.generation
        t = time.perf_counter()
        refresh()
        if service.generation != generation:
            followed.append(time.perf_counter() - t)

    service.search(questions[0], k=10, mode="hybrid")
    end = time.perf_counter() + seconds
    alone = searches_until(service, questions, lambda: time.perf_counter() >= end)
    command = [sys.executable, __file__, "--phase", "writer", "--size", str(size), "--largest", str(largest)]
    command += ["--target", str(target), "--data", str(data), "--write-seconds", str(seconds), "--work", str(target)]
    errors = target.parent / f".writer-{size}.log"
    with errors.open("w+", encoding="utf-8") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
        while proc.poll() is None and "ready" not in errors.read_text(encoding="utf-8"):
            time.sleep(0.05)  # the writer's own open is not part of the figure
        service.refresh = timed_refresh
        try:
            loaded = searches_until(
                service, questions, lambda: proc.poll() is not None or "done" in errors.read_text(encoding="utf-8")
            )
        finally:
            service.refresh = refresh
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the writer process failed: {errors.read_text(encoding='utf-8').strip()[-300:]}")
    p_alone, p_loaded = percentiles(alone), percentiles(loaded)
    return {
        "where": "searches in this process; a second process writes through indexer.live.Writer",
        "seconds": seconds,
        "search_without_writes_ms": {**p_alone, "searches": len(alone)},
        "search_with_writes_ms": {**p_loaded, "searches": len(loaded)},
        "p99_ratio": round(p_loaded["p99"] / p_alone["p99"], 2) if p_alone["p99"] else None,
        "followed": {"writes": len(followed), **(percentiles(followed) if followed else {})},
        "writes": json.loads(out),
    }


def real_embedding(settings: Settings, batches: list[list[Article]]) -> dict[str, Any]:
    """The real model (``make_embedder``) chunking and embedding each 10-article batch as a write would: what a
    write spends embedding, which the hash embedder stands in for (the median over the batches)."""
    from indexer.build import make_chunker, new_articles
    from search.text.embedding import make_embedder

    real = make_embedder(settings)
    chunker = make_chunker(settings, real)
    spent = []
    for batch in batches:
        t = time.perf_counter()
        new_articles(batch, chunker, real, settings, {})
        spent.append(time.perf_counter() - t)
    return {
        "real_model": real.name + f" ({real.fingerprint().get('backend', 'torch')})",
        "real_embedding_s": round(statistics.median(spent), 4),
    }


def serve_phase(
    data: Path,
    target: Path,
    size: int,
    queries: int,
    rounds: int,
    real_model: bool,
    quality_queries: int,
    write_seconds: float,
    largest: int,
) -> dict[str, Any]:
    from indexer.update import add_articles, delete_articles
    from search.memory import memory_report
    from search.service import SearchService
    from search.storage.index import open_index

    settings = Settings.from_env(index_dir=target)
    questions = load_questions(data, queries)
    embedder = TimedEmbedder()
    start = time.perf_counter()
    service = SearchService(open_index(target, embedder), embedder, settings)
    service.search(questions[0], k=10, mode="hybrid")
    open_s = time.perf_counter() - start
    memory = memory_report(service.index.memory(), embedder)

    in_index, held, pool = corpus_articles(data, size, largest)
    picks = np.random.default_rng(17).choice(len(in_index), size=min(queries, len(in_index)), replace=False)
    ids = [in_index[i].id for i in picks.tolist()]
    del in_index  # the whole corpus's text at the full size: not kept beside the index while it is timed
    latency = serving_latency(service, questions, ids)
    log(f"{size} articles: latency {latency['hybrid']}; quality")
    quality = attempt("quality", lambda: quality_phase(service, target, questions[:quality_queries]))

    log_alone = WriteLog()
    batches = []
    for r in range(rounds):
        batch = write_batch(held, r, "write")
        batches.append(batch)
        before = segment_files(target)
        embedder.spent = 0.0
        t = time.perf_counter()
        add_articles(service.index, batch, embedder, settings)
        took = time.perf_counter() - t
        log_alone.rows.append(("add", took, took - embedder.spent, segment_files(target) <= before))
        before = segment_files(target)
        t = time.perf_counter()
        delete_articles(service.index, [a.id for a in batch])
        took = time.perf_counter() - t
        log_alone.rows.append(("delete", took, took, segment_files(target) <= before))
    alone = log_alone.summary()
    write: dict[str, Any] = {
        "articles": WRITE_ARTICLES,
        "pool": pool,
        "rounds": rounds,
        "add_s": alone["add_s"],
        "add_excl_embedding_s": alone["add_excl_embedding_s"],
        "delete_s": alone["delete_s"],
        "merging_writes": alone["merging_writes"],
    }
    log(f"{size} articles: writes alone {write}; writes under load")
    under_load = attempt(
        "writes under load", lambda: writes_under_load(service, embedder, target, held, questions, write_seconds)
    )
    log(f"{size} articles: writes from another process")
    beside = attempt(
        "writes beside a writer process",
        lambda: writes_beside_process(service, data, target, size, largest, questions, write_seconds),
    )
    if real_model:  # after the memory figure: the model's weights would count in it
        real = attempt("real model", partial(real_embedding, settings, batches))
        write.update({f"real_{k}" if k == "error" else k: v for k, v in real.items()})
        if "real_embedding_s" in real and write["add_excl_embedding_s"] is not None:
            write["add_with_real_embedding_s"] = round(write["add_excl_embedding_s"] + real["real_embedding_s"], 4)
    service.index.close()
    return {
        "open_s": round(open_s, 3),
        "memory": memory,
        "latency_ms": latency,
        "quality": quality,
        "write": write,
        "writes_under_load": under_load,
        "writes_beside_process": beside,
    }


# -- real vectors on a subset ------------------------------------------------------------------------------------


def evidence_questions(data: Path, ids: set[str]) -> list[tuple[str, list[str]]]:
    """RealTime QA questions (text, answers) with an answer and at least one of their search-result (evidence)
    articles among ``ids``, read by bench/realtimeqa.py's loaders."""
    from bench.realtimeqa import load_questions as rtqa_questions
    from bench.realtimeqa import load_search_results

    results = load_search_results(data)
    out = []
    for q in rtqa_questions(data):
        answers = [a for a in q.get("answer_text", []) if a.strip()]
        if answers and any(a in ids for a in results.get(q["question_id"], [])):
            out.append((str(q["question"]), answers))
    return out


def answer_recall_at_5(service: Any, questions: list[tuple[str, list[str]]]) -> float:
    """Share of ``questions`` with an answer string in the top 5 hybrid passages (search/ranking/evaluation.py)."""
    from search.ranking.evaluation import answer_recall

    texts = [
        [sp.passage.text for sp, _ in service.rank_passages(q, service.embed_query(q), 5, "hybrid")]
        for q, _ in questions
    ]
    return round(answer_recall(texts, [a for _, a in questions], 5), 4)


def real_phase(data: Path, target: Path, size: int, queries: int, quality_queries: int) -> dict[str, Any]:
    """The subset built by ``newsdesk index`` with the real model: open, search/similar/timeline/story, answer
    recall@5 and exactness as built; a 10-article write (real embedding included) and its delete through
    ``indexer.live.Writer``, ``indexer.update.optimize``; answer recall@5 again on the index reopened after them."""
    from indexer.live import Writer
    from indexer.update import optimize
    from search.memory import memory_report
    from search.service import SearchService
    from search.storage.index import open_index
    from search.text.embedding import make_embedder

    settings = Settings.from_env(index_dir=target)
    embedder = make_embedder(settings)
    in_index, held, pool = corpus_articles(data, size, size)
    evidence = evidence_questions(data, {a.id for a in in_index})
    questions = [q for q, _ in evidence][:queries] or load_questions(data, queries)
    start = time.perf_counter()
    service = SearchService(open_index(target, embedder), embedder, settings)
    service.search(questions[0], k=10, mode="hybrid")
    open_s = time.perf_counter() - start
    memory = memory_report(service.index.memory(), embedder)
    picks = np.random.default_rng(17).choice(len(in_index), size=min(queries, len(in_index)), replace=False)
    latency = serving_latency(service, questions, [in_index[i].id for i in picks.tolist()])
    quality = quality_phase(service, target, questions[:quality_queries])
    recall_built = answer_recall_at_5(service, evidence)

    writer = Writer(service)
    batch = write_batch(held, 0, "real")
    before = segment_files(target)
    t = time.perf_counter()
    writer.upsert(batch)
    add_s = time.perf_counter() - t
    appended = segment_files(target) > before
    found = service.search(batch[0].title, k=10, mode="hybrid")
    visible = any(r.article.id == batch[0].id for r in found.results)
    t = time.perf_counter()
    writer.delete([a.id for a in batch])
    delete_s = time.perf_counter() - t
    t = time.perf_counter()
    merged = optimize(service.index)
    merge_s = time.perf_counter() - t
    service.index.close()

    reopened = SearchService(open_index(target, embedder), embedder, settings)
    recall_after = answer_recall_at_5(reopened, evidence)
    reopened.index.close()
    return {
        "model": f"{embedder.name} ({embedder.fingerprint().get('backend', 'torch')})",
        "open_s": round(open_s, 3),
        "memory": memory,
        "latency_ms": latency,
        "quality": quality,
        "evidence_questions": len(evidence),
        "answer_recall_at_5": {"as_built": recall_built, "after_writes_and_merge": recall_after},
        "write": {
            "articles": len(batch),
            "pool": pool,
            "add_with_real_embedding_s": round(add_s, 3),
            "appended": appended,
            "visible_to_search": visible,
            "delete_s": round(delete_s, 3),
            "optimize_s": round(merge_s, 3),
            "optimize_merged_files": merged,
        },
    }


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


def child(args: argparse.Namespace, phase: str, size: int, target: Path) -> dict[str, Any]:
    """One phase in a fresh process, its JSON read from stdout."""
    command = [sys.executable, __file__, "--phase", phase, "--size", str(size), "--work", str(args.work)]
    command += ["--target", str(target), "--data", str(args.data), "--queries", str(args.queries)]
    command += ["--rounds", str(args.rounds), "--quality-queries", str(args.quality_queries)]
    command += ["--write-seconds", str(args.write_seconds), "--largest", str(args.largest)]
    if not args.real_model:
        command.append("--no-real-model")
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def newsdesk(command: list[str], timeout: float = 3600) -> dict[str, Any]:
    """A ``newsdesk`` CLI command (the venv's script, this checkout on PYTHONPATH): exit status, seconds, the
    last lines of its output."""
    from bench.scifact import child_env, newsdesk_exe

    started = time.perf_counter()
    proc = subprocess.run(
        [newsdesk_exe(), *command], env=child_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    return {
        "command": "newsdesk " + " ".join(command),
        "exit_status": proc.returncode,
        "seconds": round(time.perf_counter() - started, 2),
        "output": (proc.stdout + proc.stderr).strip().splitlines()[-5:],
    }


def server_memory(pid: int) -> dict[str, int]:
    """``process_memory`` summed over ``pid`` and its child processes (a gunicorn arbiter, its serving workers and
    its write process): what the whole server holds. ``pss`` is that memory (a page the processes share, as the
    mapped caches and the model's file are, counted once in all); ``rss`` and ``peak_rss`` count it once per
    process, an upper bound."""
    out: dict[str, int] = {"processes": 0}
    for each in [pid, *_children(pid)]:
        memory = process_memory(each)
        if memory:
            out["processes"] += 1
            for key, value in memory.items():
                out[key] = out.get(key, 0) + value
    return out


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def process_memory(pid: int) -> dict[str, int]:
    """A process's resident size now and its peak (``VmRSS``, ``VmHWM`` of /proc/PID/status), and its proportional
    share (``Pss`` of /proc/PID/smaps_rollup: each page it shares with others counted as its share of it), in
    bytes."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out["rss" if name == "VmRSS" else "peak_rss"] = int(value.split()[0]) * 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "Pss":
                out["pss"] = int(value.split()[0]) * 1024
    return out


def http_phase(args: argparse.Namespace, target: Path, size: int) -> dict[str, Any]:
    """``newsdesk serve`` (the default server for the cores here, ``--http-workers`` threads a process) on the index,
    with the hash embedder swapped in (``HASH_CLI``): seconds from the command to its first answered search,
    resident memory of all its processes then and after the load (``server_memory``), and hybrid searches over HTTP
    from ``--http-clients`` client threads and then from one, ``--http-seconds`` each (bench/serve.py's clients:
    keep-alive connections, distinct queries, latency around the full response)."""
    from urllib.parse import urlencode

    from bench.serve import HOST, QueryFeed, free_port, get, run_target, summarize

    feed = QueryFeed(load_questions(args.data, 100_000))
    port = free_port()
    log_path = args.work / f"serve-{size}.log"
    command = [sys.executable, __file__, HASH_CLI, "serve", "--index", str(target), "--host", HOST]
    command += ["--port", str(port), "--workers", str(args.http_workers)]
    started = time.perf_counter()
    with log_path.open("wb") as log_fh:
        proc = subprocess.Popen(command, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import http.client

        first = "/api/search?" + urlencode({"q": feed.take(), "k": 10, "mode": "hybrid"})
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the server exited with status {proc.returncode}: {tail}")
            if time.perf_counter() - started > args.start_timeout:
                raise RuntimeError(f"the server did not answer a search within {args.start_timeout} s")
            conn = http.client.HTTPConnection(HOST, port, timeout=600)
            try:
                status, _ = get(conn, first)
                if status == 200:
                    break
            except OSError:
                time.sleep(0.1)
            finally:
                conn.close()
        open_s = time.perf_counter() - started
        at_open = server_memory(proc.pid)

        def path() -> str:
            return "/api/search?" + urlencode({"q": feed.take(), "k": 10, "mode": "hybrid"})

        clients = summarize(run_target("hybrid", path, port, args.http_clients, args.http_seconds, warmup=5))
        one = summarize(run_target("hybrid", path, port, 1, args.http_seconds, warmup=0))
        after = server_memory(proc.pid)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)

    def brief(s: dict[str, Any]) -> dict[str, Any]:
        lat = s["latency_ms"]
        return {
            "p50_ms": lat["p50"],
            "p99_ms": lat["p99"],
            "throughput_rps": s["throughput_rps"],
            "errors": s["errors"],
            "requests": s["requests"],
            "query_repeats": s.get("queries", {}).get("repeats"),
        }

    return {
        "server": next(
            (line for line in log_path.read_text(errors="replace").splitlines() if "process(es)" in line),
            f"newsdesk serve --workers {args.http_workers}",
        ),
        "server_processes": after.get("processes"),
        "open_to_first_search_s": round(open_s, 2),
        "rss_at_open": at_open.get("rss"),
        "rss_after_load": after.get("rss"),
        "peak_rss": after.get("peak_rss"),
        "pss_at_open": at_open.get("pss"),
        "pss_after_load": after.get("pss"),
        f"clients_{args.http_clients}": brief(clients),
        "clients_1": brief(one),
    }


RATIO_FIGURES = (
    "passages",
    "build.total",
    "open_s",
    "memory.rss",
    "build_peak_rss_bytes",
    "on_disk_bytes",
    *(f"latency_ms.{op}.{p}" for op in SERVED for p in ("p50", "p99")),
    "quality.served_vector_search_ms.p50",
    "write.add_s",
    "write.add_excl_embedding_s",
    "write.delete_s",
    "write.add_with_real_embedding_s",
    "writes_under_load.search_without_writes_ms.p99",
    "writes_under_load.search_with_writes_ms.p99",
    "writes_under_load.writes.add_excl_embedding_s",
    "writes_under_load.writes.delete_s",
    "writes_under_load.writes.appending_write_s",
    "writes_under_load.writes.merging_write_s",
    "optimize.seconds",
    "optimize.merge_s",
    "check.seconds",
    "http.open_to_first_search_s",
    "http.peak_rss",
    "http.pss_after_load",
    "http.clients_4.p50_ms",
    "http.clients_4.p99_ms",
    "http.clients_4.throughput_rps",
    "http.clients_1.p50_ms",
    "http.clients_1.throughput_rps",
)


def ratios(small: dict[str, Any], large: dict[str, Any]) -> dict[str, float | None]:
    """Each figure at the largest size over the smallest (None where either is missing)."""
    return {path: ratio(pick(small, path), pick(large, path)) for path in RATIO_FIGURES}


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


def per_passage(run: dict[str, Any]) -> dict[str, float]:
    """Per-passage costs of one size, what docs/scale-out.md projects from: bytes of each memory component and on
    disk, build seconds (and the hash embedding's share), and the write's seconds per corpus passage."""
    p = run["passages"]
    out = {f"memory_{k}_bytes": round(v / p, 1) for k, v in run["memory"].items() if k not in ("model", "other")}
    out["on_disk_bytes"] = round(run["on_disk_bytes"] / p, 1)
    out["build_ms"] = round(run["build"]["total"] * 1000 / p, 3)
    out["build_excl_embedding_ms"] = round((run["build"]["total"] - run["build"]["embed"]) * 1000 / p, 3)
    out["build_peak_rss_bytes"] = round(run["build_peak_rss_bytes"] / p, 1)
    return out


def verdict(figure: float | None, bar: float, below: bool = True) -> dict[str, Any]:
    ok = figure is not None and figure == figure and (figure <= bar if below else figure >= bar)  # NaN fails
    return {"figure": figure, "bar": ("<= " if below else ">= ") + str(bar), "pass": bool(ok)}


def acceptance(runs: list[dict[str, Any]], real: dict[str, Any] | None) -> dict[str, Any]:
    """Issue 17's acceptance 1-4 judged on this run: each criterion's figure, its bar, pass or fail (a figure a
    failed phase left missing fails). The figures are the largest size's against the smallest's; ``conditions``
    says whether the sizes are the issue's (the whole corpus, and a ~110k-passage one): if not, the verdicts are
    about these sizes only."""
    out: dict[str, Any] = {}
    if runs:
        small, large = runs[0], runs[-1]
        served = all((pick(large, f"latency_ms.{op}.calls") or 0) > 0 for op in SERVED)
        served = served and pick(large, "writes_under_load.write_failures") == []
        served = served and (pick(large, "writes_under_load.writes.adds") or 0) > 0
        out["conditions"] = {
            "largest_articles": large["articles"],
            "whole_corpus": large["articles"] >= FULL_CORPUS_ARTICLES,
            "smallest_passages": small["passages"],
            "smallest_near_110k": 90_000 <= small["passages"] <= 130_000,
        }
        out["1_whole_corpus_indexed"] = verdict(large["articles"], FULL_CORPUS_ARTICLES, below=False)
        out["1_serves_search_similar_timelines_stories_writes"] = {"figure": served, "pass": served}
        status = pick(large, "check.exit_status")
        out["1_check_passes"] = {"figure": status, "bar": "exit 0", "pass": status == 0}
    if real is not None:
        ok = pick(real, "check.exit_status") == 0 and (pick(real, "served.latency_ms.hybrid.calls") or 0) > 0
        out["1_real_subset_built_served_checked"] = {"figure": pick(real, "passages"), "pass": bool(ok)}
        built, after = (
            pick(real, "served.answer_recall_at_5.as_built"),
            pick(real, "served.answer_recall_at_5.after_writes_and_merge"),
        )
        out["1_real_subset_answer_recall_unchanged"] = {"figure": after, "pass": built is not None and built == after}
    if len(runs) > 1:
        excl = "write.add_excl_embedding_s"
        out["2_write_ratio_excl_embedding"] = verdict(ratio(pick(small, excl), pick(large, excl)), 2.0)
    if runs and pick(large, "write.add_with_real_embedding_s") is not None:
        out["2_write_with_real_embedding_s"] = verdict(pick(large, "write.add_with_real_embedding_s"), 2.0)
    if real is not None:
        out["2_real_subset_write_with_embedding_s"] = verdict(pick(real, "served.write.add_with_real_embedding_s"), 2.0)
    if runs:
        # writes where the default server does them on 2 cores: its write process, niced (api/writes.py)
        out["2_search_p99_beside_writer_process_ratio"] = verdict(pick(large, "writes_beside_process.p99_ratio"), 2.0)
        # writes in the searching process, as one process serving (--processes 1: one core, Milvus Lite) does them;
        # reported beside the verdicts, not one of them: the default server on 2 cores never writes there
        out["single_process_search_p99_beside_writer_thread_ratio"] = verdict(
            pick(large, "writes_under_load.p99_ratio"), 2.0
        )
    if runs and "http" in large:
        out["3_server_open_to_first_search_s"] = verdict(pick(large, "http.open_to_first_search_s"), 10.0)
        # the server's memory: its processes' proportional shares summed (their summed RSS counts the mapped caches
        # once per process: reported as http.peak_rss, an upper bound)
        held = pick(large, "http.pss_after_load")
        out["3_server_resident_gib"] = verdict(round(held / 2**30, 2) if held else None, 8.0)
    if len(runs) > 1:
        hybrid = "latency_ms.hybrid.p50"
        out["4_hybrid_p50_ratio"] = verdict(ratio(pick(small, hybrid), pick(large, hybrid)), 2.0)
    if runs:
        out["4_dense_recall_at_10"] = verdict(pick(large, "quality.dense_recall_at_10"), 0.95, below=False)
        shares = pick(large, "quality.lexical_identical")
        out["4_lexical_top10_identical_share"] = verdict(min(shares.values()) if shares else None, 1.0, below=False)
    out["all_pass"] = all(v["pass"] for k, v in out.items() if k[0].isdigit())
    return out


def real_subset(args: argparse.Namespace) -> dict[str, Any]:
    """``--real-subset N``: the first N articles built with the real model by ``newsdesk index`` (skipped when a
    finished build of the same N is there and ``newsdesk check`` passes on it: the build takes hours on 2 cores,
    so a rerun resumes), then served in a fresh process (``real_phase``) and checked again."""
    n = args.real_subset
    work = args.work / f"real-{n}"
    target = work / "index"
    stamp = work / "built.json"
    work.mkdir(parents=True, exist_ok=True)
    build: dict[str, Any] | None = None
    if stamp.is_file() and (target / "manifest.json").is_file():
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        if recorded.get("articles") == n and newsdesk(["check", "--index", str(target)])["exit_status"] == 0:
            build = {**recorded, "resumed": True}
            log(f"real subset: a checked build of {n} articles is there; not rebuilt")
    if build is None:
        source = work / "articles.jsonl"
        with gzip.open(args.data / CORPUS, "rt", encoding="utf-8") as src, source.open("w", encoding="utf-8") as out:
            for i, line in enumerate(src):
                if i >= n:
                    break
                out.write(line)
        log(f"real subset: newsdesk index of {n} articles (the real model; long on 2 cores)")
        built = newsdesk(["index", str(source), "--index", str(target)], timeout=24 * 3600)
        if built["exit_status"] != 0:
            raise RuntimeError(f"newsdesk index failed: {built['output']}")
        build = {"articles": n, "seconds": built["seconds"], "command": built["command"], "output": built["output"]}
        stamp.write_text(json.dumps(build), encoding="utf-8")
    from search.storage.index import open_store

    store = open_store(target)
    try:
        articles, passages = store.counts()
    finally:
        store.close()
    log(f"real subset: {passages} passages; serving")
    command = [sys.executable, __file__, "--phase", "real", "--size", str(n), "--work", str(args.work)]
    command += ["--target", str(target), "--data", str(args.data), "--queries", str(min(args.queries, 100))]
    command += ["--quality-queries", str(args.quality_queries)]
    served = json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout)
    return {
        "articles": articles,
        "passages": passages,
        "build": build,
        "served": served,
        "check": newsdesk(["check", "--index", str(target)]),
    }


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def pick(block: object, path: str) -> Any:
    """``block[a][b]...`` for the dotted ``path``, or None where a phase failed or did not run (its block holds
    ``error`` instead, or is missing): the report and its verdicts are written whatever one phase did."""
    for key in path.split("."):
        if not isinstance(block, dict) or key not in block:
            return None
        block = block[key]
    return block


def ratio(a: object, b: object) -> float | None:
    """``b / a`` rounded, or None where either is missing (strict JSON has no NaN)."""
    if isinstance(a, int | float) and isinstance(b, int | float) and a:
        return round(b / a, 2)
    return None


def attempt(name: str, phase: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A phase's block, or ``{"error": ...}`` when it raised: the run is made once (45 minutes and more), so one
    phase's failure is reported beside every other phase's figures instead of losing them."""
    try:
        return phase()
    except Exception as exc:
        log(f"{name} failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


SUMMARY_ROWS = (
    ("articles", "articles"),
    ("passages", "passages"),
    ("build total s", "build.total"),
    ("build peak RSS MiB", "build_peak_rss_bytes:mib"),
    ("open (in process) s", "open_s"),
    ("RSS after open MiB", "memory.rss:mib"),
    *((f"{op} p50/p99 ms", f"latency_ms.{op}.p50 latency_ms.{op}.p99") for op in SERVED),
    ("dense recall@10", "quality.dense_recall_at_10"),
    ("lexical identical p/a", "quality.lexical_identical.passages quality.lexical_identical.articles"),
    ("write add excl emb / real s", "write.add_excl_embedding_s write.add_with_real_embedding_s"),
    ("write delete s", "write.delete_s"),
    (
        "search p99 alone/writes ms",
        "writes_under_load.search_without_writes_ms.p99 writes_under_load.search_with_writes_ms.p99",
    ),
    (
        "search p99 alone/writer process ms",
        "writes_beside_process.search_without_writes_ms.p99 writes_beside_process.search_with_writes_ms.p99",
    ),
    (
        "under load add/append/merge s",
        "writes_under_load.writes.add_excl_embedding_s "
        "writes_under_load.writes.appending_write_s writes_under_load.writes.merging_write_s",
    ),
    ("optimize s / merge s (exit)", "optimize.seconds optimize.merge_s optimize.exit_status"),
    ("check s (exit)", "check.seconds check.exit_status"),
    ("HTTP open to search s", "http.open_to_first_search_s"),
    ("HTTP peak RSS MiB (summed over processes)", "http.peak_rss:mib"),
    ("HTTP PSS after load MiB (summed)", "http.pss_after_load:mib"),
    ("HTTP 4 clients p50/p99/rps", "http.clients_4.p50_ms http.clients_4.p99_ms http.clients_4.throughput_rps"),
    ("HTTP 1 client p50/p99/rps", "http.clients_1.p50_ms http.clients_1.p99_ms http.clients_1.throughput_rps"),
)


def cell(run: dict[str, Any], paths: str) -> str:
    values = []
    for path in paths.split():
        path, _, unit = path.partition(":")
        value = pick(run, path)
        if unit == "mib" and isinstance(value, int | float):
            value = value / 2**20
        values.append("-" if value is None else fmt(value))
    return "/".join(values)


def summary(report: dict[str, Any]) -> str:
    """The report's main figures as a text table, then the verdicts (the JSON has everything)."""
    runs = report["sizes"]
    lines = []
    if runs:
        lines.append(f"{'':32}" + "".join(f"{fmt(r['articles']) + ' articles':>26}" for r in runs))
        lines += [f"{name:32}" + "".join(f"{cell(r, paths):>26}" for r in runs) for name, paths in SUMMARY_ROWS]
        errors = [f"{r['articles']}: {k}: {v['error']}" for r in runs for k, v in r.items() if pick(v, "error")]
        lines += [f"failed phase {e}" for e in errors]
        lines.append("")
    lines.append(f"{'acceptance (issue 17)':48}{'figure':>14}{'bar':>10}  pass")
    for name, v in report["acceptance"].items():
        if isinstance(v, dict) and "pass" in v:
            lines.append(f"{name:48}{fmt(v.get('figure')):>14}{v.get('bar', ''):>10}  {v['pass']}")
    lines.append(f"conditions: {report['acceptance'].get('conditions')}")
    real = report.get("real_subset")
    if real is not None:
        lines.append(
            f"real subset: {pick(real, 'articles')} articles, {pick(real, 'passages')} passages; answer recall@5 "
            f"{pick(real, 'served.answer_recall_at_5')}; write "
            f"{pick(real, 'served.write.add_with_real_embedding_s')} s; check exit {pick(real, 'check.exit_status')}"
            + (f"; error {real['error']}" if "error" in real else "")
        )
    lines.append(f"load average {report['load_average']}; cpu {report['cpu']['flags']}")
    return "\n".join(lines)


def hash_newsdesk(argv: list[str]) -> None:
    """The ``newsdesk`` CLI with the hash embedder in place of the model (``make_embedder``, the one place every
    command gets its model from): how the benchmark serves a hash-vector index with ``newsdesk serve`` itself."""
    import search.text.embedding as embedding
    from api.cli import main as cli

    def make_hash_embedder(settings: Settings, device: str = "cpu") -> Any:
        return HashVectorEmbedder()

    embedding.make_embedder = make_hash_embedder
    cli.main(args=argv, prog_name="newsdesk")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == HASH_CLI:
        hash_newsdesk(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", default="2667,26671", help="articles per size, comma-separated (first N); '' for none"
    )
    parser.add_argument("--limit-articles", type=int, help="one size of N articles (overrides --sizes)")
    parser.add_argument("--work", type=Path, required=True, help="where the indexes are built (kept for reuse)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--queries", type=int, default=200, help="questions (and articles) timed per operation")
    parser.add_argument("--quality-queries", type=int, default=50, help="questions for recall and lexical exactness")
    parser.add_argument("--rounds", type=int, default=3, help="10-article writes (and deletes) alone per size")
    parser.add_argument("--write-seconds", type=float, default=60, help="searches alone, then with writes, each")
    parser.add_argument("--http-seconds", type=float, default=60, help="HTTP load per client count (0: no HTTP)")
    parser.add_argument("--http-clients", type=int, default=4, help="client threads of the first HTTP load")
    parser.add_argument("--http-workers", type=int, default=4, help="the server's request threads (--workers)")
    parser.add_argument("--start-timeout", type=float, default=600, help="seconds for the server's first search")
    parser.add_argument("--real-subset", type=int, default=0, help="also N articles with the real model (0: none)")
    parser.add_argument("--no-real-model", dest="real_model", action="store_false", help="skip the real model")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--phase", choices=("build", "serve", "real", "writer"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--largest", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.phase is not None:
        if args.phase == "build":
            result = build_phase(args.data, args.size, args.target)
        elif args.phase == "serve":
            result = serve_phase(
                args.data,
                args.target,
                args.size,
                args.queries,
                args.rounds,
                args.real_model,
                args.quality_queries,
                args.write_seconds,
                args.largest,
            )
        elif args.phase == "writer":
            result = writer_phase(args.data, args.target, args.size, args.largest, args.write_seconds)
        else:
            result = real_phase(args.data, args.target, args.size, args.queries, args.quality_queries)
        print(json.dumps(result))
        return

    sizes = [args.limit_articles] if args.limit_articles else [int(s) for s in args.sizes.split(",") if s.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    args.largest = max(sizes, default=0)  # every size's writes draw from the same pool (corpus_articles)
    runs: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    began = time.perf_counter()
    for size in sizes:
        target = args.work / f"archive-{size}"
        log(f"{size} articles: building")
        built = child(args, "build", size, target)
        log(f"{size} articles: {built['passages']} passages in {built['seconds']['total']:.0f} s; serving")
        served = attempt("serving", partial(child, args, "serve", size, target))
        run: dict[str, Any] = {
            "articles": built["articles"],
            "passages": built["passages"],
            "build": built["seconds"],
            "on_disk_bytes": built["on_disk_bytes"],
            "build_peak_rss_bytes": built["peak_rss_bytes"],
            **({"serve": served} if "error" in served else served),
        }
        log(f"{size} articles: open {run.get('open_s')} s, hybrid {pick(run, 'latency_ms.hybrid')}; optimize, check")
        run["optimize"] = newsdesk(["optimize", "--index", str(target)])
        merged = re.search(r"merged (\d+) segment files .* in ([\d.]+) s", " ".join(run["optimize"]["output"]))
        # the merge itself, as the command times it (``seconds`` adds the process start and the index open)
        run["optimize"]["merged_files"] = int(merged[1]) if merged else 0
        run["optimize"]["merge_s"] = float(merged[2]) if merged else None
        run["check"] = newsdesk(["check", "--index", str(target)])
        if args.http_seconds > 0:
            log(f"{size} articles: HTTP")
            run["http"] = attempt("HTTP", partial(http_phase, args, target, size))
        run["per_passage"] = attempt("per passage", partial(per_passage, run))
        runs.append(run)
        # what is measured so far, should a later phase (hours on) end the run
        (args.work / "partial.json").write_text(json.dumps({"sizes": runs}, indent=2) + "\n", encoding="utf-8")
    real = attempt("real subset", lambda: real_subset(args)) if args.real_subset else None
    report: dict[str, Any] = {
        "benchmark": "bench/archive.py",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "embedder": f"{HashVectorEmbedder.name} (bench/archive.py HashVectorEmbedder, 384 dimensions)",
        "cpu": {"model": platform.processor() or platform.machine(), "cores": os.cpu_count(), "flags": cpu_flags()},
        # the machine is shared: the 1-minute load average before and after the run says how busy it was
        "load_average": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "minutes": round((time.perf_counter() - began) / 60, 1),
        "corpus": str(args.data / CORPUS),
        # every phase reads NEWSDESK_* settings (lexical_pruning, the index type...): the run says which were set
        "settings_env": {
            k: "(set)" if any(w in k for w in ("KEY", "TOKEN", "SECRET", "PASSWORD")) else v
            for k, v in sorted(os.environ.items())
            if k.startswith("NEWSDESK_")
        },
        "sizes": runs,
    }
    if real is not None:
        report["real_subset"] = real
    if len(runs) > 1:
        small, large = runs[0], runs[-1]
        report["ratios"] = ratios(small, large)
        per_article = large["passages"] / large["articles"]
        full = round(FULL_CORPUS_ARTICLES * per_article)
        report["projection"] = attempt("projection", partial(projection, small, large, full))
    report["acceptance"] = acceptance(runs, real)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(summary(report), file=sys.stderr)


if __name__ == "__main__":
    main()
