"""Which sentence a result marks: its vector's cosine to the query plus the query terms it holds (issue 15)."""

from __future__ import annotations

import numpy as np

from search.ranking.highlight import Highlighter, lexical_overlap, sentence_terms
from search.service import SearchService
from search.text.bm25 import MemoryBM25
from search.text.fts import fts_term_counts
from tests.fakes import HashEmbedder

TEXT = (
    "The tobacco industry faces a wave of lawsuits from smokers seeking damages. "
    "A Florida jury ordered Philip Morris to pay $28bn in damages to a former smoker."
)
TERMS = {"juri": 3.0, "damag": 1.0, "tobacco": 0.5}  # Porter stems (jury, damages), weighted by IDF


def stored_vectors(first: float, second: float) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Two sentences whose stored vectors have the given cosines to the query vector e0."""
    cut = TEXT.index("A Florida")
    spans = [(0, cut - 1), (cut, len(TEXT))]
    vecs = np.zeros((2, 4), dtype=np.float32)
    for row, cos in enumerate((first, second)):
        vecs[row, 0], vecs[row, 1 + row] = cos, float(np.sqrt(1 - cos * cos))
    return spans, vecs


def test_lexical_overlap_is_the_idf_weighted_share_of_query_terms() -> None:
    first, second = TEXT.split(". ", 1)
    assert lexical_overlap(first, TERMS) == (1.0 + 0.5) / 4.5
    assert lexical_overlap(second, TERMS) == (3.0 + 1.0) / 4.5  # "damages" stems to "damag"
    assert lexical_overlap(second, {}) == 0.0


def test_sentence_terms_are_the_stems_the_fts_tables_count() -> None:
    """The kept stems of a sentence are exactly the terms ``fts_term_counts`` finds in it (accents folded, Unicode
    separators, repeats), so the overlap a highlight weighs is the one it was before they were kept."""
    for text in (*TEXT.split(". "), "Café-style PONIES ran; ponies ran", "Zürich \u2014 Straße 3.5bn ×2", ""):
        assert sentence_terms(text) == set(fts_term_counts(text)[1])
        assert sentence_terms(text) is sentence_terms(str(text))  # kept by text


def test_the_sentence_holding_the_query_terms_wins_a_close_call() -> None:
    """The lead sentence restates the question (a slightly higher cosine); the answer shares its rare terms."""
    spans, vecs = stored_vectors(0.62, 0.58)
    query = np.eye(4, dtype=np.float32)[0]
    highlighter = Highlighter(HashEmbedder(4), lambda pids: {1: (spans, vecs)})
    (by_vector,) = highlighter.locate(query, [(1, TEXT)])
    assert TEXT[by_vector.start : by_vector.end].startswith("The tobacco industry")
    (with_terms,) = highlighter.locate(query, [(1, TEXT)], TERMS)
    assert TEXT[with_terms.start : with_terms.end].startswith("A Florida jury")
    # a clear vector preference still wins over shared words
    spans, vecs = stored_vectors(0.9, 0.1)
    clear = Highlighter(HashEmbedder(4), lambda pids: {1: (spans, vecs)})
    (h,) = clear.locate(query, [(1, TEXT)], TERMS)
    assert TEXT[h.start : h.end].startswith("The tobacco industry")


def test_term_weights_come_from_the_passage_postings(service: SearchService) -> None:
    lexical = service.lexical
    assert isinstance(lexical, MemoryBM25)
    weights = lexical.term_weights("the inflation xyzzyplugh")
    assert set(weights) == {"inflat"}  # stopwords and unknown terms carry no weight
    assert weights["inflat"] > 0


def test_search_marks_the_sentence_with_the_query_terms(service: SearchService) -> None:
    """End to end: the service hands the query's term weights to the highlighter."""
    response = service.search("inflation reached 7 percent in February", k=3)
    top = response.results[0].passages[0]
    assert top.text[top.highlight.start : top.highlight.end].startswith("Officials said inflation")
