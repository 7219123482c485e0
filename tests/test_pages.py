"""The web pages show what the API knows: the article page's story, duplicates, related stories and timeline; "more
like this" entries with date, source, category, opening sentence and a "same story" marker; the home page's
holdings and example queries drawn from the index; timeline relevance floors; relevance labels; /api/docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from indexer.build import build_index
from indexer.sources import read_sources
from search.service import SearchService
from search.settings import Settings
from search.text.embedding import Embedder
from tests.conftest import make_service
from tests.test_web import BROWSER, Node, page

STORY = "wire/opec-cut-1"
OTHER_OUTLET = "courier/opec-vienna"
COPY = "gazette/opec-cut-copy"
COCOA = "wire/cocoa-review"


@pytest.fixture
def dated_client(dated_service: SearchService) -> FlaskClient:
    return create_app(service=dated_service).test_client()


def section_ids(doc: Node, section: str) -> list[str]:
    """Article ids linked from one section's cards, in page order (the article itself is not a link)."""
    node = doc.find("section", id=section)
    return [a.attrs["href"].split("id=")[1].replace("%2F", "/") for a in node.find_all("a", "title")]


def test_article_page_shows_story_duplicates_related_and_timeline(dated_client: FlaskClient) -> None:
    doc = page(dated_client, "/article", query_string={"id": STORY})
    story = doc.find("section", id="story")
    assert section_ids(doc, "story") == [OTHER_OUTLET]  # the other outlet; not the copy, not itself
    assert "2024-04-02" in story.text and "Daily Courier" in story.text
    also = doc.find("p", id="duplicates")
    assert "Valley Gazette" in also.text and COPY in also.find("a").attrs["href"].replace("%2F", "/")
    related = doc.find("section", id="related")
    assert section_ids(doc, "related")[0] == "courier/opec-june"
    assert "OPEC ministers decided to keep their cut" in related.text  # the opening line
    assert COCOA not in section_ids(doc, "related")  # below the similarity floor
    timeline = doc.find("section", id="timeline")
    dates = re.findall(r"2024-\d\d-\d\d", timeline.text)
    assert dates == sorted(dates) and len(dates) >= 4
    assert "wire/opec-background" in section_ids(doc, "timeline")
    assert COPY not in section_ids(doc, "timeline")  # its copy is "also reported by", not a timeline entry
    assert timeline.find("li", "self") is not None


def test_article_page_says_when_the_corpus_has_no_dates(
    tmp_path: Path, embedder: Embedder, write_jsonl: object
) -> None:
    rows = [
        {"id": f"u{i}", "title": t, "paragraphs": [p]}
        for i, (t, p) in enumerate(
            [
                ("Rates rise again", "The central bank raised rates for the third time this year."),
                ("Bank lifts rates", "Interest rates went up again on Thursday, the bank said."),
                ("Cup final won", "City won the cup final after extra time."),
            ]
        )
    ]
    source = write_jsonl("undated.jsonl", rows)  # type: ignore[operator]
    target = tmp_path / "undated"
    build_index(read_sources([source]), target, Settings(index_dir=target), embedder, progress=False)
    client = create_app(service=make_service(target, embedder)).test_client()
    doc = page(client, "/article", query_string={"id": "u0"})
    assert "no dates" in doc.find("section", id="timeline").text
    home = page(client, "/")
    assert "no dates" in home.find("dd", id="date-range").text


def test_similar_entries_have_date_source_category_opening_and_story_marker(dated_client: FlaskClient) -> None:
    doc = page(dated_client, "/similar", query_string={"id": STORY})
    first = doc.find_all("li", "result")[0]
    assert OTHER_OUTLET in first.find("a", "title").attrs["href"].replace("%2F", "/")
    meta = first.find("p", "meta").text
    assert "2024-04-02" in meta and "Daily Courier" in meta and "energy" in meta
    assert first.find("span", "same-story") is not None
    assert first.find("p", "opening").text.startswith("Oil prices jumped on Tuesday")
    others = doc.find_all("li", "result")[1:]
    assert others and all(not li.find_all("span", "same-story") for li in others)


def test_home_page_tells_what_the_index_holds(dated_client: FlaskClient) -> None:
    doc = page(dated_client, "/")
    assert doc.find("dd", id="article-count").text.strip() == "8"
    assert doc.find("dd", id="date-range").text.strip() == "2024-03-05 to 2024-06-04"
    sources = doc.find("dd", id="sources").text
    assert all(s in sources for s in ("Daily Courier", "Harbour Wire", "Valley Gazette"))
    assert "energy" in doc.find("dd", id="categories").text
    examples = [a.text for a in doc.find_all("a", "example")]
    assert examples[0] == "OPEC agrees to cut oil output to lift prices"  # the largest story's headline
    assert "North Korea" not in doc.find("section", "intro").text  # drawn from this index, not hard-coded


def test_home_page_examples_follow_the_index(sample_client: FlaskClient) -> None:
    examples = [a.text for a in page(sample_client, "/").find_all("a", "example")]
    assert examples and all("OPEC" not in e for e in examples)


def test_query_timeline_has_a_relevance_floor(
    dated_service: SearchService, dated_index: Path, embedder: Embedder
) -> None:
    ids = [e.article.id for e in dated_service.query_timeline("oil prices OPEC", mode="hybrid").entries]
    assert "wire/opec-background" in ids and COCOA not in ids
    unfloored = make_service(dated_index, embedder, timeline_min_relevance=-1.0)
    assert COCOA in [e.article.id for e in unfloored.query_timeline("oil prices OPEC", mode="hybrid").entries]


def test_article_timeline_has_a_similarity_floor(
    dated_service: SearchService, dated_index: Path, embedder: Embedder
) -> None:
    ids = [e.article.id for e in dated_service.timeline(STORY).entries]
    assert COCOA not in ids and "gazette/library-opens" not in ids and OTHER_OUTLET in ids
    unfloored = make_service(dated_index, embedder, timeline_min_similarity=-1.0)
    assert COCOA in [e.article.id for e in unfloored.timeline(STORY).entries]


def test_results_show_rank_and_a_labelled_relevance_with_the_breakdown(dated_client: FlaskClient) -> None:
    doc = page(dated_client, "/", query_string={"q": "OPEC oil production cut"})
    results = doc.find_all("li", "result")
    assert results[0].find("span", "rank").text == "#1" and results[1].find("span", "rank").text == "#2"
    label = results[0].find("span", "relevance")
    assert label.text == "strong match"
    assert re.fullmatch(r"dense .* [0-9.]+ · lexical .* [0-9.]+ · fused [0-9.]+; .*", label.attrs["title"])
    labels = {r.find("span", "relevance").text for r in results}
    assert "weak match" in labels  # the library opening does not answer an OPEC question


def test_api_docs_are_served_from_this_server(dated_client: FlaskClient) -> None:
    response = dated_client.get("/api/docs", headers=BROWSER)
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert not [a for a in assets if a.startswith(("http:", "https:", "//"))]  # no CDN
    assert "<script>" not in html and "style=" not in html  # nothing inline: a strict CSP can hold
    for asset in [a for a in assets if a.startswith("/static/")]:
        got = dated_client.get(asset)
        assert got.status_code == 200 and got.content_length, asset
        got.close()
    assert 'data-spec-url="/api/openapi.json"' in html
    assert dated_client.get("/static/swagger-ui/index.html").status_code == 404  # only the files the page loads
