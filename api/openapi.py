"""The OpenAPI 3.1 description of ``/api``, served at ``/api/openapi.json``.

Written by hand next to the routes rather than generated from them: the routes parse strings, and only a schema
states what they accept (bounds come from the served ``Settings``, so ``NEWSDESK_MAX_K=50`` changes the document too)
and what every response looks like. ``tests/test_openapi.py`` keeps it honest: every ``/api`` rule of the app is
documented and nothing else is, and schemathesis fuzzes the app against it.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from flask import Response, current_app, jsonify

from api.logs import REQUEST_ID_HEADER
from search.ranking.catalog import MAX_FILTER_VALUES
from search.service import MAX_OFFSET
from search.settings import MODES, SIMILAR_SCORINGS, Settings

JSON = "application/json"
FACETS = ("source", "category", "month")
# Story fields (issue 5's duplicate collapsing and story grouping): optional, so the document holds for indexes and
# code with and without them, while any other new field still fails the fuzz run until it is documented here.
STORY_FIELDS = {
    "canonical_id": {
        "type": ["string", "null"],
        "description": "The copy that speaks for this article's duplicates (its own id when it has none).",
    },
    "story_id": {"type": ["string", "null"], "description": "The story (event) this article belongs to."},
}
ALSO_REPORTED = {
    "also_reported": {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Copy"},
        "description": "Duplicates of this article, not listed again as results.",
    }
}
FILTERS = ["from", "to", "source", "category", "tag"]
SEARCH_PARAMETERS = ["q", "k", "offset", "mode", *FILTERS, "cursor", "max_per_source", "facets"]
SIMILAR_PARAMETERS = ["k", *FILTERS, "exclude_story", "exclude_source", "scoring"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(type_: str) -> dict[str, Any]:
    return {"type": [type_, "null"]}


def _object(
    properties: dict[str, Any], description: str | None = None, optional: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A closed object: ``properties`` required, ``optional`` ones allowed, no others, so a field added to a
    response without a change here fails the schema fuzz run instead of going undocumented."""
    out: dict[str, Any] = {
        "type": "object",
        "properties": {**properties, **(optional or {})},
        "required": list(properties),
        "additionalProperties": False,
    }
    if description:
        out["description"] = description
    return out


def _schemas() -> dict[str, Any]:
    scores = _object(
        {
            "dense": {"type": "number", "description": "Cosine similarity of the query and the best passage."},
            "lexical": {"type": "number", "description": "BM25 score; 0 when no query word occurs."},
            "fused": {"type": "number", "description": "The score the item was ranked by in the request's mode."},
        },
        "Why something ranked.",
    )
    article_ref = _object(
        {
            "id": {"type": "string"},
            "title": {"type": "string"},
            "date": _nullable("string"),
            "source": _nullable("string"),
            "url": _nullable("string"),
        },
        "What a result shows of an article.",
        STORY_FIELDS,
    )
    copy = _object(
        {"id": {"type": "string"}, "source": _nullable("string")},
        "Another article carrying the same story text (a re-publication or a light rewrite).",
    )
    highlight = _object(
        {"start": {"type": "integer", "minimum": 0}, "end": {"type": "integer", "minimum": 0}},
        "Character offsets (code points) of the answering sentence inside the passage's text.",
    )
    passage = _object(
        {
            "id": {"type": "integer"},
            "text": {"type": "string"},
            "score": {"type": "number"},
            "scores": _ref("Scores"),
            "field": {"type": "string", "enum": ["title", "body"]},
            "highlight": _ref("Highlight"),
        }
    )
    related = _object({"id": {"type": "string"}, "title": {"type": "string"}, "score": {"type": "number"}})
    result = _object(
        {
            "article": _ref("ArticleRef"),
            "score": {"type": "number"},
            "scores": _ref("Scores"),
            "passages": {"type": "array", "items": _ref("Passage")},
            "related": {"type": "array", "items": _ref("Related")},
        },
        optional=ALSO_REPORTED,
    )
    search_response = _object(
        {
            "query": {"type": "string", "description": "The query as searched (trimmed)."},
            "mode": {"type": "string", "enum": list(MODES)},
            "total": {
                "type": "integer",
                "minimum": 0,
                "description": "Articles that match the query and the filters, one per duplicate group: those "
                "holding a query word and, in dense and hybrid modes, those whose best passage reaches the match "
                "floor (setting match_floor). 0 when nothing matches; the ranked list ends there.",
            },
            "results": {"type": "array", "items": _ref("SearchResult")},
            "took_ms": {"type": "number", "minimum": 0},
            "facets": {
                "type": ["object", "null"],
                "description": "With facets=true: counts of the matching articles by source, category and month "
                "(YYYY-MM), each equal to the total of the same search with that value as its source, category or "
                "from/to filter; null otherwise.",
                "properties": {name: {"type": "array", "items": _ref("FacetCount")} for name in FACETS},
                "required": list(FACETS),
                "additionalProperties": False,
            },
            "next_cursor": {
                "type": ["string", "null"],
                "description": "In a cursor walk, the cursor of the next page; null at its end or without a cursor.",
            },
            "notes": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Why the filters leave nothing to search, one line each (e.g. no article has a "
                "source, no article is dated); empty otherwise.",
            },
        }
    )
    facet_count = _object({"value": {"type": "string"}, "count": {"type": "integer", "minimum": 1}})
    similar_result = _object({"article": _ref("ArticleRef"), "score": {"type": "number"}}, optional=ALSO_REPORTED)
    similar_response = _object(
        {
            "article": _ref("ArticleRef"),
            "results": {"type": "array", "items": _ref("SimilarResult")},
            "scoring": {
                "type": "string",
                "enum": list(SIMILAR_SCORINGS),
                "description": "What each score is: cosine (article vectors) or profile (shared neighbours). An index "
                "too small for profiles is ranked by cosine whatever was asked.",
            },
        }
    )
    article = _object(
        {
            "id": {"type": "string"},
            "title": {"type": "string"},
            "date": _nullable("string"),
            "source": _nullable("string"),
            "url": _nullable("string"),
            "tags": {"type": "array", "items": {"type": "string"}},
            "paragraphs": {"type": "array", "items": {"type": "string"}},
            "extra": {"type": "object", "description": "Source fields newsdesk does not map, kept as they came."},
        },
        "A whole article.",
        STORY_FIELDS,
    )
    health = _object(
        {
            "status": {"type": "string", "enum": ["ok"]},
            "index": {"type": "string"},
            "model": {"type": "string"},
            "dimension": {"type": "integer", "minimum": 1},
            "articles": {"type": "integer", "minimum": 0},
            "passages": {"type": "integer", "minimum": 0},
            "newest_date": _nullable("string"),
            "generation": {"type": "integer", "minimum": 0},
            "read_only": {
                "type": "boolean",
                "description": "The index is open read-only (its directory cannot be written, or --read-only): "
                "writes answer 403 writes_disabled.",
            },
        }
    )
    error = _object(
        {
            "error": _object(
                {
                    "code": {
                        "type": "string",
                        "description": "Stable and machine-readable: invalid_input, not_found, bad_encoding, "
                        "method_not_allowed, internal_error, ...",
                    },
                    "message": {"type": "string", "minLength": 1, "description": "What was wrong, for a person."},
                }
            )
        },
        "The one shape of every error response.",
    )
    return {
        "Scores": scores,
        "ArticleRef": article_ref,
        "Highlight": highlight,
        "Passage": passage,
        "Related": related,
        "SearchResult": result,
        "SearchResponse": search_response,
        "FacetCount": facet_count,
        "SimilarResult": similar_result,
        "Copy": copy,
        "SimilarResponse": similar_response,
        "StoryResponse": _object(
            {"story_id": {"type": "string"}, "articles": {"type": "array", "items": _ref("ArticleRef")}},
            "A story's articles, earliest first.",
        ),
        "TimelineEntry": _object(
            {
                "article": _ref("ArticleRef"),
                "score": {
                    "type": "number",
                    "description": "Cosine to the timeline's article (1 for itself), or relevance to the query.",
                },
                "is_self": {"type": "boolean"},
                "same_story": {"type": "boolean"},
            }
        ),
        "TimelineResponse": _object(
            {
                "article": {"anyOf": [_ref("ArticleRef"), {"type": "null"}]},
                "query": _nullable("string"),
                "entries": {"type": "array", "items": _ref("TimelineEntry")},
            },
            "Coverage around an article or for a query, oldest first; undated articles are left out.",
        ),
        "Article": article,
        "Health": health,
        "Error": error,
    }


def _parameters(settings: Settings) -> dict[str, Any]:
    return {
        "q": {
            "name": "q",
            "in": "query",
            "required": True,
            "description": "The question or keywords, in plain language. Quotes, AND/OR and * are plain text.",
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": settings.max_query_chars,
                # something besides whitespace, and no NUL anywhere
                "pattern": "^[^\\x00]*[^\\s\\x00][^\\x00]*$",
            },
        },
        "k": {
            "name": "k",
            "in": "query",
            "description": "How many results to return.",
            "schema": {"type": "integer", "minimum": 1, "maximum": settings.max_k, "default": 10},
        },
        "offset": {
            "name": "offset",
            "in": "query",
            "description": "Results to skip: the page starts at this rank (0-based).",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        },
        "mode": {
            "name": "mode",
            "in": "query",
            "description": "hybrid fuses BM25 and dense retrieval; dense and lexical use one side.",
            "schema": {"type": "string", "enum": list(MODES), "default": settings.mode},
        },
        # Dates are plain strings here: the app takes an ISO date, a datetime (its date part) or an empty value (no
        # bound), which no JSON Schema format states exactly, and a narrower schema would call valid input invalid.
        "from": {
            "name": "from",
            "in": "query",
            "description": "Only articles dated on or after this day: an ISO date (YYYY-MM-DD; a datetime's date "
            "part is taken); empty means no bound.",
            "schema": {"type": "string", "examples": ["2024-03-01"]},
        },
        "to": {
            "name": "to",
            "in": "query",
            "description": "Only articles dated on or before this day (inclusive), as for from.",
            "schema": {"type": "string", "examples": ["2024-03-31"]},
        },
        **{
            name: {
                "name": name,
                "in": "query",
                "description": text + " Repeat the parameter for any of several values.",
                "style": "form",
                "explode": True,
                "schema": {
                    "type": "array",
                    "maxItems": MAX_FILTER_VALUES,
                    "items": {"type": "string", "pattern": "\\S"},
                },
            }
            for name, text in (
                ("source", "Only articles from this source (outlet)."),
                ("category", "Only articles with this category or tag."),
                ("tag", "The same as category."),
            )
        },
        "cursor": {
            "name": "cursor",
            "in": "query",
            "description": "Page one fixed ranked list: * to start, then each response's next_cursor (not with "
            "offset). A cursor from before the index changed is refused with 409 stale_cursor.",
            "schema": {"type": "string", "minLength": 1},
        },
        "max_per_source": {
            "name": "max_per_source",
            "in": "query",
            "description": "At most this many results of one source on a page (offset must then be a multiple of k).",
            "schema": {"type": "integer", "minimum": 1, "maximum": settings.max_k},
        },
        "facets": {
            "name": "facets",
            "in": "query",
            "description": "Count the ranked candidates by source, category and month.",
            "schema": {"type": "boolean", "default": False},
        },
        "id": {
            "name": "id",
            "in": "query",
            "required": True,
            "description": "An article id, for ids a client cannot put in a path.",
            "schema": {"type": "string", "minLength": 1},
        },
        "article_id": {
            "name": "article_id",
            "in": "path",
            "required": True,
            "description": "An article id, percent-encoded; slashes may also be sent raw (/api/articles/world/001).",
            "schema": {"type": "string", "minLength": 1},
        },
        "story_id": {
            "name": "story_id",
            "in": "path",
            "required": True,
            "description": "A story id, as results and articles carry it.",
            "schema": {"type": "string", "minLength": 1},
        },
        "exclude_story": {
            "name": "exclude_story",
            "in": "query",
            "description": "Leave out the articles of the article's own story.",
            "schema": {"type": "boolean", "default": False},
        },
        "exclude_source": {
            "name": "exclude_source",
            "in": "query",
            "description": "Leave out the articles of the article's own source.",
            "schema": {"type": "boolean", "default": False},
        },
        "scoring": {
            "name": "scoring",
            "in": "query",
            "description": "profile: articles the same articles resemble (keeps a borderline article among its own "
            "subject); cosine: the nearest article vectors (closest to the same event).",
            "schema": {"type": "string", "enum": list(SIMILAR_SCORINGS), "default": settings.similar_scoring},
        },
        "timeline_k": {
            "name": "k",
            "in": "query",
            "description": "How many articles around the one asked for (or for the query).",
            "schema": {"type": "integer", "minimum": 1, "maximum": settings.max_k, "default": 20},
        },
        "timeline_id": {
            "name": "id",
            "in": "query",
            "description": "The article whose timeline to show (either id or q).",
            "schema": {"type": "string", "minLength": 1},
        },
        "timeline_q": {
            "name": "q",
            "in": "query",
            "description": "A query whose best dated articles to show in date order (when id is not given).",
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": settings.max_query_chars,
                "pattern": "^[^\\x00]*[^\\s\\x00][^\\x00]*$",
            },
        },
        "request_id": {
            "name": REQUEST_ID_HEADER,
            "in": "header",
            "description": "Correlates the request with the server's log line; replaced by a fresh id unless it is "
            "1 to 128 of A-Z a-z 0-9 . _ : -",
            "schema": {"type": "string"},
        },
    }


def _param(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def _response(description: str, schema: str | dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
        "content": {JSON: {"schema": _ref(schema) if isinstance(schema, str) else schema}},
    }


def _operation(
    operation_id: str,
    summary: str,
    params: list[str],
    ok: dict[str, Any],
    *,
    not_found: bool = False,
    conflict: bool = False,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": ok,
        "400": _response("Invalid input (invalid_input) or a URL that is not UTF-8 (bad_encoding).", "Error"),
    }
    if not_found:
        responses["404"] = _response("No article has that id (not_found).", "Error")
    if conflict:
        responses["409"] = _response("The cursor was made before the index changed (stale_cursor).", "Error")
    responses["5XX"] = _response("A broken or missing index (503) or a bug (500, internal_error).", "Error")
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [_param(p) for p in [*params, "request_id"]],
        "responses": responses,
    }


_WRITE_RESULT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["written", "deleted", "generation"],
    "properties": {
        "written": {"type": "array", "items": {"type": "string"}},
        "deleted": {"type": "array", "items": {"type": "string"}},
        "generation": {"type": "integer"},
    },
}


def _write_errors(responses: dict[str, Any]) -> dict[str, Any]:
    responses["401"] = _response("No key, or a wrong one (unauthorized).", "Error")
    responses["403"] = _response(
        "Writes are disabled (writes_disabled): the server has no write key, or the index is read-only.", "Error"
    )
    responses["5XX"] = _response(
        "The index kept changing under the write (503, index_changed: retry), the disk refused it before it committed "
        "(507, storage_error: nothing was written), a broken or missing index (503) or a bug (500, internal_error).",
        "Error",
    )
    return responses


def _write_operation(settings: Settings) -> dict[str, Any]:
    text = {"type": "string", "maxLength": settings.max_field_chars}
    article_in = {
        "type": "object",
        "required": ["id", "title"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "minLength": 1, "maxLength": 1000},
            "title": text,
            "paragraphs": {"type": "array", "items": text},
            "text": text,
            "date": {"type": ["string", "null"], "description": "ISO 8601 date or datetime"},
            "source": {"type": ["string", "null"]},
            "url": {"type": ["string", "null"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "category": {"type": "string"},
            "extra": {"type": "object"},
        },
    }
    op = _operation(
        "writeArticles",
        "Insert or replace (by id) one article or a batch, all or nothing; searchable when acknowledged.",
        [],
        _response("What was written, and the index generation that holds it.", _WRITE_RESULT),
    )
    op["security"] = [{"bearer": []}]
    op["requestBody"] = {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "oneOf": [
                        article_in,
                        {
                            "type": "object",
                            "required": ["articles"],
                            "additionalProperties": False,
                            "properties": {
                                "articles": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": settings.max_batch_articles,
                                    "items": article_in,
                                }
                            },
                        },
                    ]
                }
            }
        },
    }
    op["responses"]["413"] = _response("The body is larger than max_body_bytes.", "Error")
    _write_errors(op["responses"])
    return op


def _delete_operation() -> dict[str, Any]:
    op = _operation(
        "deleteArticle",
        "Delete one article (its passages, vectors and labels go with it).",
        ["article_id"],
        _response("What was deleted, and the index generation without it.", _WRITE_RESULT),
        not_found=True,
    )
    op["security"] = [{"bearer": []}]
    _write_errors(op["responses"])
    return op


def build_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an app serving with ``settings``."""
    try:
        version = metadata.version("newsdesk")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    article = _response("The article.", "Article")
    timeline = _response("The timeline, oldest first.", "TimelineResponse")
    similar = _response(
        "The article and the most similar others, best first, its own copies left out.", "SimilarResponse"
    )
    spec_response = _response("This document.", {"type": "object", "required": ["openapi", "info", "paths"]})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "newsdesk",
            "version": version,
            "summary": "Semantic search over news: ranked passages, answering sentences, related stories.",
            "description": 'Every error, 404 and 405 included, is {"error": {"code", "message"}}. Article ids '
            "may hold any character; use /api/article?id= and /api/similar?id= for ids that end in /similar.",
        },
        "paths": {
            "/api/search": {
                "get": _operation(
                    "search",
                    "Rank articles for a query, with their best passages, answering sentences and related stories.",
                    SEARCH_PARAMETERS,
                    _response("One page of ranked articles.", "SearchResponse"),
                    conflict=True,
                )
            },
            "/api/articles/{article_id}": {
                "get": _operation("getArticle", "One article by id.", ["article_id"], article, not_found=True),
                "delete": _delete_operation(),
            },
            "/api/articles/{article_id}/similar": {
                "get": _operation(
                    "getSimilar",
                    "More like this: articles nearest to one, one per duplicate group, within the filters.",
                    ["article_id", *SIMILAR_PARAMETERS],
                    similar,
                    not_found=True,
                )
            },
            "/api/articles/{article_id}/timeline": {
                "get": _operation(
                    "getTimeline",
                    "Coverage around an article in date order: its story and its nearest dated articles.",
                    ["article_id", "timeline_k", *FILTERS],
                    timeline,
                    not_found=True,
                )
            },
            "/api/timeline": {
                "get": _operation(
                    "getTimelineByQuery",
                    "An article's timeline (id), or a query's best dated articles in date order (q).",
                    ["timeline_id", "timeline_q", "timeline_k", "mode", *FILTERS],
                    timeline,
                    not_found=True,
                )
            },
            "/api/stories/{story_id}": {
                "get": _operation(
                    "getStory",
                    "Every article of a story, earliest first.",
                    ["story_id"],
                    _response("The story's articles.", "StoryResponse"),
                    not_found=True,
                )
            },
            "/api/article": {
                "get": _operation(
                    "getArticleByQuery", "One article, its id as a parameter.", ["id"], article, not_found=True
                )
            },
            "/api/similar": {
                "get": _operation(
                    "getSimilarByQuery",
                    "More like this, the id as a parameter.",
                    ["id", *SIMILAR_PARAMETERS],
                    similar,
                    not_found=True,
                )
            },
            "/api/health": {
                "get": _operation(
                    "health", "Status, index name, model, counts, newest date.", [], _response("Healthy.", "Health")
                )
            },
            "/api/openapi.json": {"get": _operation("openapi", "This document.", [], spec_response)},
            "/api/docs": {
                "get": {
                    "operationId": "docs",
                    "summary": "This document as interactive documentation (Swagger UI, served locally).",
                    "parameters": [_param("request_id")],
                    "responses": {
                        "200": {
                            "description": "An HTML page.",
                            "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/api/articles": {"post": _write_operation(settings)},
        },
        "components": {
            "schemas": _schemas(),
            "parameters": _parameters(settings),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "headers": {
                "RequestId": {
                    "description": "The request's id: the client's X-Request-ID when sane, else a generated one.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                }
            },
        },
    }


def openapi_json() -> Response:
    """``GET /api/openapi.json``."""
    return jsonify(build_spec(current_app.extensions["newsdesk"].settings))
