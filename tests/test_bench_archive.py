"""bench/archive.py on a tiny stand-in corpus: its hash embedder, a two-size run's report (stages, memory, latency,
quality, writes alone and under searches, merge, check, HTTP, ratios, verdicts) through the indexer's own path, and
the real-model subset built by ``newsdesk index`` and resumed on a second run."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.archive import (
    CORPUS,
    QUESTIONS,
    HashVectorEmbedder,
    acceptance,
    attempt,
    corpus_articles,
    same_top,
    summary,
    verdict,
)
from tests.fakes import wire_articles

ROOT = Path(__file__).resolve().parent.parent


def test_hash_vectors_are_deterministic_unit_vectors_of_shared_words() -> None:
    embedder = HashVectorEmbedder()
    a, b, c = embedder.encode(["Oil prices rose", "oil prices rose again", "The harvest was late"])
    assert a.shape == (384,) and np.allclose([np.linalg.norm(v) for v in (a, b, c)], 1.0)
    assert np.array_equal(a, HashVectorEmbedder().encode(["Oil prices rose"])[0])  # no per-process seed
    assert float(a @ b) > float(a @ c)
    vectors, spans = embedder.encode_spans(["One. Two words."], [[(0, 4), (5, 15)]])
    assert vectors.shape == (1, 384) and spans[0].shape == (2, 384)
    assert embedder.count_tokens("Two words.") == 3 + 2  # tokens, and the model's [CLS] and [SEP]


def stand_in_data(tmp_path: Path, n: int = 60) -> Path:
    """A corpus of ``n`` wire stories in RealTime QA's layout: the gzipped articles, questions with answers, and
    search results naming evidence articles (what the real subset's answer recall reads)."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [{**r, "publish_date": r.pop("date")} for r in wire_articles(n, seed=9)]
    with gzip.open(data / CORPUS, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    questions = [
        {"question_id": f"q{i}", "question": q, "answer_text": [a]}
        for i, (q, a) in enumerate([("oil prices", "oil"), ("wheat harvest", "wheat"), ("central bank rates", "bank")])
    ]
    (data / QUESTIONS).write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    results = "".join(f"q{i}\t1\t{rows[i]['id']}\n" for i in range(len(questions)))
    (data / "search_results.tsv").write_text("question_id\trank\tarticle_id\n" + results, encoding="utf-8")
    return data


def run_archive(tmp_path: Path, data: Path, *options: str) -> dict[str, Any]:
    out = tmp_path / "report.json"
    command = [sys.executable, str(ROOT / "bench" / "archive.py"), "--work", str(tmp_path / "w"), "--data", str(data)]
    command += ["--queries", "3", "--quality-queries", "3", "--rounds", "1", "--no-real-model", "--write-seconds", "1"]
    subprocess.run([*command, *options, "--out", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=600)
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return report


@pytest.mark.slow  # 18 s: a fresh clone's make test measured 594 and 609 s against its 10 minutes with it
def test_a_two_size_run_reports_every_figure(tmp_path: Path) -> None:
    # the larger size is the whole stand-in corpus, as 26,671 is the whole of RealTime QA: nothing is left after it
    report = run_archive(tmp_path, stand_in_data(tmp_path, 24), "--sizes", "12,24", "--http-seconds", "1")
    small, large = report["sizes"]
    assert (small["articles"], large["articles"]) == (12, 24) and small["passages"] < large["passages"]
    stages = ("read", "chunk", "embed", "sqlite_write", "faiss", "labels", "bm25", "profiles", "caches_and_swap")
    for run in (small, large):
        build = run["build"]
        assert all(build[s] >= 0 for s in stages) and build["faiss"] > 0 and build["sqlite_write"] > 0
        assert abs(sum(build[s] for s in stages) - build["total"]) < 0.01
        assert run["open_s"] > 0 and run["memory"]["rss"] >= run["memory"]["vectors"] > 0
        assert set(run["latency_ms"]) == {"hybrid", "dense", "similar", "timeline", "story"}
        assert all(lat["calls"] > 0 for lat in run["latency_ms"].values())
        assert run["write"]["add_s"] >= run["write"]["add_excl_embedding_s"] > 0 and run["write"]["delete_s"] > 0
        assert run["write"]["pool"] == "copies"  # the same writes at both sizes, none of them empty
        # exact vectors and the exhaustive BM25 itself: the served answers are the reference's
        assert run["quality"]["dense_recall_at_10"] == 1.0 and run["quality"]["queries"] == 3
        assert run["quality"]["lexical_identical"] == {"passages": 1.0, "articles": 1.0}
        load = run["writes_under_load"]
        assert load["writes"]["adds"] >= 1 and load["write_failures"] == []
        assert load["search_without_writes_ms"]["searches"] > 0 and load["search_with_writes_ms"]["searches"] > 0
        assert run["optimize"]["exit_status"] == 0 and run["check"]["exit_status"] == 0
        assert run["optimize"]["merged_files"] == 0 or run["optimize"]["merge_s"] >= 0
        http = run["http"]
        assert http["open_to_first_search_s"] > 0 and http["peak_rss"] > 0
        assert http["clients_4"]["requests"] > 0 and http["clients_4"]["errors"] == 0
        assert http["clients_1"]["requests"] > 0 and http["clients_1"]["errors"] == 0
    assert large["memory"]["vectors"] > small["memory"]["vectors"]
    assert report["ratios"]["passages"] == round(large["passages"] / small["passages"], 2)
    assert report["projection"]["passages"] > large["passages"]
    assert "bench-hash-vectors" in report["embedder"]
    verdicts = report["acceptance"]
    assert verdicts["conditions"]["whole_corpus"] is False and verdicts["1_whole_corpus_indexed"]["pass"] is False
    assert verdicts["1_check_passes"]["pass"] is True and verdicts["all_pass"] is False
    assert verdicts["4_dense_recall_at_10"]["pass"] is True


@pytest.mark.slow  # 8 s of make test's 10 minutes; `newsdesk index`, serving and `check` are covered by their own tests
def test_the_real_subset_is_built_by_newsdesk_index_served_and_resumed(tmp_path: Path) -> None:
    data = stand_in_data(tmp_path, 30)
    options = ("--sizes", "", "--real-subset", "12")  # no hash-vector size: the subset alone
    report = run_archive(tmp_path, data, *options)
    real = report["real_subset"]
    assert real["articles"] == 12 and real["check"]["exit_status"] == 0 and "resumed" not in real["build"]
    assert real["build"]["command"].startswith("newsdesk index ")
    served = real["served"]
    assert "all-MiniLM-L6-v2" in served["model"] and served["evidence_questions"] == 3
    assert served["answer_recall_at_5"]["as_built"] == served["answer_recall_at_5"]["after_writes_and_merge"]
    assert served["write"]["visible_to_search"] is True and served["quality"]["dense_recall_at_10"] == 1.0
    verdicts = report["acceptance"]
    assert (
        verdicts["1_real_subset_built_served_checked"]["pass"]
        and verdicts["1_real_subset_answer_recall_unchanged"]["pass"]
    )
    assert "conditions" not in verdicts  # no hash-vector size was run
    again = run_archive(tmp_path, data, *options)["real_subset"]
    assert again["build"]["resumed"] is True and again["build"]["seconds"] == real["build"]["seconds"]


def test_writes_draw_one_pool_at_every_size_even_at_the_whole_corpus(tmp_path: Path) -> None:
    data = stand_in_data(tmp_path, 80)
    small, pool, kind = corpus_articles(data, 12, 24)
    large, same, _ = corpus_articles(data, 24, 24)
    assert kind == "novel" and len(small) == 12 and len(large) == 24 and pool == same
    assert {a.id for a in pool}.isdisjoint(a.id for a in large)  # after the largest size: in no index of the run
    whole, copies, kind = corpus_articles(data, 80, 80)
    assert kind == "copies" and len(whole) == 80 and len(copies) == 80  # not an empty pool (empty writes)
    assert {a.id for a in copies} <= {a.id for a in whole}


def test_same_top_allows_only_ties_to_differ() -> None:
    ranked = [(1, 3.0), (2, 2.0), (3, 2.0), (4, 1.0)]
    assert same_top(ranked, list(ranked))
    assert same_top(ranked, [(1, 3.0), (3, 2.0), (2, 2.0), (4, 1.0)])  # a tie ordered the other way
    assert same_top(ranked, [(1, 3.0), (2, 2.0), (3, 2.0), (5, 1.0)])  # who fills the cut among the last tie
    assert not same_top(ranked, [(1, 3.0), (2, 2.0), (5, 2.0), (4, 1.0)])  # another row inside the ranking
    assert not same_top(ranked, [(2, 3.0), (1, 2.0), (3, 2.0), (4, 1.0)])
    assert not same_top(ranked, ranked[:3])


def test_verdicts_fail_missing_and_nan_figures() -> None:
    assert verdict(1.5, 2.0)["pass"] and not verdict(2.5, 2.0)["pass"]
    assert verdict(0.96, 0.95, below=False)["pass"] and not verdict(0.9, 0.95, below=False)["pass"]
    assert not verdict(None, 2.0)["pass"] and not verdict(float("nan"), 2.0)["pass"]


def test_a_failed_phase_is_reported_beside_the_others_and_fails_its_verdicts() -> None:
    failed = attempt("HTTP", lambda: {"open": 1 // 0})
    assert failed == {"error": "ZeroDivisionError: integer division or modulo by zero"}
    run = {"articles": 5, "passages": 50, "http": failed, "check": {"exit_status": 0, "seconds": 1.0}}
    verdicts = acceptance([run], None)
    assert verdicts["1_check_passes"]["pass"] and not verdicts["3_server_open_to_first_search_s"]["pass"]
    assert not verdicts["1_serves_search_similar_timelines_stories_writes"]["pass"] and not verdicts["all_pass"]
    text = summary({"sizes": [run], "acceptance": verdicts, "load_average": {}, "cpu": {"flags": ""}})
    assert "failed phase 5: http: ZeroDivisionError" in text
