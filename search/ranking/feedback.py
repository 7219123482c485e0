"""RM3 pseudo-relevance feedback (Lavrenko and Croft 2001; Abdul-Jaleel et al. 2004) for the ``expanded`` answer
signal (search/ranking/answers.py): the query grows by the terms most frequent in its best first-pass passages,
which often name what the question only describes ("the country", "the company").

Run as Anserini runs RM3 by default (10 feedback passages, 10 terms, half the weight on the original query): no
constant here was tuned on the questions it is measured on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from search.text.fts import STOPWORDS, fts_term_counts, stem

FEEDBACK_PASSAGES = 10
FEEDBACK_TERMS = 10
ORIGINAL_WEIGHT = 0.5
_STOPPED = frozenset(stem(w) for w in STOPWORDS)


def content_terms(text: str) -> dict[str, int]:
    """Stemmed term counts of ``text`` as the postings hold them, stopwords left out (they would fill RM3's
    expansion: the most frequent words of any passage)."""
    _, counts = fts_term_counts(text)
    return {t: n for t, n in counts.items() if t and t not in _STOPPED}


def rm3_terms(
    feedback: Sequence[tuple[Mapping[str, int], float]],
    query: Mapping[str, float],
    *,
    terms: int = FEEDBACK_TERMS,
    original_weight: float = ORIGINAL_WEIGHT,
) -> dict[str, float]:
    """RM3's expanded query: ``original_weight`` of the query's own terms (weights normalised to sum 1) and the
    rest spread over the ``terms`` most likely terms of the relevance model estimated from ``feedback``: each
    passage's term counts with the score it was retrieved by (RM1: P(w|R) = sum_D P(w|D) P(D|Q), with P(D|Q)
    proportional to the score). Returns term -> weight, summing to 1 (nothing when neither side has a term)."""
    model: dict[str, float] = {}
    total = sum(max(s, 0.0) for _, s in feedback)
    for counts, score in feedback:
        length = sum(counts.values())
        if length <= 0 or total <= 0 or score <= 0:
            continue
        for term, count in counts.items():
            model[term] = model.get(term, 0.0) + (count / length) * (score / total)
    best = sorted(model.items(), key=lambda x: (-x[1], x[0]))[:terms]
    mass = sum(w for _, w in best)
    out: dict[str, float] = {}
    qmass = sum(query.values())
    if qmass > 0:
        for term, w in query.items():
            out[term] = out.get(term, 0.0) + (original_weight if mass > 0 else 1.0) * w / qmass
    if mass > 0:
        share = (1.0 - original_weight) if qmass > 0 else 1.0
        for term, w in best:
            out[term] = out.get(term, 0.0) + share * w / mass
    return out
