"""Unit tests of the more-like-this benchmark's pure parts (no model, no index, no ../shared/data):
``.venv/bin/pytest tests/test_bench_mlt.py``.

Precision is checked against hand-counted lists with exclusions and short lists, duplicate groups against the
listed-plus-body-equality rule (transitively merged), the nearest-neighbour step against its exclusions, the TF-IDF
baseline on a tiny corpus whose right neighbours are obvious, and the passage-pair scorings against brute force.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from bench.mlt import (
    BbcArticle,
    body_key,
    centred,
    corpus_row,
    cosine_matrix,
    duplicate_groups,
    duplicate_stats,
    evaluate,
    expected_hashes,
    fused,
    index_difference,
    mean_of_passages,
    passage_pair_similarities,
    precision_at,
    read_articles,
    read_duplicate_groups,
    second_order,
    tfidf_similarity,
    top_k_excluding,
    two_fold,
)
from bench.scifact import BenchError
from indexer.sources import FieldMap, to_article

CATS = {"b/1": "business", "b/2": "business", "b/3": "business", "s/1": "sport", "s/2": "sport", "t/1": "tech"}


def art(id_: str, body: str, title: str = "t") -> BbcArticle:
    return BbcArticle(id=id_, category=CATS.get(id_, id_.split("/")[0]), title=title, paragraphs=(body,))


# -- precision ----------------------------------------------------------------------------------------------------


def test_precision_drops_the_query_and_its_duplicates_before_cutting() -> None:
    ranked = ["b/1", "b/2", "s/1", "b/3", "t/1", "s/2"]
    # query b/1 (itself listed first), b/2 is its duplicate: the first 3 that remain are s/1, b/3, t/1
    assert precision_at(ranked, "b/1", {"b/2"}, CATS, 3) == pytest.approx(1 / 3)
    # without the exclusion b/2 would count as a hit
    assert precision_at(ranked, "b/1", set(), CATS, 3) == pytest.approx(1 / 3 + 1 / 3)
    assert precision_at(ranked, "b/1", {"b/2"}, CATS, 1) == 0.0


def test_precision_counts_missing_places_as_misses() -> None:
    assert precision_at(["b/2"], "b/1", (), CATS, 5) == pytest.approx(0.2)
    assert precision_at([], "b/1", (), CATS, 5) == 0.0
    with pytest.raises(ValueError):
        precision_at(["b/2"], "b/1", (), CATS, 0)


def test_evaluate_means_overall_and_per_category() -> None:
    cats = {"b/1": "business", "b/2": "business", "s/1": "sport"}
    groups = {a: frozenset({a}) for a in cats}
    rankings = {"b/1": ["b/2", "s/1"], "b/2": ["s/1", "b/1"], "s/1": ["b/1", "b/2"]}
    out = evaluate(rankings, cats, groups, (1, 2))
    assert out["precision@1"] == pytest.approx(round(1 / 3, 4))
    assert out["precision@2"] == pytest.approx(round((0.5 + 0.5 + 0) / 3, 4))
    assert out["per_category"]["business"] == {"articles": 2, "precision@1": 0.5, "precision@2": 0.5}
    assert out["per_category"]["sport"]["precision@2"] == 0.0
    assert out["short_lists"] == 0


def test_evaluate_excludes_duplicates_and_counts_short_lists() -> None:
    cats = {"b/1": "business", "b/2": "business", "b/3": "business", "s/1": "sport"}
    groups = {"b/1": frozenset({"b/1", "b/2"}), "b/2": frozenset({"b/1", "b/2"})}
    rankings = {"b/1": ["b/2", "s/1"], "b/2": ["b/1", "b/3"], "b/3": ["b/1", "b/2"], "s/1": ["b/1", "b/2"]}
    out = evaluate(rankings, cats, groups, (1, 2))
    # b/1 -> [s/1]: 0 at @1; b/2 -> [b/3]: 1; b/3 -> [b/1]: 1; s/1 -> [b/1]: 0
    assert out["precision@1"] == 0.5
    assert out["short_lists"] == 2  # b/1 and b/2 have one article left after their duplicate is dropped


def test_evaluate_requires_a_ranking_for_every_article() -> None:
    with pytest.raises(BenchError, match="no ranking"):
        evaluate({"b/1": ["b/2"]}, {"b/1": "business", "b/2": "business"}, {}, (1,))


# -- duplicates ---------------------------------------------------------------------------------------------------


def test_duplicate_groups_merge_listed_and_body_equal_transitively() -> None:
    articles = [
        art("b/1", "Shares rose."),
        art("b/2", "Profits fell."),
        art("b/3", "Profits   fell.", title="another headline"),  # same body up to whitespace
        art("s/1", "A goal."),
        art("s/2", "a goal."),  # case differs: not a verbatim copy
    ]
    groups = duplicate_groups(articles, [["b/1", "b/2"]])
    assert groups["b/1"] == groups["b/2"] == groups["b/3"] == frozenset({"b/1", "b/2", "b/3"})
    assert groups["s/1"] == frozenset({"s/1"})
    assert groups["s/2"] == frozenset({"s/2"})
    stats = duplicate_stats(articles, [["b/1", "b/2"]], groups)
    assert stats["listed_groups"] == 1
    assert stats["body_equal_groups"] == 1  # b/2 + b/3
    assert stats["body_equal_not_listed"] == 1
    assert stats["merged_groups"] == 1
    assert stats["merged_group_sizes"] == {3: 1}
    assert stats["articles_with_duplicates"] == 3


def test_duplicate_groups_reject_unknown_ids() -> None:
    with pytest.raises(BenchError, match="not in the corpus"):
        duplicate_groups([art("b/1", "x")], [["b/1", "b/9"]])


def test_body_key_normalises_whitespace_only() -> None:
    assert body_key(["A  b", "c\n"]) == "A b c"
    assert body_key(["A b c"]) != body_key(["a b c"])


def test_read_duplicate_groups_validates_shape(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps([["a/1", "a/2"]]))
    assert read_duplicate_groups(good) == [["a/1", "a/2"]]
    for bad in ({"a": ["a/1", "a/2"]}, [["a/1"]], [["a/1", 2]]):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(BenchError):
            read_duplicate_groups(path)


def test_read_articles_reads_gzip_and_rejects_incomplete_rows(tmp_path: Path) -> None:
    rows = [{"id": "tech/001", "category": "tech", "title": "T", "paragraphs": ["p1", "p2"], "text": "p1\n\np2"}]
    with gzip.open(tmp_path / "articles.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    assert read_articles(tmp_path) == [BbcArticle("tech/001", "tech", "T", ("p1", "p2"))]
    with gzip.open(tmp_path / "articles.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "tech/001", "title": "T", "paragraphs": []}) + "\n")
    with pytest.raises(BenchError, match="not a BBC article row"):
        read_articles(tmp_path)


# -- the index ----------------------------------------------------------------------------------------------------


def test_corpus_row_is_read_by_the_indexer_with_category_as_tag() -> None:
    a = BbcArticle("politics/007", "politics", "Vote  due", ("First.", "Second."))
    row = corpus_row(a)
    parsed = to_article(row, FieldMap(), "test")
    assert parsed is not None
    assert (parsed.id, parsed.title, parsed.paragraphs) == ("politics/007", "Vote due", ("First.", "Second."))
    assert parsed.source == "BBC"
    assert parsed.tags == ("politics",)
    assert expected_hashes([a]) == {"politics/007": parsed.content_hash()}


def test_index_difference_counts_missing_extra_and_changed() -> None:
    expected = {"a": "1", "b": "2", "c": "3"}
    assert index_difference(expected, dict(expected))["matches"] is True
    diff = index_difference(expected, {"a": "1", "b": "changed", "z": "9"})
    assert (diff["matches"], diff["missing"], diff["extra"], diff["changed"]) == (False, 1, 1, 1)
    assert index_difference(expected, None) == {"matches": False, "reason": "no index"}


# -- nearest neighbours and baselines -----------------------------------------------------------------------------


def test_top_k_excluding_never_returns_the_article_or_its_duplicates() -> None:
    ids = ["a", "b", "c", "d"]
    scores = np.array(
        [
            [1.0, 0.9, 0.5, 0.5],
            [0.9, 1.0, 0.2, 0.8],
            [0.5, 0.2, 1.0, 0.1],
            [0.5, 0.8, 0.1, 1.0],
        ]
    )
    groups = {"a": frozenset({"a", "b"}), "b": frozenset({"a", "b"})}
    out = top_k_excluding(scores, ids, groups, 3)
    assert out["a"] == ["c", "d"]  # b excluded; tie at 0.5 broken by position
    assert out["b"] == ["d", "c"]
    assert out["c"] == ["a", "b", "d"]
    assert top_k_excluding(scores, ids, {}, 1)["d"] == ["b"]


def test_tfidf_baseline_finds_the_obvious_neighbours() -> None:
    docs = {
        "business/1": "The central bank raised interest rates as inflation climbed and bond markets slumped.",
        "business/2": "Inflation pushed the bank to lift interest rates; bond yields and markets reacted.",
        "business/3": "Interest rates and inflation worry the bank, bond traders and stock markets.",
        "sport/1": "The striker scored twice as the club won the league match in extra time.",
        "sport/2": "A late goal from the striker won the match and kept the club top of the league.",
        "sport/3": "The club's striker missed the league match, but the team still won on goal difference.",
    }
    ids = list(docs)
    sim = tfidf_similarity(list(docs.values()))
    assert sim.shape == (6, 6)
    assert np.allclose(np.diag(sim), 1.0, atol=1e-5)
    ranked = top_k_excluding(sim, ids, {}, 2)
    cats = {i: i.split("/")[0] for i in ids}
    out = evaluate(ranked, cats, {}, (1, 2))
    assert out["precision@1"] == 1.0
    assert out["precision@2"] == 1.0
    # stop words carry nothing: texts sharing only them are orthogonal
    only_stop = tfidf_similarity(["the and of it was", "the and of it was banana", "apple the and"])
    assert only_stop[1, 2] == pytest.approx(0.0)


def test_cosine_and_centring() -> None:
    v = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    sim = cosine_matrix(v)
    assert sim[0, 1] == pytest.approx(0.0)
    assert sim[0, 2] == pytest.approx(1 / np.sqrt(2))
    c = centred(np.array([[1.0, 1.0], [1.0, 3.0]]))  # mean (1, 2): rows become (0, -1) and (0, 1)
    assert np.allclose(c, [[0.0, -1.0], [0.0, 1.0]])


def test_passage_pair_similarities_match_brute_force() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((9, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    owner = np.array([2, 0, 1, 0, 2, 2, 1, 0, 3])  # unsorted on purpose; article 3 has one passage
    best, chamfer = passage_pair_similarities(vectors, owner, 4, block=4)  # blocks cut through articles
    for a in range(4):
        for b in range(4):
            s = vectors[owner == a] @ vectors[owner == b].T
            assert best[a, b] == pytest.approx(s.max(), abs=1e-5)
            expected = (s.max(axis=1).mean() + s.max(axis=0).mean()) / 2
            assert chamfer[a, b] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError):
        passage_pair_similarities(vectors, owner, 5)  # article 4 has no passage


def test_fused_scales_each_side_by_its_rows_best_neighbour() -> None:
    a = np.array([[1.0, 0.8, 0.4], [0.8, 1.0, 0.2], [0.4, 0.2, 1.0]])
    b = np.array([[1.0, 0.1, 0.2], [0.1, 1.0, 0.05], [0.2, 0.05, 1.0]])
    out = fused(a, b, 0.5)
    # row 0: a scaled by 0.8 -> (.., 1.0, 0.5); b scaled by 0.2 -> (.., 0.5, 1.0)
    assert out[0, 1] == pytest.approx(0.75)
    assert out[0, 2] == pytest.approx(0.75)
    assert fused(a, b, 1.0)[0, 2] == pytest.approx(0.5)


def test_evaluate_scores_only_the_queries_asked_but_judges_any_neighbour() -> None:
    cats = {"b/1": "business", "b/2": "business", "s/1": "sport"}
    rankings = {"b/1": ["s/1"], "b/2": ["b/1"]}  # s/1 has no ranking and is not asked
    out = evaluate(rankings, cats, {}, (1,), queries=["b/1", "b/2"])
    assert out["articles"] == 2
    assert out["precision@1"] == 0.5
    assert set(out["per_category"]) == {"business"}


def test_two_fold_tunes_on_one_half_and_tests_on_the_other() -> None:
    ids = [f"{c}/{n}" for n in range(6) for c in ("b", "s")]  # alternating, so each half holds both categories
    cats = {i: i.split("/")[0] for i in ids}
    same = np.array([[cats[a] == cats[b] for b in ids] for a in ids], dtype=np.float32)
    right, wrong = 0.9 * same, 0.9 * (1 - same)  # one side ranks by category, the other against it
    out = two_fold(lambda a: a * right + (1 - a) * wrong, (0.2, 0.9), ids, cats, {})
    assert [f["param"] for f in out["folds"]] == [0.9, 0.9]
    assert [(f["tuned_on"], f["tested"]) for f in out["folds"]] == [(6, 6), (6, 6)]
    assert out["precision@5"] == 1.0
    assert out["precision@5_in_sample"] == {"0.2": 0.0, "0.9": 1.0}
    flipped = two_fold(lambda a: a * wrong + (1 - a) * right, (0.2, 0.9), ids, cats, {})
    assert [f["param"] for f in flipped["folds"]] == [0.2, 0.2]
    assert flipped["precision@5"] == 1.0


def test_second_order_scores_shared_neighbours() -> None:
    # a and b barely resemble each other, but both resemble c and d; e resembles a a little, and nothing else
    names = ["a", "b", "c", "d", "e"]
    sim = np.array(
        [
            [1.0, 0.1, 0.8, 0.8, 0.3],
            [0.1, 1.0, 0.8, 0.8, 0.0],
            [0.8, 0.8, 1.0, 0.5, 0.0],
            [0.8, 0.8, 0.5, 1.0, 0.0],
            [0.3, 0.0, 0.0, 0.0, 1.0],
        ]
    )
    out = second_order(sim, 2)
    assert out.shape == (5, 5)
    assert np.allclose(np.diag(out), 1.0, atol=1e-6)
    assert np.allclose(out, out.T, atol=1e-6)
    # first order: a's best non-neighbour is e (0.3) over b (0.1); second order turns it round
    assert out[0, 1] > out[0, 4]
    # by hand with k=2: a -> (1, 0, .8, .8, 0), b -> (0, 1, .8, .8, 0); cosine = 1.28 / 2.28
    assert out[0, 1] == pytest.approx(1.28 / 2.28, abs=1e-6)
    assert top_k_excluding(out, names, {}, 1)["a"] != ["e"]


def test_mean_of_passages_keeps_only_the_chosen_passages() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    owner = np.array([0, 0, 0, 1])
    is_title = np.array([True, False, False, True])
    body = mean_of_passages(vectors, owner, 2, ~is_title)
    assert np.allclose(body[0], [0.0, 1.0])  # the headline passage (1, 0) left out
    assert np.allclose(body[1], [1.0, 0.0])  # no body passage: falls back to what there is
    everything = mean_of_passages(vectors, owner, 2, np.ones(4, dtype=bool))
    assert np.allclose(everything[0], np.array([1.0, 2.0]) / np.sqrt(5))
