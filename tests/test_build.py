from __future__ import annotations

from pathlib import Path

import pytest

from indexer.build import build_index, embedding_input, make_chunker
from search.errors import SourceError
from search.models import Article
from search.settings import Settings
from search.storage.index import open_index
from search.text.chunking import Chunk


def test_duplicate_ids_later_record_wins_and_identical_passages_embedded_once(tmp_path: Path, embedder) -> None:
    body = ("The same syndicated paragraph appears in two different articles about the harbour.",)
    articles = [
        Article(id="a", title="Old version", paragraphs=body),
        Article(id="b", title="Harbour reopens", paragraphs=body),
        Article(id="a", title="New version", paragraphs=body),
    ]
    report = build_index(
        articles, tmp_path / "i", Settings(index_dir=tmp_path / "i", title_context=False), embedder, progress=False
    )
    assert (report.articles, report.duplicate_ids) == (2, 1)
    # the shared paragraph is embedded once; each article's headline + lead (its article vector) once more
    assert report.passages == 4 and report.embedded == 3 + 2
    index = open_index(tmp_path / "i", embedder)
    aid = index.store.aid_of("a")
    assert aid is not None and index.store.article(aid).title == "New version"


def test_empty_corpus_is_an_error_and_writes_nothing(tmp_path: Path, embedder) -> None:
    with pytest.raises(SourceError, match="no articles"):
        build_index([], tmp_path / "i", Settings(index_dir=tmp_path / "i"), embedder, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_title_context_prefixes_body_passages_only() -> None:
    a = Article(id="x", title="Headline", paragraphs=("Body.",))
    body = Chunk(1, "body", 0, 5, "Body.")
    title = Chunk(0, "title", 0, 8, "Headline")
    assert embedding_input(a, body, True) == "Headline\nBody."
    assert embedding_input(a, body, False) == "Body."
    assert embedding_input(a, title, True) == "Headline"


def test_chunker_respects_model_limit(embedder) -> None:
    chunker = make_chunker(Settings(max_passage_tokens=10_000), embedder)
    assert chunker.max_tokens <= embedder.max_seq_length - 2
