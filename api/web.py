"""The web page: server-rendered search, article and "more like this" pages.

Pages are rendered on the server so results show without JavaScript, load in one request and every state (query,
mode, filters, page; article; more like this) is a plain GET URL that can be bookmarked or shared.
``static/newsdesk.js`` only adds keyboard shortcuts and re-runs a search when its mode changes. Like the API
routes, each view parses its query string, calls one ``SearchService`` method and renders; errors are rendered as
HTML pages by ``api.errors``.
"""

from __future__ import annotations

import calendar
import importlib.util
import re
from pathlib import Path
from urllib.parse import quote

from flask import Blueprint, Response, abort, current_app, render_template, request, send_from_directory, url_for

from api.params import PageArticleParams, PageSearchParams, parse
from search.alerts.service import AlertService
from search.errors import NotFound
from search.models import PassageHit, Scores
from search.pages import GOOD_MATCH, STRONG_MATCH, match_label
from search.service import SearchService
from search.settings import MODES

PAGE_SIZE = 10
ALERT_ENTRIES = 5  # latest matches of each alert on the alerts page (the feed and the API show alert_entries)
# What a results page's URL carries besides its offset: links (pages, facets) keep all of it.
STATE = ("q", "mode", "from", "to", "source", "category", "recency", "as_of")

# The pages load their one script and stylesheet from /static and nothing else (the icon is an empty data: URL);
# no page has inline script, style or handler attributes (tests/test_web.py checks), so this policy costs nothing
# and stops any markup that slipped through escaping from running script or loading from elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

bp = Blueprint("web", __name__, static_folder="static", static_url_path="/static")


@bp.after_app_request
def _security_headers(response: Response) -> Response:
    """Every response: no MIME sniffing (a JSON or text body must never run as a page or script). HTML pages,
    error pages included: the content security policy, and no framing (clickjacking)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def _service() -> SearchService:
    svc: SearchService = current_app.extensions["newsdesk"]
    return svc


def _values(name: str) -> list[str]:
    """A repeatable parameter's values; the empty ones an unfilled form field sends mean "not given"."""
    return [v for v in request.args.getlist(name) if v.strip()]


@bp.app_context_processor
def _page_context() -> dict[str, object]:
    """What the header's search form needs on every page, error pages included: it keeps the query, mode and
    filters."""
    return {
        "q": request.args.get("q", ""),
        "mode": request.args.get("mode") or _service().settings.mode,
        "modes": MODES,
        "max_query_chars": _service().settings.max_query_chars,
        "date_from": request.args.get("from", ""),
        "recency": request.args.get("recency", ""),
        "as_of": request.args.get("as_of", ""),
        "date_to": request.args.get("to", ""),
        "sources": _values("source"),
        "categories": _values("category"),
    }


@bp.app_template_global()
def search_url(changes: dict[str, object] | None = None, **more: object) -> str:
    """The current search's URL with some of its state changed (another page, a facet picked, filters cleared);
    offset starts again at the first page unless given. ``changes`` is a dict because ``from`` is no keyword."""
    args: dict[str, object] = {name: _values(name) for name in STATE}
    args.update(changes or {}, **more)
    # url_for's keywords include typed ones (_anchor, _external), so a dict of values is built through the adapter
    adapter = current_app.create_url_adapter(request)
    if adapter is None:
        raise RuntimeError("search_url needs a request")
    return adapter.build("web.search", {k: v for k, v in args.items() if v not in (None, "", [])})


@bp.app_template_global()
def month_bounds(month: str) -> dict[str, str]:
    """``from``/``to`` of a month facet (``YYYY-MM``): its first and last day."""
    year, number = (int(part) for part in month.split("-"))
    return {"from": f"{month}-01", "to": f"{month}-{calendar.monthrange(year, number)[1]:02d}"}


@bp.app_template_global()
def article_url(article_id: str, passage: PassageHit | None = None) -> str:
    """The article page; with a body passage, a text fragment that makes the browser scroll to and mark its
    answering sentence (ignored by browsers without text fragments)."""
    url = url_for("web.article", id=article_id)
    if passage is not None and passage.field == "body" and passage.highlight.end > passage.highlight.start:
        sentence = passage.text[passage.highlight.start : passage.highlight.end].strip()
        url += "#:~:text=" + quote(sentence, safe="").replace("-", "%2D")
    return url


@bp.app_template_filter()
def web_link(url: str | None) -> str | None:
    """An article's own URL only if it is http(s): a ``javascript:`` URL from a corpus must never become a link."""
    return url if url and re.match(r"https?://", url, re.IGNORECASE) else None


@bp.app_template_global()
def relevance(scores: Scores) -> dict[str, str]:
    """A result's relevance for a reader: a label, and the score breakdown for its hover text."""
    label = match_label(scores)
    return {
        "label": f"{label} match",
        "class": label,
        "title": f"dense (cosine of the best passage) {scores.dense:.3f} · lexical (BM25) {scores.lexical:.3f} · "
        f"fused {scores.fused:.3f}"
        + (f" · recency × {scores.recency:.3f}" if scores.recency is not None else "")
        + f"; strong ≥ {STRONG_MATCH:.2f}, good ≥ {GOOD_MATCH:.2f} dense",
    }


@bp.get("/")
def search() -> str:
    """The search page; with ``q``, one page of results (``mode``, ``offset``, ``from``, ``to``, ``source`` and
    ``category`` as in ``/api/search``) and facet counts to narrow it."""
    p = parse(PageSearchParams, request.args, blank_is_absent=True)
    if not p.q.strip():
        overview = _service().overview()
        return render_template(
            "search.html", response=None, overview=overview, offset=0, page_size=PAGE_SIZE, autofocus=True
        )
    svc, recency = _service(), p.recency_of()
    response = svc.search(
        p.q, k=PAGE_SIZE, offset=p.offset, mode=p.mode, filters=p.filters(), facets=True, recency=recency
    )
    return render_template("search.html", response=response, offset=p.offset, page_size=PAGE_SIZE)


@bp.get("/article")
def article() -> str:
    """One article in full (``id`` may hold any character, slashes included), with its story, duplicates, related
    stories and timeline."""
    page_id = parse(PageArticleParams, request.args, blank_is_absent=True).id
    return render_template("article.html", page=_service().article_page(page_id))


@bp.get("/similar")
def similar() -> str:
    """More like this: the articles nearest to ``id``, its own copies left out."""
    page_id = parse(PageArticleParams, request.args, blank_is_absent=True).id
    return render_template("similar.html", similar=_service().similar_page(page_id, k=PAGE_SIZE))


@bp.get("/alerts")
def alerts() -> str:
    """The saved searches and their latest matches, each with the sentence that answers it marked, its copies and
    story mates listed under it, and a link to its Atom feed."""
    found: AlertService = current_app.extensions["newsdesk.alerts"]
    return render_template("alerts.html", alerts=found.details(ALERT_ENTRIES))


@bp.get("/api/docs")
def api_docs() -> str:
    """Interactive documentation of ``/api/openapi.json`` (Swagger UI from the ``swagger-ui-py`` package, served from
    this server: no CDN, so it works offline and under a same-origin Content-Security-Policy)."""
    return render_template("api_docs.html")


_SWAGGER_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js"})


def _swagger_static() -> Path:
    """Swagger UI's dist folder inside the installed ``swagger-ui-py`` package, found without importing it (its
    ``__init__`` loads handlers for a dozen web frameworks)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise NotFound("Swagger UI is not installed here (the swagger-ui-py package; pip install -e . installs it)")
    return Path(spec.origin).parent / "static"


@bp.get("/static/swagger-ui/<name>")
def swagger_asset(name: str) -> Response:
    """One of Swagger UI's dist files, from the installed package (only the two the page loads)."""
    if name not in _SWAGGER_FILES:
        abort(404)
    return send_from_directory(_swagger_static(), name, max_age=86400)
