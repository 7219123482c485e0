from __future__ import annotations

import math
from pathlib import Path

import pytest

from search.errors import SourceError
from search.ranking.evaluation import answer_recall, evaluate_run, mrr, ndcg, read_qrels, recall


def test_ndcg_by_hand() -> None:
    judged = {"a": 1, "b": 2, "z": 1}
    # ranked b (gain 2) at 1, x (0) at 2, a (1) at 3; ideal: 2, 1, 1
    dcg = 2 / math.log2(2) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg(["b", "x", "a"], judged) == pytest.approx(dcg / idcg)
    assert ndcg([], judged) == 0.0
    assert ndcg(["a"], {}) == 0.0


def test_recall_and_mrr() -> None:
    judged = {"a": 1, "b": 1, "c": 0}
    assert recall(["x", "a", "c"], judged) == 0.5
    assert recall(["x"] * 100 + ["a"], judged, k=100) == 0.0  # beyond the cut-off
    assert mrr(["x", "y", "b"], judged) == pytest.approx(1 / 3)
    assert mrr(["c"], judged) == 0.0  # relevance 0 is not relevant


def test_evaluate_run_counts_missing_queries_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    metrics = evaluate_run({"q1": ["a"]}, qrels)
    assert metrics["queries"] == 2  # q3 has nothing relevant
    assert metrics["ndcg@10"] == 0.5 and metrics["mrr@10"] == 0.5


def test_read_qrels_beir_and_trec(tmp_path: Path) -> None:
    beir = tmp_path / "q.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t2\n", encoding="utf-8")
    assert read_qrels(beir) == {"1": {"d1": 1, "d2": 2}}
    trec = tmp_path / "q.trec"
    trec.write_text("7 0 doc/1 1\n", encoding="utf-8")
    assert read_qrels(trec) == {"7": {"doc/1": 1}}
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\td1\t1\n2 d2\n", encoding="utf-8")
    with pytest.raises(SourceError, match="columns"):
        read_qrels(bad)


def test_read_qrels_takes_whole_float_relevances_and_agrees_with_the_benchmark(tmp_path: Path) -> None:
    """One reader: ``newsdesk eval`` refused a ``1.0`` relevance the benchmark read, and skipped a first data row
    whose relevance looked like no integer (``-0``, ``1.0``) as a header."""
    from bench.scifact import read_qrels as bench_read_qrels

    p = tmp_path / "q.tsv"
    p.write_text("1\td1\t1.0\n1\td2\t2\n2\td3\t0.0\n", encoding="utf-8")
    assert read_qrels(p) == {"1": {"d1": 1, "d2": 2}, "2": {"d3": 0}} == bench_read_qrels(p)
    half = tmp_path / "half.tsv"
    half.write_text("1\td1\t0.5\n", encoding="utf-8")
    with pytest.raises(SourceError, match="whole number"):
        read_qrels(half)


def test_answer_recall_is_case_insensitive_substring() -> None:
    passages = [["The Buffalo Bills won.", "x"], ["nothing here"], ["", "pope benedict xvi was buried"]]
    answers = [["buffalo bills"], ["Iraq"], ["Pope Benedict XVI", ""]]
    assert answer_recall(passages, answers, k=1) == pytest.approx(1 / 3)
    assert answer_recall(passages, answers, k=2) == pytest.approx(2 / 3)


def test_our_metrics_agree_with_trec_eval() -> None:
    """``newsdesk eval`` and the benchmarks' trec_eval must give the same figures on the same run."""
    import random

    from bench.scifact import evaluate

    rng = random.Random(3)
    docs = [f"d{i}" for i in range(40)]
    qrels = {f"q{q}": {d: rng.choice([1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 5))} for q in range(30)}
    run = {q: {d: 1.0 - i / 100 for i, d in enumerate(rng.sample(docs, 30))} for q in qrels if q != "q7"}
    ours = evaluate_run({q: list(scores) for q, scores in run.items()}, qrels)
    theirs = evaluate(qrels, run)
    assert ours["ndcg@10"] == pytest.approx(theirs["ndcg_cut_10"], abs=1e-9)
    assert ours["recall@100"] == pytest.approx(theirs["recall_100"], abs=1e-9)
    assert ours["mrr@10"] == pytest.approx(theirs["mrr_10"], abs=1e-9)
