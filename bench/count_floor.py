"""The match floor: the cosine from which an article holding no query word still counts as matching a query.

    .venv/bin/python bench/count_floor.py --scifact-index DIR --scifact ../shared/data/scifact \\
        --rtqa-index DIR --rtqa-work DIR --out bench/results/count_floor.json

A search's ``total`` counts the articles that match: those holding a query term (BM25 postings) and, in dense and
hybrid modes, those whose best passage's cosine to the query reaches ``match_floor`` (``search/settings.py``). The
floor is measured here on the dev sets only:

- SciFact **train** claims (``qrels/train.tsv``): each claim's dense top 100 articles (an article scores as its best
  passage, ``SearchService.rank_articles`` with no floor); the cosine of every judged-relevant article found there.
- RealTime QA **dev** questions (``bench/realtimeqa.py`` selection, ``<rtqa-work>/rtqa-dev.jsonl``): each question's
  dense top 100 passages (``rank_passages``); the cosine of the best-ranked passage holding an answer string (the
  one answer recall@k looks at), and of every answer-holding passage.

The chosen floor is the largest multiple of 0.01 at or below the lowest of those cosines, so no judged-relevant
SciFact article and no answering RealTime QA passage in a dev top 100 falls under it. The report also gives the
best cosine of a few nonsense queries on each index (what the floor must stay above for "no match" to be said),
and, with ``--check``, the effect of the chosen floor on the held-out figures: SciFact **test** nDCG@10 and
recall@100 and RealTime QA dev and held-out answer recall@1/5/10 (hybrid, the default mode, and dense), with the
floor off (-1) and on, in the same process on the same index.

The indexes are built by the real CLI beforehand (``newsdesk index <corpus> --index DIR``); this script only opens
them, with the ``NEWSDESK_*`` settings in effect.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.mlt import save  # noqa: E402
from bench.scifact import evaluate, git_commit, loadavg, read_qrels, read_queries  # noqa: E402
from search.ranking.evaluation import answer_recall, contains_answer  # noqa: E402

DEPTH = 100
NONSENSE = ("xyzzy qwerty plugh", "€😀", "zxqv blorft snargle", "asdfgh jkl", "🙂🙂🙂", "qqqq wwww eeee")
OFF = -1.0  # a match_floor that every cosine reaches: the ranking as it was before the floor


def open_service(index: Path, floor: float = OFF) -> Any:
    """``SearchService`` on ``index`` as the CLI opens it, with ``match_floor`` set to ``floor``."""
    from search.service import SearchService
    from search.settings import Settings
    from search.storage.index import open_index
    from search.text.embedding import make_embedder

    settings = Settings.from_env(index_dir=index, match_floor=floor)
    embedder = make_embedder(settings)
    return SearchService(open_index(index, embedder), embedder, settings)


def with_floor(service: Any, floor: float) -> Any:
    """Another service on the same open index and model, with ``match_floor`` set to ``floor``."""
    from search.service import SearchService

    return SearchService(service.index, service.embedder, replace(service.settings, match_floor=floor))


def read_rtqa(path: Path) -> list[tuple[str, str, list[str]]]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    return [(r["id"], r["text"], list(r["answers"])) for r in rows]


def quantiles(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "n": len(ordered),
        "min": round(ordered[0], 4),
        "p01": round(pick(0.01), 4),
        "p05": round(pick(0.05), 4),
        "median": round(statistics.median(ordered), 4),
    }


def scifact_scores(service: Any, queries: Sequence[tuple[str, str]], qrels: dict[str, dict[str, int]]) -> list[float]:
    """Cosine of every judged-relevant article in its claim's dense top ``DEPTH`` (floor off)."""
    vecs = service.embedder.encode([t for _, t in queries], batch_size=64)
    out: list[float] = []
    for (qid, text), vec in zip(queries, vecs, strict=True):
        items = service.rank_articles(text, vec, DEPTH, "dense", collapse=False).items
        refs = service.index.store.article_refs(a for a, _ in items)
        relevant = {d for d, g in qrels.get(qid, {}).items() if g > 0}
        out += [sc.dense for a, sc in items if refs[a].id in relevant]
    return out


def rtqa_scores(service: Any, questions: Sequence[tuple[str, str, list[str]]]) -> tuple[list[float], list[float]]:
    """(cosine of each question's best-ranked answer passage, cosine of every answer passage) in the dense top
    ``DEPTH`` passages (floor off)."""
    vecs = service.embedder.encode([t for _, t, _ in questions], batch_size=64)
    first: list[float] = []
    every: list[float] = []
    for (_, text, answers), vec in zip(questions, vecs, strict=True):
        ranked = service.rank_passages(text, vec, DEPTH, "dense")
        hits = [sc.dense for sp, sc in ranked if contains_answer(sp.passage.text, answers)]
        if hits:
            first.append(hits[0])
        every += hits
    return first, every


def nonsense_best(service: Any) -> dict[str, float]:
    """The best passage cosine of each nonsense query on the index: the floor must lie above these."""
    out: dict[str, float] = {}
    for q in NONSENSE:
        scores, _ = service.index.passages.search(service.embed_query(q)[None, :], 1)
        out[q] = round(float(scores[0][0]), 4)
    return out


def choose(values: Iterable[float]) -> float:
    """The largest multiple of 0.01 at or below every value."""
    return math.floor(min(values) * 100) / 100


def scifact_check(service: Any, queries: Sequence[tuple[str, str]], qrels: Any, floor: float) -> dict[str, Any]:
    """SciFact nDCG@10 / recall@100 of article runs as ``newsdesk search --run`` writes them, floor off and on."""
    vecs = service.embedder.encode([t for _, t in queries], batch_size=64)
    out: dict[str, Any] = {}
    for mode in ("hybrid", "dense"):
        for name, f in (("off", OFF), ("on", floor)):
            svc = with_floor(service, f)
            run: dict[str, dict[str, float]] = {}
            kept = 0
            for (qid, text), vec in zip(queries, vecs, strict=True):
                items = svc.rank_articles(text, vec, DEPTH, mode, collapse=False).items
                refs = svc.index.store.article_refs(a for a, _ in items)
                run[qid] = {refs[a].id: sc.fused for a, sc in items}
                kept += len(items)
            metrics = evaluate(qrels, run)
            out[f"{mode}_{name}"] = {
                "ndcg_cut_10": round(metrics["ndcg_cut_10"], 4),
                "recall_100": round(metrics["recall_100"], 4),
                "mean_results": round(kept / len(queries), 1),
            }
    return out


def rtqa_check(service: Any, sets: dict[str, list[tuple[str, str, list[str]]]], floor: float) -> dict[str, Any]:
    """RealTime QA answer recall@1/5/10 of ranked passages, floor off and on."""
    out: dict[str, Any] = {}
    for set_name, questions in sets.items():
        vecs = service.embedder.encode([t for _, t, _ in questions], batch_size=64)
        answers = [a for _, _, a in questions]
        for mode in ("hybrid", "dense"):
            for name, f in (("off", OFF), ("on", floor)):
                svc = with_floor(service, f)
                texts = [
                    [sp.passage.text for sp, _ in svc.rank_passages(t, v, 20, mode)]
                    for (_, t, _), v in zip(questions, vecs, strict=True)
                ]
                out[f"{set_name}_{mode}_{name}"] = {
                    f"@{k}": round(answer_recall(texts, answers, k), 4) for k in (1, 5, 10)
                } | {"questions": len(questions)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scifact", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--scifact-index", type=Path, required=True, help="An index of SciFact's corpus.jsonl.")
    parser.add_argument("--rtqa-index", type=Path, required=True, help="An index of <rtqa-work>/rtqa-corpus.jsonl.")
    parser.add_argument("--rtqa-work", type=Path, required=True, help="Where bench/realtimeqa.py wrote its selection.")
    parser.add_argument("--check", action="store_true", help="Also score held-out sets with the floor off and on.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "count_floor.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": [sys.executable, *sys.argv],
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "loadavg_1min_start": loadavg()},
        "depth": DEPTH,
    }
    scifact = open_service(args.scifact_index)
    train_qrels = read_qrels(args.scifact / "qrels" / "train.tsv")
    train = read_queries(args.scifact / "queries.jsonl", train_qrels)
    sci = scifact_scores(scifact, train, train_qrels)
    rtqa = open_service(args.rtqa_index)
    dev = read_rtqa(args.rtqa_work / "rtqa-dev.jsonl")
    first, every = rtqa_scores(rtqa, dev)
    floor = choose(sci + first + every)
    report["dev"] = {
        "scifact_train_relevant_in_top100": quantiles(sci),
        "scifact_train_claims": len(train),
        "rtqa_dev_best_answer_passage": quantiles(first),
        "rtqa_dev_every_answer_passage": quantiles(every),
        "rtqa_dev_questions": len(dev),
        "rtqa_dev_questions_with_an_answer_in_top100": len(first),
    }
    report["nonsense_best_cosine"] = {"scifact": nonsense_best(scifact), "rtqa": nonsense_best(rtqa)}
    report["chosen_floor"] = floor
    if args.check:
        test_qrels = read_qrels(args.scifact / "qrels" / "test.tsv")
        test = read_queries(args.scifact / "queries.jsonl", test_qrels)
        report["check"] = {
            "scifact_test": scifact_check(scifact, test, test_qrels, floor),
            "rtqa": rtqa_check(rtqa, {"dev": dev, "heldout": read_rtqa(args.rtqa_work / "rtqa-heldout.jsonl")}, floor),
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["machine"]["loadavg_1min_end"] = loadavg()
    save(args.out, report)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
