"""bench/alerts.py's replay scoring: recall per question, precision per entry, entries collapsed by group."""

from __future__ import annotations

import numpy as np

from bench.alerts import evaluate
from search.models import Article
from search.storage.store import NewArticle


def _row(article_id: str, story: str, duplicates: str) -> NewArticle:
    vec = np.zeros((1, 4), dtype=np.float32)
    return NewArticle(
        Article(article_id, "t"), [(0, "title", 0, 1, "t")], vec, vec[0], story=story, duplicates=duplicates
    )


def test_recall_precision_and_collapse_per_threshold() -> None:
    articles = [_row("a", "s1", "a"), _row("b", "s1", "b"), _row("c", "s2", "c"), _row("d", "s3", "c")]
    questions = [{"evidence": ["a", "c"]}, {"evidence": ["d"]}]
    scores = np.asarray([[0.9, 0.8, 0.4, 0.7], [0.1, 0.2, 0.3, 0.6]])
    high = evaluate(scores, articles, questions, 0.55)
    # q1 alerts a, b (grouped under a: same story) and d (its own entry): recall 1/2; q2 alerts d: recall 1
    assert high["recall"] == 0.75
    # entries: q1 {a+b} true, {d} false; q2 {d} true
    assert high["precision"] == round(2 / 3, 4) and high["entries_per_question"] == 1.5
    low = evaluate(scores, articles, questions, 0.35)
    # q1: a and b (story s1) one entry, c and d (duplicate group c) another, both true; q2: d alone, true
    assert low["recall"] == 1.0 and low["precision"] == 1.0
    assert evaluate(scores, articles, questions, 0.95)["recall"] == 0.0
