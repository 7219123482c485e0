"""Saved searches (issue 21): what matching costs a write, and how well alerts follow RealTime QA questions.

    .venv/bin/python bench/alerts.py --index /tmp/archive/real-3000/index --work /tmp/alerts-bench \\
        --out bench/results/alerts.json

``--index`` is an index built with the real model (bench/archive.py's real subset: the first 3,000 RealTime QA
articles, ~109k passages). It is only read: the first thing done is copying it to ``<work>/index``, which the run
writes to.

``write``: the cost of a 10-article write (``indexer.update.apply_changes``, the path every writer takes, with its
cache save: what ``newsdesk add`` pays after embedding) on the 109k-passage copy with no saved search and with
``--alerts`` saved searches (RealTime QA questions, hybrid, default threshold), in blocks none / many / none / many
of ``--rounds`` timed writes each (a block's first write untimed: it compiles the saved searches once per process),
each write's articles deleted again untimed. Reported: p50 and mean of each side, their ratio (the issue's bar:
at most 1.2), the matching pass alone (timed inside the write), and the embedding of the 10 articles (the real
model, once) for scale.

``replay``: the questions whose search results all lie in the first 3,000 articles (bench/realtimeqa.py
``prefix_slices``: earlier half dev, later half held back, by question date) are saved as searches; the 3,000
articles (their evidence and everything else in them, the distractors) are fed in date order. Scores are
computed by the matcher's own code (``compile_alerts``, ``alert_scores``) on the vectors the index stores, IDF from
its FTS5 table; per threshold, an article is alerted on when its score reaches the threshold, and the collapse rule
(an article of a duplicate group or story that already has an entry for that question is grouped under it) makes
the entries. Per mode and threshold: recall (the share of each question's evidence articles alerted on, averaged
over questions), precision (the share of entries holding an evidence article: a lower bound, as the evidence lists
are RealTime QA's top search results, not every article on the subject) and entries per question. The default
threshold of each mode maximises F1 on the dev questions; the held-back figures at that threshold are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import indexer.update
from bench.archive import read_articles
from bench.realtimeqa import load_questions, load_search_results, prefix_slices
from bench.slow import cpu_flags
from indexer.build import make_chunker, new_articles
from indexer.update import apply_changes
from search.alerts.matcher import alert_scores, article_terms, compile_alerts, match_rows
from search.alerts.saved import SavedSearch, insert_alert, model_key
from search.models import Article, Mode
from search.settings import Settings
from search.storage.index import SQLITE, open_index
from search.storage.store import NewArticle, Store
from search.text.bm25 import idf
from search.text.embedding import Embedder, make_embedder

MODES: tuple[Mode, ...] = ("hybrid", "dense", "lexical")
GRIDS = {
    "hybrid": [round(0.30 + 0.025 * i, 3) for i in range(21)],
    "dense": [round(0.30 + 0.025 * i, 3) for i in range(21)],
    "lexical": [round(0.30 + 0.05 * i, 3) for i in range(15)],
}


def copy_index(source: Path, work: Path) -> Path:
    """``source`` copied to ``<work>/index`` as a plain directory (never written where it lies)."""
    target = work / "index"
    if target.exists():
        shutil.rmtree(target)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source.resolve(), target, symlinks=False)
    return target


# -- replay --------------------------------------------------------------------------------------------------------


def stored_articles(store: Store) -> list[NewArticle]:
    """Every stored article with its passages' vectors and labels, in date order (undated last), then id."""
    conn = store.connection()
    pids, owners = store.passage_owners()
    vectors = np.zeros((len(pids), 384), dtype=np.float32)
    filled = 0
    for ids, vecs in store.iter_vectors("passages"):
        vectors[filled : filled + len(ids)] = vecs
        filled += len(ids)
    vectors = vectors[:filled]
    groups = store.groups()
    out: list[NewArticle] = []
    order = np.argsort(owners, kind="stable")
    keys, starts = np.unique(owners[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    span = {int(k): (int(a), int(b)) for k, a, b in zip(keys, starts, ends, strict=True)}
    for aid, id_, title, paragraphs, date in conn.execute("SELECT aid, id, title, paragraphs, date FROM articles"):
        a, b = span.get(int(aid), (0, 0))
        rows = order[a:b]
        story, dup = groups.get(int(aid), (id_, id_))
        out.append(
            NewArticle(
                Article(id_, title, tuple(json.loads(paragraphs)), date),
                [(0, "body", 0, 0, "")] * len(rows),
                vectors[rows],
                np.zeros(384, dtype=np.float32),
                story=story,
                duplicates=dup,
            )
        )
    out.sort(key=lambda r: (r.article.date is None, r.article.date or "", r.article.id))
    return out


def fts_idf(store: Store) -> Callable[[str], float | None]:
    """Passage-level IDF of a stemmed term, from the index's own FTS5 table (what the live postings hold)."""
    conn = store.connection()
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.passage_vocab USING fts5vocab(main, 'passages_fts', 'row')")
    df = {str(t): int(n) for t, n in conn.execute("SELECT term, doc FROM temp.passage_vocab")}
    rows = int(conn.execute("SELECT COUNT(*) FROM passages").fetchone()[0])
    return lambda term: idf(rows, df[term]) if term in df else None


def questions(data: Path, work: Path, held: set[str], first: int) -> dict[str, list[dict[str, Any]]]:
    """Dev and held-back questions (``prefix_slices`` of the corpus's first ``first`` articles, those the index was
    built from), each with its evidence articles."""
    counts = prefix_slices(data, work, first)
    results = load_search_results(data)
    out: dict[str, list[dict[str, Any]]] = {}
    for part in ("dev", "heldback"):
        path = work / f"rtqa-first{counts['articles']}-{part}.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for r in rows:
            r["evidence"] = sorted(set(results[r["id"]]) & held)
        out[part] = [r for r in rows if r["evidence"]]
    return out


def evaluate(
    matrix: np.ndarray, articles: list[NewArticle], rows: list[dict[str, Any]], threshold: float
) -> dict[str, float]:
    """Recall, precision and entries per question of ``rows`` (questions, aligned with ``matrix``'s rows) at one
    threshold, articles fed in the order given and collapsed by duplicate group, then story."""
    ids = [a.article.id for a in articles]
    recalls: list[float] = []
    entries = true_entries = 0
    for q, scores in zip(rows, matrix, strict=True):
        evidence = set(q["evidence"])
        alerted: set[str] = set()
        seen: dict[str, int] = {}  # label -> entry number
        holds: list[bool] = []
        for j in np.flatnonzero(scores >= threshold).tolist():
            a = articles[j]
            alerted.add(ids[j])
            entry = seen.get(f"d:{a.duplicates}")
            if entry is None and a.story is not None:
                entry = seen.get(f"s:{a.story}")
            if entry is None:
                entry = len(holds)
                holds.append(False)
            seen.setdefault(f"d:{a.duplicates}", entry)
            if a.story is not None:
                seen.setdefault(f"s:{a.story}", entry)
            holds[entry] = holds[entry] or ids[j] in evidence
        recalls.append(len(alerted & evidence) / len(evidence))
        entries += len(holds)
        true_entries += sum(holds)
    recall = statistics.fmean(recalls) if recalls else 0.0
    precision = true_entries / entries if entries else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "threshold": threshold,
        "recall": round(recall, 4),
        "precision": round(precision, 4),
        "f1": round(f1, 4),
        "entries_per_question": round(entries / max(len(rows), 1), 2),
        "false_entries_per_question": round((entries - true_entries) / max(len(rows), 1), 2),
    }


def replay(index: Path, data: Path, work: Path, embedder: Embedder, first: int) -> dict[str, Any]:
    started = time.perf_counter()
    store = Store(index / SQLITE)
    articles = stored_articles(store)
    held = {a.article.id for a in articles}
    qs = questions(data, work / "rtqa", held, first)
    texts = [q["text"] for part in ("dev", "heldback") for q in qs[part]]
    vectors = embedder.encode(texts)
    term_idf = fts_idf(store)
    terms = article_terms(articles)
    loaded = time.perf_counter() - started
    report: dict[str, Any] = {
        "articles": len(articles),
        "passages": int(sum(len(a.passages) for a in articles)),
        "questions": {p: len(qs[p]) for p in qs},
        "evidence_per_question": round(statistics.fmean(len(q["evidence"]) for p in qs for q in qs[p]), 2),
        "dates": {p: [qs[p][0]["date"], qs[p][-1]["date"]] for p in qs if qs[p]},
        "load_s": round(loaded, 1),
        "modes": {},
    }
    n_dev = len(qs["dev"])
    for mode in MODES:
        saved = [
            SavedSearch(
                i, t, mode, {"from": None, "to": None, "source": [], "category": []}, 0.0, None, None, v, "", ""
            )
            for i, (t, v) in enumerate(zip(texts, vectors, strict=True))
        ]
        compiled = compile_alerts(saved, vectors.shape[1], term_idf)
        matrix = np.concatenate(
            [
                alert_scores(compiled, articles[i : i + 250], terms[i : i + 250])[0]
                for i in range(0, len(articles), 250)
            ],
            axis=1,
        )
        dev = [evaluate(matrix[:n_dev], articles, qs["dev"], t) for t in GRIDS[mode]]
        best = max(dev, key=lambda r: (r["f1"], r["threshold"]))
        held_back = [evaluate(matrix[n_dev:], articles, qs["heldback"], t) for t in GRIDS[mode]]
        report["modes"][mode] = {
            "chosen_on_dev": best["threshold"],
            "dev_at_chosen": best,
            "heldback_at_chosen": next(r for r in held_back if r["threshold"] == best["threshold"]),
            "dev": dev,
            "heldback": held_back,
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    store.close()
    return report


# -- write cost ----------------------------------------------------------------------------------------------------


def write_cost(index_dir: Path, data: Path, embedder: Embedder, alerts: int, rounds: int) -> dict[str, Any]:
    settings = Settings(index_dir=index_dir)
    index = open_index(index_dir, embedder)
    store = index.writable[1]
    held = set(store.article_hashes())
    unseen = {a.id: a for a in read_articles(data, len(held) + 200) if a.id not in held and a.paragraphs}
    fresh = list(unseen.values())[:10]  # the next articles of the corpus, each id once
    t0 = time.perf_counter()
    rows, _ = new_articles(fresh, make_chunker(settings, embedder), embedder, settings, {})
    embed_s = time.perf_counter() - t0
    rows = [replace(r, origin="add") for r in rows]
    texts = [str(q["question"]) for q in load_questions(data)][:alerts]
    vectors = embedder.encode(texts)
    model = model_key(index.manifest["model"])
    default = settings.alert_threshold_hybrid
    matching: list[float] = []

    def timed_match(*args: Any, **kwargs: Any) -> int:
        t = time.perf_counter()
        try:
            return match_rows(*args, **kwargs)
        finally:
            matching.append(time.perf_counter() - t)

    setattr(indexer.update, "match_rows", timed_match)  # the write path's call, timed  # noqa: B010

    def set_alerts(n: int) -> None:
        with store.connection() as conn:
            conn.execute("DELETE FROM alerts")
            for text, vec in zip(texts[:n], vectors[:n], strict=True):
                insert_alert(
                    conn,
                    text,
                    "hybrid",
                    {"from": None, "to": None, "source": [], "category": []},
                    default,
                    None,
                    None,
                    vec,
                    model,
                )

    def undo() -> None:
        apply_changes(index, [r.article.id for r in rows], [], embedder=embedder)
        with store.connection() as conn:
            conn.execute("DELETE FROM alert_matches")

    def one_write() -> float:
        t = time.perf_counter()
        apply_changes(index, [], rows, embedder=embedder)
        took = time.perf_counter() - t
        undo()
        return took

    times: dict[int, list[float]] = {0: [], alerts: []}
    match_times: list[float] = []
    recorded = 0
    for n in (0, alerts, 0, alerts):
        set_alerts(n)
        one_write()  # untimed: compiles the saved searches once, warms the caches
        for _ in range(rounds):
            matching.clear()
            times[n].append(one_write())
            if n:
                match_times += matching[:1]
        if n:
            apply_changes(index, [], rows, embedder=embedder)
            recorded = int(store.connection().execute("SELECT COUNT(*) FROM alert_matches").fetchone()[0])
            undo()
    setattr(indexer.update, "match_rows", match_rows)  # noqa: B010
    set_alerts(0)
    p50 = {n: statistics.median(t) for n, t in times.items()}
    n_passages = sum(len(r.passages) for r in rows)
    return {
        "passages_in_index": store.counts()[1],
        "write_articles": len(rows),
        "write_passages": n_passages,
        "alerts": alerts,
        "rounds_per_side": len(times[0]),
        "apply_ms": {
            "none": {"p50": round(p50[0] * 1000, 1), "mean": round(statistics.fmean(times[0]) * 1000, 1)},
            "with_alerts": {
                "p50": round(p50[alerts] * 1000, 1),
                "mean": round(statistics.fmean(times[alerts]) * 1000, 1),
            },
        },
        "ratio_p50": round(p50[alerts] / p50[0], 3),
        "ratio_mean": round(statistics.fmean(times[alerts]) / statistics.fmean(times[0]), 3),
        "matching_ms_p50": round(statistics.median(match_times) * 1000, 1) if match_times else None,
        "matches_recorded_per_write": recorded,
        "embed_10_articles_s": round(embed_s, 2),
        "ratio_with_embedding": round((p50[alerts] + embed_s) / (p50[0] + embed_s), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("/tmp/archive/real-3000/index"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/alerts-bench"))
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/realtimeqa")
    parser.add_argument("--alerts", type=int, default=1000)
    parser.add_argument("--articles", type=int, default=3000, help="The corpus's first N articles the index holds.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("write", "replay"), default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    flags = cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8"))
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags {flags}", flush=True)
    started = time.perf_counter()
    index = copy_index(args.index, args.work)
    embedder = make_embedder(Settings())
    report: dict[str, Any] = {
        "command": " ".join(["bench/alerts.py", *sys.argv[1:]]),
        "cpu": {"model": platform.processor() or platform.machine(), "cores": os.cpu_count(), "flags": flags},
        "source_index": str(args.index),
    }
    if args.only in (None, "replay"):
        report["replay"] = replay(index, args.data, args.work, embedder, args.articles)
        print(
            json.dumps(
                {
                    m: {k: v for k, v in r.items() if k not in ("dev", "heldback")}
                    for m, r in report["replay"]["modes"].items()
                },
                indent=1,
            ),
            flush=True,
        )
    if args.only in (None, "write"):
        report["write"] = write_cost(index, args.data, embedder, args.alerts, args.rounds)
        print(json.dumps(report["write"], indent=1), flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    shutil.rmtree(args.work / "index", ignore_errors=True)


if __name__ == "__main__":
    main()
