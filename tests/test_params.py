"""api/params.py: one declaration of each route's query parameters, read by the routes and by the document."""

from __future__ import annotations

import dataclasses
import html

import pytest
from flask.testing import FlaskClient
from werkzeug.datastructures import MultiDict

from api.openapi import build_spec
from api.params import (
    ArticleParams,
    PageSearchParams,
    Params,
    SearchParams,
    SimilarByIdParams,
    SimilarParams,
    TimelineByQueryParams,
    TimelineParams,
    openapi_parameters,
    parse,
    specs,
)
from search.errors import InvalidInput
from search.ranking.catalog import Filter
from search.settings import Settings
from tests.conftest import assert_error
from tests.test_openapi import CORPUS_IDS

OPERATIONS: dict[tuple[str, str], type[Params]] = {
    ("/api/search", "get"): SearchParams,
    ("/api/articles/{article_id}/similar", "get"): SimilarParams,
    ("/api/similar", "get"): SimilarByIdParams,
    ("/api/articles/{article_id}/timeline", "get"): TimelineParams,
    ("/api/timeline", "get"): TimelineByQueryParams,
    ("/api/article", "get"): ArticleParams,
}


def args(**values: str) -> MultiDict[str, str]:
    return MultiDict([(k.removesuffix("_"), v) for k, v in values.items()])


def test_values_are_read_by_their_declared_types() -> None:
    p = parse(
        SearchParams,
        MultiDict(
            [
                ("q", "rates"),
                ("k", "5"),
                ("mode", "dense"),
                ("from", "2024-01-01"),
                ("source", "A"),
                ("source", "B"),
                ("tag", "x"),
                ("category", "y"),
                ("facets", "yes"),
            ]
        ),
    )
    assert (p.q, p.k, p.offset, p.mode, p.facets, p.cursor, p.max_per_source) == (
        "rates",
        5,
        0,
        "dense",
        True,
        None,
        None,
    )
    assert p.filters() == Filter.parse("2024-01-01", None, ["A", "B"], ["y", "x"])
    assert parse(SearchParams, args(q="x")).filters() is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({}, "the 'q' parameter is required"),
        ({"q": "x", "k": "ten"}, "k must be an integer, got 'ten'"),
        ({"q": "x", "k": "+5"}, "k must be an integer"),  # int() would take it; the document says integer
        ({"q": "x", "k": "٣"}, "k must be an integer"),
        ({"q": "x", "facets": "maybe"}, "facets must be true or false, got 'maybe'"),
        ({"q": "x", "mode": "semantic"}, "mode must be one of hybrid, dense, lexical, got 'semantic'"),
        ({"q": "x", "mode": ""}, "mode must be one of"),  # the API has no blank convention: an empty mode is wrong
    ],
)
def test_what_cannot_be_read_is_invalid_input(query: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse(SearchParams, MultiDict(query))


def test_the_form_convention_reads_blank_values_as_not_given() -> None:
    form = MultiDict([("q", "rates"), ("mode", ""), ("offset", ""), ("source", " "), ("source", "A"), ("from", "")])
    p = parse(PageSearchParams, form, blank_is_absent=True)
    assert (p.q, p.mode, p.offset, p.source, p.date_from) == ("rates", None, 0, ["A"], None)
    with pytest.raises(InvalidInput, match="offset must be an integer"):
        parse(PageSearchParams, MultiDict([("offset", "")]))
    assert not hasattr(p, "tag")  # the page's form has no tag field; an API link's tag is not silently half-read


def test_every_declared_parameter_is_in_the_document_as_declared() -> None:
    """The operations' query parameters are exactly the declarations', with the served settings' bounds."""
    settings = Settings().replace(max_k=33, max_query_chars=77, mode="lexical")
    spec = build_spec(settings)
    for (path, method), cls in OPERATIONS.items():
        op = spec["paths"][path][method]
        inline = [p for p in op["parameters"] if "$ref" not in p]
        assert inline == openapi_parameters(cls, settings), path
        assert [p["name"] for p in inline] == [s.name for s in specs(cls)]
    search = {p["name"]: p for p in spec["paths"]["/api/search"]["get"]["parameters"] if "name" in p}
    assert search["k"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 33, "default": 10}
    assert search["q"]["required"] is True and search["q"]["schema"]["maxLength"] == 77
    assert search["mode"]["schema"] == {"type": "string", "enum": ["hybrid", "dense", "lexical"], "default": "lexical"}
    assert search["source"]["schema"]["type"] == "array" and search["source"]["explode"] is True
    assert "required" not in search["cursor"]


def test_a_field_added_to_a_declaration_is_parsed_and_documented() -> None:
    """Declared once: a new parameter needs its field and nothing else to be read and to be documented."""
    from typing import Annotated

    from api.params import Param

    extended = dataclasses.make_dataclass(
        "Extended",
        [("fuzzy", Annotated[bool, Param("Allow misspellings.")], dataclasses.field(default=False))],
        bases=(ArticleParams,),
        frozen=True,
        kw_only=True,
    )
    assert dataclasses.asdict(parse(extended, args(id="a", fuzzy="true"))) == {"id": "a", "fuzzy": True}
    documented = openapi_parameters(extended, Settings())
    assert documented[-1] == {
        "name": "fuzzy",
        "in": "query",
        "description": "Allow misspellings.",
        "schema": {"type": "boolean", "default": False},
    }


def test_a_declaration_without_its_param_is_refused() -> None:
    bare = dataclasses.make_dataclass("Bare", [("n", int)], bases=(Params,), frozen=True)
    with pytest.raises(TypeError, match="has no Param"):
        specs(bare)


def test_the_page_and_the_api_refuse_a_bad_mode_alike(client: FlaskClient) -> None:
    api = assert_error(client.get("/api/search", query_string={"q": "rates", "mode": "semantic"}), 400)
    page = client.get("/", query_string={"q": "rates", "mode": "semantic"})
    assert page.status_code == 400
    assert api["error"]["message"] in html.unescape(page.get_data(as_text=True))


def test_a_timeline_by_id_refuses_a_mode_it_documents_as_an_enum(client: FlaskClient) -> None:
    """Was answered 200: /api/timeline read ``mode`` only for ``q``, so with ``id`` any mode passed, although the
    document's enum calls it invalid (schemathesis's negative_data_rejection)."""
    assert_error(
        client.get("/api/timeline", query_string={"id": CORPUS_IDS[0], "mode": "semantic"}), 400, "invalid_input"
    )
    ok = client.get("/api/timeline", query_string={"id": CORPUS_IDS[0], "mode": "dense"})
    assert ok.status_code == 200
