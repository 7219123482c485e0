"""Re-indexing into an existing index embeds only what changed and ends where a fresh build would."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.build import lead_input, lead_limit
from indexer.sources import read_sources
from indexer.sync import sync_index
from indexer.update import add_articles
from search.models import Article
from search.ranking.catalog import Filter
from search.settings import Settings
from search.storage.index import check_index, open_index
from search.storage.store import Store
from search.text.embedding import PROBE_MIN_COSINE
from tests.conftest import CORPUS


def rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


class CountingEmbedder:
    """The real model, counting the texts it is asked to embed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.dimension = inner.name, inner.dimension
        self.max_seq_length = inner.max_seq_length
        self.texts: list[str] = []

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.texts += texts
        return self.inner.encode(texts, batch_size=batch_size, progress=progress)  # type: ignore[no-any-return]

    def encode_spans(
        self, texts: list[str], spans: list[list[tuple[int, int]]], *, batch_size: int = 64
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        self.texts += texts
        return self.inner.encode_spans(texts, spans, batch_size=batch_size)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def stored(index_dir: Path, embedder: Any) -> dict[tuple[str, int], tuple[str, np.ndarray]]:
    """(article id, position) -> (text, vector) of every passage."""
    index = open_index(index_dir, embedder)
    try:
        conn = index.store.connection()
        return {
            (aid, pos): (text, np.frombuffer(blob, dtype=np.float32))
            for aid, pos, text, blob in conn.execute(
                "SELECT a.id, p.position, p.text, p.vector FROM passages p JOIN articles a USING (aid)"
            )
        }
    finally:
        index.close()


@pytest.fixture
def built(tmp_path: Path, embedder: Any) -> tuple[Settings, Path]:
    target = tmp_path / "idx"
    settings = Settings(index_dir=target)
    report = sync_index(read_sources([CORPUS]), settings, embedder, progress=False)
    assert report.mode == "full" and report.reason == "no index yet"
    return settings, target


def test_unchanged_corpus_embeds_nothing_and_writes_nothing(built: tuple[Settings, Path], embedder: Any) -> None:
    settings, target = built
    before = open_index(target, embedder)
    generation = before.store.generation()
    before.close()
    counting = CountingEmbedder(embedder)
    report = sync_index(read_sources([CORPUS]), settings, counting, progress=False)
    assert report.mode == "incremental"
    assert (report.added, report.changed, report.deleted, report.embedded) == (0, 0, 0, 0)
    assert report.unchanged == report.articles
    assert counting.texts == []
    after = open_index(target, embedder)
    assert after.store.generation() == generation  # no transaction was written
    after.close()


def test_changes_re_embed_only_changed_passages_and_match_a_fresh_build(
    built: tuple[Settings, Path], tmp_path: Path, embedder: Any
) -> None:
    settings, target = built
    records = rows()
    edited = records[0]
    assert edited["id"] == "business/001"
    edited["paragraphs"][1] = "Officials said inflation had eased to 5 percent in March, still above the target."
    removed = records.pop(1)["id"]
    records.append(
        {
            "id": "science/900",
            "title": "Volcano erupts on remote island, forcing evacuations",
            "paragraphs": ["Lava flows reached the coast overnight as residents were moved to the mainland by boat."],
        }
    )
    source = write(tmp_path / "changed.jsonl", records)
    counting = CountingEmbedder(embedder)
    report = sync_index(read_sources([source]), settings, counting, progress=False)
    assert report.mode == "incremental"
    assert (report.added, report.changed, report.deleted) == (1, 1, 1)
    # the edited paragraph (with the byline merged into it) and the edited article's headline + lead (its article
    # vector), and the new article's headline and paragraph (its one body passage is also its headline + lead)
    new_edited = next(a for a in read_sources([source]) if a.id == edited["id"])
    assert sorted(counting.texts) == sorted(
        [
            f"{edited['title']}\n{edited['paragraphs'][1]}\n\n{edited['paragraphs'][2]}",
            lead_input(new_edited, lead_limit(embedder, settings), embedder.count_tokens),
            "Volcano erupts on remote island, forcing evacuations",
            "Volcano erupts on remote island, forcing evacuations\n"
            "Lava flows reached the coast overnight as residents were moved to the mainland by boat.",
        ]
    )
    assert report.embedded == 4
    assert check_index(target) == []

    fresh = tmp_path / "fresh"
    sync_index(read_sources([source]), Settings(index_dir=fresh), embedder, progress=False)
    got, want = stored(target, embedder), stored(fresh, embedder)
    assert set(got) == set(want)
    assert not any(key[0] == removed for key in got)
    for key, (text, vec) in want.items():
        assert got[key][0] == text
        # The same text, embedded in another forward pass: equal under torch; under int8 (the default) a text's
        # vector depends a little on the texts quantised with it, within what the probe check accepts.
        assert float(got[key][1] @ vec) >= PROBE_MIN_COSINE, (key, float(got[key][1] @ vec))

    index = open_index(target, embedder)
    try:
        ids = np.sort(np.concatenate([i for i, _ in index.store.iter_vectors("passages")]))
        np.testing.assert_array_equal(index.passages.ids(), ids)  # FAISS follows SQLite
        assert index.manifest["counts"]["articles"] == len(records)
    finally:
        index.close()


def test_changed_chunking_settings_force_a_full_build(built: tuple[Settings, Path], embedder: Any) -> None:
    settings, target = built
    report = sync_index(read_sources([CORPUS]), settings.replace(min_passage_chars=10), embedder, progress=False)
    assert report.mode == "full" and report.reason == "chunking settings changed"
    assert check_index(target) == []


def test_rebuild_flag_and_mostly_changed_corpus_build_fresh(
    built: tuple[Settings, Path], tmp_path: Path, embedder: Any
) -> None:
    settings, _ = built
    assert sync_index(read_sources([CORPUS]), settings, embedder, rebuild=True, progress=False).mode == "full"
    few = write(tmp_path / "few.jsonl", rows()[:2])
    report = sync_index(read_sources([few]), settings, embedder, progress=False)
    assert report.mode == "full" and "articles changed" in report.reason
    assert report.articles == 2


def test_search_parameter_change_is_recorded_without_rebuilding(tmp_path: Path, embedder: Any) -> None:
    target = tmp_path / "hnsw"
    settings = Settings(index_dir=target, faiss_factory="IDMap2,HNSW16", faiss_search="efSearch=16")
    sync_index(read_sources([CORPUS]), settings, embedder, progress=False)
    report = sync_index(read_sources([CORPUS]), settings.replace(faiss_search="efSearch=64"), embedder, progress=False)
    assert report.mode == "incremental" and report.embedded == 0
    index = open_index(target, embedder)
    try:
        assert index.manifest["faiss"]["search"] == "efSearch=64"
    finally:
        index.close()
    assert check_index(target) == []


def test_nothing_to_embed_never_loads_the_model(tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same model files, backend and chunking settings settle compatibility; the model loads only to embed."""
    settings = Settings(index_dir=tmp_path / "idx")  # the backend of the fixture embedder: the default
    sync_index(read_sources([CORPUS]), settings, embedder, progress=False)

    def no_model(_: Settings) -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("indexer.sync.make_embedder", no_model)
    assert sync_index(read_sources([CORPUS]), settings, progress=False).mode == "incremental"
    fewer = write(tmp_path / "fewer.jsonl", rows()[:-1])
    report = sync_index(read_sources([fewer]), settings, progress=False)
    assert (report.mode, report.deleted, report.embedded) == ("incremental", 1, 0)
    assert check_index(settings.index_dir) == []
    with pytest.raises(AssertionError, match="the model was loaded"):
        sync_index(read_sources([CORPUS]), settings, progress=False)  # the deleted article is back: embed it


def _article_row(index_dir: Path, article_id: str) -> tuple[Any, ...]:
    with closing(sqlite3.connect(index_dir / "newsdesk.sqlite")) as conn:
        row: tuple[Any, ...] = conn.execute(
            "SELECT date, source, url, tags, extra, origin FROM articles WHERE id = ?", (article_id,)
        ).fetchone()
    return row


def test_changed_metadata_is_applied_without_embedding(
    built: tuple[Settings, Path], tmp_path: Path, embedder: Any
) -> None:
    """Issue 15, defect 1: a new date or source used to report "0 changed" and keep the old values."""
    settings, target = built
    records = rows()
    edited = records[0]
    edited.update(date="8 Jan 2005", source="Changed Times", url="https://changed.example/1", tags=["corrected"])
    edited["note"] = "a correction"
    counting = CountingEmbedder(embedder)
    report = sync_index(read_sources([write(tmp_path / "meta.jsonl", records)]), settings, counting, progress=False)
    assert report.mode == "incremental"
    assert (report.added, report.changed, report.metadata, report.deleted) == (0, 0, 1, 0)
    assert report.unchanged == len(records) - 1
    assert counting.texts == []  # the text is the same: nothing embedded
    date, source, url, tags, extra, _ = _article_row(target, edited["id"])
    assert (date, source, url, json.loads(tags)) == (
        "2005-01-08",
        "Changed Times",
        "https://changed.example/1",
        ["corrected"],
    )
    assert json.loads(extra)["note"] == "a correction"
    assert check_index(target) == []
    index = open_index(target, embedder)
    try:
        generation = index.store.generation()
        # the caches were re-stamped, not left stale (an open would rebuild them)
        assert json.loads((target / "vectors.json").read_text())["generation"] == generation
        assert json.loads((target / "lexical.json").read_text())["generation"] == generation
        aid = index.store.aid_of(edited["id"])
        for flt in (
            Filter.parse(sources=["Changed Times"]),
            Filter.parse("2005-01-01", "2005-01-31"),
            Filter.parse(tags=["corrected"]),
        ):
            allowed = index.catalog.allowed(flt)
            assert allowed is not None and allowed.tolist() == [aid]
    finally:
        index.close()
    again = sync_index(read_sources([tmp_path / "meta.jsonl"]), settings, counting, progress=False)
    assert (again.metadata, again.unchanged) == (0, len(records))


def _add_one(target: Path, embedder: Any, origin: str = "add") -> str:
    index = open_index(target, embedder)
    try:
        extra = Article(id="added/1", title="Cocoa prices climb", paragraphs=("Cocoa rose sharply on Tuesday.",))
        add_articles(index, [extra], embedder, Settings(index_dir=target), origin=origin)
    finally:
        index.close()
    return "added/1"


def test_index_after_add_warns_before_deleting_and_keep_missing_keeps(
    built: tuple[Settings, Path], embedder: Any
) -> None:
    """Issue 15, defect 7: ``newsdesk index`` after ``newsdesk add`` deleted the added article without a word."""
    settings, target = built
    added = _add_one(target, embedder)
    assert _article_row(target, added)[5] == "add"
    warnings: list[str] = []
    kept = sync_index(
        read_sources([CORPUS]), settings, embedder, progress=False, keep_missing=True, warn=warnings.append
    )
    assert (kept.deleted, kept.kept, warnings) == (0, 1, [])
    assert _article_row(target, added) is not None
    report = sync_index(read_sources([CORPUS]), settings, embedder, progress=False, warn=warnings.append)
    assert warnings == [
        "1 of the 1 articles missing from the sources were added by newsdesk add or the API and will be deleted; run "
        "with --keep-missing to keep articles missing from the sources"
    ]
    assert (report.deleted, report.deleted_added) == (1, 1)
    assert _article_row(target, added) is None
    assert check_index(target) == []


def test_keep_missing_keeps_added_articles_through_a_full_build(built: tuple[Settings, Path], embedder: Any) -> None:
    settings, target = built
    added = _add_one(target, embedder, origin="api")
    report = sync_index(read_sources([CORPUS]), settings, embedder, rebuild=True, progress=False, keep_missing=True)
    assert (report.mode, report.kept) == ("full", 1)
    assert _article_row(target, added)[5] == "api"  # still known as written by the API
    assert check_index(target) == []


def test_an_article_the_sources_now_hold_is_theirs(built: tuple[Settings, Path], tmp_path: Path, embedder: Any) -> None:
    settings, target = built
    added = _add_one(target, embedder)
    index = open_index(target, embedder)
    try:
        record = index.store.article(index.store.aid_of(added) or 0)
    finally:
        index.close()
    both = write(
        tmp_path / "both.jsonl", [*rows(), {"id": added, "title": record.title, "paragraphs": list(record.paragraphs)}]
    )
    sync_index(read_sources([both]), settings, embedder, progress=False)
    assert _article_row(target, added)[5] is None
    warnings: list[str] = []
    sync_index(read_sources([CORPUS]), settings, embedder, progress=False, warn=warnings.append)
    assert warnings == []


def test_an_index_from_before_origins_gets_the_column_on_open(built: tuple[Settings, Path]) -> None:
    _, target = built
    with closing(sqlite3.connect(target / "newsdesk.sqlite")) as conn:
        conn.execute("ALTER TABLE articles DROP COLUMN origin")
        conn.commit()
    store = Store(target / "newsdesk.sqlite")
    try:
        origins = {o for _, o in store.article_metadata().values()}
    finally:
        store.close()
    assert origins == {None}
    assert check_index(target) == []
