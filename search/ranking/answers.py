"""Ranking passages as answers to a question: several signals of one candidate pool, fused by weighted reciprocal
rank.

Why not the article fusion again: a convex fusion of the passage's dense cosine and BM25, tuned on RealTime QA
dev questions, did no better than plain reciprocal-rank fusion (RRF, k=60) on later questions (bench/README.md):
a weight tuned on one period of news does not carry to the next. Ranks carry over where score scales do not, so
each signal here only orders the candidates, and the fused score is ``sum(weight / (k + rank))`` as in RRF; what
is gained comes from signals that know more about an answer than the passage's two scores do:

- ``dense``: the passage vector's cosine to the query (the passage is embedded with its headline in front);
- ``lexical``: the passage's BM25;
- ``fused``: the passage's convex fusion of both (``passage_alpha``), the ranking passages had before: its score
  gaps carry what ranks alone drop;
- ``sentence``: the best cosine of one of the passage's sentences (the stored sentence vectors, see
  ``Embedder.encode_spans``). An answer sits in one sentence; the passage vector averages it with the others;
- ``article``: BM25 of the passage's whole article, headline weighted (``title_weight``): the headline and the
  rest of the story as the passage's context, which a passage that answers without naming its subject lacks;
- ``headline``: the cosine of the passage's article's headline (its first passage) to the query: whether the story
  is about what the question asks, not only the paragraph;
- ``expanded``: the passage's BM25 for the query expanded by RM3 pseudo-relevance feedback (Lavrenko and Croft;
  Abdul-Jaleel et al. 2004): terms frequent in the best first-pass passages, which name what the question only
  describes ("the country", "the company");
- ``date``: for a dated question (``as_of``), how close the article's date is to it; an article dated after the
  question ranks behind every article dated before it (news answers come from before the question). Undated
  articles, and every candidate of an undated question, get nothing from it.

A signal a candidate has no value for (NaN) adds nothing to its score, as a missing side adds nothing in RRF.
Tied values share the best rank of their tie (all passages of one article have its date: none is arbitrarily
ahead of another by that signal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from search.errors import InvalidInput

SIGNALS = ("dense", "lexical", "fused", "sentence", "article", "headline", "expanded", "date")
# An article dated up to this many days after the question counts as dated on its day (time zones, overnight
# editions); one dated later ranks behind every article dated before the question.
FUTURE_SLACK_DAYS = 1


@dataclass(frozen=True)
class AnswerRanking:
    """Weighted reciprocal-rank fusion of named signals (``SIGNALS``); ``k`` is RRF's constant."""

    weights: tuple[tuple[str, float], ...]
    k: int = 60

    def __post_init__(self) -> None:
        for name, weight in self.weights:
            if name not in SIGNALS:
                raise InvalidInput(f"answer signal must be one of {', '.join(SIGNALS)}, got {name!r}")
            if not (weight > 0 and math.isfinite(weight)):
                raise InvalidInput(f"answer signal {name} needs a positive weight, got {weight}")
        if len({n for n, _ in self.weights}) != len(self.weights):
            raise InvalidInput("each answer signal may be named once")
        if self.k < 1:
            raise InvalidInput(f"rrf_k must be at least 1, got {self.k}")

    @classmethod
    def parse(cls, text: str, k: int = 60) -> AnswerRanking | None:
        """``"dense,lexical,sentence:0.5"`` (a name, optionally ``:weight``; weight 1 by default), or None for an
        empty text (passages are then fused as articles are)."""
        weights: list[tuple[str, float]] = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, _, raw = part.partition(":")
            try:
                weight = float(raw) if raw.strip() else 1.0
            except ValueError:
                raise InvalidInput(f"answer signal {name.strip()!r} has a weight that is no number: {raw!r}") from None
            weights.append((name.strip(), weight))
        return cls(tuple(weights), k) if weights else None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.weights)

    def fuse(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """The fused score of each candidate (arrays aligned on the candidates; every weighted signal present)."""
        sizes = {len(v) for v in signals.values()}
        if len(sizes) > 1:
            raise ValueError("answer signals must be aligned on the same candidates")
        n = sizes.pop() if sizes else 0
        out = np.zeros(n, dtype=np.float64)
        for name, weight in self.weights:
            ranks = tied_ranks(np.asarray(signals[name], dtype=np.float64))
            held = ranks > 0
            out[held] += weight / (self.k + ranks[held])
        return out


def tied_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, best (highest) first, tied values sharing the best rank of their tie; 0 for NaN (no value)."""
    ranks = np.zeros(len(values), dtype=np.int64)
    held = np.flatnonzero(~np.isnan(values))
    if not len(held):
        return ranks
    order = held[np.argsort(-values[held], kind="stable")]
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    # each position's rank is the position (1-based) of the first of its tie
    ranks[order] = np.maximum.accumulate(np.where(first, np.arange(1, len(order) + 1), 0))
    return ranks


def date_closeness(days: np.ndarray, as_of: int | None) -> np.ndarray:
    """The ``date`` signal: higher for an article dated closer before ``as_of`` (days since the epoch); an article
    dated after it (beyond ``FUTURE_SLACK_DAYS``, for time zones and overnight editions) ranks behind all dated
    before it, the later the lower. NaN for undated articles (``days`` NaN) and for an undated question."""
    days = np.asarray(days, dtype=np.float64)
    if as_of is None:
        return np.full(len(days), np.nan)
    gap = as_of - days  # days before the question
    closeness = np.where(gap >= -FUTURE_SLACK_DAYS, -np.maximum(gap, 0.0), gap - 1e6)
    return np.where(np.isnan(days), np.nan, closeness)
