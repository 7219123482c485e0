"""Story grouping: the rule against a brute-force oracle, incremental labels equal to batch ones, and the API."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from api.app import create_app
from search.errors import NotFound
from search.news.stories import Grouped, StoryConfig, assign_stories
from search.ranking.catalog import Filter
from search.service import SearchService


def _events(seed: int = 1, n: int = 80, dim: int = 16) -> tuple[list[str], np.ndarray, list[int | None]]:
    """Articles around a few events, each event on its own days; some undated."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim))
    event = rng.integers(6, size=n)
    vecs = centres[event] + 0.35 * rng.standard_normal((n, dim))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    days: list[int | None] = [int(e * 10 + rng.integers(0, 4)) for e in event]
    for i in range(0, n, 9):
        days[i] = None
    return [f"a{i:03d}" for i in range(n)], vecs, days


def _oracle(ids: list[str], vecs: np.ndarray, days: list[int | None], cfg: StoryConfig) -> list[str]:
    order = sorted(range(len(ids)), key=lambda i: (days[i] is None, days[i] or 0, ids[i]))
    labels: dict[int, str] = {}
    for pos, i in enumerate(order):
        best: tuple[float, str] | None = None
        for j in order[:pos]:
            s = float(vecs[i] @ vecs[j])
            near = days[i] is None or days[j] is None or abs(days[i] - days[j]) <= cfg.window_days  # type: ignore[operator]
            if s >= cfg.threshold and near and (best is None or s > best[0] or (s == best[0] and labels[j] < best[1])):
                best = (s, labels[j])
        labels[i] = best[1] if best else ids[i]
    return [labels[i] for i in range(len(ids))]


CFG = StoryConfig(threshold=0.75, window_days=3, neighbours=200)  # neighbours >= n: the search is exhaustive


def test_assignment_matches_the_brute_force_rule() -> None:
    ids, vecs, days = _events()
    got = assign_stories(ids, vecs, days, config=CFG)
    assert got == _oracle(ids, vecs, days, CFG)
    assert 3 < len(set(got)) < len(ids)  # the fixture really groups, and not everything into one


def test_labelling_in_two_steps_equals_labelling_at_once() -> None:
    ids, vecs, days = _events(seed=2)
    at_once = assign_stories(ids, vecs, days, config=CFG)
    order = sorted(range(len(ids)), key=lambda i: (days[i] is None, days[i] or 0, ids[i]))
    first, second = order[:50], order[50:]
    labels_first = assign_stories([ids[i] for i in first], vecs[first], [days[i] for i in first], config=CFG)
    keys = np.asarray(first, dtype=np.int64)

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = q @ vecs[first].T
        top = np.argsort(-sims, axis=1)[:, :k]
        return np.take_along_axis(sims, top, axis=1), keys[top]

    grouped = Grouped.of(keys, labels_first, [days[i] for i in first], search)
    labels_second = assign_stories([ids[i] for i in second], vecs[second], [days[i] for i in second], grouped, CFG)
    got = dict(zip(first + second, labels_first + labels_second, strict=True))
    assert [got[i] for i in range(len(ids))] == at_once


def test_time_separates_similar_articles() -> None:
    v = np.asarray([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    labels = assign_stories(["x", "y", "z"], v, [0, 2, 30], config=CFG)
    assert labels == ["x", "x", "z"]  # z says the same a month later: a new story


def test_every_indexed_article_has_a_story(wire_service: SearchService) -> None:
    catalog = wire_service.index.catalog
    assert catalog.labelled.all()
    story = wire_service.story(catalog.story_labels[0])
    dates = [a.date or "" for a in story.articles]
    assert dates == sorted(dates) and catalog.ids[0] in {a.id for a in story.articles}
    with pytest.raises(NotFound):
        wire_service.story("no-such-story")


def test_story_and_timeline_over_http(wire_service: SearchService) -> None:
    client: FlaskClient = create_app(service=wire_service).test_client()
    catalog = wire_service.index.catalog
    sizes: dict[str, int] = {}
    for label in catalog.story_labels:
        sizes[label] = sizes.get(label, 0) + 1
    big = max(sizes, key=lambda s: sizes[s])
    body = client.get(f"/api/stories/{big}").get_json()
    assert body["story_id"] == big and len(body["articles"]) == sizes[big] >= 2
    assert all(a["story_id"] == big for a in body["articles"])
    member = body["articles"][-1]["id"]
    line = client.get(f"/api/articles/{member}/timeline", query_string={"k": 10}).get_json()
    entries = line["entries"]
    assert [e["article"]["date"] for e in entries] == sorted(e["article"]["date"] for e in entries)
    assert [e["article"]["id"] for e in entries if e["is_self"]] == [member]
    assert {a["id"] for a in body["articles"]} <= {e["article"]["id"] for e in entries}  # the whole story is there
    assert all(e["same_story"] == (e["article"]["story_id"] == big) for e in entries)
    by_query = client.get("/api/timeline", query_string={"q": "wheat harvest", "k": 15, "category": "grain"})
    got: Any = by_query.get_json()
    assert len(got["entries"]) == 15 and got["query"] == "wheat harvest"
    assert [e["article"]["date"] for e in got["entries"]] == sorted(e["article"]["date"] for e in got["entries"])
    assert client.get("/api/stories/nope").status_code == 404


def test_more_like_this_options(wire_service: SearchService) -> None:
    catalog = wire_service.index.catalog
    article_id = catalog.ids[5]
    row = 5
    plain = wire_service.similar(article_id, k=10)
    assert plain.results
    no_story = wire_service.similar(article_id, k=10, exclude_story=True)
    assert all(r.article.story_id != catalog.story_labels[row] for r in no_story.results)
    no_source = wire_service.similar(article_id, k=10, exclude_source=True)
    assert all(r.article.source != catalog.source_name(row) for r in no_source.results)
    window = wire_service.similar(article_id, k=10, filters=Filter.parse("1987-02-01", "1987-02-28"))
    assert window.results and all("1987-02-01" <= (r.article.date or "") <= "1987-02-28" for r in window.results)
