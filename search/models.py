"""The plain data types shared by the build side and the query side.

They are dataclasses, not ORM rows, so the service returns values the API and the CLI can serialise without
knowing anything about SQLite or FAISS.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Annotated, Literal, get_args

from annotated_types import Ge
from typing_extensions import TypedDict, TypeIs  # pydantic reads typing's TypedDict only from Python 3.12

from search.jsontypes import JSONObject, JSONValue

PassageField = Literal["title", "body"]
Mode = Literal["hybrid", "dense", "lexical"]
"""How a query is ranked: BM25 and dense retrieval fused, or one side alone (settings.MODES lists them)."""
Scoring = Literal["profile", "cosine"]
"""How "more like this" scores: shared-neighbour profiles or the article vectors' cosine (settings.SIMILAR_SCORINGS)."""


def is_mode(value: object) -> TypeIs[Mode]:
    """Whether ``value`` is one of the modes: the check that lets a string from a request be typed ``Mode``."""
    return value in get_args(Mode)


def is_scoring(value: object) -> TypeIs[Scoring]:
    return value in get_args(Scoring)


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
    extra: JSONObject = field(default_factory=dict)

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


# The response types below are the API's contract: api/openapi.py derives /api/openapi.json's schemas from them (a
# field's docstring is its description, an ``Annotated`` bound its minimum), so a field added here is documented
# there with no edit under api/. Every field is always serialised (``to_plain``), so every one is required there.


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
    """The copy that speaks for this article's duplicates (its own id when it has none)."""
    story_id: str | None = None
    """The story (event) this article belongs to."""


@dataclass(frozen=True)
class LabelledArticle:
    """A whole article, with the labels the build gave it (what ``/api/articles/{id}`` answers)."""

    id: str
    title: str
    date: str | None
    source: str | None
    url: str | None
    tags: list[str]
    paragraphs: list[str]
    extra: JSONObject
    """Source fields newsdesk does not map, kept as they came."""
    canonical_id: str | None
    """The copy that speaks for this article's duplicates (its own id when it has none)."""
    story_id: str | None
    """The story (event) this article belongs to."""

    @classmethod
    def of(cls, article: Article, ref: ArticleRef) -> LabelledArticle:
        a = article
        return cls(
            a.id,
            a.title,
            a.date,
            a.source,
            a.url,
            list(a.tags),
            list(a.paragraphs),
            a.extra,
            ref.canonical_id,
            ref.story_id,
        )


@dataclass(frozen=True)
class Highlight:
    """Character offsets (code points) of the answering sentence inside its passage's ``text``."""

    start: Annotated[int, Ge(0)]
    end: Annotated[int, Ge(0)]


@dataclass(frozen=True)
class Scores:
    """Why something ranked: its dense (cosine) and lexical (BM25) scores, and the fused score it was ranked by.

    ``lexical`` is 0.0 when no query term occurs; ``fused`` equals the one used side in dense or lexical mode.
    """

    dense: float
    """Cosine similarity of the query and the best passage."""
    lexical: float
    """BM25 score; 0 when no query word occurs."""
    fused: float
    """The score the item was ranked by in the request's mode (decayed by ``recency`` when that is set)."""
    recency: float | None = None
    """With ``recency`` set: the decay factor in (0, 1] by the article's age that ``fused`` was multiplied by (1 for
    an undated article); null without it."""


@dataclass(frozen=True)
class PassageHit:
    """A passage of a result, with its answering sentence."""

    id: int
    text: str
    score: float
    field: PassageField
    highlight: Highlight
    scores: Scores


@dataclass(frozen=True)
class Related:
    """A related story of a result."""

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
    """Duplicates of this article, not listed again as results."""


@dataclass(frozen=True)
class FacetCount:
    """How many matching articles carry one value of a facet."""

    value: str
    count: Annotated[int, Ge(1)]


@dataclass(frozen=True)
class SearchResponse:
    """One page of results. ``total`` counts the articles that match the query and the filters (one per duplicate
    group): those holding a query term, and in dense and hybrid modes those whose best passage reaches the match
    floor; the ranked list ends there. ``facets`` (when asked) count the matches by source, category and month,
    each as many as the search with that value picked shows; ``next_cursor`` continues a cursor walk (None at its
    end or without one); ``notes`` say why a filter leaves nothing to search (e.g. no article has a source)."""

    query: str
    """The query as searched (trimmed)."""
    mode: Mode
    total: Annotated[int, Ge(0)]
    """Articles that match the query and the filters, one per duplicate group: those holding a query word and, in
    dense and hybrid modes, those whose best passage reaches the match floor (setting match_floor). 0 when nothing
    matches; the ranked list ends there."""
    results: list[SearchResult]
    took_ms: Annotated[float, Ge(0)]
    facets: dict[str, list[FacetCount]] | None = None
    """With facets=true: counts of the matching articles by source, category and month (YYYY-MM), each equal to the
    total of the same search with that value as its source, category or from/to filter; null otherwise."""
    next_cursor: str | None = None
    """In a cursor walk, the cursor of the next page; null at its end or without a cursor."""
    notes: list[str] = field(default_factory=list)
    """Why the filters leave nothing to search, one line each (e.g. no article has a source, no article is dated);
    empty otherwise."""


@dataclass(frozen=True)
class SimilarResult:
    """An article like the one asked about."""

    article: ArticleRef
    score: float
    also_reported: list[Copy] = field(default_factory=list)
    """Duplicates of this article, not listed again as results."""


@dataclass(frozen=True)
class StoryResponse:
    """A story's articles, earliest first."""

    story_id: str
    articles: list[ArticleRef]


@dataclass(frozen=True)
class TimelineEntry:
    """One article of a timeline."""

    article: ArticleRef
    score: float
    """Cosine to the timeline's article (1 for itself), or relevance to the query."""
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
    scoring: Scoring = "cosine"
    """What each score is: cosine (article vectors) or profile (shared neighbours). An index too small for profiles
    is ranked by cosine whatever was asked."""


class Health(TypedDict):
    """What ``/api/health`` answers: the index served and its counts."""

    status: Literal["ok"]
    index: str
    model: str
    dimension: Annotated[int, Ge(1)]
    articles: Annotated[int, Ge(0)]
    passages: Annotated[int, Ge(0)]
    newest_date: str | None
    generation: Annotated[int, Ge(0)]
    read_only: bool
    """The index is open read-only (its directory cannot be written, or --read-only): writes answer 403
    writes_disabled."""


@dataclass(frozen=True)
class RankedPassage:
    """A passage in a batch run: enough to write a TREC run and a passage file."""

    article_id: str
    passage_id: int
    text: str
    score: float
    scores: Scores


@dataclass(frozen=True)
class AnswersResponse:
    """The passages of the whole index that best answer a question, best first (``/api/answers``)."""

    query: str
    """The question as ranked (trimmed)."""
    mode: Mode
    as_of: str | None
    """The question's date (YYYY-MM-DD) when one was given: passages of articles dated just before it rank first."""
    passages: list[RankedPassage]
    took_ms: float


def to_plain(value: object) -> JSONValue:
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


def to_json(value: object) -> bytes:
    """A response as the API's JSON body: compact, non-ASCII kept, a trailing newline (what Flask's ``jsonify``
    of ``to_plain(value)`` writes outside debug mode). The routes and ``bench/search_cpu.py`` call this one function,
    so the benchmark times the serialisation a request pays. The C encoder walks the response itself and asks
    ``_fields`` only for each dataclass: no plain copy of every leaf first (``to_plain`` cost 0.9 ms of a search's
    CPU, the encoder 0.3 ms)."""
    return (json.dumps(value, default=_fields, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _fields(value: object) -> dict[str, object]:
    """A dataclass's fields by name, in declaration order (``to_plain`` one level deep), for ``json.dumps``."""
    names = _FIELD_NAMES.get(type(value))
    if names is None:
        if not is_dataclass(value) or isinstance(value, type):
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        names = _FIELD_NAMES.setdefault(type(value), tuple(f.name for f in fields(value)))
    return {name: getattr(value, name) for name in names}
