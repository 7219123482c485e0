"""Freshness: an exponential decay of the ranking score by article age (``recency=HALF_LIFE``, ``as_of=DATE``).

An explicit step after relevance ranking (search/service.py ``rank_articles``), separate from fusion: the relevance
scores are computed as without it, then each article's fused score is multiplied by ``0.5 ** (age / half_life)``,
age being the days from its date to ``as_of`` (today when not given), and the articles are ordered again. The
factor is shown in ``scores.recency``; without ``recency`` nothing changes, not even the order of ties.

As Elasticsearch's decay functions do with a missing field, an undated article is not decayed (factor 1), and an
article dated after ``as_of`` counts as age 0. A negative fused score (a dense cosine can be) is divided by the
factor, so that decay always moves an older article down. The decay re-orders the first ``RECENCY_POOL`` articles
by relevance (or more when a page reaches deeper): a fresh article ranked further down is not searched for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from search.models import Scores
from search.ranking.catalog import NO_DATE, ArticleCatalog, parse_day
from search.text.dates import parse_duration

RECENCY_POOL = 100  # articles by relevance that the decay re-orders


@dataclass(frozen=True)
class Recency:
    half_life_days: float
    as_of_day: int  # days since 1970-01-01

    @classmethod
    def of(cls, half_life: str, as_of: str | None = None) -> Recency:
        """From the request's ``recency`` (``7d``, ``12h``; InvalidInput otherwise) and ``as_of`` (an ISO date;
        today, UTC, when None)."""
        days = parse_duration(half_life, "recency") / 86400.0
        day = parse_day(as_of, "as_of") if as_of else parse_day(datetime.now(UTC).date().isoformat(), "as_of")
        return cls(days, day)

    def key(self) -> tuple[float, int]:
        """What a cursor's fingerprint holds of it (a page walk must keep one decay)."""
        return self.half_life_days, self.as_of_day

    def factors(self, days: np.ndarray) -> np.ndarray:
        """The decay factor of each article day (``NO_DATE``: 1)."""
        days = np.asarray(days, dtype=np.int64)
        age = np.maximum(self.as_of_day - days, 0).astype(np.float64)
        out: np.ndarray = np.power(0.5, age / self.half_life_days)
        out[days == NO_DATE] = 1.0
        return out


def decayed(items: list[tuple[int, Scores]], catalog: ArticleCatalog, recency: Recency) -> list[tuple[int, Scores]]:
    """``items`` with their fused scores decayed by age and ``scores.recency`` set, best first (ties by key)."""
    if not items:
        return items
    rows = catalog.positions([a for a, _ in items])
    days = np.where(rows >= 0, catalog.days[np.maximum(rows, 0)], NO_DATE)
    out: list[tuple[int, Scores]] = []
    for (aid, scores), f in zip(items, recency.factors(days).tolist(), strict=True):
        fused = scores.fused * f if scores.fused >= 0 else scores.fused / max(f, 1e-300)
        out.append((aid, replace(scores, fused=round(fused, 6), recency=round(f, 6))))
    out.sort(key=lambda item: (-item[1].fused, item[0]))
    return out
