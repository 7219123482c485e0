"""Freshness (search/ranking/recency.py): ``recency=HALF_LIFE`` and ``as_of`` on search in the API, CLI and page."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from api.app import create_app
from api.cli import main
from indexer.build import build_index
from search.models import Article, Scores
from search.ranking.recency import Recency, decayed
from search.service import SearchService
from search.settings import Settings
from search.text.embedding import Embedder
from tests.conftest import assert_error, make_service

QUERY = "floods hit the valley"
OLD = Article(
    id="old",
    title="Floods hit the valley",
    paragraphs=("Heavy rain caused the river to burst its banks, flooding hundreds of homes in the valley.",),
    date="2024-01-10",
    source="Valley News",
)
NEW = Article(
    id="new",
    title="Valley flooding: river bursts its banks again",
    paragraphs=("The river broke through the flood defences overnight and water entered homes across the valley.",),
    date="2024-03-01",
    source="Wire",
)
OTHER = Article(id="other", title="Council approves budget", paragraphs=("The council voted on spending.",))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> SearchService:
    target = tmp_path_factory.mktemp("recency") / "idx"
    build_index([OLD, NEW, OTHER], target, Settings(index_dir=target), embedder, progress=False)
    return make_service(target, embedder)


def _order(svc: SearchService, recency: Recency | None = None) -> list[str]:
    return [r.article.id for r in svc.search(QUERY, k=2, recency=recency).results]


def test_newer_ranks_first_with_recency_and_order_is_unchanged_without(fresh: SearchService) -> None:
    assert _order(fresh) == ["old", "new"]  # by relevance alone: the headline matches word for word
    plain = fresh.search(QUERY, k=2)
    assert all(r.scores.recency is None for r in plain.results)
    decay = Recency.of("7d", "2024-03-02")
    ranked = fresh.search(QUERY, k=2, recency=decay)
    assert [r.article.id for r in ranked.results] == ["new", "old"]
    new, old = ranked.results
    assert new.scores.recency == pytest.approx(0.5 ** (1 / 7), abs=1e-6)
    assert old.scores.recency == pytest.approx(0.5 ** (52 / 7), abs=1e-6)
    by_id = {r.article.id: r for r in plain.results}
    assert new.scores.recency is not None
    assert new.scores.fused == pytest.approx(by_id["new"].scores.fused * new.scores.recency, abs=1e-5)
    # a long half-life barely decays: relevance decides again
    assert _order(fresh, recency=Recency.of("3650d", "2024-03-02")) == ["old", "new"]


def test_equally_relevant_articles_differ_only_by_date(fresh: SearchService) -> None:
    """Equal scores, dates apart: the newer first; the undated one is not decayed (as Elasticsearch does)."""
    aid = {i: fresh.index.store.aid_of(i) or -1 for i in ("old", "new", "other")}
    same = Scores(0.5, 3.0, 0.8)
    items = [(aid["old"], same), (aid["new"], same), (aid["other"], same)]
    out = decayed(items, fresh.index.catalog, Recency.of("30d", "2024-03-01"))
    assert [a for a, _ in out] == [aid["new"], aid["other"], aid["old"]]
    assert [s.recency for _, s in out][:2] == [1.0, 1.0]
    negative = Scores(-0.2, 0.0, -0.2)
    out = decayed(
        [(aid["old"], negative), (aid["new"], negative)], fresh.index.catalog, Recency.of("30d", "2024-03-01")
    )
    assert [a for a, _ in out] == [aid["new"], aid["old"]]  # decay moves an older article down whatever the sign


def test_api_cli_and_page(fresh: SearchService, tmp_path: Path) -> None:
    client = create_app(service=fresh).test_client()
    body = client.get(f"/api/search?q={QUERY}&k=2&recency=7d&as_of=2024-03-02").get_json()
    assert [r["article"]["id"] for r in body["results"]] == ["new", "old"]
    assert body["results"][0]["scores"]["recency"] > 0.9
    plain = client.get(f"/api/search?q={QUERY}&k=2").get_json()
    assert [r["article"]["id"] for r in plain["results"]] == ["old", "new"]
    assert plain["results"][0]["scores"]["recency"] is None
    assert_error(client.get(f"/api/search?q={QUERY}&recency=soon"), 400, "invalid_input")
    assert_error(client.get(f"/api/search?q={QUERY}&recency=7d&as_of=march"), 400, "invalid_input")
    assert_error(client.get(f"/api/search?q={QUERY}&as_of=2024-03-02"), 400, "invalid_input")
    page = client.get(f"/?q={QUERY}&recency=7d&as_of=2024-03-02").get_data(as_text=True)
    assert "recency × " in page
    assert 'name="recency" value="7d"' in page
    runner = CliRunner()
    directory = str(fresh.index.directory)
    out = runner.invoke(
        main, ["search", QUERY, "--index", directory, "--k", "2", "--recency", "7d", "--as-of", "2024-03-02"]
    )
    assert out.exit_code == 0, out.output
    assert out.output.index("(new)") < out.output.index("(old)")
    bad = runner.invoke(main, ["search", QUERY, "--index", directory, "--recency", "7 weeks"])
    assert bad.exit_code == 1 and "recency takes a positive duration" in bad.output
