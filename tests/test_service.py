"""The query side with the real model: ranking by meaning, grouping, paging, highlights, related, similar."""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search.errors import InvalidInput, NotFound
from search.ranking.catalog import Filter
from search.ranking.highlight import Highlighter
from search.ranking.paging import Cursor, fingerprint, index_key
from search.service import SearchService
from tests.conftest import BACKENDS, make_service, on_backend

# Every test here runs against both vector stores: FAISS in-process and Milvus (Milvus Lite in the index directory).


@pytest.fixture(params=BACKENDS)
def service(request: pytest.FixtureRequest, service: SearchService) -> SearchService:
    return on_backend(request, service)  # type: ignore[no-any-return]


@pytest.fixture(params=BACKENDS)
def sample_service(request: pytest.FixtureRequest, sample_service: SearchService) -> SearchService:
    return on_backend(request, sample_service)  # type: ignore[no-any-return]


@pytest.fixture(params=BACKENDS)
def wire_service(request: pytest.FixtureRequest, wire_service: SearchService) -> SearchService:
    return on_backend(request, wire_service)  # type: ignore[no-any-return]


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
    every = SearchService(service.index, service.embedder, replace(service.settings, match_floor=-1.0))  # all match
    response = every.search("inflation and interest rates", k=8, mode="dense")
    got = ids(response)
    assert len(got) == len(set(got)) == response.total == 7  # the exact copy of business/001 is shown once
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    for r in response.results:
        # an article scores as its best passage: the same up to float32 rounding (Milvus scores the article's best
        # passage on the server, the passages' scores are computed here; rounded to 6 places they can differ by 1e-6)
        assert r.score == r.scores.dense == pytest.approx(r.passages[0].score, abs=2e-6)
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
    store = service.index.sqlite
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
    # 8 articles are too few for shared-neighbour profiles (search/news/neighbours.py): the score is the cosine of
    # stored article vectors
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
        assert 1 <= len(res.articles) <= 3  # only articles that match: "derby" and "flooded" are rare
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


def test_service_pins_numpy_blas_to_the_search_threads(corpus_index: Path, embedder: Any) -> None:
    """OpenBLAS's idle workers spin: a query's small products must not take the cores other requests need."""
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):  # whatever the process had, the service sets its own
        make_service(corpus_index, embedder, search_threads=1)
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas, "numpy should report its BLAS library"
        assert all(p["num_threads"] == 1 for p in blas)


# -- filters, facets, cursors and per-source caps on 600 wire stories (hashing embedder) ----------------------------


def _article_rows(svc: SearchService) -> dict[str, tuple[str, str, str]]:
    rows = svc.index.sqlite.connection().execute("SELECT id, date, source, tags FROM articles").fetchall()
    return {i: (d, s, t) for i, d, s, t in rows}


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_filtered_search_returns_only_matching_articles_and_full_pages(wire_service: SearchService, mode: str) -> None:
    rows = _article_rows(wire_service)
    flt = Filter.parse("1987-03-01", "1987-07-31", tags=["crude"])
    r = wire_service.search("oil prices opec output", k=25, mode=mode, filters=flt)
    matching = [i for i, (d, _, t) in rows.items() if "1987-03-01" <= d <= "1987-07-31" and '"crude"' in t]
    assert len(matching) >= 25  # enough matches exist, so the page must be full
    assert len(r.results) == 25
    assert {res.article.id for res in r.results} <= set(matching)
    assert r.total <= len(matching)
    other = wire_service.search("oil prices opec output", k=5, mode=mode, filters=Filter.parse(sources=["Nowhere"]))
    assert other.results == [] and other.total == 0


def test_filters_narrow_but_keep_the_order_of_the_unfiltered_ranking(wire_service: SearchService) -> None:
    flt = Filter.parse(sources=["AP"])
    unfiltered = wire_service.search("dollar yen currency", k=100, mode="dense")
    filtered = wire_service.search("dollar yen currency", k=10, mode="dense", filters=flt)
    ap = [r.article.id for r in unfiltered.results if r.article.source == "AP"]
    assert [r.article.id for r in filtered.results] == ap[:10]


def test_facets_count_the_ranked_candidates(wire_service: SearchService) -> None:
    r = wire_service.search("wheat harvest", k=5, facets=True)
    assert r.facets is not None
    assert sum(f.count for f in r.facets["source"]) == r.total
    assert sum(f.count for f in r.facets["month"]) == r.total
    assert r.facets["category"][0].value == "grain"
    assert wire_service.search("wheat harvest", k=5).facets is None


def test_a_cursor_walk_returns_each_result_once_in_the_deep_ranking_order(wire_service: SearchService) -> None:
    query, seen, pages = "profit shares dividend report", [], 0
    cursor: str | None = "*"
    while cursor is not None:
        page = wire_service.search(query, k=50, cursor=cursor)
        seen += [r.article.id for r in page.results]
        cursor, pages = page.next_cursor, pages + 1
        assert pages <= 20
    assert len(seen) == len(set(seen)) >= 500
    qvec = wire_service.embed_query(query)
    deep = wire_service.rank_articles(query, qvec, wire_service.settings.cursor_depth, "hybrid")
    refs = wire_service.index.store.article_refs(a for a, _ in deep.items)
    assert seen == [refs[a].id for a, _ in deep.items]


def test_cursor_misuse_is_refused(wire_service: SearchService) -> None:
    first = wire_service.search("tanker freight", k=10, cursor="*")
    assert first.next_cursor
    with pytest.raises(InvalidInput, match="another query"):
        wire_service.search("tanker cargo", k=10, cursor=first.next_cursor)
    with pytest.raises(InvalidInput, match="another query"):
        wire_service.search("tanker freight", k=20, cursor=first.next_cursor)
    with pytest.raises(InvalidInput, match="either offset or cursor"):
        wire_service.search("tanker freight", k=10, offset=10, cursor=first.next_cursor)


def _forge(token: str, **change: int) -> str:
    """``token`` with fields of its readable payload changed (``[version, offset, depth, generation, fp]``), its
    signature (if any) kept: what a client can do with a cursor it was given."""
    body, dot, mac = token.partition(".")
    fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    for name, value in change.items():
        fields[{"offset": 1, "depth": 2, "generation": 3}[name]] = value
    raw = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode()).decode().rstrip("=")
    return raw + dot + mac


def test_forged_cursors_are_refused_and_depth_is_bounded(wire_service: SearchService) -> None:
    """The generation is public and the fingerprint an unkeyed hash: a client could rewrite a cursor's depth to a
    million and make one request rank the whole corpus. A cursor must be one this index signed, and no deeper than
    ``cursor_depth`` even then."""
    query = "tanker freight"
    first = wire_service.search(query, k=10, cursor="*")
    assert first.next_cursor
    generation = wire_service.index.store.generation()
    for forged in (
        _forge(first.next_cursor, depth=10**6),
        _forge(first.next_cursor, offset=500),
        _forge(first.next_cursor, generation=generation + 1),
        first.next_cursor[:-2] + ("AA" if first.next_cursor[-2:] != "AA" else "BB"),
    ):
        with pytest.raises(InvalidInput, match="not one this server made"):
            wire_service.search(query, k=10, cursor=forged)
    # signed with this index's key (as a server with a larger cursor_depth would have made it): still bounded
    key = index_key(wire_service.index.manifest, wire_service.index.store)
    mark = fingerprint(query, wire_service.settings.mode, None, 10, None)
    deep = Cursor(10, 10**6, generation, mark).encode(key)
    with pytest.raises(InvalidInput, match="cursor_depth"):
        wire_service.search(query, k=10, cursor=deep)
    mid_page = Cursor(15, wire_service.settings.cursor_depth, generation, mark).encode(key)
    with pytest.raises(InvalidInput, match="does not start a page"):
        wire_service.search(query, k=10, cursor=mid_page)
    second = wire_service.search(query, k=10, cursor=first.next_cursor)  # the real one still pages
    assert len(second.results) == 10


def test_max_per_source_caps_every_page_and_loses_nothing(wire_service: SearchService) -> None:
    plain = wire_service.search("crude oil barrels", k=100, mode="dense")
    seen: list[str] = []
    for offset in (0, 10, 20):
        page = wire_service.search("crude oil barrels", k=10, offset=offset, mode="dense", max_per_source=3)
        assert len(page.results) == 10
        counts = Counter(r.article.source for r in page.results)
        assert max(counts.values()) <= 3
        seen += [r.article.id for r in page.results]
    assert len(seen) == len(set(seen))
    assert seen[0] == plain.results[0].article.id  # the best result still leads
    with pytest.raises(InvalidInput, match="multiple of k"):
        wire_service.search("crude oil barrels", k=10, offset=5, max_per_source=3)


def test_the_batch_k_limit_is_a_setting(corpus_index: Path, embedder) -> None:
    """Batch runs are bounded by ``max_batch_k`` (a literal 1000 before); the CLI checks it before the model loads."""
    svc = make_service(corpus_index, embedder, max_batch_k=3)
    assert len(svc.batch_search(["interest rates"], 3)[0].articles) <= 3
    with pytest.raises(InvalidInput, match="between 1 and 3 for batch runs"):
        svc.batch_search(["interest rates"], 4)
