"""SciFact (BEIR) retrieval benchmark: index with the real CLI, batch-search, score with trec_eval.

One command runs the whole benchmark::

    .venv/bin/python bench/scifact.py --data ../shared/data/scifact --out bench/results/scifact.json

1. ``newsdesk index corpus.jsonl --index WORK/scifact --quiet`` in a subprocess (reused when WORK already holds an
   index built from the same corpus with the same ``NEWSDESK_*`` settings, unless ``--rebuild``), timed;
2. the split's queries (only ids present in ``qrels/<split>.tsv``) written to ``WORK/queries-<split>.jsonl`` and
   run through ``newsdesk search --queries ... --k 100 --run WORK/run.trec --passages WORK/passages.jsonl``, timed;
3. the TREC run scored with ``pytrec_eval`` (bindings to the official trec_eval, PyPI ``pytrec-eval-terrier``),
   which shares no code with the search path: nDCG@10, recall@100 and MRR@10, averaged over every query in the
   qrels (a query without results counts as 0);
4. a JSON report written to ``--out`` and a one-line summary printed.

Settings are taken from the environment as the CLI takes them, e.g. ``NEWSDESK_TITLE_CONTEXT=false``; use a
separate ``--work`` directory per setting. ``NEWSDESK_STORE=milvus`` runs it with the Milvus backend (Milvus Lite
inside the index unless ``NEWSDESK_MILVUS_URI`` names a server; ``NEWSDESK_MILVUS_INDEX``/``_INDEX_PARAMS``/
``_SEARCH`` as for ``newsdesk index``). ``evaluate``, ``read_qrels`` and ``read_trec_run`` are importable on
their own (``pytrec_eval`` is imported only when ``evaluate`` runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK = ROOT / "bench" / "results" / "work"
K = 100
TARGET_NDCG_10 = 0.64
# Published nDCG@10 on the SciFact test split, for orientation only (not produced by this script).
REFERENCES: dict[str, dict[str, Any]] = {
    "mteb_all-MiniLM-L6-v2": {"ndcg_cut_10": 0.645, "source": "MTEB leaderboard, SciFact, all-MiniLM-L6-v2"},
    "bm25": {"ndcg_cut_10": 0.665, "source": "BEIR paper (Thakur et al. 2021), BM25 on SciFact"},
}
INDEX_STAMP = "bench-index.json"
MODES = ("hybrid", "dense", "lexical")
# NEWSDESK_* settings that only affect querying: changing them does not call for a new index. Any other NEWSDESK_*
# variable (title_context, max_passage_tokens, model, ... or one this list does not know yet) forces a rebuild.
QUERY_TIME_SETTINGS = frozenset(
    f"NEWSDESK_{name.upper()}"
    for name in (
        "index_dir",
        "threads",
        "search_threads",
        "faiss_search",
        "milvus_search",
        "model_cache",
        "candidates",
        "mode",
        "fusion",
        "fusion_alpha",
        "passage_alpha",
        "fusion_normalisation",
        "rrf_k",
        "title_weight",
        "lexical_candidates",
        "match_floor",
        "passages_per_result",
        "related_per_result",
        "duplicate_threshold",
        "max_query_chars",
        "max_k",
        "query_cache_size",
    )
)

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


class BenchError(Exception):
    """A problem with the data, the CLI or the evaluator; reported as one line and exit status 1."""


# -- reading and scoring (importable, no dependency on the search code) -------------------------------------------


def read_qrels(path: Path) -> Qrels:
    """Relevance judgements as ``{query_id: {doc_id: relevance}}``, read by ``newsdesk eval``'s own reader
    (search/ranking/evaluation.py) so that the benchmark and the CLI score against the same judgements."""
    from search.errors import SourceError
    from search.ranking.evaluation import read_qrels as read_judgements

    try:
        return read_judgements(path)
    except SourceError as exc:
        raise BenchError(exc.message) from None


def read_trec_run(path: Path) -> Run:
    """A TREC run (``qid Q0 docid rank score tag``) as ``{query_id: {doc_id: score}}``.

    As in trec_eval, the rank column is not used: documents are ordered by score. A repeated (query, doc) pair is
    an error, since trec_eval would count it twice.
    """
    run: Run = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: unreadable ({exc})") from None
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise BenchError(f"{path}:{n}: expected 6 columns (qid Q0 docid rank score tag), got {len(parts)}")
        qid, _, doc, _, score, _ = parts
        try:
            value = float(score)
        except ValueError:
            raise BenchError(f"{path}:{n}: score {score!r} is not a number") from None
        if not math.isfinite(value):
            raise BenchError(f"{path}:{n}: score {score!r} is not finite")
        docs = run.setdefault(qid, {})
        if doc in docs:
            raise BenchError(f"{path}:{n}: document {doc!r} appears twice for query {qid!r}")
        docs[doc] = value
    return run


def trec_order(docs: Mapping[str, float]) -> list[str]:
    """Documents in the order trec_eval ranks them: score descending, ties by document id descending."""
    return [d for d, _ in sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def truncate(run: Mapping[str, Mapping[str, float]], depth: int) -> Run:
    """The top ``depth`` documents of every query, in trec_eval's order."""
    return {q: {d: docs[d] for d in trec_order(docs)[:depth]} for q, docs in run.items()}


def evaluate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """nDCG@10, recall@100 and MRR@10 from trec_eval, averaged over every query in ``qrels``.

    Queries of ``qrels`` missing from ``run`` (or with no documents) score 0; queries of ``run`` not in ``qrels``
    are ignored. Returns ``{"ndcg_cut_10", "recall_100", "mrr_10", "queries", "queries_without_results"}``.
    """
    try:
        import pytrec_eval
    except ImportError:
        raise BenchError(
            "pytrec_eval is not installed: .venv/bin/pip install pytrec-eval-terrier (or the 'bench' extra)"
        ) from None
    judged: Qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    if not judged:
        raise BenchError("no queries in the qrels")
    ranked: Run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in judged and docs}
    per_query: dict[str, dict[str, float]] = {q: {"ndcg_cut_10": 0.0, "recall_100": 0.0, "mrr_10": 0.0} for q in judged}
    if ranked:
        full = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.100"}).evaluate(ranked)
        top10 = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(truncate(ranked, 10))
        for q, m in full.items():
            per_query[q]["ndcg_cut_10"] = float(m["ndcg_cut_10"])
            per_query[q]["recall_100"] = float(m["recall_100"])
        for q, m in top10.items():
            per_query[q]["mrr_10"] = float(m["recip_rank"])
    n = len(per_query)
    return {
        "ndcg_cut_10": sum(m["ndcg_cut_10"] for m in per_query.values()) / n,
        "recall_100": sum(m["recall_100"] for m in per_query.values()) / n,
        "mrr_10": sum(m["mrr_10"] for m in per_query.values()) / n,
        "queries": n,
        "queries_without_results": sum(1 for q in judged if q not in ranked),
    }


# -- the benchmark ------------------------------------------------------------------------------------------------


def read_queries(path: Path, wanted: Iterable[str]) -> list[tuple[str, str]]:
    """``(id, text)`` of the queries in ``wanted``, in the file's order; every wanted id must be present."""
    want = set(wanted)
    out: list[tuple[str, str]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: unreadable ({exc})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
        qid = str(row.get("_id", ""))
        if qid in want:
            out.append((qid, str(row.get("text", ""))))
    missing = want - {q for q, _ in out}
    if missing:
        raise BenchError(f"{path}: {len(missing)} judged queries have no text, e.g. {sorted(missing)[:5]}")
    return out


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def newsdesk_exe() -> str:
    """The ``newsdesk`` script beside the running interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "newsdesk"
    if beside.is_file():
        return str(beside)
    found = shutil.which("newsdesk")
    if found is None:
        raise BenchError("cannot find the newsdesk command; run with the project's venv (.venv/bin/python)")
    return found


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def newsdesk_settings_env() -> dict[str, str]:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("NEWSDESK_")}


def index_settings_env() -> dict[str, str]:
    return {k: v for k, v in newsdesk_settings_env().items() if k not in QUERY_TIME_SETTINGS}


def run_cli(args: Sequence[str], *, check: bool = True) -> float:
    """Run ``newsdesk ARGS``; return wall seconds. A failure raises with the command's stderr (unless not ``check``,
    when it returns -1)."""
    cmd = [newsdesk_exe(), *args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        if not check:
            return -1.0
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {detail[-1] if detail else 'no output'}")
    return seconds


def corpus_identity(corpus: Path) -> dict[str, Any]:
    st = corpus.stat()
    return {"path": str(corpus.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def ensure_index(corpus: Path, index: Path, rebuild: bool) -> tuple[float | None, bool]:
    """Build ``index`` from ``corpus`` unless a sound one built from the same corpus with the same index-time
    settings exists. Returns (build seconds or None, reused)."""
    stamp_path = index.parent / INDEX_STAMP
    stamp = {"corpus": corpus_identity(corpus), "settings_env": index_settings_env()}
    if not rebuild and (index / "manifest.json").is_file():
        try:
            previous = json.loads(stamp_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous != stamp:
            print(f"note: {index} was built from another corpus or other settings; rebuilding", file=sys.stderr)
        elif run_cli(["check", "--index", str(index)], check=False) < 0:
            print(f"note: newsdesk check fails on {index} (stale format or damaged); rebuilding", file=sys.stderr)
        else:
            return None, True
    stamp_path.unlink(missing_ok=True)
    seconds = run_cli(["index", str(corpus), "--index", str(index), "--quiet"])
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return seconds, False


def read_manifest(index: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((index / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"{index}/manifest.json unreadable: {exc}") from None
    return manifest


def write_report(path: Path | None, report: Mapping[str, Any], *, echo: bool = True) -> None:
    """A benchmark's JSON report: printed (``echo``) and written to ``path`` when given (its folder made if missing),
    through a temporary file and a rename, so an interrupted run never leaves half a report behind."""
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if echo:
        print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(path)


def git_commit() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    except OSError:
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None


def git_dirty() -> bool | None:
    try:
        proc = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False)
    except OSError:
        return None
    return bool(proc.stdout.strip()) if proc.returncode == 0 else None


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def top10_ties(run: Mapping[str, Mapping[str, float]]) -> int:
    """Queries whose top 10 holds two equal scores (the run's 6-decimal scores; trec_eval then orders by doc id)."""
    count = 0
    for docs in run.values():
        top = [docs[d] for d in trec_order(docs)[:11]]
        if len(set(top)) < len(top):
            count += 1
    return count


def benchmark(data: Path, work: Path, split: str, rebuild: bool, mode: str | None = None) -> dict[str, Any]:
    data, work = data.resolve(), work.absolute()  # the CLI runs with the repository as its working directory
    corpus = data / "corpus.jsonl"
    queries_path = data / "queries.jsonl"
    qrels_path = data / "qrels" / f"{split}.tsv"
    for p in (corpus, queries_path, qrels_path):
        if not p.is_file():
            raise BenchError(f"{p}: no such file")
    work.mkdir(parents=True, exist_ok=True)
    index = work / "scifact"

    load = {"before_index": loadavg()}
    index_seconds, reused = ensure_index(corpus, index, rebuild)
    manifest = read_manifest(index)

    qrels = read_qrels(qrels_path)
    queries = read_queries(queries_path, qrels)
    query_file = work / f"queries-{split}.jsonl"
    write_jsonl(query_file, ({"_id": q, "text": t} for q, t in queries))
    suffix = f"{split}-{mode}" if mode else split
    run_path = work / f"run-{suffix}.trec"
    passages_path = work / f"passages-{suffix}.jsonl"
    mode_args = ["--mode", mode] if mode else []

    def search(queries_file: Path, run_file: Path, *extra: str) -> float:
        args = ["search", "--index", str(index), "--queries", str(queries_file), "--k", str(K), "--run", str(run_file)]
        return run_cli([*args, *mode_args, *extra])

    # A one-query batch first times process start plus model and index loading, so throughput can be given
    # without them too; it also warms the page cache, so the timed run does not pay for a cold disk.
    probe = work / "probe-query.jsonl"
    write_jsonl(probe, [{"_id": queries[0][0], "text": queries[0][1]}])
    load["before_search"] = loadavg()
    startup_seconds = search(probe, work / "probe.trec")
    search_seconds = search(query_file, run_path, "--passages", str(passages_path))

    load["after_search"] = loadavg()
    run = read_trec_run(run_path)
    metrics = evaluate(qrels, run)
    n = len(queries)
    counts = manifest.get("counts", {})
    net = search_seconds - startup_seconds
    return {
        "benchmark": "scifact",
        "split": split,
        "mode": mode or os.environ.get("NEWSDESK_MODE") or "cli default",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "metrics": {k: round(metrics[k], 5) for k in ("ndcg_cut_10", "recall_100", "mrr_10")},
        "queries": n,
        "queries_without_results": metrics["queries_without_results"],
        "queries_with_top10_score_ties": top10_ties(run),
        "k": K,
        "index_seconds": round(index_seconds, 2) if index_seconds is not None else None,
        "index_reused": reused,
        "search_seconds": round(search_seconds, 2),
        "queries_per_second": round(n / search_seconds, 2),
        "search_startup_seconds": round(startup_seconds, 2),
        "queries_per_second_excluding_startup": round(n / net, 2) if net > 0 else None,
        "articles": counts.get("articles"),
        "passages": counts.get("passages"),
        "settings_env": newsdesk_settings_env(),
        "index_chunking": manifest.get("chunking"),
        "index_model": (manifest.get("model") or {}).get("name"),
        "target_ndcg_cut_10": TARGET_NDCG_10,
        "meets_target": metrics["ndcg_cut_10"] >= TARGET_NDCG_10,
        "references": REFERENCES,
        "paths": {
            "corpus": str(corpus),
            "qrels": str(qrels_path),
            "index": str(index),
            "queries": str(query_file),
            "run": str(run_path),
            "passages": str(passages_path),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # 1-minute load average: above the CPU count, other processes competed with the timed commands.
            "load_average": load,
        },
    }


def summary(report: Mapping[str, Any]) -> str:
    m = report["metrics"]
    index = "reused" if report["index_reused"] else f"{report['index_seconds']:.0f}s"
    settings = " ".join(f"{k}={v}" for k, v in report["settings_env"].items()) or "defaults"
    return (
        f"scifact/{report['split']} mode={report['mode']} ({settings}): "
        f"nDCG@10 {m['ndcg_cut_10']:.4f}  recall@100 {m['recall_100']:.4f}  "
        f"MRR@10 {m['mrr_10']:.4f}  | {report['queries']} queries, {report['queries_per_second']:.1f} q/s "
        f"({report['queries_per_second_excluding_startup']} q/s without startup), index {index}, "
        f"{report['articles']} articles / {report['passages']} passages  | MTEB MiniLM 0.645, BM25 0.665"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, required=True, help="BEIR SciFact directory (corpus.jsonl, ...).")
    parser.add_argument("--out", type=Path, required=True, help="JSON report to write.")
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help=f"Index and run files (default {DEFAULT_WORK})."
    )
    parser.add_argument("--split", default="test", help="qrels/<split>.tsv to evaluate (test or train).")
    parser.add_argument("--rebuild", action="store_true", help="Rebuild the index even if --work holds one.")
    parser.add_argument("--mode", choices=MODES, default=None, help="Ranking mode passed to search (default: CLI's).")
    args = parser.parse_args(argv)
    try:
        report = benchmark(args.data, args.work, args.split, args.rebuild, args.mode)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_report(args.out, report, echo=False)
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
