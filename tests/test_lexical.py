"""BM25 over FTS5: user input is never FTS5 syntax, scores follow BM25, and the tables track every write."""

from __future__ import annotations

from collections import Counter

import pytest

from search.service import SearchService
from search.text.fts import fts_term_counts, match_expression, query_terms


def test_query_terms_drop_stopwords_unless_nothing_is_left() -> None:
    assert query_terms("Why is the Central Bank raising rates?") == ["central", "bank", "raising", "rates"]
    assert query_terms("who is it") == ["who", "is", "it"]
    assert query_terms("rates RATES rates") == ["rates"]
    assert query_terms("!!! ??? ...") == []


@pytest.mark.parametrize(
    "query",
    [
        '"unbalanced quote',
        "rates AND NOT inflation",
        "NEAR(rates inflation, 2)",
        "rate* ^central title:bank",
        "a OR b) (c",
        "--; DROP TABLE passages; --",
        "北朝鮮 米国 非難",
        "Пхеньян обвиняет США",
        "كوريا الشمالية",
        "emoji 🚀🔥 rates",
        "under_score and dash-word",
        "'single' `back` \\ slash",
        "*",
        "_",
    ],
)
def test_hostile_or_foreign_queries_never_raise(service: SearchService, query: str) -> None:
    for mode in ("lexical", "hybrid"):
        response = service.search(query, k=5, mode=mode)
        assert response.mode == mode
    expr = match_expression(query)
    assert expr is None or all(part.startswith('"') and part.endswith('"') for part in expr.split(" OR "))


def test_operators_are_searched_as_words(service: SearchService) -> None:
    # "NOT inflation" must not exclude inflation stories: NOT is just a (stop)word here.
    got = [r.article.id for r in service.search("rates NOT inflation", k=8, mode="lexical").results]
    assert {"business/001", "business/003"} <= set(got)


def test_lexical_scores_rank_term_matches(service: SearchService) -> None:
    results = service.search("semiconductor chips shortage", k=3, mode="lexical").results
    assert results[0].article.id == "business/002"
    assert results[0].scores.lexical > 0
    assert all(r.scores.lexical > 0 for r in results)  # lexical mode lists only articles with a query term
    assert service.search("zzzqqq", k=3, mode="lexical").results == []


def test_stemming_matches_word_forms(service: SearchService) -> None:
    got = [r.article.id for r in service.search("evacuations flooding", k=2, mode="lexical").results]
    assert got[0] == "/leading slash & ünïcode id"  # "evacuated", "flooded" share the stems


def test_hybrid_scores_combine_both_sides(service: SearchService) -> None:
    hybrid = service.search("semiconductor chips", k=8, mode="hybrid").results
    dense = {r.article.id: r.scores.dense for r in service.search("semiconductor chips", k=8, mode="dense").results}
    for r in hybrid:
        assert r.scores.dense == pytest.approx(dense[r.article.id], abs=1e-6)  # the same exact dense score
        assert 0.0 <= r.scores.fused <= 1.0
    assert hybrid[0].article.id == "business/002"


def test_fts_term_counts_follow_the_index_tokenizer() -> None:
    # short tokens pass through unstemmed, as FTS5's porter tokenizer does; diacritics are removed
    length, counts = fts_term_counts("U.S. is running Café-style ponies")
    assert length == 7
    assert counts == Counter(["u", "s", "is", "run", "cafe", "style", "poni"])
