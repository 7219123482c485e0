"""CPU of one whole search in process, per mode, against the CPU of embedding its query alone (issue 19).

One command::

    .venv/bin/python bench/search_cpu.py --index /tmp/archive/real-3000/index \\
        --rtqa ../shared/data/realtimeqa --queries 200 --out bench/results/search_cpu.json [--profile 15]

1. The index is opened in this process as the server opens it: ``search.loading.load_service`` with the settings a
   server reads (``Settings.from_env``, the index directory replaced), which also pins torch/ONNX, FAISS's OpenMP and
   numpy's BLAS to the same thread counts;
2. ``--queries`` distinct RealTime QA questions per mode, all different texts (no text is searched twice, so the
   query-embedding cache never answers) and interleaved (question ``i`` of every mode next to one another, so that a
   slower stretch of a shared machine weighs on each alike), after a few uncounted warm-up searches per mode;
3. each search is what ``/api/search?q=...&mode=...`` runs past the HTTP layer: ``api.app.search_body``, the function
   the route calls (parse, search, page, highlight, related stories, serialise to the JSON bytes returned), timed
   with ``time.process_time`` (CPU of every thread of this process); then the same text is embedded alone,
   ``service.embedder.encode([text])`` (what a search runs on a query-cache miss; the model keeps no cache), so the
   embedding is measured on exactly the queries searched;
4. the JSON report: CPU ms per search (mean, p50, p90) per mode, CPU ms per embedding, the ratios mode/embed (means:
   the throughput-relevant figure) against the issue's bars (hybrid <= 2x, dense <= 1.5x), the CPU flags the int8
   kernels and FAISS depend on, the commit and the load average.

``--profile N`` runs cProfile over a second set of distinct searches (``--profile-mode``, default hybrid; after the
timed ones, so the timing is not the profiler's) and adds the top ``N`` functions by cumulative and by own time, in
ms per search. ``--floors`` adds the CPU of the engine calls a search cannot do without, each timed alone on the same
questions (``engine_floors``): the embedding, the exact scan of the passage vectors, the BM25 top-k.

``measure_cpu`` is the importable measuring function (bench/serve.py can report it beside its HTTP figures);
``interleave``, ``cpu_summary``, ``cpu_ratios``, ``acceptance`` and ``profile_top`` are pure
(``tests/test_bench_search_cpu.py``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scifact import BenchError, git_commit, git_dirty, loadavg, write_report  # noqa: E402
from bench.serve import percentile, read_query_texts  # noqa: E402
from bench.slow import cpu_flags  # noqa: E402

if TYPE_CHECKING:
    from search.service import SearchService

MODES = ("hybrid", "dense", "lexical")
EMBED = "embed"
# The bars: a whole search's CPU at most this many times its query's embedding alone.
BARS = {"hybrid": 2.0, "dense": 1.5}
WARMUP = 10


# -- pure parts (importable, unit-tested) -------------------------------------------------------------------------


def interleave(texts: Sequence[str], slots: Sequence[str], per_slot: int, warmup: int = 0) -> dict[str, list[str]]:
    """Distinct texts dealt to ``slots`` (modes and the embedding): ``warmup`` each first, then ``per_slot`` each,
    round-robin, so that no text goes to two slots and a slot's i-th text sits beside the others' i-th. Repeated
    and blank texts are dropped first; too few distinct texts is an error, never a repeat."""
    distinct = list(dict.fromkeys(t for t in texts if t.strip()))
    need = len(slots) * (per_slot + warmup)
    if len(distinct) < need:
        raise BenchError(f"{len(slots)} x ({warmup} + {per_slot}) distinct queries needed, only {len(distinct)} given")
    out: dict[str, list[str]] = {slot: [] for slot in slots}
    for i in range(per_slot + warmup):
        for j, slot in enumerate(slots):
            out[slot].append(distinct[i * len(slots) + j])
    return out


def cpu_summary(samples_s: Sequence[float]) -> dict[str, Any]:
    """CPU seconds per call as ms: count, mean, p50, p90, total."""
    if not samples_s:
        return {"n": 0, "mean_ms": None, "p50_ms": None, "p90_ms": None, "total_ms": 0.0}
    ms = [s * 1000 for s in samples_s]
    p50, p90 = percentile(ms, 50), percentile(ms, 90)
    return {
        "n": len(ms),
        "mean_ms": round(sum(ms) / len(ms), 3),
        "p50_ms": None if p50 is None else round(p50, 3),
        "p90_ms": None if p90 is None else round(p90, 3),
        "total_ms": round(sum(ms), 1),
    }


def cpu_ratios(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Each mode's mean CPU per search over the mean CPU of one embedding (``<mode>/embed``); None where either
    is missing or the embedding cost nothing measurable."""
    embed = (summaries.get(EMBED) or {}).get("mean_ms")
    out: dict[str, float | None] = {}
    for mode, summary in summaries.items():
        if mode == EMBED:
            continue
        mean = summary.get("mean_ms")
        out[f"{mode}/embed"] = round(mean / embed, 3) if mean is not None and embed else None
    return out


def acceptance(ratios: Mapping[str, float | None], bars: Mapping[str, float] = BARS) -> dict[str, Any]:
    """Each barred mode's ratio against its bar; ``met`` only when every barred mode was measured and is within."""
    checks = {
        mode: {"ratio": ratios.get(f"{mode}/embed"), "bar": bar, "met": _within(ratios.get(f"{mode}/embed"), bar)}
        for mode, bar in bars.items()
    }
    return {"checks": checks, "met": all(c["met"] for c in checks.values())}


def _within(ratio: float | None, bar: float) -> bool:
    return ratio is not None and ratio <= bar


Entry = tuple[str, int, str]  # pstats' key: file, line, function


def profile_top(
    stats: Mapping[Entry, tuple[int, int, float, float, object]], n: int, calls: int, sort: str
) -> list[dict[str, Any]]:
    """The ``n`` entries of cProfile's ``stats`` (``pstats.Stats.stats``: key -> (primitive calls, calls, own time,
    cumulative time, callers)) with the largest ``sort`` time (``cumulative`` or ``tottime``), in ms per search
    over ``calls`` searches; file paths are shown from the repository or site-packages root."""
    if sort not in ("cumulative", "tottime"):
        raise ValueError(f"sort must be cumulative or tottime, got {sort!r}")
    cumulative = sort == "cumulative"
    ranked = sorted(stats.items(), key=lambda item: (-(item[1][3] if cumulative else item[1][2]), item[0]))[:n]
    return [
        {
            "function": _where(key),
            "calls_per_search": round(value[1] / calls, 2),
            "tottime_ms": round(value[2] / calls * 1000, 3),
            "cumtime_ms": round(value[3] / calls * 1000, 3),
        }
        for key, value in ranked
    ]


def _where(key: Entry) -> str:
    file, line, name = key
    if file == "~":  # a builtin: pstats names it "<built-in method ...>" or "<method ... of ... objects>"
        return name
    for root in (f"{ROOT}/", "site-packages/", "lib/python"):
        if root in file:
            file = file.split(root, 1)[1]
            break
    return f"{file}:{line}({name})"


# -- measuring ----------------------------------------------------------------------------------------------------


def measure_cpu(
    index_dir: Path,
    texts: Sequence[str],
    modes: Sequence[str] = MODES,
    *,
    queries: int = 200,
    k: int = 10,
    warmup: int = WARMUP,
    profile: int = 0,
    profile_mode: str = "hybrid",
    floors: bool = False,
) -> dict[str, Any]:
    """CPU per whole search (``api.app.search_body``) for each of ``modes`` and per query embedding alone, on the
    index at ``index_dir`` opened as the server opens it; ``profile`` > 0 adds cProfile's top entries of as many
    more ``profile_mode`` searches; ``floors`` the CPU of the search's engine calls alone (``engine_floors``). See the
    module docstring for the method."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from werkzeug.datastructures import MultiDict

    from api.app import search_body
    from search.loading import load_service
    from search.settings import Settings

    slots = [*modes, EMBED]
    dealt = interleave(texts, [*modes, *(["profile"] if profile else [])], queries, warmup)
    settings = Settings.from_env().replace(index_dir=index_dir)
    opened = time.perf_counter()
    service = load_service(settings)
    open_s = time.perf_counter() - opened

    def search(text: str, mode: str) -> bytes:
        return search_body(service, MultiDict({"q": text, "mode": mode, "k": str(k)}))

    def embed(text: str) -> None:
        service.embedder.encode([text])

    for i in range(warmup):
        for mode in modes:
            search(dealt[mode][i], mode)
            embed(dealt[mode][i])
    # process_time counts every thread: the int8 sketch a first range search starts building (search/vectors/
    # sketch.py) must be done before the timed searches, as it is in a server past its first second
    sketch_ready = getattr(service.index.passages, "wait_for_sketch", lambda: False)()
    samples: dict[str, list[float]] = {slot: [] for slot in slots}
    sizes: dict[str, list[int]] = {mode: [] for mode in modes}
    for i in range(warmup, warmup + queries):
        for mode in modes:
            start = time.process_time()
            body = search(dealt[mode][i], mode)
            samples[mode].append(time.process_time() - start)
            sizes[mode].append(len(body))
            start = time.process_time()
            embed(dealt[mode][i])  # the same text again, past the service's query cache
            samples[EMBED].append(time.process_time() - start)
    summaries = {slot: cpu_summary(samples[slot]) for slot in slots}
    for mode in modes:
        summaries[mode]["mean_bytes"] = round(sum(sizes[mode]) / len(sizes[mode]))
    ratios = cpu_ratios(summaries)
    report: dict[str, Any] = {
        "index": str(index_dir),
        "passages": service.index.passages.count(),
        "articles": len(service.index.catalog),
        "embedding_backend": getattr(service.embedder, "backend", None),
        "threads": settings.threads,
        "search_threads": settings.search_threads,
        "k": k,
        "queries_per_mode": queries,
        "warmup_per_mode": warmup,
        "sketch": sketch_ready,
        "open_s": round(open_s, 2),
        "cpu": summaries,
        "ratios": ratios,
        "acceptance": acceptance({r: v for r, v in ratios.items()}, {m: b for m, b in BARS.items() if m in modes}),
    }
    if floors:
        report["floors"] = engine_floors(service, dealt[modes[0]][warmup:], report["cpu"])
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for text in dealt["profile"][warmup:]:
            search(text, profile_mode)
        profiler.disable()
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        report["profile"] = {
            "mode": profile_mode,
            "searches": queries,
            "cumulative": profile_top(stats, profile, queries, "cumulative"),
            "tottime": profile_top(stats, profile, queries, "tottime"),
        }
    service.index.close()
    return report


def engine_floors(service: SearchService, texts: Sequence[str], cpu: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """CPU ms per query of what no Python around retrieval avoids, each alone on the same texts: the query's
    embedding, the exact scan of every passage vector a dense or hybrid search makes (``VectorStore.matches`` at
    the match floor, as a search calls it: it yields both the match count and the candidates), and the BM25 top-k
    of articles. Their sums over the embedding are the lowest ratio each mode could reach with everything else
    free."""
    floor = service.settings.match_floor
    lexical_k = service.settings.lexical_candidates
    # what a search calls: every hit's id and the best ``candidates`` scored (the int8 sketch's pruned scoring)
    matches = getattr(service.index.passages, "matches", None)
    pool = service.settings.candidates
    parts: dict[str, list[float]] = {"embed": [], "range_scan": [], "bm25_top": []}
    for text in texts:
        start = time.process_time()
        qvec = service.embedder.encode([text])[0]
        parts["embed"].append(time.process_time() - start)
        start = time.process_time()
        if matches is not None:
            matches(qvec, floor, pool)
        else:  # a tree from before VectorStore.matches
            service.index.passages.range(qvec, floor)
        parts["range_scan"].append(time.process_time() - start)
        start = time.process_time()
        service.lexical.search_articles(text, lexical_k)
        parts["bm25_top"].append(time.process_time() - start)
    ms = {name: cpu_summary(values)["mean_ms"] for name, values in parts.items()}
    embed, scan, bm25 = ms["embed"], ms["range_scan"], ms["bm25_top"]
    out: dict[str, Any] = {f"{name}_ms": value for name, value in ms.items()}
    out["queries"] = len(texts)
    out["lowest_ratio"] = {
        "dense/embed": round((embed + scan) / embed, 3),
        "hybrid/embed": round((embed + scan + bm25) / embed, 3),
    }
    out["rest_ms"] = {  # what each measured search spent beyond its engine calls: Python, SQLite, numpy
        mode: round(
            summary["mean_ms"] - embed - (scan if mode != "lexical" else 0) - (bm25 if mode != "dense" else 0), 3
        )
        for mode, summary in cpu.items()
        if mode != EMBED and summary.get("mean_ms") is not None
    }
    return out


def environment() -> dict[str, Any]:
    """What the figures depend on besides the code: CPU flags of the int8 kernels and FAISS, cores, load."""
    try:
        flags = cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        flags = {}
    return {
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "loadavg_1m": loadavg(),
        "commit": git_commit(),
        "dirty": git_dirty(),
    }


def summary_line(report: Mapping[str, Any]) -> str:
    cpu = report["cpu"]
    parts = [f"{slot} {s['mean_ms']} ms" for slot, s in cpu.items()]
    parts += [f"{name} {value}" for name, value in report["ratios"].items()]
    return "CPU per call: " + ", ".join(parts) + f"; acceptance met: {report['acceptance']['met']}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--index", type=Path, required=True, help="Index directory (opened as the server opens it).")
    parser.add_argument("--rtqa", type=Path, required=True, help="RealTime QA directory (questions_dev.jsonl).")
    parser.add_argument("--queries", type=int, default=200, help="Timed distinct queries per mode (default 200).")
    parser.add_argument("--modes", default=",".join(MODES), help="Comma-separated modes (default all three).")
    parser.add_argument("--k", type=int, default=10, help="Results per search (default 10, the route's default).")
    parser.add_argument("--warmup", type=int, default=WARMUP, help=f"Uncounted searches per mode (default {WARMUP}).")
    parser.add_argument("--profile", type=int, default=0, help="Top N functions of cProfile over more searches.")
    parser.add_argument("--profile-mode", choices=MODES, default="hybrid", help="The mode profiled (default hybrid).")
    parser.add_argument("--floors", action="store_true", help="Also time the engine calls alone (embed, scan, BM25).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON report here.")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes a comma-separated subset of {','.join(MODES)}")
    if args.queries < 1 or args.k < 1 or args.warmup < 0 or args.profile < 0:
        parser.error("--queries and --k must be positive, --warmup and --profile not negative")
    command = [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]
    try:
        if not (args.index / "manifest.json").is_file():
            raise BenchError(f"{args.index}: not an index (no manifest.json)")
        texts = read_query_texts(args.rtqa / "questions_dev.jsonl", ("question",))
        report = {"command": " ".join(command), **environment()}
        report.update(
            measure_cpu(
                args.index.absolute(),
                texts,
                modes,
                queries=args.queries,
                k=args.k,
                warmup=args.warmup,
                profile=args.profile,
                profile_mode=args.profile_mode,
                floors=args.floors,
            )
        )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_report(args.out, report)
    print(summary_line(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
