"""The query parameters of the JSON API and the web page, declared once: parsed here, documented from here.

Each route's parameters are one frozen dataclass whose fields are the parameters: the field's type says how its
string is read (``int``, ``bool``, ``list[str]`` for a repeatable one, a ``Literal`` for one of a few words,
``| None`` for an optional one without a default), its default is the route's default, and an ``Annotated``
``Param`` carries its help text, its URL name where that is no identifier (``from``) and its bounds. ``parse`` turns
a query string into that dataclass for ``api/app.py`` and ``api/web.py``; ``api/openapi.py`` builds the
``parameters`` of each operation from the same class, so what a route reads and what its document says are one text.

Here because a query string is an HTTP matter (the CLI reads its arguments with click). The parser reads types and
shapes only: a non-integer ``k``, an unknown ``mode`` or a missing ``q`` is refused here, while the bounds (``k`` up
to ``max_k``, the query's length, the offset's range) are enforced by the service, which every caller goes through,
CLI included; the bounds are declared here for the document, from the served ``Settings`` where a setting sets them.
"""

from __future__ import annotations

import re
import types
from dataclasses import MISSING, dataclass, field, fields
from typing import Annotated, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from werkzeug.datastructures import MultiDict

from search.checks import MAX_OFFSET
from search.errors import InvalidInput
from search.jsontypes import JSONObject, JSONValue
from search.models import Mode, Scoring
from search.ranking.catalog import MAX_FILTER_VALUES, Filter
from search.ranking.recency import Recency
from search.settings import Settings

_INTEGER = re.compile(r"-?[0-9]{1,18}")  # ASCII digits only: int() would also take "+5", " 5" and "٣"
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# something besides whitespace, and no NUL anywhere (the service refuses both)
QUERY_PATTERN = "^[^\\x00]*[^\\s\\x00][^\\x00]*$"

Bound = int | str
"""A bound: a number, or the name of the ``Settings`` field that sets it (so ``NEWSDESK_MAX_K=50`` changes the
document too)."""


@dataclass(frozen=True)
class Param:
    """What a parameter's type does not say: its help text and, for the document, its URL name and bounds."""

    help: str
    name: str | None = None
    """The name in the URL, where it is no Python identifier (``from``); the field's name otherwise."""
    minimum: Bound | None = None
    maximum: Bound | None = None
    min_length: int | None = None
    max_length: Bound | None = None
    pattern: str | None = None
    max_items: int | None = None
    default_setting: str | None = None
    """The ``Settings`` field whose value is used when the parameter is not given (the mode, the scoring)."""
    example: str | None = None


@dataclass(frozen=True)
class Params:
    """Base of every route's parameters."""


P = TypeVar("P", bound=Params)


@dataclass(frozen=True)
class Spec:
    """One parameter as ``parse`` and the document read it: its field, URL name, type and ``Param``."""

    attr: str
    name: str
    kind: Kind
    choices: tuple[str, ...]
    required: bool
    default: object
    param: Param


Kind = Literal["str", "int", "float", "bool", "list", "choice"]


def _kind(hint: object) -> tuple[Kind, tuple[str, ...]]:
    """A field type's reading: its kind and its choices (a ``Literal``'s). ``X | None`` reads as ``X``: None is
    what a parameter not given leaves."""
    if get_origin(hint) in (Union, types.UnionType):
        members = [a for a in get_args(hint) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"a parameter has one type besides None, not {hint!r}")
        hint = members[0]
    if get_origin(hint) is Literal:
        return "choice", tuple(str(a) for a in get_args(hint))
    if get_origin(hint) is list and get_args(hint) == (str,):
        return "list", ()
    if hint is bool:
        return "bool", ()
    if hint is int:
        return "int", ()
    if hint is float:
        return "float", ()
    if hint is str:
        return "str", ()
    raise TypeError(f"no query parameter reads a {hint!r}")


def specs(cls: type[Params]) -> tuple[Spec, ...]:
    """``cls``'s parameters, in field order (read once per class: a request parses without reflection)."""
    found = _SPECS.get(cls)
    if found is None:
        found = _SPECS.setdefault(cls, _read_specs(cls))
    return found


def _read_specs(cls: type[Params]) -> tuple[Spec, ...]:
    hints = get_type_hints(cls, include_extras=True)
    out = []
    for f in fields(cls):
        hint = hints[f.name]
        if get_origin(hint) is not Annotated:
            raise TypeError(f"{cls.__name__}.{f.name} has no Param")
        base, *extras = get_args(hint)
        param = next(e for e in extras if isinstance(e, Param))
        kind, choices = _kind(base)
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        default = f.default if f.default is not MISSING else None
        out.append(Spec(f.name, param.name or f.name, kind, choices, not has_default, default, param))
    return tuple(out)


_SPECS: dict[type[Params], tuple[Spec, ...]] = {}


def parse(cls: type[P], args: MultiDict[str, str], *, blank_is_absent: bool = False) -> P:
    """``cls`` from a query string, or InvalidInput naming the first parameter that cannot be read.

    ``blank_is_absent`` is the web form's convention: a form sends its unfilled fields as empty values, which mean
    "not given" there (an empty ``mode`` is the default mode, an empty ``source`` no source); the JSON API refuses
    an empty value where it is no valid one, as its document says."""
    values: dict[str, object] = {}
    for spec in specs(cls):
        raw = args.getlist(spec.name)
        if blank_is_absent:  # an unfilled field; a repeated one also when it holds only spaces
            raw = [v for v in raw if (v.strip() if spec.kind == "list" else v)]
        if spec.kind == "list":
            if raw:
                values[spec.attr] = raw
            continue
        if not raw:
            if spec.required:
                raise InvalidInput(f"the {spec.name!r} parameter is required")
            continue
        values[spec.attr] = _read(spec, raw[0])
    return cls(**values)


def _read(spec: Spec, raw: str) -> object:
    if spec.kind == "int":
        if not _INTEGER.fullmatch(raw):
            raise InvalidInput(f"{spec.name} must be an integer, got {raw!r}")
        return int(raw)
    if spec.kind == "float":
        try:
            number = float(raw)
        except ValueError:
            number = float("nan")
        if number != number or number in (float("inf"), float("-inf")):  # NaN, infinities: no score compares
            raise InvalidInput(f"{spec.name} must be a number, got {raw!r}")
        return number
    if spec.kind == "bool":
        if raw.lower() not in _BOOLEANS:
            raise InvalidInput(f"{spec.name} must be true or false, got {raw!r}")
        return _BOOLEANS[raw.lower()]
    if spec.kind == "choice" and raw not in spec.choices:
        raise InvalidInput(f"{spec.name} must be one of {', '.join(spec.choices)}, got {raw!r}")
    return raw


def _bound(value: Bound, settings: Settings) -> int:
    found = getattr(settings, value) if isinstance(value, str) else value
    if not isinstance(found, int):
        raise TypeError(f"bound {value!r} is not an integer setting")
    return found


def openapi_parameters(cls: type[Params], settings: Settings) -> list[JSONObject]:
    """The OpenAPI parameter objects of ``cls``, with the bounds and defaults of the served ``settings``."""
    out: list[JSONObject] = []
    for spec in specs(cls):
        p = spec.param
        schema: JSONObject = {}
        if spec.kind == "list":
            schema = {"type": "array", "items": {"type": "string", "pattern": "\\S"}}
            if p.max_items is not None:
                schema["maxItems"] = p.max_items
        else:
            schema["type"] = {"int": "integer", "float": "number", "bool": "boolean"}.get(spec.kind, "string")
            if spec.kind == "choice":
                schema["enum"] = list(spec.choices)
            for key, bound in (("minimum", p.minimum), ("maximum", p.maximum), ("maxLength", p.max_length)):
                if bound is not None:
                    schema[key] = _bound(bound, settings)
            if p.min_length is not None:
                schema["minLength"] = p.min_length
            if p.pattern is not None:
                schema["pattern"] = p.pattern
            default = getattr(settings, p.default_setting) if p.default_setting else spec.default
            if default is not None:
                schema["default"] = default
            if p.example is not None:
                schema["examples"] = [p.example]
        entry: JSONObject = {"name": spec.name, "in": "query", "description": p.help, "schema": schema}
        if spec.required:
            entry["required"] = True
        if spec.kind == "list":
            entry |= {"style": "form", "explode": True}
            entry["description"] = p.help + " Repeat the parameter for any of several values."
        out.append(entry)
    return out


# -- the parameters of each route ------------------------------------------------------------------------------------

QUERY_HELP = "The question or keywords, in plain language. Quotes, AND/OR and * are plain text."
# Parameters several routes take with one meaning, declared once each
ModeArg = Annotated[
    Mode | None, Param("hybrid fuses BM25 and dense retrieval; dense and lexical use one side.", default_setting="mode")
]
KArg = Annotated[int, Param("How many results to return.", minimum=1, maximum="max_k")]
OffsetArg = Annotated[
    int, Param("Results to skip: the page starts at this rank (0-based).", minimum=0, maximum=MAX_OFFSET)
]
IdArg = Annotated[str, Param("An article id, for ids a client cannot put in a path.", min_length=1)]
_REPEATABLE = {"max_items": MAX_FILTER_VALUES}


@dataclass(frozen=True, kw_only=True)
class DateSourceCategory(Params):
    """The filters the web page's form sends: a date range, sources and categories."""

    # Dates are plain strings here: the app takes an ISO date, a datetime (its date part) or an empty value (no
    # bound), which no JSON Schema format states exactly, and a narrower schema would call valid input invalid.
    date_from: Annotated[
        str | None,
        Param(
            "Only articles dated on or after this day: an ISO date (YYYY-MM-DD; a datetime's date part is taken); "
            "empty means no bound.",
            name="from",
            example="2024-03-01",
        ),
    ] = None
    date_to: Annotated[
        str | None,
        Param("Only articles dated on or before this day (inclusive), as for from.", name="to", example="2024-03-31"),
    ] = None
    source: Annotated[list[str], Param("Only articles from this source (outlet).", **_REPEATABLE)] = field(
        default_factory=list
    )
    category: Annotated[list[str], Param("Only articles with this category or tag.", **_REPEATABLE)] = field(
        default_factory=list
    )

    def categories(self) -> list[str]:
        return self.category

    def filters(self) -> Filter | None:
        """The search filter these values ask for (None when they ask for none), or InvalidInput."""
        return Filter.parse(self.date_from, self.date_to, self.source, self.categories())


@dataclass(frozen=True, kw_only=True)
class Filters(DateSourceCategory):
    """The API's filters: the form's, and ``tag`` for ``category``."""

    tag: Annotated[list[str], Param("The same as category.", **_REPEATABLE)] = field(default_factory=list)

    def categories(self) -> list[str]:
        return self.category + self.tag


@dataclass(frozen=True, kw_only=True)
class Freshness(Params):
    """Recency decay of a search (search/ranking/recency.py)."""

    recency: Annotated[
        str | None,
        Param(
            "Favour newer articles: each article's score is multiplied by 0.5 ** (age / HALF_LIFE), age from its "
            "date to as_of; a half-life such as 7d, 12h or 30m (scores.recency shows the factor). Without it the "
            "order is relevance alone.",
            example="7d",
        ),
    ] = None
    as_of: Annotated[
        str | None, Param("The day recency measures ages from: an ISO date (YYYY-MM-DD); today (UTC) when not given.")
    ] = None

    def recency_of(self) -> Recency | None:
        """The decay asked for, or None; InvalidInput (400) for a bad half-life or date, and for as_of alone."""
        if self.recency is None:
            if self.as_of is not None:
                raise InvalidInput("as_of applies with recency (e.g. recency=7d&as_of=2024-03-01)")
            return None
        return Recency.of(self.recency, self.as_of)


@dataclass(frozen=True, kw_only=True)
class SearchParams(Filters, Freshness):
    """``/api/search``."""

    q: Annotated[str, Param(QUERY_HELP, min_length=1, max_length="max_query_chars", pattern=QUERY_PATTERN)]
    k: KArg = 10
    offset: OffsetArg = 0
    mode: ModeArg = None
    cursor: Annotated[
        str | None,
        Param(
            "Page one fixed ranked list: * to start, then each response's next_cursor (not with offset). A cursor "
            "from before the index changed is refused with 409 stale_cursor.",
            min_length=1,
        ),
    ] = None
    max_per_source: Annotated[
        int | None,
        Param(
            "At most this many results of one source on a page (offset must then be a multiple of k).",
            minimum=1,
            maximum="max_k",
        ),
    ] = None
    facets: Annotated[bool, Param("Count the ranked candidates by source, category and month.")] = False


@dataclass(frozen=True, kw_only=True)
class AnswersParams(Params):
    """``/api/answers``: the passages that answer a question."""

    q: Annotated[str, Param(QUERY_HELP, min_length=1, max_length="max_query_chars", pattern=QUERY_PATTERN)]
    k: KArg = 5
    mode: ModeArg = None
    as_of: Annotated[
        str | None,
        Param(
            "The question's date (YYYY-MM-DD): passages of articles dated shortly before it rank first, those "
            "dated after it last (with the date answer signal, setting answer_signals).",
            example="2023-01-06",
        ),
    ] = None


@dataclass(frozen=True, kw_only=True)
class SimilarParams(Filters):
    """``/api/articles/{article_id}/similar``: more like this."""

    k: KArg = 10
    exclude_story: Annotated[bool, Param("Leave out the articles of the article's own story.")] = False
    exclude_source: Annotated[bool, Param("Leave out the articles of the article's own source.")] = False
    scoring: Annotated[
        Scoring | None,
        Param(
            "profile: articles the same articles resemble (keeps a borderline article among its own subject); "
            "cosine: the nearest article vectors (closest to the same event).",
            default_setting="similar_scoring",
        ),
    ] = None


@dataclass(frozen=True, kw_only=True)
class ArticleParams(Params):
    """``/api/article``: an article by a query parameter."""

    id: IdArg


@dataclass(frozen=True, kw_only=True)
class SimilarByIdParams(SimilarParams):
    """``/api/similar``: more like this, the id as a parameter."""

    id: IdArg


@dataclass(frozen=True, kw_only=True)
class TimelineParams(Filters):
    """``/api/articles/{article_id}/timeline``."""

    k: Annotated[
        int, Param("How many articles around the one asked for (or for the query).", minimum=1, maximum="max_k")
    ] = 20


@dataclass(frozen=True, kw_only=True)
class TimelineByQueryParams(TimelineParams):
    """``/api/timeline``: an article's timeline (``id``) or a query's (``q``)."""

    id: Annotated[str | None, Param("The article whose timeline to show (either id or q).", min_length=1)] = None
    q: Annotated[
        str | None,
        Param(
            "A query whose best dated articles to show in date order (when id is not given).",
            min_length=1,
            max_length="max_query_chars",
            pattern=QUERY_PATTERN,
        ),
    ] = None
    mode: ModeArg = None


@dataclass(frozen=True, kw_only=True)
class PageSearchParams(DateSourceCategory, Freshness):
    """The web page's search (``/``): without ``q``, the index's overview."""

    q: Annotated[str, Param(QUERY_HELP)] = ""
    offset: OffsetArg = 0
    mode: ModeArg = None


@dataclass(frozen=True, kw_only=True)
class PageArticleParams(Params):
    """The web page's article and more-like-this pages."""

    id: Annotated[str, Param("The article's id.")]


@dataclass(frozen=True, kw_only=True)
class AlertParams(Filters):
    """``POST /api/alerts``: a saved search, sent as a JSON object with these members (the filters are search's)."""

    query: Annotated[
        str,
        Param(
            "What to follow, in plain language, as a search query.",
            min_length=1,
            max_length="max_query_chars",
            pattern=QUERY_PATTERN,
        ),
    ]
    mode: ModeArg = None
    threshold: Annotated[
        float | None,
        Param(
            "The score a new article must reach (dense: its best passage's cosine; lexical: the IDF-weighted share of "
            "the query's terms it holds; hybrid: 0.6 x the first + 0.4 x the second). Default: the setting "
            "alert_threshold_<mode>. Not with top_per_day.",
            minimum=-1,
            maximum=1,
        ),
    ] = None
    top_per_day: Annotated[
        int | None,
        Param(
            "Instead of a threshold: at most this many new articles a day (by their date), the first that search "
            "would count as matching.",
            minimum=1,
            maximum="max_k",
        ),
    ] = None
    webhook: Annotated[
        str | None,
        Param(
            "An http(s) URL each new match is POSTed to as JSON (retried with backoff when it fails).",
            min_length=1,
            max_length=2000,
            pattern="^https?://",
        ),
    ] = None


@dataclass(frozen=True, kw_only=True)
class AlertEntriesParams(Params):
    """``GET /api/alerts/{alert_id}`` and its Atom feed."""

    k: Annotated[
        int | None,
        Param("How many of the latest matches to show.", minimum=1, maximum="max_k", default_setting="alert_entries"),
    ] = None


def parse_body(cls: type[P], payload: JSONValue) -> P:
    """``cls`` from a JSON object whose members are its parameters (a JSON body rather than a query string), or
    InvalidInput naming the first member that cannot be read: the same declarations, the same checks as ``parse``,
    and JSON's own types held to (a number where a number belongs, a list of strings for a repeatable one)."""
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object")
    by_name = {spec.name: spec for spec in specs(cls)}
    unknown = sorted(set(payload) - set(by_name))
    if unknown:
        raise InvalidInput(f"unknown member {unknown[0]!r}; known: {', '.join(by_name)}")
    args: MultiDict[str, str] = MultiDict()
    for name, value in payload.items():
        if value is None:
            continue
        spec = by_name[name]
        if spec.kind == "list":
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str) for v in values):
                raise InvalidInput(f"{name} must be a string or a list of strings")
            for v in values:
                args.add(name, str(v))
            continue
        wanted: tuple[type, ...] = {"int": (int,), "float": (int, float), "bool": (bool,)}.get(spec.kind, (str,))
        if not isinstance(value, wanted) or (isinstance(value, bool) and spec.kind != "bool"):
            raise InvalidInput(f"{name} must be {'a number' if spec.kind in ('int', 'float') else 'a ' + spec.kind}")
        args.add(name, str(value).lower() if isinstance(value, bool) else str(value))
    return parse(cls, args)


def body_schema(cls: type[Params], settings: Settings) -> JSONObject:
    """The JSON Schema of a body ``parse_body`` reads: an object whose properties are ``cls``'s parameters."""
    properties: JSONObject = {}
    required: list[JSONValue] = []
    for entry in openapi_parameters(cls, settings):
        schema = dict(entry["schema"])
        schema["description"] = entry["description"]
        if schema.get("type") != "array" and not entry.get("required"):  # null: as if not given
            schema["type"] = [schema["type"], "null"]
            if "enum" in schema:
                schema["enum"] = [*schema["enum"], None]
        properties[str(entry["name"])] = schema
        if entry.get("required"):
            required.append(entry["name"])
    return {"type": "object", "required": required, "additionalProperties": False, "properties": properties}
