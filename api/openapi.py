"""The OpenAPI 3.1 description of ``/api``, served at ``/api/openapi.json``.

Assembled here, declared elsewhere: the response schemas are derived from the dataclasses of ``search/models.py``
(pydantic's JSON Schema generator reads their types, ``Annotated`` bounds and field docstrings), the query parameters
from their declarations in ``api/params.py``, which the routes parse with, and the bounds from the served
``Settings`` (so ``NEWSDESK_MAX_K=50`` changes the document too). What this module writes itself is what only it
knows: the paths, their summaries, status codes and errors, security, and the write body. The document is built when
asked for (the schemas once per process), never at import time. ``tests/test_openapi.py`` keeps it honest: every
``/api`` rule of the app is documented and nothing else is, each schema is the shape the routes return, and
schemathesis fuzzes the app against it.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import re
import textwrap
from functools import cache
from importlib import metadata

from flask import Response, current_app, jsonify

from api.errors import ErrorResponse
from api.logs import REQUEST_ID_HEADER
from api.params import (
    AlertEntriesParams,
    AlertParams,
    AnswersParams,
    ArticleParams,
    Params,
    SearchParams,
    SimilarByIdParams,
    SimilarParams,
    TimelineByQueryParams,
    TimelineParams,
    body_schema,
    openapi_parameters,
)
from indexer.live import WriteResult
from search import models
from search.alerts.saved import MAX_ID, Alert, AlertDeleted, AlertDetail, AlertList
from search.intake import MAX_ID_CHARS, MAX_PARAGRAPHS, MAX_TAGS
from search.jsontypes import JSONObject
from search.settings import Settings

JSON = "application/json"
SCHEMAS = "#/components/schemas/{model}"
# The types the routes answer with (their fields' types bring the rest: ArticleRef, Scores, ...). Read from the
# models module when the document is built, so a type replaced there is the one documented.
RESPONSE_TYPES = (
    "SearchResponse",
    "AnswersResponse",
    "LabelledArticle",
    "SimilarResponse",
    "StoryResponse",
    "TimelineResponse",
    "Health",
)


def field_docs(cls: type) -> dict[str, str]:
    """The docstrings of ``cls``'s fields (a string right under a field), as pydantic's ``use_attribute_docstrings``
    reads them; read here so that the models need no pydantic configuration (models.py imports no pydantic)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # a class made at run time (dataclasses.make_dataclass) has no source
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    for stmt, after in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            out[stmt.target.id] = inspect.cleandoc(after.value.value)
    return out


@cache
def response_schemas() -> dict[str, JSONObject]:
    """The JSON Schemas of every response type, by name, as ``components/schemas`` holds them.

    Each object is closed (``additionalProperties: false``) and requires every field, because ``to_plain``
    serialises every field: a response with a field its dataclass lacks, or without one it has, fails the fuzz
    run. Computed once per process (it imports pydantic and walks the types: tens of milliseconds)."""
    from pydantic import TypeAdapter
    from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
    from pydantic_core import core_schema

    class Closed(GenerateJsonSchema):
        def field_title_should_be_set(self, schema: object) -> bool:
            return False  # a field's title would only repeat its name

        def dataclass_schema(self, schema: core_schema.DataclassSchema) -> JsonSchemaValue:
            return _close(super().dataclass_schema(schema), schema["cls"])

        def typed_dict_schema(self, schema: core_schema.TypedDictSchema) -> JsonSchemaValue:
            return _close(super().typed_dict_schema(schema), schema["cls"])

    types: list[type] = [getattr(models, name) for name in RESPONSE_TYPES]
    out: dict[str, JSONObject] = {}
    for cls in [*types, WriteResult, ErrorResponse, Alert, AlertDetail, AlertList, AlertDeleted]:
        schema = TypeAdapter(cls).json_schema(mode="serialization", ref_template=SCHEMAS, schema_generator=Closed)
        for name, found in {**schema.pop("$defs", {}), cls.__name__: schema}.items():
            if out.setdefault(name, found) != found:
                raise TypeError(f"two response types are named {name}")
    return out


def _prose(text: str) -> str:
    """A docstring as one paragraph per blank-line-separated block (its line breaks are the source's wrapping)."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text)


def _close(schema: JSONObject, cls: type) -> JSONObject:
    docs = field_docs(cls)
    properties: JSONObject = schema.get("properties", {})
    for name, prop in properties.items():
        if name in docs:
            prop["description"] = _prose(docs[name])
    if "description" in schema:
        schema["description"] = _prose(schema["description"])
    schema["required"] = list(properties)
    schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMAS.format(model=name)}


PATH_PARAMETERS: dict[str, JSONObject] = {
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
    "alert_id": {
        "name": "alert_id",
        "in": "path",
        "required": True,
        "description": "A saved search's id, as POST /api/alerts answered it.",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
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


def _response(description: str, schema: str | JSONObject) -> JSONObject:
    return {
        "description": description,
        "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
        "content": {JSON: {"schema": _ref(schema) if isinstance(schema, str) else schema}},
    }


ERROR = "ErrorResponse"


def _operation(
    operation_id: str,
    summary: str,
    ok: JSONObject,
    settings: Settings,
    *,
    path: tuple[str, ...] = (),
    query: type[Params] | None = None,
    not_found: bool | str = False,
    conflict: bool = False,
) -> JSONObject:
    """An operation: its ``path`` parameters, the query parameters ``query`` declares, its responses (``not_found``:
    a 404 for an unknown article, or one described by the text given)."""
    responses: JSONObject = {
        "200": ok,
        "400": _response("Invalid input (invalid_input) or a URL that is not UTF-8 (bad_encoding).", ERROR),
    }
    if not_found:
        missing = not_found if isinstance(not_found, str) else "No article has that id (not_found)."
        responses["404"] = _response(missing, ERROR)
    if conflict:
        responses["409"] = _response("The cursor was made before the index changed (stale_cursor).", ERROR)
    responses["5XX"] = _response("A broken or missing index (503) or a bug (500, internal_error).", ERROR)
    declared = openapi_parameters(query, settings) if query is not None else []
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [*(_param(p) for p in path), *declared, _param("request_id")],
        "responses": responses,
    }


def _secured(op: JSONObject) -> JSONObject:
    """A write operation: the bearer key, and the errors of writes."""
    op["security"] = [{"bearer": []}]
    _write_errors(op["responses"])
    return op


def _write_errors(responses: JSONObject) -> JSONObject:
    responses["401"] = _response("No key, or a wrong one (unauthorized).", ERROR)
    responses["403"] = _response(
        "Writes are disabled (writes_disabled): the server has no write key, or the index is read-only.", ERROR
    )
    responses["5XX"] = _response(
        "The index kept changing under the write (503, index_changed: retry), the disk refused it before it committed "
        "(507, storage_error: nothing was written), a broken or missing index (503) or a bug (500, internal_error).",
        ERROR,
    )
    return responses


def article_in(settings: Settings) -> JSONObject:
    """One article of a write body, as search/intake.py reads it (its limits are intake's; a test checks that the
    properties are intake's FIELDS)."""
    text = {"type": "string", "maxLength": settings.max_field_chars}
    labels = {  # a string, or a list of them
        "anyOf": [{"type": "string"}, {"type": "array", "maxItems": MAX_TAGS, "items": {"type": "string"}}]
    }
    return {
        "type": "object",
        "required": ["id", "title"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
            "title": text,
            "paragraphs": {"type": "array", "maxItems": MAX_PARAGRAPHS, "items": text},
            "text": text,
            "date": {"type": ["string", "null"], "description": "ISO 8601 date or datetime"},
            "source": {"type": ["string", "null"]},
            "url": {"type": ["string", "null"]},
            "tags": labels,
            "category": {**labels, "description": "The same as tags (give one of the two)."},
            "extra": {"type": "object", "description": "Source fields newsdesk does not map, kept as they came."},
        },
    }


def _write_operation(settings: Settings) -> JSONObject:
    article = article_in(settings)
    op = _operation(
        "writeArticles",
        "Insert or replace (by id) one article or a batch, all or nothing; searchable when acknowledged.",
        _response("What was written, and the index generation that holds it.", "WriteResult"),
        settings,
    )
    op["requestBody"] = {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "oneOf": [
                        article,
                        {
                            "type": "object",
                            "required": ["articles"],
                            "additionalProperties": False,
                            "properties": {
                                "articles": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": settings.max_batch_articles,
                                    "items": article,
                                }
                            },
                        },
                    ]
                }
            }
        },
    }
    op["responses"]["413"] = _response("The body is larger than max_body_bytes.", ERROR)
    return _secured(op)


def _delete_operation(settings: Settings, *, batch: bool = False) -> JSONObject:
    """``DELETE /api/articles/{article_id}``, or with ``batch`` ``DELETE /api/articles`` (ids in the body)."""
    op = _operation(
        "deleteArticles" if batch else "deleteArticle",
        "Delete a batch of articles by id in one write, all or nothing (404 and nothing deleted if one is missing)."
        if batch
        else "Delete one article (its passages, vectors and labels go with it).",
        _response("What was deleted, and the index generation without it.", "WriteResult"),
        settings,
        path=() if batch else ("article_id",),
        not_found=True,
    )
    if not batch:
        return _secured(op)
    op["requestBody"] = {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "required": ["ids"],
                    "additionalProperties": False,
                    "properties": {
                        "ids": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": settings.max_batch_articles,
                            "uniqueItems": True,
                            "items": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
                        }
                    },
                }
            }
        },
    }
    op["responses"]["413"] = _response("The body is larger than max_body_bytes.", ERROR)
    return _secured(op)


def _alert_operations(settings: Settings) -> dict[str, JSONObject]:
    """The paths of saved searches (search/alerts/): create and list, read and delete, the Atom feed."""
    missing = "No alert has that id (not_found)."
    alert = ("alert_id",)
    create = _operation(
        "createAlert",
        "Save a search: every later write's new articles that match it are recorded, fed and posted.",
        _response("The saved search.", "Alert"),
        settings,
    )
    create["responses"]["201"] = create["responses"].pop("200")
    create["requestBody"] = {"required": True, "content": {JSON: {"schema": body_schema(AlertParams, settings)}}}
    create["responses"]["413"] = _response("The body is larger than max_body_bytes.", ERROR)
    atom = {
        "description": "An Atom 1.0 document (RFC 4287); entry ids never change.",
        "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
        "content": {"application/atom+xml": {"schema": {"type": "string"}}},
    }
    return {
        "/api/alerts": {
            "post": _secured(create),
            "get": _operation(
                "listAlerts", "Every saved search.", _response("The saved searches.", "AlertList"), settings
            ),
        },
        "/api/alerts/{alert_id}": {
            "get": _operation(
                "getAlert",
                "A saved search and its latest matches (answering sentence marked, copies and story mates grouped).",
                _response("The alert and its latest matches, newest first.", "AlertDetail"),
                settings,
                path=alert,
                query=AlertEntriesParams,
                not_found=missing,
            ),
            "delete": _secured(
                _operation(
                    "deleteAlert",
                    "Delete a saved search and its matches.",
                    _response("The id deleted.", "AlertDeleted"),
                    settings,
                    path=alert,
                    not_found=missing,
                )
            ),
        },
        "/api/alerts/{alert_id}/feed.atom": {
            "get": _operation(
                "getAlertFeed",
                "A saved search's latest matches as an Atom feed.",
                atom,
                settings,
                path=alert,
                query=AlertEntriesParams,
                not_found=missing,
            )
        },
    }


def build_spec(settings: Settings) -> JSONObject:
    """The OpenAPI 3.1 document for an app serving with ``settings``."""
    try:
        version = metadata.version("newsdesk")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    article = _response("The article.", "LabelledArticle")
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
                    _response("One page of ranked articles.", "SearchResponse"),
                    settings,
                    query=SearchParams,
                    conflict=True,
                )
            },
            "/api/answers": {
                "get": _operation(
                    "answers",
                    "Rank the passages of the whole index as answers to a question, optionally as of its date.",
                    _response("The best passages, best first.", "AnswersResponse"),
                    settings,
                    query=AnswersParams,
                )
            },
            "/api/articles/{article_id}": {
                "get": _operation(
                    "getArticle", "One article by id.", article, settings, path=("article_id",), not_found=True
                ),
                "delete": _delete_operation(settings),
            },
            "/api/articles/{article_id}/similar": {
                "get": _operation(
                    "getSimilar",
                    "More like this: articles nearest to one, one per duplicate group, within the filters.",
                    similar,
                    settings,
                    path=("article_id",),
                    query=SimilarParams,
                    not_found=True,
                )
            },
            "/api/articles/{article_id}/timeline": {
                "get": _operation(
                    "getTimeline",
                    "Coverage around an article in date order: its story and its nearest dated articles.",
                    timeline,
                    settings,
                    path=("article_id",),
                    query=TimelineParams,
                    not_found=True,
                )
            },
            "/api/timeline": {
                "get": _operation(
                    "getTimelineByQuery",
                    "An article's timeline (id), or a query's best dated articles in date order (q).",
                    timeline,
                    settings,
                    query=TimelineByQueryParams,
                    not_found=True,
                )
            },
            "/api/stories/{story_id}": {
                "get": _operation(
                    "getStory",
                    "Every article of a story, earliest first.",
                    _response("The story's articles.", "StoryResponse"),
                    settings,
                    path=("story_id",),
                    not_found=True,
                )
            },
            "/api/article": {
                "get": _operation(
                    "getArticleByQuery",
                    "One article, its id as a parameter.",
                    article,
                    settings,
                    query=ArticleParams,
                    not_found=True,
                )
            },
            "/api/similar": {
                "get": _operation(
                    "getSimilarByQuery",
                    "More like this, the id as a parameter.",
                    similar,
                    settings,
                    query=SimilarByIdParams,
                    not_found=True,
                )
            },
            "/api/health": {
                "get": _operation(
                    "health",
                    "Status, index name, model, counts, newest date.",
                    _response("Healthy.", "Health"),
                    settings,
                )
            },
            "/api/openapi.json": {"get": _operation("openapi", "This document.", spec_response, settings)},
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
            "/api/articles": {"post": _write_operation(settings), "delete": _delete_operation(settings, batch=True)},
            **_alert_operations(settings),
        },
        "components": {
            "schemas": response_schemas(),
            "parameters": PATH_PARAMETERS,
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
    settings: Settings = current_app.extensions["newsdesk"].settings
    return jsonify(build_spec(settings))
