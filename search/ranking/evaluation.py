"""Ranking metrics for ``newsdesk eval``: nDCG@k, recall@k, MRR@k over judged runs, and answer recall@k.

Definitions follow trec_eval (linear gains, log2 discount, ideal ranking from all judged documents; queries with no
result score 0). ``bench/`` checks our figures with pytrec_eval, an evaluator that shares no code with this one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from search.errors import SourceError

Qrels = dict[str, dict[str, int]]


def read_qrels(path: Path) -> Qrels:
    """BEIR TSV (``query-id corpus-id score``, header optional) or TREC (``qid 0 docid rel``) judgments.

    The one reader of judgments: ``newsdesk eval`` and the benchmarks (bench/scifact.py) must score a run against
    the same qrels, or the two disagree on one file. A relevance may be written as a float (``1.0``, as some BEIR
    exports do) when it is a whole number; the first row is a header when its relevance is not a number. A later
    line for the same (query, document) pair replaces an earlier one."""
    qrels: Qrels = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: unreadable ({exc})") from None
    first = True
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 3:
            qid, doc, rel = parts
        elif len(parts) == 4:
            qid, _, doc, rel = parts
        else:
            raise SourceError(f"{path}:{n}: expected 3 (BEIR) or 4 (TREC) columns, got {len(parts)}")
        try:
            value = float(rel)
        except ValueError:
            if first:
                first = False
                continue  # header row, e.g. "query-id corpus-id score"
            raise SourceError(f"{path}:{n}: relevance {rel!r} is not a number") from None
        first = False
        if not value.is_integer():
            raise SourceError(f"{path}:{n}: relevance {rel!r} is not a whole number")
        qrels.setdefault(qid, {})[doc] = int(value)
    if not qrels:
        raise SourceError(f"{path}: no judgments (expected BEIR query-id corpus-id score rows or TREC qrels)")
    return qrels


def ndcg(ranked: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if judged.get(d, 0) > 0)
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall(ranked: Sequence[str], judged: Mapping[str, int], k: int = 100) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr(ranked: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranked[:k]):
        if judged.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def evaluate_run(run: Mapping[str, Sequence[str]], qrels: Qrels) -> dict[str, float]:
    """Mean nDCG@10, recall@100 and MRR@10 over every judged query (a query missing from the run scores 0)."""
    judged = [q for q, j in qrels.items() if any(g > 0 for g in j.values())]
    if not judged:
        return {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0, "queries": 0}
    n = len(judged)
    return {
        "ndcg@10": sum(ndcg(run.get(q, []), qrels[q]) for q in judged) / n,
        "recall@100": sum(recall(run.get(q, []), qrels[q]) for q in judged) / n,
        "mrr@10": sum(mrr(run.get(q, []), qrels[q]) for q in judged) / n,
        "queries": n,
    }


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    folded = text.casefold()
    return any(a.strip() and a.strip().casefold() in folded for a in answers)


def answer_recall(passages: Sequence[Sequence[str]], answers: Sequence[Sequence[str]], k: int) -> float:
    """Share of questions whose top-``k`` passages contain one of their answer strings (case-insensitive)."""
    if not answers:
        return 0.0
    hits = sum(any(contains_answer(t, ans) for t in texts[:k]) for texts, ans in zip(passages, answers, strict=True))
    return hits / len(answers)
