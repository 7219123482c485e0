"""What the web pages show beyond the API's responses: an article with its story, copies, related stories and
timeline; "more like this" entries a reader can judge at a glance; what the index holds.

Kept apart from ``search/service.py`` so the service stays the one object that ranks: these functions only read
the catalog and the store, and label what the service ranked. The service exposes them as methods (``overview``,
``article_page``, ``similar_page``) so a route still calls one service method.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from search.models import Article, ArticleRef, Copy, FacetCount, Scores
from search.ranking.catalog import NO_DATE, ArticleCatalog
from search.storage.store import ReadStore
from search.text.chunking import sentence_spans

_EPOCH = date(1970, 1, 1).toordinal()
OPENING_CHARS = 300  # an opening sentence longer than this (a run-on lead, a table) is cut at a word

# Labels for a result's relevance, by the dense cosine of its best passage to the query (the one score every mode
# has). Measured by bench/sentences.py on RealTime QA (161 dev questions: each question's cosine to the passage
# holding its answer, and to the other questions' answer passages): "strong" from the median cosine of answering
# passages (0.56), "good" from the 99th percentile of the others (0.34; the 95th is 0.22), so fewer than 1 in 100
# unrelated news passages is labelled good and about 3 in 4 answering ones are (their 25th percentile is 0.41).
STRONG_MATCH = 0.55
GOOD_MATCH = 0.35


@dataclass(frozen=True)
class Card:
    """An article as a page lists it: reference, categories, opening sentence, and why it is listed."""

    article: ArticleRef
    categories: list[str]
    opening: str
    score: float | None = None
    same_story: bool = False
    is_self: bool = False
    also_reported: list[Copy] = field(default_factory=list)


@dataclass(frozen=True)
class ArticlePage:
    """One article with its story (other outlets' coverage), its duplicates, related stories and a timeline."""

    article: Article
    ref: ArticleRef
    categories: list[str]
    story: list[Card]
    duplicates: list[Copy]
    related: list[Card]
    timeline: list[Card]
    dated: bool  # whether any article of the index has a date (a timeline needs them)


@dataclass(frozen=True)
class SimilarPage:
    article: ArticleRef
    results: list[Card]


@dataclass(frozen=True)
class IndexOverview:
    """What the index holds, for the home page: counts, date range, sources, categories and example queries."""

    articles: int
    first_date: str | None
    last_date: str | None
    sources: list[FacetCount]
    categories: list[FacetCount]
    examples: list[str]


def match_label(scores: Scores) -> str:
    """ "strong", "good" or "weak" match, from the best passage's dense cosine (thresholds above)."""
    if scores.dense >= STRONG_MATCH:
        return "strong"
    if scores.dense >= GOOD_MATCH:
        return "good"
    return "weak"


def opening_sentence(article: Article) -> str:
    """The first sentence of the article's body (its headline when it has no body), cut at a word if long."""
    for paragraph in article.paragraphs:
        spans = sentence_spans(paragraph)
        if spans:
            text = paragraph[spans[0].start : spans[0].end]
            if len(text) > OPENING_CHARS:
                text = text[:OPENING_CHARS].rsplit(" ", 1)[0] + "…"
            return text
    return article.title


def categories_of(catalog: ArticleCatalog, row: int) -> list[str]:
    if row < 0:
        return []
    codes = catalog.tag_codes[catalog.tag_offsets[row] : catalog.tag_offsets[row + 1]].tolist()
    return [catalog.tag_names[c] for c in codes]


def cards(
    store: ReadStore,
    catalog: ArticleCatalog,
    refs: dict[int, ArticleRef],
    entries: Sequence[tuple[int, float | None]],
    *,
    story: str | None = None,
    self_aid: int | None = None,
    copies: dict[int, list[Copy]] | None = None,
) -> list[Card]:
    """Cards for (article key, score) in the given order; those whose article vanished are left out."""
    rows = catalog.positions([a for a, _ in entries]).tolist()
    out: list[Card] = []
    for (aid, score), row in zip(entries, rows, strict=True):
        if aid not in refs:
            continue
        ref = refs[aid]
        out.append(
            Card(
                article=ref,
                categories=categories_of(catalog, row),
                opening=opening_sentence(store.article(aid)),
                score=score,
                same_story=story is not None and ref.story_id == story and aid != self_aid,
                is_self=aid == self_aid,
                also_reported=(copies or {}).get(aid, []),
            )
        )
    return out


def overview(store: ReadStore, catalog: ArticleCatalog, examples: int = 5) -> IndexOverview:
    """What the index holds; example queries are the headlines of its largest stories (most articles; ties: the
    latest), one per story, so they are questions this index can answer, whatever it holds."""
    days = catalog.days[catalog.days != NO_DATE]
    first = date.fromordinal(int(days.min()) + _EPOCH).isoformat() if len(days) else None
    last = date.fromordinal(int(days.max()) + _EPOCH).isoformat() if len(days) else None
    sources = Counter(catalog.source_names[c] for c in catalog.source_codes.tolist() if c >= 0)
    tags = Counter(catalog.tag_names[c] for c in catalog.tag_codes.tolist())
    stories: dict[str, list[int]] = {}
    for row, label in enumerate(catalog.story_labels):
        stories.setdefault(label, []).append(row)

    def weight(rows: list[int]) -> tuple[int, int, str]:
        return (-len(rows), -max(int(catalog.days[r]) for r in rows), catalog.ids[rows[0]])

    heads: list[str] = []
    seen: set[str] = set()
    for rows in sorted(stories.values(), key=weight):
        if len(heads) >= examples:
            break
        aids = [int(catalog.aids[r]) for r in rows]
        for ref in store.article_refs(aids[:1]).values():
            title = " ".join(ref.title.split())
            if title and title.casefold() not in seen and len(title) <= 120:
                seen.add(title.casefold())
                heads.append(title)
    by_count = sorted(sources.items(), key=lambda kv: (-kv[1], kv[0]))
    tag_count = sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))
    return IndexOverview(
        articles=len(catalog),
        first_date=first,
        last_date=last,
        sources=[FacetCount(s, n) for s, n in by_count],
        categories=[FacetCount(t, n) for t, n in tag_count],
        examples=heads,
    )
