"""The article vector is the embedding of headline + lead as one input (issue 18), on build and on every write.

Real bundled model, three short articles: what is checked is which text the stored vector embeds. The int8 model's
vector of a text depends a little on the texts quantised in its batch, so "the embedding of" is a cosine of at least
PROBE_MIN_COSINE (0.98) against that text embedded alone, where the mean of the passages scores below 0.97."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer.build import LEAD_TOKENS, build_index, lead_input, lead_limit
from indexer.sync import sync_index
from indexer.update import add_articles
from search.models import Article
from search.settings import Settings
from search.storage.index import check_index, open_index
from search.storage.manifest import MANIFEST
from search.text.embedding import PROBE_MIN_COSINE
from tests.test_sync import CountingEmbedder

ARTICLES = [
    Article(
        id="harbour",
        title="Harbour reopens after storm damage is repaired",
        paragraphs=(
            "The city harbour reopened on Monday after crews repaired the sea wall that the storm broke last month.",
            "Fishing boats returned within hours. The harbour master said trade would recover by the summer.",
            "Separately, the council approved a new cycling lane along the promenade and a budget for street lights.",
        ),
    ),
    Article(
        id="election",
        title="Opposition leader wins regional election",
        paragraphs=("Voters gave the opposition a clear majority in the regional assembly on Sunday.",),
    ),
    Article(id="chess", title="Teenager wins national chess title", paragraphs=()),
]
LATE = Article(
    id="cup",
    title="Underdogs lift the cup after a late winner",
    paragraphs=("A header in the final minute settled the match. Fans filled the square.", "The coach was moved."),
)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _lead_vector(embedder: Any, article: Article) -> np.ndarray:
    text = lead_input(article, lead_limit(embedder, Settings()), embedder.count_tokens)
    out: np.ndarray = embedder.encode([text])[0]
    return out


def test_lead_is_headline_and_the_opening_sentences_that_fit_the_window(embedder: Any) -> None:
    sentence = "The minister said the budget would fund new schools, hospitals and roads across the country."
    article = Article(id="long", title="Budget plans", paragraphs=(" ".join([sentence] * 20), sentence))
    limit = embedder.max_seq_length
    assert lead_limit(embedder, Settings()) == limit
    lead = lead_input(article, limit, embedder.count_tokens)
    assert lead.startswith("Budget plans\n" + sentence)
    assert 5 < lead.count(sentence) < 20 and embedder.count_tokens(lead) <= limit  # whole sentences, in the window
    assert embedder.count_tokens(lead + " " + sentence) > limit  # the next sentence would not have fit
    short = ARTICLES[1]
    assert lead_input(short, limit, embedder.count_tokens) == f"{short.title}\n{short.paragraphs[0]}"
    assert lead_input(ARTICLES[2], limit, embedder.count_tokens) == ARTICLES[2].title  # a headline alone
    first = "word " * 400 + "end."  # no sentence end within the window: its opening still counts
    assert lead_input(Article(id="x", title="", paragraphs=(first,)), limit, embedder.count_tokens) == first.strip()


def test_build_and_writes_store_the_headline_and_lead_embedding(tmp_path: Path, embedder: Any) -> None:
    target = tmp_path / "idx"
    settings = Settings(index_dir=target)
    build_index(ARTICLES, target, settings, embedder, progress=False)
    index = open_index(target, embedder)
    try:
        assert index.manifest["chunking"][LEAD_TOKENS] == embedder.max_seq_length
        harbour = index.store.aid_of("harbour")
        assert harbour is not None
        stored = index.store.article_vector(harbour)
        assert _cos(stored, _lead_vector(embedder, ARTICLES[0])) > PROBE_MIN_COSINE
        pids = [p.id for p in index.store.passages_of(harbour)]
        passages = np.stack(list(index.store.passage_vectors(pids).values()))
        assert _cos(stored, passages.mean(axis=0)) < 0.97  # not the mean of its passages, as before issue 18
        add_articles(index, [LATE], embedder, settings)
        cup = index.store.aid_of("cup")
        assert cup is not None
        assert _cos(index.store.article_vector(cup), _lead_vector(embedder, LATE)) > PROBE_MIN_COSINE
    finally:
        index.close()
    assert check_index(target) == []
    reopened = open_index(target, embedder)
    try:
        cup = reopened.store.aid_of("cup")
        assert cup is not None
        searched = reopened.articles.reconstruct_batch(np.asarray([cup], dtype=np.int64))[0]
        assert _cos(searched, _lead_vector(embedder, LATE)) > PROBE_MIN_COSINE  # the vector store's copy, reopened
    finally:
        reopened.close()


def test_an_edit_past_the_lead_reuses_the_stored_article_vector(tmp_path: Path, embedder: Any) -> None:
    sentence = "The minister said the budget would fund new schools, hospitals and roads across the country."
    vote = "The vote on the budget is expected on Friday, after a long debate in the parliament."
    long = Article(id="budget", title="Budget plans", paragraphs=(" ".join([sentence] * 14), vote))
    target = tmp_path / "idx"
    settings = Settings(index_dir=target)
    build_index([long, ARTICLES[1]], target, settings, embedder, progress=False)
    moved = "The vote on the budget was moved to Monday, after a long debate in the parliament."
    edited = Article(id="budget", title=long.title, paragraphs=(long.paragraphs[0], moved))
    lead = lead_input(edited, lead_limit(embedder, settings), embedder.count_tokens)
    assert lead == lead_input(long, lead_limit(embedder, settings), embedder.count_tokens)  # the edit is past it
    index = open_index(target, embedder)
    try:
        aid = index.store.aid_of("budget")
        assert aid is not None
        before = index.store.article_vector(aid)
        counting = CountingEmbedder(embedder)
        add_articles(index, [edited], counting, settings)
        assert counting.texts == [f"Budget plans\n{moved}"]  # the new paragraph alone, not the lead again
        aid = index.store.aid_of("budget")
        assert aid is not None
        np.testing.assert_array_equal(index.store.article_vector(aid), before)
    finally:
        index.close()


def test_an_index_with_mean_vectors_takes_writes_of_its_kind_and_is_upgraded_by_a_reindex(
    tmp_path: Path, embedder: Any
) -> None:
    target = tmp_path / "idx"
    settings = Settings(index_dir=target)
    build_index(ARTICLES, target, settings, embedder, progress=False)
    manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    del manifest["chunking"][LEAD_TOKENS]  # as an index built before issue 18 records its chunking
    (target / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    index = open_index(target, embedder)
    try:
        add_articles(index, [LATE], embedder, settings)  # accepted, not refused until a rebuild
        cup = index.store.aid_of("cup")
        assert cup is not None
        pids = [p.id for p in index.store.passages_of(cup)]
        passages = np.stack(list(index.store.passage_vectors(pids).values()))
        mean = passages.mean(axis=0) / np.linalg.norm(passages.mean(axis=0))
        # the index's own kind: the mean of the new article's passages, in the store and in the vector store
        np.testing.assert_allclose(index.store.article_vector(cup), mean, atol=1e-6)
        searched = index.articles.reconstruct_batch(np.asarray([cup], dtype=np.int64))[0]
        np.testing.assert_allclose(searched, mean, atol=1e-6)
        assert _cos(mean, _lead_vector(embedder, LATE)) < 0.97  # which is not its headline + lead vector
        assert LEAD_TOKENS not in index.manifest["chunking"]  # and the index still says so
    finally:
        index.close()
    assert check_index(target) == []
    report = sync_index([*ARTICLES, LATE], settings, embedder, progress=False)
    assert report.mode == "full" and "means of passage vectors" in report.reason
    rebuilt = open_index(target, embedder)
    try:
        assert LEAD_TOKENS in rebuilt.manifest["chunking"]
        cup = rebuilt.store.aid_of("cup")
        assert cup is not None
        assert _cos(rebuilt.store.article_vector(cup), _lead_vector(embedder, LATE)) > PROBE_MIN_COSINE
        add_articles(rebuilt, [replace(LATE, id="cup2")], embedder, settings)  # headline + lead from now on
        cup2 = rebuilt.store.aid_of("cup2")
        assert cup2 is not None
        assert _cos(rebuilt.store.article_vector(cup2), _lead_vector(embedder, LATE)) > PROBE_MIN_COSINE
    finally:
        rebuilt.close()
