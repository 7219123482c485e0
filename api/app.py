"""The Flask application factory. Routes parse input, call one ``SearchService`` method and serialise.

No app, model or index exists at import time: ``create_app`` builds them once per process (after a WSGI server
has started its workers), or takes a ready ``SearchService`` (tests share one across many apps).
"""

from __future__ import annotations

from functools import partial
from urllib.parse import unquote_to_bytes

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.datastructures import MultiDict
from werkzeug.routing import BaseConverter

from api import web
from api.atom import CONTENT_TYPE as ATOM_TYPE
from api.atom import alert_feed
from api.auth import early_refusal, register_auth, require_write_key
from api.errors import failure_response, register_error_handlers
from api.logs import register_request_logging
from api.metrics import register_metrics
from api.openapi import openapi_json
from api.params import (
    AlertEntriesParams,
    AlertParams,
    AnswersParams,
    ArticleParams,
    SearchParams,
    SimilarByIdParams,
    SimilarParams,
    TimelineByQueryParams,
    TimelineParams,
    parse,
    parse_body,
)
from api.server import EARLY_REFUSAL
from api.writes import WRITER, ArticleWriter
from indexer.live import Writer
from search.alerts.service import AlertService
from search.errors import InvalidInput
from search.intake import Limits, loads, parse_delete, parse_write
from search.jsontypes import JSONValue
from search.loading import load_service
from search.models import LabelledArticle, to_json, to_plain
from search.service import SearchService
from search.settings import Settings


class ArticleIdConverter(BaseConverter):
    """Article ids are arbitrary strings: slashes (``business/001``, URLs), leading slashes, spaces, anything."""

    regex = ".+?"
    part_isolating = False


def create_app(settings: Settings | None = None, service: SearchService | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.url_map.converters["article_id"] = ArticleIdConverter
    if service is None:
        service = load_service(settings or Settings.from_env())
    app.extensions["newsdesk"] = service
    app.extensions[WRITER] = Writer(service)  # a serving worker beside a write process forwards instead
    alerts = AlertService(service)
    app.extensions["newsdesk.alerts"] = alerts
    app.before_request(alerts.deliver_lazily)  # the webhook thread, once an alert has a webhook
    app.config["MAX_CONTENT_LENGTH"] = service.settings.max_body_bytes  # larger bodies: 413 before they are read
    register_error_handlers(app)
    register_request_logging(app)  # these two before any hook that may answer early (the encoding check)
    register_metrics(app, service)
    app.before_request(_reject_bad_encoding)
    register_auth(app, service.settings)
    app.extensions[EARLY_REFUSAL] = partial(early_refusal, service.settings)  # asked before a body is read

    app.register_blueprint(web.bp)  # the web page: /, /article, /similar, /static/
    app.add_url_rule("/api/openapi.json", view_func=openapi_json)
    app.add_url_rule("/api/health", view_func=health)
    app.add_url_rule("/api/search", view_func=search)
    app.add_url_rule("/api/answers", view_func=answers)
    app.add_url_rule("/api/article", view_func=article_by_query)
    app.add_url_rule("/api/similar", view_func=similar_by_query)
    app.add_url_rule("/api/articles/<article_id:article_id>/similar", view_func=similar)
    app.add_url_rule("/api/articles/<article_id:article_id>/timeline", view_func=timeline)
    app.add_url_rule("/api/timeline", view_func=timeline_by_query)
    app.add_url_rule("/api/stories/<article_id:story_id>", view_func=story)
    app.add_url_rule("/api/articles/<article_id:article_id>", view_func=article)
    app.add_url_rule("/api/articles", view_func=write_articles, methods=["POST"])
    app.add_url_rule("/api/articles", endpoint="delete_articles", view_func=delete_articles, methods=["DELETE"])
    app.add_url_rule(
        "/api/articles/<article_id:article_id>", endpoint="delete_article", view_func=delete_article, methods=["DELETE"]
    )
    app.add_url_rule("/api/alerts", view_func=create_alert, methods=["POST"])
    app.add_url_rule("/api/alerts", view_func=list_alerts)
    app.add_url_rule("/api/alerts/<int:alert_id>", view_func=get_alert)
    app.add_url_rule("/api/alerts/<int:alert_id>", endpoint="delete_alert", view_func=delete_alert, methods=["DELETE"])
    app.add_url_rule("/api/alerts/<int:alert_id>/feed.atom", view_func=alert_feed_atom)
    return app


def _service() -> SearchService:
    svc: SearchService = current_app.extensions["newsdesk"]
    return svc


def _reject_bad_encoding() -> Response | None:
    """Werkzeug replaces undecodable bytes with U+FFFD silently; a search for mojibake should be an error."""
    env = request.environ
    try:
        unquote_to_bytes(env.get("QUERY_STRING", "")).decode("utf-8")
        env.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return failure_response(400, "bad_encoding", "the request URL is not valid UTF-8")
    return None


def health() -> Response:
    return jsonify(_service().health())


def _json(body: bytes) -> Response:
    """A JSON response of an already serialised body (``to_json``)."""
    return current_app.response_class(body, mimetype="application/json")


def search() -> Response:
    return _json(search_body(_service(), request.args))


def search_body(service: SearchService, args: MultiDict[str, str]) -> bytes:
    """The ``/api/search`` response body for a query string: parsed, searched and serialised as the route does, so
    that ``bench/search_cpu.py`` times in process exactly what a request costs past the HTTP layer."""
    p = parse(SearchParams, args)
    result = service.search(
        p.q,
        k=p.k,
        offset=p.offset,
        mode=p.mode,
        filters=p.filters(),
        cursor=p.cursor,
        max_per_source=p.max_per_source,
        facets=p.facets,
        recency=p.recency_of(),
    )
    return to_json(result)


def article(article_id: str) -> Response:
    return jsonify(to_plain(LabelledArticle.of(*_service().article_with_labels(article_id))))


def similar(article_id: str, p: SimilarParams | None = None) -> Response:
    """More like this; ``exclude_story``/``exclude_source`` leave out the article's story or source, the search
    filters (``from``, ``to``, ``source``, ``category``) bound the candidates, ``scoring`` picks profile or cosine."""
    p = p or parse(SimilarParams, request.args)
    result = _service().similar(
        article_id,
        k=p.k,
        filters=p.filters(),
        exclude_story=p.exclude_story,
        exclude_source=p.exclude_source,
        scoring=p.scoring,
    )
    return _json(to_json(result))


def write_articles() -> Response:
    """Upsert one article (the body is the article) or a batch (``{"articles": [...]}``), all or nothing."""
    payload, limits = _write_body('an article or {"articles": [...]}')
    done = _writer().upsert(parse_write(payload, limits))
    _alerts().wrote()  # its matches' webhooks, posted from the deliverer's thread (never this request's)
    return jsonify(to_plain(done))


def delete_articles() -> Response:
    """Delete a batch of articles by id (``{"ids": [...]}``) in one write, all or nothing: 404 and nothing deleted
    if any id is not in the index. One commit and one cache save for the batch, where one request an article pays
    each of them again."""
    payload, limits = _write_body('{"ids": [...]}')
    return jsonify(to_plain(_writer().delete(parse_delete(payload, limits))))


def delete_article(article_id: str) -> Response:
    require_write_key(_service().settings)
    return jsonify(to_plain(_writer().delete([article_id])))


def _write_body(shape: str) -> tuple[JSONValue, Limits]:
    """A write request's JSON body (``shape`` names what it must hold) and the limits it is parsed with; the write
    key is checked first, from the headers alone."""
    settings = _service().settings
    require_write_key(settings)
    if not request.is_json:
        raise InvalidInput(f"the body must be JSON (Content-Type: application/json): {shape}")
    payload = loads(request.get_data(cache=False))  # past MAX_CONTENT_LENGTH: 413 before a byte is read
    return payload, Limits(settings.max_batch_articles, settings.max_field_chars)


def _writer() -> ArticleWriter:
    writer: ArticleWriter = current_app.extensions[WRITER]
    return writer


def _alerts() -> AlertService:
    alerts: AlertService = current_app.extensions["newsdesk.alerts"]
    return alerts


def create_alert() -> Response:
    """Save a search (a JSON object: ``query``, ``mode``, search's filters, ``threshold`` or ``top_per_day``,
    ``webhook``); matched against every later write."""
    require_write_key(_service().settings)
    if not request.is_json:
        raise InvalidInput('the body must be JSON (Content-Type: application/json): {"query": ...}')
    p = parse_body(AlertParams, loads(request.get_data(cache=False)))
    alert = _alerts().create(
        p.query,
        p.mode,
        date_from=p.date_from,
        date_to=p.date_to,
        sources=p.source,
        categories=p.categories(),
        threshold=p.threshold,
        top_per_day=p.top_per_day,
        webhook=p.webhook,
    )
    if alert.webhook is not None:
        _alerts().deliverer.start()  # this server posts its matches (a CLI that saves one leaves that to servers)
    response = jsonify(to_plain(alert))
    response.status_code = 201
    return response


def list_alerts() -> Response:
    return jsonify(to_plain(_alerts().saved()))


def get_alert(alert_id: int) -> Response:
    return jsonify(to_plain(_alerts().get(alert_id, parse(AlertEntriesParams, request.args).k)))


def delete_alert(alert_id: int) -> Response:
    require_write_key(_service().settings)
    return jsonify(to_plain(_alerts().delete(alert_id)))


def alert_feed_atom(alert_id: int) -> Response:
    """The alert's latest matches as an Atom feed."""
    detail = _alerts().get(alert_id, parse(AlertEntriesParams, request.args).k)
    return Response(alert_feed(detail, _service().index.name, request.url_root), content_type=ATOM_TYPE)


def story(story_id: str) -> Response:
    return jsonify(to_plain(_service().story(story_id)))


def answers() -> Response:
    p = parse(AnswersParams, request.args)
    return jsonify(to_plain(_service().answers(p.q, k=p.k, mode=p.mode, as_of=p.as_of)))


def timeline(article_id: str, p: TimelineParams | None = None) -> Response:
    p = p or parse(TimelineParams, request.args)
    return jsonify(to_plain(_service().timeline(article_id, k=p.k, filters=p.filters())))


def timeline_by_query() -> Response:
    """``/api/timeline?id=...`` (an article's timeline) or ``?q=...`` (the best dated results of a query)."""
    p = parse(TimelineByQueryParams, request.args)
    if p.id is not None:
        return timeline(p.id, p)
    if p.q is None:
        raise InvalidInput("the 'q' parameter is required")
    result = _service().query_timeline(p.q, k=p.k, mode=p.mode, filters=p.filters())
    return jsonify(to_plain(result))


def article_by_query() -> Response:
    """``/api/article?id=...``: for ids that end in ``/similar`` or that a client cannot put in a path."""
    return article(parse(ArticleParams, request.args).id)


def similar_by_query() -> Response:
    p = parse(SimilarByIdParams, request.args)
    return similar(p.id, p)
