"""``/api/openapi.json``: in step with the app's routes, valid OpenAPI 3.1, and true of what the app answers.

The fuzz run generates requests from the document with schemathesis (valid and deliberately invalid ones), sends them
to the WSGI app in-process and checks each response: no 5xx, a documented status, content type and headers, and a
body that matches the documented schema. Its size is bounded (``NEWSDESK_FUZZ_EXAMPLES`` per operation and mode,
fixed seeds) so it takes seconds; the number of cases is printed and written to ``tests/artifacts/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
from annotated_types import Ge
from flask import Flask
from flask.testing import FlaskClient

from api.openapi import build_spec
from search.service import SearchService
from search.settings import Settings
from tests.conftest import CORPUS

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FUZZ_EXAMPLES = int(os.environ.get("NEWSDESK_FUZZ_EXAMPLES", "25"))
CORPUS_IDS = [json.loads(line)["id"] for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def documented_routes(spec: dict[str, Any]) -> dict[str, set[str]]:
    return {path: {m.upper() for m in ops} for path, ops in spec["paths"].items()}


def app_api_routes(app: Flask) -> dict[str, set[str]]:
    """Every ``/api`` URL rule as an OpenAPI path (``<article_id:article_id>`` -> ``{article_id}``) and its methods."""
    out: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule == "/api" or rule.rule.startswith("/api/"):
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            out.setdefault(path, set()).update((rule.methods or set()) - {"HEAD", "OPTIONS"})
    return out


def test_every_api_route_is_documented_and_nothing_else(app: Flask) -> None:
    spec = app.test_client().get("/api/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    assert documented_routes(spec) == app_api_routes(app)


def test_the_sync_check_sees_an_undocumented_route(app: Flask) -> None:
    app.add_url_rule("/api/secret/<int:n>", endpoint="secret", view_func=lambda n: "")
    spec = app.test_client().get("/api/openapi.json").get_json()
    assert "/api/secret/{n}" in app_api_routes(app)
    assert documented_routes(spec) != app_api_routes(app)


def test_path_parameters_match_the_rules(app: Flask) -> None:
    spec = build_spec(Settings())
    for path, ops in spec["paths"].items():
        in_path = set(re.findall(r"{([^}]+)}", path))
        for op in ops.values():
            params = [resolve(spec, p) for p in op["parameters"]]
            assert {p["name"] for p in params if p["in"] == "path"} == in_path, path
            assert "X-Request-ID" in {p["name"] for p in params}
            assert len({(p["name"], p["in"]) for p in params}) == len(params), path


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its ``$ref`` names."""
    if "$ref" not in node:
        return node
    for part in node["$ref"].removeprefix("#/").split("/"):
        spec = spec[part]
    return spec


def operation_parameter(spec: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    found = [p for p in map(lambda p: resolve(spec, p), spec["paths"][path]["get"]["parameters"]) if p["name"] == name]
    assert len(found) == 1, (path, name)
    return found[0]


def test_every_reference_resolves() -> None:
    spec = build_spec(Settings())
    refs = re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(spec))
    assert refs
    for ref in refs:
        node: Any = spec
        for part in ref.split("/"):
            node = node[part]


def test_bounds_follow_the_served_settings(service: SearchService) -> None:
    from api.app import create_app

    small = SearchService(service.index, service.embedder, service.settings.replace(max_k=7, max_query_chars=50))
    spec = create_app(service=small).test_client().get("/api/openapi.json").get_json()
    assert operation_parameter(spec, "/api/search", "k")["schema"]["maximum"] == 7
    assert operation_parameter(spec, "/api/search", "q")["schema"]["maxLength"] == 50
    assert operation_parameter(spec, "/api/timeline", "q")["schema"]["maxLength"] == 50


def test_documented_errors_are_what_the_app_answers(client: FlaskClient) -> None:
    """The error schema is closed: a response with one more field would not match it."""
    import jsonschema_rs

    spec = build_spec(Settings())
    error_schema = {**spec["components"]["schemas"]["ErrorResponse"], "components": spec["components"]}
    validator = jsonschema_rs.validator_for(error_schema)
    body = client.get("/api/articles/no-such-id").get_json()
    assert validator.is_valid(body)
    assert not validator.is_valid({"error": {**body["error"], "request_id": "x"}})


# -- the schemas are the models' -----------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def test_a_field_added_to_a_response_dataclass_is_in_the_document(tmp_path: Path) -> None:
    """Acceptance 4 of issue 16, literally: a copy of the code whose search/models.py (and nothing under api/) gains a
    field serves a document with that field, its docstring as its description and required like every field."""
    for package in ("search", "api", "indexer"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    models = tmp_path / "search" / "models.py"
    source = models.read_text(encoding="utf-8")
    anchor = "    notes: list[str] = field(default_factory=list)\n"
    assert source.count(anchor) == 1
    models.write_text(
        source.replace(anchor, anchor + '    spelling: str | None = None\n    """A suggested respelling."""\n'),
        encoding="utf-8",
    )
    script = (
        "import json; from api.openapi import build_spec; from search.settings import Settings; "
        "print(json.dumps(build_spec(Settings())['components']['schemas']['SearchResponse']))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert schema["properties"]["spelling"]["description"] == "A suggested respelling."
    assert schema["properties"]["spelling"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert "spelling" in schema["required"]
    assert "spelling" not in build_spec(Settings())["components"]["schemas"]["SearchResponse"]["properties"]


def test_the_schemas_are_built_when_asked_for_not_at_import() -> None:
    """Importing the app (every server worker, every CLI run that imports it) does not import pydantic: the schemas
    are generated on the first request for the document."""
    script = "import sys, api.app; print('pydantic' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_document_reads_the_response_types_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same in-process: a replaced response type is the one documented, with its field docs (none here: a class
    made at run time has no source) and its bounds."""
    from api import openapi
    from search import models

    extended = dataclasses.make_dataclass(
        "StoryResponse",
        [("size", Annotated[int, Ge(1)])],
        bases=(models.StoryResponse,),
        frozen=True,
    )
    openapi.response_schemas.cache_clear()
    monkeypatch.setattr(models, "StoryResponse", extended)
    try:
        schema = build_spec(Settings())["components"]["schemas"]["StoryResponse"]
    finally:
        openapi.response_schemas.cache_clear()
    assert schema["properties"]["size"] == {"type": "integer", "minimum": 1}
    assert schema["required"] == ["story_id", "articles", "size"]


def test_the_write_body_documents_what_intake_reads() -> None:
    """The write body's article is intake's: the same fields, and a string where intake takes one."""
    import jsonschema_rs

    from api.openapi import article_in
    from search.intake import FIELDS

    documented = article_in(Settings())
    assert set(documented["properties"]) == FIELDS
    validator = jsonschema_rs.validator_for(documented)
    assert validator.is_valid({"id": "a", "title": "T", "tags": "markets", "category": ["a", "b"]})
    assert not validator.is_valid({"id": "a", "title": "T", "body": "x"})


def test_every_field_docstring_is_a_description() -> None:
    from search.models import SearchResponse

    schema = build_spec(Settings())["components"]["schemas"]["SearchResponse"]
    assert schema["properties"]["query"]["description"] == "The query as searched (trimmed)."
    assert "\n" not in schema["properties"]["total"]["description"]  # the docstring's wrapping is not kept
    assert schema["description"].startswith("One page of results.")
    assert [f.name for f in dataclasses.fields(SearchResponse)] == list(schema["properties"])


def routes_answering(client: FlaskClient) -> dict[str, tuple[str, Any]]:
    """One real response of each response type, from the fixture corpus (the schema named, the body)."""
    some = CORPUS_IDS[0]
    article = client.get("/api/article", query_string={"id": some}).get_json()
    story = article["story_id"]
    gets = {
        "SearchResponse": ("/api/search", {"q": "interest rates", "facets": "true", "cursor": "*"}),
        "LabelledArticle": (f"/api/articles/{some}", {}),
        "SimilarResponse": ("/api/similar", {"id": some, "exclude_story": "true"}),
        "StoryResponse": (f"/api/stories/{story}", {}),
        "TimelineResponse": ("/api/timeline", {"q": "interest rates"}),
        "Health": ("/api/health", {}),
        "ErrorResponse": ("/api/articles/no-such-id", {}),
    }
    out = {}
    for name, (url, args) in gets.items():
        response = client.get(url, query_string=args)
        assert response.status_code in (200, 404), (url, response.get_data(as_text=True))
        out[url] = (name, response.get_json())
    return out


def test_each_schema_is_the_shape_the_routes_return(client: FlaskClient) -> None:
    """Real responses of the fixture corpus validate against their generated schemas, which are closed and require
    every field: a field the routes add or drop without the dataclass would fail here."""
    import jsonschema_rs

    spec = build_spec(Settings())
    seen = set()
    for url, (name, body) in routes_answering(client).items():
        validator = jsonschema_rs.validator_for(
            {**spec["components"]["schemas"][name], "components": spec["components"]}
        )
        errors = [str(e) for e in validator.iter_errors(body)]
        assert not errors, (url, errors)
        assert set(body) == set(spec["components"]["schemas"][name]["required"]), url
        assert not validator.is_valid({**body, "unexpected": 1}), url
        seen.add(name)
    nested = json.dumps(spec["components"]["schemas"])
    assert {"ArticleRef", "PassageHit", "Scores", "FacetCount", "Copy"} <= {
        n for n in spec["components"]["schemas"] if f'"#/components/schemas/{n}"' in nested
    }
    assert len(seen) == 7


# -- schemathesis --------------------------------------------------------------------------------------------------


@dataclass
class FuzzRun:
    cases: Counter[str] = field(default_factory=Counter)
    nothing_invalid: list[str] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)
    without_query: list[str] = field(default_factory=list)


def fuzz(app: Flask, examples: int, ids: dict[str, list[str]], only: str | None = None) -> FuzzRun:
    """schemathesis over every operation of ``app``'s document: valid and invalid inputs, each response checked.

    ``ids`` are real values of id parameters (``article_id``, ``id``, ``story_id``): random ones miss the index, so
    each is also sent to the operations taking it, and 200 responses get checked as well as 404s. Raises on the
    first failing case (after shrinking it).
    """
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    out = FuzzRun()

    def run(label: str, strategy: Any, n: int) -> None:
        @settings(
            max_examples=n,
            deadline=None,
            database=None,
            derandomize=True,  # the same cases on every run, so a CI failure reproduces
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: Any) -> None:
            out.cases[label] += 1
            case.call_and_validate(checks=checks)

        try:
            check()
        except Unsatisfiable:
            # negative mode where every input is valid (/api/health takes none) or the only constraint cannot be
            # broken in a URL (an empty path segment): there is nothing invalid to send
            assert label.endswith("negative"), label
            out.nothing_invalid.append(label)

    for result in schema.get_all_operations():
        op = result.ok()
        if only is not None and op.path != only:
            continue
        out.operations.append(op.path)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run(f"{op.label} {mode.value}", op.as_strategy(generation_mode=mode), examples)
        if not list(op.query):
            out.without_query.append(op.label)
        for param in [*op.path_parameters, *op.query]:
            for value in ids.get(param.name, []):
                where = "path_parameters" if param in op.path_parameters else "query"
                run(f"{op.label} real {param.name}", op.as_strategy(**{where: {param.name: value}}), 3)
    return out


def small_bounds_app(service: SearchService) -> Flask:
    """Smaller bounds than the defaults keep each generated search cheap (a 1,000-character query of random text
    costs a full model pass, k=100 a hundred results); the document states them, so what is fuzzed is the contract
    this app serves."""
    from api.app import create_app

    bounded = SearchService(service.index, service.embedder, service.settings.replace(max_query_chars=120, max_k=20))
    return create_app(service=bounded)


def real_ids(client: FlaskClient) -> dict[str, list[str]]:
    """The fixture corpus's article ids, and its story ids where articles carry them."""
    articles = [client.get("/api/article", query_string={"id": i}).get_json() for i in CORPUS_IDS]
    stories = sorted({a["story_id"] for a in articles if a.get("story_id")})
    return {"article_id": CORPUS_IDS, "id": CORPUS_IDS, "story_id": stories}


def test_schemathesis_finds_no_5xx_and_no_schema_violation(service: SearchService) -> None:
    app = small_bounds_app(service)
    run = fuzz(app, FUZZ_EXAMPLES, real_ids(app.test_client()))
    # schemathesis leaves out the operation serving the document it was loaded from; the tests above cover that one
    assert set(run.operations) == set(app_api_routes(app)) - {"/api/openapi.json"}
    # only where no input can be invalid: operations taking no query parameter (a path id has no invalid value)
    assert run.nothing_invalid
    assert {label.removesuffix(" negative") for label in run.nothing_invalid} <= set(run.without_query)
    total = sum(run.cases.values())
    record = {
        "total": total,
        "examples": FUZZ_EXAMPLES,
        "cases": dict(run.cases),
        "nothing_invalid": run.nothing_invalid,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nschemathesis: {total} generated cases over {len(run.operations)} operations")
    assert total >= len(run.operations) * min(FUZZ_EXAMPLES, 5)


def test_the_fuzz_run_catches_a_5xx_and_an_undocumented_field(
    service: SearchService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fuzz run can fail: on a 500, and on a response with a field the document does not have."""
    app = small_bounds_app(service)
    bounded: SearchService = app.extensions["newsdesk"]

    def crash() -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(bounded, "health", crash)
    with pytest.raises(BaseExceptionGroup, match="Server error"):  # schemathesis's FailureGroup
        fuzz(app, 5, {}, only="/api/health")
    monkeypatch.setattr(bounded, "health", lambda: {**SearchService.health(bounded), "uptime": 1})
    with pytest.raises(BaseExceptionGroup, match="Response violates schema"):
        fuzz(app, 5, {}, only="/api/health")
