"""Shared fixtures: the real bundled model (small and fast), a fixture corpus index, the app, a client, a runner.

The model and the fixture index are built once per session; tests that modify an index build their own copy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from api.app import create_app
from indexer.build import build_index
from indexer.sources import read_sources
from search.service import SearchService
from search.settings import Settings
from search.storage.index import open_index
from search.text.embedding import Embedder, make_embedder

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CORPUS = FIXTURES / "corpus.jsonl"
SAMPLE = ROOT / "index_data" / "sample.jsonl"
# Dated: two outlets covering one OPEC story, a third outlet's exact copy, background and follow-up coverage, and
# unrelated stories (a cocoa market review among them) - what the article page and timelines are tested on.
DATED = FIXTURES / "dated.jsonl"


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The embedder a user gets: ``make_embedder`` on the default ``Settings``, so the suite runs the backend the
    product ships (onnx-int8 today), not whatever a constructor defaults to. The int8 export is made once per machine
    into ``Settings().model_cache``, as the CLI makes it, and loaded from there afterwards (well under a second,
    against several for torch). A test that compares backends builds the one it pins, by name, itself."""
    return make_embedder(Settings())


@pytest.fixture(scope="session")
def corpus_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """The fixture corpus (ids with slashes, URLs, unicode; one exact duplicate) indexed once."""
    target = tmp_path_factory.mktemp("idx") / "corpus"
    build_index(read_sources([CORPUS]), target, Settings(index_dir=target), embedder, progress=False)
    return target


def build_on(backend: str, source: Path, target: Path, embedder: Any) -> Path:
    """``source`` indexed at ``target`` with passage and article vectors in ``backend`` (faiss or milvus; Milvus
    Lite in ``target``'s milvus.db)."""
    build_index(read_sources([source]), target, Settings(index_dir=target, store=backend), embedder, progress=False)
    return target


@pytest.fixture(scope="session")
def milvus_corpus_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """The fixture corpus indexed once with its vectors in Milvus Lite."""
    return build_on("milvus", CORPUS, tmp_path_factory.mktemp("idx") / "corpus", embedder)


@pytest.fixture(scope="session")
def milvus_sample_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """The bundled sample corpus indexed once with its vectors in Milvus Lite."""
    return build_on("milvus", SAMPLE, tmp_path_factory.mktemp("idx") / "sample", embedder)


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """The bundled sample corpus (the North Korea article and 17 headlines) indexed once."""
    target = tmp_path_factory.mktemp("idx") / "sample"
    build_index(read_sources([SAMPLE]), target, Settings(index_dir=target), embedder, progress=False)
    return target


def make_service(index_dir: Path, embedder: Embedder, **settings: Any) -> SearchService:
    s = Settings(index_dir=index_dir, **settings)
    return SearchService(open_index(index_dir, embedder), embedder, s)


@pytest.fixture(scope="session")
def dated_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """The dated fixture corpus indexed once (stories and duplicates labelled by the build)."""
    target = tmp_path_factory.mktemp("idx") / "dated"
    build_index(read_sources([DATED]), target, Settings(index_dir=target), embedder, progress=False)
    return target


@pytest.fixture(scope="session")
def dated_service(dated_index: Path, embedder: Embedder) -> SearchService:
    return make_service(dated_index, embedder)


@pytest.fixture(scope="session")
def service(corpus_index: Path, embedder: Embedder) -> SearchService:
    return make_service(corpus_index, embedder)


@pytest.fixture(scope="session")
def sample_service(sample_index: Path, embedder: Embedder) -> SearchService:
    return make_service(sample_index, embedder)


@pytest.fixture(scope="session")
def milvus_service(milvus_corpus_index: Path, embedder: Embedder) -> SearchService:
    return make_service(milvus_corpus_index, embedder)


@pytest.fixture(scope="session")
def milvus_sample_service(milvus_sample_index: Path, embedder: Embedder) -> SearchService:
    return make_service(milvus_sample_index, embedder)


BACKENDS = ("faiss", "milvus")  # vector stores the search, similar and related tests run against


def on_backend(request: pytest.FixtureRequest, faiss_fixture: Any) -> Any:
    """For a fixture parametrised over ``BACKENDS``: the FAISS fixture's value, or its ``milvus_`` twin's. A test
    module overrides ``service`` (and the others) with ``@pytest.fixture(params=BACKENDS)`` calling this, so its
    tests run against both stores while every other module keeps the FAISS fixtures alone."""
    if request.param == "faiss":
        return faiss_fixture
    return request.getfixturevalue(f"milvus_{request.fixturename}")


@pytest.fixture
def app(service: SearchService) -> Flask:
    app = create_app(service=service)
    app.config["TESTING"] = False  # exercise the real error handlers, as in production
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def sample_client(sample_service: SearchService) -> FlaskClient:
    return create_app(service=sample_service).test_client()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Iterator[Any]:
    def write(name: str, rows: list[dict[str, Any]]) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path

    yield write


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The one check for every API error: the status, a JSON body of the one error shape, and no HTML."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def wire_rows() -> list[dict[str, Any]]:
    from tests.fakes import wire_articles

    return wire_articles()


@pytest.fixture(scope="session")
def wire_service(tmp_path_factory: pytest.TempPathFactory, wire_rows: list[dict[str, Any]]) -> SearchService:
    """600 dated wire stories (5 topics, 4 sources) on the hashing embedder: filters, facets and paging mechanics."""
    directory = tmp_path_factory.mktemp("idx")
    source = directory / "wire.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in wire_rows), encoding="utf-8")
    return _wire(directory, source, "faiss")


@pytest.fixture(scope="session")
def milvus_wire_service(tmp_path_factory: pytest.TempPathFactory, wire_rows: list[dict[str, Any]]) -> SearchService:
    """The 600 wire stories with their vectors in Milvus Lite."""
    directory = tmp_path_factory.mktemp("idx")
    source = directory / "wire.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in wire_rows), encoding="utf-8")
    return _wire(directory, source, "milvus")


def _wire(directory: Path, source: Path, backend: str) -> SearchService:
    from tests.fakes import HashEmbedder

    embedder = HashEmbedder()
    target = build_on(backend, source, directory / "wire", embedder)
    return SearchService(open_index(target, embedder), embedder, Settings(index_dir=target))
