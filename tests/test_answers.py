"""Answer ranking (search/ranking/answers.py, search/ranking/feedback.py): the fusion of signals by weighted
reciprocal rank, the date signal, RM3's expanded query, and the service ranking passages with them."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from api.app import create_app
from indexer.build import build_index
from indexer.sources import read_sources
from search.errors import InvalidInput
from search.ranking.answers import FUTURE_SLACK_DAYS, AnswerRanking, date_closeness, tied_ranks
from search.ranking.catalog import parse_day
from search.ranking.feedback import content_terms, rm3_terms
from search.ranking.fusion import Fusion
from search.service import SearchService
from search.settings import Settings
from search.storage.index import open_index
from search.text.embedding import Embedder


def test_tied_values_share_the_best_rank_and_nan_has_none() -> None:
    ranks = tied_ranks(np.array([0.2, 0.9, np.nan, 0.2, 0.5]))
    assert ranks.tolist() == [3, 1, 0, 3, 2]
    assert tied_ranks(np.array([])).tolist() == []
    assert tied_ranks(np.array([np.nan])).tolist() == [0]


def test_two_signals_weighted_one_fuse_as_rrf_does() -> None:
    dense = {"a": 0.9, "b": 0.5, "c": 0.1}
    lexical = {"a": 0.0, "b": 3.0, "c": 1.0}
    keys = list(dense)
    fused = AnswerRanking((("dense", 1.0), ("lexical", 1.0)), k=60).fuse(
        {"dense": np.array([dense[x] for x in keys]), "lexical": np.array([lexical[x] for x in keys])}
    )
    rrf = Fusion("rrf", rrf_k=60).fuse(dense, lexical)
    assert fused.tolist() == pytest.approx([rrf[x] for x in keys])


def test_weights_scale_each_signal_and_nan_adds_nothing() -> None:
    ranking = AnswerRanking((("dense", 2.0), ("date", 0.5)), k=10)
    fused = ranking.fuse({"dense": np.array([1.0, 0.5]), "date": np.array([np.nan, 3.0])})
    assert fused.tolist() == pytest.approx([2.0 / 11, 2.0 / 12 + 0.5 / 11])


def test_parse_names_and_weights_and_refuses_bad_ones() -> None:
    ranking = AnswerRanking.parse(" dense, sentence:0.5 ,date:2", k=30)
    assert ranking is not None and ranking.weights == (("dense", 1.0), ("sentence", 0.5), ("date", 2.0))
    assert ranking.k == 30 and ranking.names == ("dense", "sentence", "date")
    assert AnswerRanking.parse("") is None and AnswerRanking.parse(" , ") is None
    for bad in ("dense,colour", "dense:x", "dense:0", "dense:-1", "dense,dense", "dense:inf"):
        with pytest.raises(InvalidInput):
            AnswerRanking.parse(bad)
    with pytest.raises(InvalidInput):
        AnswerRanking((("dense", 1.0),), k=0)


def test_date_closeness_prefers_the_days_just_before_the_question() -> None:
    as_of = 1000
    days = np.array([999.0, 990.0, 1000.0, 1000.0 + FUTURE_SLACK_DAYS, 1005.0, 1030.0, np.nan, 600.0])
    ranks = tied_ranks(date_closeness(days, as_of))
    # the question's own day and the slack after it tie first; then 1 day before, 10 days, 400 days before;
    # then every article dated after the question, the later the lower; undated: no rank
    assert ranks.tolist() == [3, 4, 1, 1, 6, 7, 0, 5]
    assert np.isnan(date_closeness(days, None)).all()


def test_rm3_weights_feedback_terms_by_retrieval_score_and_keeps_the_query() -> None:
    feedback = [({"ukrain": 3, "kyiv": 1}, 2.0), ({"ukrain": 1, "war": 1}, 1.0), ({"zero": 5}, 0.0)]
    out = rm3_terms(feedback, {"capit": 2.0}, terms=2, original_weight=0.5)
    assert math.isclose(sum(out.values()), 1.0)
    assert out["capit"] == pytest.approx(0.5)
    # P(w|R): ukrain 3/4 * 2/3 + 1/2 * 1/3 = 2/3; kyiv 1/4 * 2/3 = 1/6, war 1/2 * 1/3 = 1/6 (tie: alphabetical)
    assert set(out) == {"capit", "ukrain", "kyiv"}
    assert out["ukrain"] == pytest.approx(0.5 * (2 / 3) / (2 / 3 + 1 / 6))
    assert "zero" not in out  # a passage retrieved with score 0 tells nothing
    assert rm3_terms([], {"capit": 1.0}) == {"capit": 1.0}
    assert rm3_terms([], {}) == {}


def test_content_terms_are_stemmed_as_the_postings_and_drop_stopwords() -> None:
    terms = content_terms("The ministers were meeting in the capital, ministers said.")
    assert "the" not in terms and "were" not in terms
    assert terms["minist"] == 2 and "capit" in terms


# -- the service ranking passages as answers, on a small index built with the bundled model ------------------------

STORMS = [
    {
        "id": "storm-2023",
        "title": "Storm Ada reaches Portugal",
        "date": "2023-01-03",
        "paragraphs": [
            "Storm Ada reached the coast of Portugal on Monday, bringing winds of 120 km/h to Lisbon. "
            "Schools in the capital were closed. Ferries stayed in port.",
            "The weather service said the storm would move north to Spain by Wednesday.",
        ],
    },
    {
        "id": "storm-2021",
        "title": "Storm Bruno reaches Portugal",
        "date": "2021-01-04",
        "paragraphs": [
            "Storm Bruno reached the coast of Portugal on Monday, bringing winds of 110 km/h to Lisbon. "
            "Schools in the capital were closed. Ferries stayed in port.",
            "The weather service said the storm would move north to Spain by Wednesday.",
        ],
    },
    {
        "id": "storm-2024",
        "title": "Storm Ciro reaches Portugal",
        "date": "2024-02-01",
        "paragraphs": [
            "Storm Ciro reached the coast of Portugal on Monday, bringing winds of 100 km/h to Lisbon. "
            "Schools in the capital were closed. Ferries stayed in port.",
        ],
    },
    {
        "id": "kyiv",
        "title": "Drones strike Kyiv overnight",
        "date": "2023-01-02",
        "paragraphs": [
            "Drones struck Kyiv overnight, the Ukrainian capital's mayor said, hitting power stations in Kyiv.",
            "Kyiv residents sheltered in metro stations as air raid sirens sounded across Kyiv.",
            "Officials in Kyiv said repairs to the damaged power grid would take several days.",
        ],
    },
]


@pytest.fixture(scope="module")
def storms(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> SearchService:
    source = tmp_path_factory.mktemp("answers") / "storms.jsonl"
    source.write_text("".join(json.dumps(a) + "\n" for a in STORMS), encoding="utf-8")
    target = source.parent / "index"
    build_index(read_sources([source]), target, Settings(index_dir=target), embedder, progress=False)
    return SearchService(open_index(target, embedder), embedder, Settings(index_dir=target))


def ranked(service: SearchService, query: str, signals: str, as_of: str | None = None) -> list[str]:
    svc = SearchService(service.index, service.embedder, replace(service.settings, answer_signals=signals))
    day = None if as_of is None else parse_day(as_of, "as_of")
    return [sp.passage.article_id for sp, _ in svc.rank_passages(query, svc.embed_query(query), 3, "hybrid", as_of=day)]


def test_a_dated_question_is_answered_from_the_articles_just_before_it(storms: SearchService) -> None:
    query = "Which storm reached the coast of Portugal?"
    # three near-identical stories a year apart: the question's date picks the one it asks about
    assert ranked(storms, query, "dense,lexical,date", "2023-01-05")[0] == "storm-2023"
    assert ranked(storms, query, "dense,lexical,date", "2021-01-06")[0] == "storm-2021"
    # an article dated after the question is not what it asks about, however close
    assert ranked(storms, query, "dense,lexical,date", "2024-01-20")[0] == "storm-2023"
    # undated, the signal says nothing: the order is the other signals' alone
    assert ranked(storms, query, "dense,lexical,date") == ranked(storms, query, "dense,lexical")


def test_signals_are_computed_from_what_the_index_stores(storms: SearchService) -> None:
    query = "How strong were the winds in Lisbon?"
    qvec = storms.embed_query(query)
    pids = [int(p) for p in storms.index.owners.passages_of(storms.index.catalog.aids.tolist())[1]]
    dense = dict(zip(pids, (storms.index.passages.reconstruct_batch(np.asarray(pids)) @ qvec).tolist(), strict=True))
    lexical = dict.fromkeys(pids, 0.0) | storms.lexical.score_passages(query, pids)
    names = ("dense", "lexical", "sentence", "article", "headline", "date")
    signals = storms.answer_signals(query, qvec, pids, dense, lexical, names, as_of=parse_day("2023-01-05", "d"))
    stored = storms.index.store.sentence_vectors(pids)
    owners = storms.index.owners.articles_of(np.asarray(pids))
    article_bm25 = storms.lexical.score_articles(query, sorted(set(owners.tolist())))
    refs = storms.index.store.article_refs(owners.tolist())
    headlines = {
        a: float(storms.index.store.passage_vectors([p])[p] @ qvec)
        for a in set(owners.tolist())
        for p in [min(q.id for q in storms.index.store.passages_of(a))]
    }
    for i, pid in enumerate(pids):
        assert signals["dense"][i] == dense[pid] and signals["lexical"][i] == lexical[pid]
        # a passage of several sentences scores as its best sentence; one of a single sentence as itself
        best = float(np.max(stored[pid][1] @ qvec)) if pid in stored else dense[pid]
        assert signals["sentence"][i] == pytest.approx(best)
        assert signals["article"][i] == pytest.approx(article_bm25.get(int(owners[i]), 0.0))
        assert signals["headline"][i] == pytest.approx(headlines[int(owners[i])], abs=1e-5)
        gap = parse_day("2023-01-05", "d") - parse_day(refs[int(owners[i])].date or "", "d")
        assert signals["date"][i] == (-max(gap, 0) if gap >= -FUTURE_SLACK_DAYS else gap - 1e6)
    assert any(pid in stored for pid in pids)  # the multi-sentence passages have their sentence vectors
    assert all(storms.index.store.passages_of(a)[0].field == "title" for a in headlines)


def test_rm3_expansion_reaches_a_passage_that_shares_no_query_word(storms: SearchService) -> None:
    query = "overnight drones Ukrainian capital mayor"
    qvec = storms.embed_query(query)
    pids = [int(p) for p in storms.index.owners.passages_of(storms.index.catalog.aids.tolist())[1]]
    texts = storms.index.store.passages(pids)
    silent = [p for p in pids if texts[p].passage.text.startswith("Officials in Kyiv")]
    assert len(silent) == 1 and not storms.lexical.score_passages(query, silent)
    dense = dict.fromkeys(pids, 0.0)
    lexical = dict.fromkeys(pids, 0.0) | storms.lexical.score_passages(query, pids)
    signals = storms.answer_signals(query, qvec, pids, dense, lexical, ("expanded",))
    # the feedback passages repeat "Kyiv": the expanded query finds the passage the question's words do not
    assert signals["expanded"][pids.index(silent[0])] > 0
    assert all(signals["expanded"][i] > 0 for i, p in enumerate(pids) if lexical[p] > 0)


def test_the_setting_is_validated() -> None:
    with pytest.raises(InvalidInput):
        Settings(answer_signals="dense,bogus").validated()
    with pytest.raises(InvalidInput):
        Settings(answer_signals="dense:0").validated()
    assert Settings(answer_signals="").validated().answer_signals == ""


def test_the_api_ranks_answers_as_of_a_date(storms: SearchService) -> None:
    svc = SearchService(storms.index, storms.embedder, replace(storms.settings, answer_signals="dense,lexical,date"))
    client = create_app(service=svc).test_client()
    got = client.get("/api/answers", query_string={"q": "Which storm reached Portugal?", "as_of": "2021-01-06"})
    assert got.status_code == 200
    body = got.get_json()
    assert body["as_of"] == "2021-01-06" and body["mode"] == "hybrid" and len(body["passages"]) == 5
    assert body["passages"][0]["article_id"] == "storm-2021"
    later = client.get("/api/answers", query_string={"q": "Which storm reached Portugal?", "as_of": "2023-01-05"})
    assert later.get_json()["passages"][0]["article_id"] == "storm-2023"
    for bad in ({"q": "storm", "as_of": "last week"}, {"q": "storm", "k": "0"}, {"as_of": "2023-01-05"}):
        refused = client.get("/api/answers", query_string=bad)
        assert refused.status_code == 400 and set(refused.get_json()["error"]) == {"code", "message"}
