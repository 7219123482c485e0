"""The web page through Flask's test client: server-rendered results, article and "more like this" pages, links that
carry the page state, HTML errors for pages and JSON errors for the API. ``test_browser.py`` drives a real browser.
"""

from __future__ import annotations

from dataclasses import replace
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from api.web import PAGE_SIZE, web_link
from search.service import SearchService
from tests.conftest import assert_error
from tests.test_api import CORPUS_IDS, LEADING_SLASH_ID

NK_QUESTION = "why is North Korea accusing the US?"
NK_ID = "north-korea-accuses-us-asia-style-nato"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def iter(self) -> Any:
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.classes)
            and all(n.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, cls, **attrs)
        assert found, f"no <{tag} class={cls} {attrs}>"
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.at = Node("#document", {}, None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.at)
        self.at.children.append(node)
        if tag not in VOID:
            self.at = node

    def handle_endtag(self, tag: str) -> None:
        at: Node | None = self.at
        while at is not None and at.tag != tag:
            at = at.parent
        if at is not None and at.parent is not None:
            self.at = at.parent

    def handle_data(self, data: str) -> None:
        self.at.children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    return builder.root


def page(client: FlaskClient, url: str, status: int = 200, **kwargs: Any) -> Node:
    response = client.get(url, headers=BROWSER, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)[:2000]
    assert response.mimetype == "text/html"
    return parse(response.get_data(as_text=True))


def query_of(href: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(href).query)


def result_titles(doc: Node) -> list[str]:
    return [li.find("h2").text.strip() for li in doc.find_all("li", "result")]


def result_ids(doc: Node) -> list[str]:
    return [query_of(li.find("a", "more").attrs["href"])["id"][0] for li in doc.find_all("li", "result")]


# -- the search page -------------------------------------------------------------------------------------------


def test_empty_page_is_a_labelled_search_form(client: FlaskClient) -> None:
    doc = page(client, "/")
    assert doc.find("meta", name="viewport").attrs["content"].startswith("width=device-width")
    form = doc.find("form", id="search")
    assert form.attrs["method"] == "get" and form.attrs["action"] == "/"
    box = form.find("input", name="q")
    assert box.attrs["type"] == "search" and box.attrs["accesskey"] == "/" and "autofocus" in box.attrs
    assert doc.find("label", for_="q").text.strip()
    mode = form.find("select", name="mode")
    assert [o.attrs["value"] for o in mode.find_all("option")] == ["hybrid", "dense", "lexical"]
    assert "selected" in mode.find("option", value="hybrid").attrs
    assert not doc.find_all("li", "result")
    # every asset is served by the app: nothing is fetched from the internet
    for node in doc.find_all("script") + doc.find_all("link"):
        assert (node.attrs.get("src") or node.attrs.get("href", "")).startswith(("/static/", "data:"))


def test_search_renders_the_answer_on_the_server(sample_client: FlaskClient) -> None:
    doc = page(sample_client, "/", query_string={"q": NK_QUESTION})
    assert doc.find("input", name="q").attrs["value"] == NK_QUESTION
    assert "autofocus" not in doc.find("input", name="q").attrs
    total = sample_client.get("/api/search", query_string={"q": NK_QUESTION}).get_json()["total"]
    assert f"of {total}" in doc.find(id="status").text and total > 1
    first = doc.find("li", "result")
    assert first.find("h2").text.strip().startswith("North Korea")
    answer = first.find("mark", "answer").text
    assert "NATO" in answer or "hostility" in answer
    passage = first.find("mark", "answer").parent
    assert passage is not None and passage.tag == "p"  # inside its passage, between the sentences around it
    more = first.find("a", "more").attrs["href"]
    assert urlsplit(more).path == "/similar" and query_of(more) == {"id": [NK_ID]}
    related = first.find_all("a", "related-link")
    assert related and all(urlsplit(a.attrs["href"]).path == "/article" for a in related)
    title_link = first.find("h2").find("a").attrs["href"]
    assert query_of(title_link) == {"id": [NK_ID]}
    assert urlsplit(title_link).fragment.startswith(":~:text=")  # scrolls to the answering sentence


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_page_shows_the_api_ranking_for_each_mode(sample_client: FlaskClient, mode: str) -> None:
    doc = page(sample_client, "/", query_string={"q": "Honduras election", "mode": mode})
    assert "selected" in doc.find("select", name="mode").find("option", value=mode).attrs
    assert f"· {mode} ·" in doc.find(id="status").text
    api = sample_client.get("/api/search", query_string={"q": "Honduras election", "mode": mode, "k": PAGE_SIZE})
    assert result_ids(doc) == [r["article"]["id"] for r in api.get_json()["results"]]


@pytest.fixture
def every_client(sample_service: SearchService) -> FlaskClient:
    """The sample where every article matches every query (match_floor -1): 18 results, two pages."""
    settings = replace(sample_service.settings, match_floor=-1.0)
    every = SearchService(sample_service.index, sample_service.embedder, settings)
    return create_app(service=every).test_client()


def test_paging_links_carry_query_mode_and_offset(every_client: FlaskClient) -> None:
    sample_client = every_client
    first = page(sample_client, "/", query_string={"q": NK_QUESTION, "mode": "dense"})
    assert len(first.find_all("li", "result")) == PAGE_SIZE
    assert not first.find_all("a", rel="prev")
    next_href = first.find("a", rel="next").attrs["href"]
    assert query_of(next_href) == {"q": [NK_QUESTION], "mode": ["dense"], "offset": [str(PAGE_SIZE)]}
    second = page(sample_client, next_href)
    assert second.find("ol", "results").attrs["start"] == str(PAGE_SIZE + 1)
    api = sample_client.get("/api/search", query_string={"q": NK_QUESTION, "mode": "dense", "offset": PAGE_SIZE})
    assert result_ids(second) == [r["article"]["id"] for r in api.get_json()["results"]]
    assert len(result_ids(second)) == 18 - PAGE_SIZE
    assert not set(result_ids(first)) & set(result_ids(second))
    assert not second.find_all("a", rel="next")
    assert query_of(second.find("a", rel="prev").attrs["href"])["offset"] == ["0"]


def test_filters_narrow_the_results_and_stay_in_the_form(client: FlaskClient) -> None:
    everything = page(client, "/", query_string={"q": "interest rates"})
    assert "open" not in everything.find("details", "filters").attrs
    narrowed = {"q": "interest rates", "source": "Example Wire", "from": "2024-03-01"}
    wire = page(client, "/", query_string=narrowed)
    assert "open" in wire.find("details", "filters").attrs
    assert wire.find("input", name="source").attrs["value"] == "Example Wire"
    assert wire.find("input", name="from").attrs["value"] == "2024-03-01"
    ids = result_ids(wire)
    api = client.get("/api/search", query_string=narrowed)
    assert ids == [r["article"]["id"] for r in api.get_json()["results"]]
    assert ids and set(ids) <= set(result_ids(everything))
    for li in wire.find_all("li", "result"):
        assert li.find("p", "meta").text.startswith("Example Wire")
    clear = query_of(wire.find("a", "clear").attrs["href"])
    assert clear == {"q": ["interest rates"]}
    # an unfilled form sends empty fields: they mean no filter
    empty = page(client, "/", query_string={"q": "interest rates", "from": "", "to": "", "source": "", "category": ""})
    assert result_ids(empty) == result_ids(everything)


def test_facet_links_narrow_by_source_and_month(service: SearchService) -> None:
    settings = replace(service.settings, match_floor=-1.0)  # every article matches: every source has a facet
    client = create_app(service=SearchService(service.index, service.embedder, settings)).test_client()
    doc = page(client, "/", query_string={"q": "interest rates", "mode": "dense"})
    sources = {a.text: a.attrs["href"] for a in doc.find("p", "facet-source").find_all("a")}
    assert query_of(sources["Tech Daily"]) == {"q": ["interest rates"], "mode": ["dense"], "source": ["Tech Daily"]}
    assert result_ids(page(client, sources["Tech Daily"])) == ["https://example.org/news/tech?id=7&lang=en"]
    facets = client.get("/api/search", query_string={"q": "interest rates", "mode": "dense", "facets": "true"})
    wire = next(f["count"] for f in facets.get_json()["facets"]["source"] if f["value"] == "Example Wire")
    assert len(result_ids(page(client, sources["Example Wire"]))) == wire  # the page shows what the facet said
    months = {a.text: a.attrs["href"] for a in doc.find("p", "facet-month").find_all("a")}
    assert query_of(months["2024-02"])["from"] == ["2024-02-01"] and query_of(months["2024-02"])["to"] == ["2024-02-29"]
    february = page(client, months["2024-02"])
    assert result_ids(february) == ["https://example.org/news/tech?id=7&lang=en"]


def test_links_keep_every_part_of_the_state(app: Any) -> None:
    from api.web import search_url

    with app.test_request_context("/?q=x&mode=dense&source=A&source=B&category=&offset=10"):
        assert query_of(search_url(offset=20)) == {
            "q": ["x"],
            "mode": ["dense"],
            "source": ["A", "B"],
            "offset": ["20"],
        }
        assert query_of(search_url({"source": None, "from": "2024-01-01"})) == {
            "q": ["x"],
            "mode": ["dense"],
            "from": ["2024-01-01"],
        }


def test_collapsed_copies_are_named_under_their_result(client: FlaskClient) -> None:
    doc = page(client, "/", query_string={"q": "central bank raises interest rates"})
    api = client.get("/api/search", query_string={"q": "central bank raises interest rates", "k": PAGE_SIZE})
    for li, result in zip(doc.find_all("li", "result"), api.get_json()["results"], strict=True):
        copies = result.get("also_reported") or []
        links = [query_of(a.attrs["href"])["id"][0] for p in li.find_all("p", "also") for a in p.find_all("a")]
        assert links == [c["id"] for c in copies]


def test_user_text_is_escaped(client: FlaskClient) -> None:
    html = client.get("/", query_string={"q": '<script>alert("x")</script> rates'}, headers=BROWSER).get_data(True)
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html


# -- article and more like this --------------------------------------------------------------------------------


@pytest.mark.parametrize("article_id", CORPUS_IDS)
def test_article_and_similar_pages_for_every_id(client: FlaskClient, article_id: str) -> None:
    """Ids with slashes, a URL with ? and &, a leading slash, spaces and unicode all survive the links."""
    record = client.get("/api/article", query_string={"id": article_id}).get_json()
    doc = page(client, "/article", query_string={"id": article_id})
    assert doc.find("h1").text == record["title"]
    body = [p.text for p in doc.find("article").find_all("p") if not p.classes]
    assert body == record["paragraphs"]
    more = doc.find("a", "more").attrs["href"]
    assert query_of(more) == {"id": [article_id]}
    similar = page(client, more)
    assert similar.find("h1").find("a").text == record["title"]
    api = client.get("/api/similar", query_string={"id": article_id, "k": PAGE_SIZE}).get_json()
    assert result_ids(similar) == [r["article"]["id"] for r in api["results"]]
    assert article_id not in result_ids(similar)
    for link in similar.find_all("a", "title"):  # each result opens its own article page
        assert client.get(link.attrs["href"], headers=BROWSER).status_code == 200


def test_original_link_only_for_web_urls(client: FlaskClient) -> None:
    doc = page(client, "/article", query_string={"id": "business/001"})
    assert doc.find("a", rel="noopener noreferrer").attrs["href"] == "https://example.com/business/001"
    assert not page(client, "/article", query_string={"id": LEADING_SLASH_ID}).find_all("a", rel="noopener noreferrer")
    assert web_link("javascript:alert(1)") is None and web_link("data:text/html,x") is None
    assert web_link("HTTPS://example.com/a") == "HTTPS://example.com/a"


# -- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status", "fragment"),
    [
        ("/article?id=no-such-article", 404, "no-such-article"),
        ("/similar?id=no-such-article", 404, "no-such-article"),
        ("/article", 400, "'id'"),
        ("/similar?id=", 400, "'id'"),
        ("/?q=rates&mode=semantic", 400, "semantic"),
        ("/?q=rates&offset=-1", 400, "offset"),
        ("/?q=rates&offset=20000", 400, "offset"),
        ("/?q=a%00b", 400, "NUL"),
        ("/?q=%FF", 400, "UTF-8"),
        ("/no-such-page", 404, "not found"),
    ],
)
def test_page_errors_are_html_pages_that_keep_the_search_box(
    client: FlaskClient, url: str, status: int, fragment: str
) -> None:
    doc = page(client, url, status)
    assert fragment.lower() in doc.find("p", "error").text.lower()
    assert doc.find("form", id="search")


def test_api_errors_stay_json_whatever_the_client_accepts(client: FlaskClient) -> None:
    for url, status in [("/api/nothing", 404), ("/api/article?id=nope", 404), ("/api/search?q=%FF", 400)]:
        assert_error(client.get(url, headers=BROWSER), status)
    assert_error(client.get("/no-such-page"), 404, "not_found")  # no Accept header: not a browser


def test_static_assets(client: FlaskClient) -> None:
    css = client.get("/static/style.css")
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert b"@media (max-width" in css.data  # the narrow-screen layout
    js = client.get("/static/newsdesk.js")
    assert js.status_code == 200 and "javascript" in (js.mimetype or "")
    assert client.get("/static/nothing.css").status_code == 404


def test_a_month_facet_of_year_one_links_to_its_articles(tmp_path: Any, corpus_index: Any, embedder: Any) -> None:
    """Years before 1000 are months like ``0001-01``: the facet names them so, and its link narrows to them (it was
    ``1-01``, whose link asked for ``from=1-01-01``, a 400)."""
    import shutil

    from api.app import create_app
    from indexer.live import Writer
    from search.intake import Limits, parse_write
    from search.service import SearchService
    from search.settings import Settings
    from search.storage.index import open_index

    copy = tmp_path / "ancient"
    shutil.copytree(corpus_index, copy)
    svc = SearchService(open_index(copy, embedder), embedder, Settings(index_dir=copy))
    old = {"id": "ancient/1", "title": "Interest rates in the year one", "date": "0001-01-15", "text": "Rates rose."}
    Writer(svc).upsert(parse_write(old, Limits()))
    client = create_app(service=svc).test_client()
    doc = page(client, "/", query_string={"q": "interest rates"})
    months = {a.text: a.attrs["href"] for a in doc.find("p", "facet-month").find_all("a")}
    assert "0001-01" in months, months
    assert query_of(months["0001-01"])["from"] == ["0001-01-01"] and query_of(months["0001-01"])["to"] == ["0001-01-31"]
    assert result_ids(page(client, months["0001-01"])) == ["ancient/1"]


@pytest.mark.parametrize("url", ["/", "/?q=interest+rates", "/article?id=business/001", "/similar?id=business/001"])
def test_pages_carry_security_headers_and_need_nothing_the_policy_forbids(client: FlaskClient, url: str) -> None:
    """CSP, no framing, no sniffing; and the page works under its policy: no inline script or style, no handler or
    style attributes, scripts and stylesheets from this origin only."""
    response = client.get(url, headers=BROWSER)
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    doc = parse(response.get_data(as_text=True))
    assert not doc.find_all("style")
    for node in doc.iter():
        assert "style" not in node.attrs and not any(a.startswith("on") for a in node.attrs), node.tag
        if node.tag == "script":
            assert node.attrs.get("src", "").startswith("/static/") and not node.text.strip()
        if node.tag == "link" and node.attrs.get("rel") == "stylesheet":
            assert node.attrs["href"].startswith("/static/")


def test_error_pages_and_api_answers_carry_their_headers(client: FlaskClient) -> None:
    missing = client.get("/article?id=no-such-article", headers=BROWSER)
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    assert missing.headers["X-Frame-Options"] == "DENY" and "Content-Security-Policy" in missing.headers
    api = client.get("/api/health")
    assert api.headers["X-Content-Type-Options"] == "nosniff"
