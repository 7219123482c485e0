"""bench/mlt_transfer.py: the labelled sets, the scoring and the choice rule that keeps a more-like-this method."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from bench.mlt import BbcArticle, second_order
from bench.mlt_transfer import (
    SHORT_WORDS,
    LabelledSet,
    keep,
    precision,
    profiles,
    reuters_set,
    short_item,
    short_set,
    transfer,
)

Row = dict[str, object]


def test_precision_counts_a_shared_label_and_drops_the_query_and_its_copies() -> None:
    labels = {
        "q": frozenset({"grain", "wheat"}),
        "a": frozenset({"wheat"}),
        "b": frozenset({"crude"}),
        "c": frozenset({"grain"}),
        "d": frozenset({"grain", "corn"}),
    }
    assert precision(["q", "a", "b", "c"], "q", (), labels, 2) == 0.5  # a shares wheat, b shares nothing
    assert precision(["a", "b", "c", "d"], "q", ("a",), labels, 2) == 0.5  # a is a copy: b, c are scored
    assert precision(["b"], "q", (), labels, 2) == 0.0  # a missing place is a miss


def test_keep_needs_the_margin_on_every_set() -> None:
    results = {
        "whole_article_cosine": {"bbc": 0.93, "reuters": 0.80},
        "both": {"bbc": 0.96, "reuters": 0.82},
        "one_set_only": {"bbc": 0.99, "reuters": 0.81},
        "just_short": {"bbc": 0.949, "reuters": 0.9},
    }
    assert keep(results, "whole_article_cosine") == {
        "whole_article_cosine": False,
        "both": True,
        "one_set_only": False,
        "just_short": False,
    }


def test_transfer_scores_each_set_with_the_parameter_chosen_on_the_other() -> None:
    scores = {"bbc": [0.90, 0.95, 0.93], "reuters": [0.85, 0.80, 0.84]}
    moved = transfer(scores, ["p0", "p1", "p2"], ["bbc", "reuters"])
    assert moved["bbc"] == {"param": "p0", "tuned_on": ["reuters"], "precision@5": 0.90}  # not its own best (p1)
    assert moved["reuters"] == {"param": "p1", "tuned_on": ["bbc"], "precision@5": 0.80}


def test_profiles_equal_the_dense_second_order_similarity() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=(40, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sim = v @ v.T
    np.testing.assert_allclose(profiles(sim, 6, block=7), second_order(sim, 6), atol=1e-5)


def test_reuters_set_keeps_norm_stories_with_topics_and_body(tmp_path: Path) -> None:
    def row(aid: str, title: str, body: list[str], topics: list[str], kind: str = "NORM", **more: object) -> Row:
        return {"id": aid, "title": title, "paragraphs": body, "topics": topics, "text_type": kind, **more}

    rows = [
        row("1", "Wheat up", ["Wheat rose."], ["grain", "wheat"]),
        row("2", "Wheat up again", ["Wheat rose."], ["grain"]),
        row("3", "Oil", ["Oil fell."], []),
        row("4", "BRIEF ONLY", [], ["acq"], "BRIEF"),
        row("5", "Raw", ["x"], ["acq"], "UNPROC"),
        row("6", "Blank", [" "], ["acq"], date=None),
        row("7", "Gold", ["Gold rose."], ["gold"], date="1987-03-01"),
    ]
    path = tmp_path / "articles.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    got = reuters_set(tmp_path)
    assert [a.id for a in got.articles] == ["1", "2", "7"]
    assert got.labels["1"] == {"grain", "wheat"} and got.dates == {"7": "1987-03-01"}
    assert got.groups["1"] == got.groups["2"] == {"1", "2"}  # the same body: exact duplicates, excluded as such
    assert got.excluded == {"no topic": 1, "text_type BRIEF": 1, "text_type UNPROC": 1, "empty body": 1}


def test_a_short_item_is_the_headline_and_the_opening_words_of_the_first_paragraph() -> None:
    long = BbcArticle("a", "business", "Rates rise", ("one two three four five six", "a second paragraph"))
    assert short_item(long, words=4) == BbcArticle("a", "business", "Rates rise", ("one two three four",))
    assert short_item(long, words=40).paragraphs == ("one two three four five six",)  # the first paragraph only
    assert short_item(BbcArticle("b", "tech", "Headline only", ()), words=4).paragraphs == ()


def test_short_set_keeps_labels_and_listed_copies_and_merges_items_that_came_out_equal() -> None:
    opening = " ".join(f"w{i}" for i in range(SHORT_WORDS))
    articles = [
        BbcArticle("a", "business", "Rates rise", (opening + " and then the bank said more",)),
        BbcArticle("c", "business", "Rates rise", (opening + " but the markets fell",)),  # equal once short
        BbcArticle("d", "business", "Copy", ("x",)),
        BbcArticle("e", "business", "Other", ("y",)),
    ]
    labels = {a.id: frozenset({"business"}) for a in articles}
    listed = {"a": frozenset({"a", "d"}), "c": frozenset({"c"}), "d": frozenset({"a", "d"}), "e": frozenset({"e"})}
    short = short_set(LabelledSet("bbc", articles, labels, {}, listed, {}))
    assert short.name == "bbc-short" and short.labels == labels
    assert short.articles[0].paragraphs == (opening,)
    assert short.groups["a"] == short.groups["c"] == short.groups["d"] == frozenset({"a", "c", "d"})
    assert short.groups["e"] == frozenset({"e"})
