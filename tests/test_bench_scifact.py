"""Unit tests of the benchmark's evaluation (no model, no index): ``.venv/bin/pytest tests/test_bench_scifact.py``.

Expected values are worked out by hand from the metric definitions, so they check ``pytrec_eval`` is called
the right way (cut-offs, truncation for MRR@10, queries missing from the run counted as 0).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.scifact import BenchError, evaluate, read_qrels, read_trec_run, trec_order, truncate

pytest.importorskip("pytrec_eval")

LOG2_3 = math.log2(3)


def test_read_qrels_beir_with_header(tmp_path: Path) -> None:
    p = tmp_path / "test.tsv"
    p.write_text("query-id\tcorpus-id\tscore\n1\t10\t1\n1\t11\t2\n3\t12\t1\n", encoding="utf-8")
    assert read_qrels(p) == {"1": {"10": 1, "11": 2}, "3": {"12": 1}}


def test_read_qrels_trec_format(tmp_path: Path) -> None:
    p = tmp_path / "qrels.txt"
    p.write_text("q1 0 d1 1\nq1 0 d2 0\n", encoding="utf-8")
    assert read_qrels(p) == {"q1": {"d1": 1, "d2": 0}}


def test_read_qrels_rejects_bad_relevance_after_header(tmp_path: Path) -> None:
    p = tmp_path / "bad.tsv"
    p.write_text("query-id\tcorpus-id\tscore\n1\t10\tyes\n", encoding="utf-8")
    with pytest.raises(BenchError, match=":2:"):
        read_qrels(p)


def test_read_trec_run(tmp_path: Path) -> None:
    p = tmp_path / "run.trec"
    p.write_text("q1 Q0 d1 1 0.900000 t\nq1 Q0 d2 2 0.800000 t\nq2 Q0 d3 1 0.5 t\n", encoding="utf-8")
    assert read_trec_run(p) == {"q1": {"d1": 0.9, "d2": 0.8}, "q2": {"d3": 0.5}}


def test_read_trec_run_rejects_duplicates_and_short_lines(tmp_path: Path) -> None:
    p = tmp_path / "run.trec"
    p.write_text("q1 Q0 d1 1 0.9 t\nq1 Q0 d1 2 0.8 t\n", encoding="utf-8")
    with pytest.raises(BenchError, match="twice"):
        read_trec_run(p)
    p.write_text("q1 Q0 d1 1 0.9\n", encoding="utf-8")
    with pytest.raises(BenchError, match="6 columns"):
        read_trec_run(p)


def test_trec_order_breaks_ties_by_doc_id_descending() -> None:
    assert trec_order({"a": 0.5, "c": 0.9, "b": 0.5}) == ["c", "b", "a"]
    assert truncate({"q": {"a": 0.5, "c": 0.9, "b": 0.5}}, 2) == {"q": {"c": 0.9, "b": 0.5}}


def test_evaluate_by_hand() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 1}, "q3": {"d9": 1}}
    run = {
        "q1": {"d0": 0.9, "d1": 0.8},  # relevant at rank 2: nDCG 1/log2(3), RR 1/2, recall 1
        "q2": {"d2": 0.5},  # 1 of 2 relevant, at rank 1: nDCG 1/(1 + 1/log2(3)), RR 1, recall 1/2
        "q4": {"d1": 1.0},  # not judged: ignored
    }  # q3 has no results: 0 everywhere
    m = evaluate(qrels, run)
    assert m["queries"] == 3
    assert m["queries_without_results"] == 1
    assert m["ndcg_cut_10"] == pytest.approx((1 / LOG2_3 + 1 / (1 + 1 / LOG2_3)) / 3)
    assert m["mrr_10"] == pytest.approx((0.5 + 1.0) / 3)
    assert m["recall_100"] == pytest.approx((1.0 + 0.5) / 3)


def test_mrr_and_ndcg_cut_at_10_recall_at_100() -> None:
    qrels = {"q": {"rel": 1}}
    at_11 = {f"n{i:03d}": 1.0 - i / 1000 for i in range(10)} | {"rel": 0.5}
    m = evaluate(qrels, {"q": at_11})
    assert m["mrr_10"] == 0.0
    assert m["ndcg_cut_10"] == 0.0
    assert m["recall_100"] == 1.0
    at_101 = {f"n{i:03d}": 1.0 - i / 1000 for i in range(100)} | {"rel": 0.01}
    assert evaluate(qrels, {"q": at_101})["recall_100"] == 0.0


def test_empty_result_list_counts_as_zero() -> None:
    m = evaluate({"q1": {"d": 1}, "q2": {"d": 1}}, {"q1": {}, "q2": {"d": 1.0}})
    assert m["ndcg_cut_10"] == pytest.approx(0.5)
    assert m["queries_without_results"] == 1
