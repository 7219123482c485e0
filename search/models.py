"""The plain data types shared by the build side and the query side.

They are dataclasses, not ORM rows, so the service returns values the API and the CLI can serialise without
knowing anything about SQLite or FAISS.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

PassageField = Literal["title", "body"]
PARAGRAPH_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Article:
    """One news article. ``body`` is the paragraphs joined by a blank line; passage spans index into it."""

    id: str
    title: str
    paragraphs: tuple[str, ...] = ()
    date: str | None = None
    source: str | None = None
    url: str | None = None
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def body(self) -> str:
        return PARAGRAPH_SEPARATOR.join(self.paragraphs)

    def content_hash(self) -> str:
        """Hash of what a reader sees (headline and paragraphs), so copies under other ids compare equal."""
        norm = json.dumps([" ".join(self.title.split()), [" ".join(p.split()) for p in self.paragraphs]])
        return hashlib.sha256(norm.casefold().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Passage:
    """The unit that is embedded and ranked: ``text == (title if field == "title" else body)[start:end]``."""

    id: int
    article_id: str
    position: int
    field: PassageField
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class ArticleRef:
    """What a result shows of an article. ``canonical_id`` names the copy that speaks for its duplicates (its own
    id when it has none); ``story_id`` the story it belongs to."""

    id: str
    title: str
    date: str | None
    source: str | None
    url: str | None
    canonical_id: str | None = None
    story_id: str | None = None


@dataclass(frozen=True)
class Highlight:
    """Character offsets of the answering sentence inside its passage's ``text``."""

    start: int
    end: int


@dataclass(frozen=True)
class Scores:
    """Why something ranked: its dense (cosine) and lexical (BM25) scores, and the fused score it was ranked by.

    ``lexical`` is 0.0 when no query term occurs; ``fused`` equals the one used side in dense or lexical mode.
    """

    dense: float
    lexical: float
    fused: float


@dataclass(frozen=True)
class PassageHit:
    id: int
    text: str
    score: float
    field: PassageField
    highlight: Highlight
    scores: Scores


@dataclass(frozen=True)
class Related:
    id: str
    title: str
    score: float


@dataclass(frozen=True)
class Copy:
    """Another article carrying the same story text (a re-publication or a light rewrite)."""

    id: str
    source: str | None


@dataclass(frozen=True)
class SearchResult:
    """One article of a results page. Its duplicates are not listed again: ``also_reported`` names them."""

    article: ArticleRef
    score: float
    scores: Scores
    passages: list[PassageHit]
    related: list[Related]
    also_reported: list[Copy] = field(default_factory=list)


@dataclass(frozen=True)
class FacetCount:
    value: str
    count: int


@dataclass(frozen=True)
class SearchResponse:
    """One page of results. ``total`` counts the articles that match the query and the filters (one per duplicate
    group): those holding a query term, and in dense and hybrid modes those whose best passage reaches the match
    floor; the ranked list ends there. ``facets`` (when asked) count the matches by source, category and month,
    each as many as the search with that value picked shows; ``next_cursor`` continues a cursor walk (None at its
    end or without one); ``notes`` say why a filter leaves nothing to search (e.g. no article has a source)."""

    query: str
    mode: str
    total: int
    results: list[SearchResult]
    took_ms: float
    facets: dict[str, list[FacetCount]] | None = None
    next_cursor: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SimilarResult:
    article: ArticleRef
    score: float
    also_reported: list[Copy] = field(default_factory=list)


@dataclass(frozen=True)
class StoryResponse:
    """A story's articles, earliest first."""

    story_id: str
    articles: list[ArticleRef]


@dataclass(frozen=True)
class TimelineEntry:
    article: ArticleRef
    score: float  # cosine to the article the timeline is for (1.0 for itself); query relevance for a query timeline
    is_self: bool
    same_story: bool


@dataclass(frozen=True)
class TimelineResponse:
    """Coverage around one article (or a query), oldest first; undated articles cannot be placed and are left out."""

    article: ArticleRef | None
    query: str | None
    entries: list[TimelineEntry]


@dataclass(frozen=True)
class SimilarResponse:
    """More like this. ``scoring`` says what each result's ``score`` is: ``cosine`` (the article vectors' cosine) or
    ``profile`` (the cosine of shared-neighbour profiles, search/news/neighbours.py); a corpus too small for profiles is
    always ranked and scored by cosine."""

    article: ArticleRef
    results: list[SimilarResult]
    scoring: str = "cosine"


@dataclass(frozen=True)
class RankedPassage:
    """A passage in a batch run: enough to write a TREC run and a passage file."""

    article_id: str
    passage_id: int
    text: str
    score: float
    scores: Scores


def to_plain(value: Any) -> Any:
    """A response dataclass as JSON-ready dicts and lists, like ``dataclasses.asdict`` without its deep copies of
    every leaf (a quarter of a search request's CPU time when it was used); field names are looked up once per
    class, not once per object."""
    if isinstance(value, str | int | float | bool | None):
        return value
    names = _FIELD_NAMES.get(type(value))
    if names is None and is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES.setdefault(type(value), tuple(f.name for f in fields(value)))
    if names is not None:
        return {name: to_plain(getattr(value, name)) for name in names}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
