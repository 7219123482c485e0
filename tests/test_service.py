"""The query side with the real model: ranking by meaning, grouping, paging, highlights, related, similar."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from search.errors import InvalidInput, NotFound
from search.highlight import Highlighter
from search.service import SearchService


def ids(response) -> list[str]:
    return [r.article.id for r in response.results]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("why did the central bank increase borrowing costs", {"business/001", "copy-of-business-001"}),
        ("football derby goals", {"sport/001"}),
        ("cheaper batteries for electric vehicles", {"https://example.org/news/tech?id=7&lang=en"}),
        ("residents evacuated after flooding", {"/leading slash & ünïcode id"}),
    ],
)
def test_ranks_by_meaning(service: SearchService, query: str, expected: set[str]) -> None:
    assert ids(service.search(query, k=3))[0] in expected


def test_results_are_grouped_articles_with_sorted_scores(service: SearchService) -> None:
    response = service.search("inflation and interest rates", k=8, mode="dense")
    got = ids(response)
    assert len(got) == len(set(got)) == response.total == 8
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    for r in response.results:
        assert r.score == r.passages[0].score == r.scores.dense  # an article scores as its best passage
        assert [p.score for p in r.passages] == sorted((p.score for p in r.passages), reverse=True)
        assert len(r.passages) <= service.settings.passages_per_result


def test_paging_matches_a_longer_first_page(service: SearchService) -> None:
    full = ids(service.search("news about money", k=6))
    assert ids(service.search("news about money", k=2, offset=2)) == full[2:4]
    assert service.search("news about money", k=5, offset=7).results == [] or len(full) < 8


def test_highlight_is_a_sentence_of_the_passage(service: SearchService) -> None:
    response = service.search("how high did inflation get in February", k=1, mode="dense")
    passage = response.results[0].passages[0]
    h = passage.highlight
    assert 0 <= h.start < h.end <= len(passage.text)
    assert passage.text[h.start : h.end] == (
        "Officials said inflation, which reached 7 percent in February, remained far above the bank's 2 percent target."
    )


def test_highlighter_picks_the_sentence_closest_to_the_query(embedder) -> None:
    text = "The weather was mild. The striker scored a late winning goal. Tickets sold out in an hour."
    query = embedder.encode(["who scored the goal"])[0]
    (h,) = Highlighter(embedder).locate(query, [(1, text)])
    assert text[h.start : h.end] == "The striker scored a late winning goal."
    single = Highlighter(embedder).locate(query, [(2, "  One sentence only  ")])[0]
    assert (single.start, single.end) == (2, 19)


class Recording:
    """The real model, recording every text it embeds."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.texts += texts
        return self.inner.encode(texts)  # type: ignore[no-any-return]


def test_highlights_come_from_stored_sentence_vectors(service: SearchService, embedder) -> None:
    """Sentence vectors made at index time mark the answering sentence without a model call; an index without
    them (built before they existed) embeds the sentences instead, and both pick the same sentence."""
    store = service.index.store
    pid = next(
        pid
        for pid, spans in store.connection().execute("SELECT pid, spans FROM sentences")
        if "7 percent in February" in store.passages([pid])[pid].passage.text
    )
    spans, vecs = store.sentence_vectors([pid])[pid]
    assert len(spans) == vecs.shape[0] >= 2 and vecs.shape[1] == embedder.dimension
    text = store.passages([pid])[pid].passage.text
    query = embedder.encode(["how high did inflation get in February"])[0]
    recording = Recording(embedder)
    (stored,) = Highlighter(recording, store.sentence_vectors).locate(query, [(pid, text)])  # type: ignore[arg-type]
    assert recording.texts == []
    (embedded,) = Highlighter(recording, lambda pids: {}).locate(query, [(pid, text)])  # type: ignore[arg-type]
    assert recording.texts == [text[a:b] for a, b in spans]
    assert stored == embedded
    assert text[stored.start : stored.end].startswith("Officials said inflation, which reached 7 percent")
    # a late-chunked vector of a full sentence lies close to that sentence embedded on its own (a three-word byline
    # does not: in context it means more than alone)
    full = [i for i, (a, b) in enumerate(spans) if len(text[a:b].split()) >= 6]
    alone = embedder.encode([text[spans[i][0] : spans[i][1]] for i in full])
    assert len(full) >= 2 and float(np.min(np.sum(alone * vecs[full], axis=1))) > 0.6


def test_related_excludes_self_and_exact_duplicates(service: SearchService) -> None:
    response = service.search("central bank raises rates", k=3)
    for r in response.results:
        rel = [x.id for x in r.related]
        assert r.article.id not in rel
        if r.article.id in ("business/001", "copy-of-business-001"):
            assert not {"business/001", "copy-of-business-001"} & set(rel)
            assert rel[0] == "business/003"  # the other rates story is the nearest non-duplicate
        assert [x.score for x in r.related] == sorted((x.score for x in r.related), reverse=True)


def test_similar_uses_stored_vectors_and_excludes_duplicates(service: SearchService) -> None:
    response = service.similar("business/001", k=7)
    got = [r.article.id for r in response.results]
    assert response.article.id == "business/001"
    assert "business/001" not in got and "copy-of-business-001" not in got
    assert got[0] == "business/003"
    assert len(got) == 6  # 8 articles less itself and its duplicate
    # the score is the cosine of stored article vectors
    store = service.index.store
    a, b = store.aid_of("business/001"), store.aid_of("business/003")
    assert a is not None and b is not None
    assert response.results[0].score == pytest.approx(
        float(store.article_vector(a) @ store.article_vector(b)), abs=1e-5
    )


def test_sample_acceptance_queries(sample_service: SearchService) -> None:
    response = sample_service.search("why is NK accusing the US", k=5)
    top = response.results[0]
    assert top.article.id == "north-korea-accuses-us-asia-style-nato"
    p = top.passages[0]
    sentence = p.text[p.highlight.start : p.highlight.end]
    assert "NATO" in sentence or "hostility" in sentence
    honduras = "headline/honduras-election-turmoil-intensifies-as-nasralla-blames-trump-for-shift-in-results"
    similar = sample_service.similar(honduras, k=3)
    assert similar.results[0].article.title == (
        "Honduras Election Turmoil Deepens as Nasralla Alleges Fraud in Tight Presidential Race"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query": ""}, "empty"),
        ({"query": " \t\n"}, "empty"),
        ({"query": "x" * 1001}, "limit"),
        ({"query": "a\x00b"}, "NUL"),
        ({"query": "ok", "k": 0}, "between"),
        ({"query": "ok", "k": 101}, "between"),
        ({"query": "ok", "offset": -1}, "offset"),
    ],
)
def test_invalid_search_input(service: SearchService, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        service.search(**kwargs)  # type: ignore[arg-type]


def test_longest_query_accepted_and_unknown_ids(service: SearchService) -> None:
    assert service.search("rain " * 200, k=1).results
    with pytest.raises(NotFound):
        service.article("no-such-id")
    with pytest.raises(NotFound):
        service.similar("no-such-id")


def test_query_embedding_is_cached(service: SearchService, monkeypatch: pytest.MonkeyPatch) -> None:
    service.search("a query to cache", k=1)
    calls: list[list[str]] = []
    original = service.embedder.encode

    def spy(texts: list[str], **kw: object) -> np.ndarray:
        calls.append(texts)
        return original(texts)

    monkeypatch.setattr(service.embedder, "encode", spy)
    service.search("a query to cache", k=1)
    assert ["a query to cache"] not in calls


def test_batch_search_ranks_articles_and_passages(service: SearchService) -> None:
    results = service.batch_search(["football derby", "flooded villages"], k=3)
    assert results[0].articles[0][0] == "sport/001"
    assert results[1].articles[0][0] == "/leading slash & ünïcode id"
    for res in results:
        assert len(res.articles) == 3
        assert [s for _, s in res.articles] == sorted((s for _, s in res.articles), reverse=True)
        assert [p.score for p in res.passages] == sorted((p.score for p in res.passages), reverse=True)
        assert res.passages[0].article_id == res.articles[0][0]


def test_health(service: SearchService) -> None:
    h = service.health()
    assert h["status"] == "ok" and h["articles"] == 8 and h["newest_date"] == "2024-04-11"
    assert h["model"] == "all-MiniLM-L6-v2"


def test_concurrent_searches_from_many_threads(service: SearchService) -> None:
    """The WSGI server answers on several threads: shared model, per-thread SQLite, one FAISS index."""
    from concurrent.futures import ThreadPoolExecutor

    queries = [f"{topic} {i}" for i in range(6) for topic in ("rain floods", "bank rates", "football", "batteries")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda q: service.search(q, k=2), queries))
    assert all(r.results for r in results)
    assert {ids(r)[0] for r, q in zip(results, queries, strict=True) if q.startswith("football")} == {"sport/001"}


def test_copies_of_one_story_are_listed_once(service: SearchService) -> None:
    got = [r.article.id for r in service.similar("business/003", k=10).results]
    assert len({"business/001", "copy-of-business-001"} & set(got)) == 1
    assert got[0] in {"business/001", "copy-of-business-001"}


def test_to_plain_serializes_like_asdict(service: SearchService) -> None:
    import dataclasses

    from search.models import to_plain

    response = service.search("central bank interest rates", k=3)
    assert to_plain(response) == dataclasses.asdict(response)
    similar = service.similar("business/001", k=2)
    assert to_plain(similar) == dataclasses.asdict(similar)


def test_service_pins_numpy_blas_to_the_search_threads(service: SearchService) -> None:
    """OpenBLAS's idle workers spin: a query's small products must not take the cores other requests need."""
    from threadpoolctl import threadpool_info

    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas, "numpy should report its BLAS library"
    assert all(p["num_threads"] == service.settings.search_threads for p in blas)
