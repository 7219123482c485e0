"""One JSON error shape for every failure the API can return: ``{"error": {"code", "message"}}``.

A person's browser asking for a page (the web page's own routes, or any non-``/api`` URL whose ``Accept`` prefers
HTML) gets the same status and message as an HTML page instead; nothing under ``/api`` ever does. A server-side
failure (5xx) is logged in full and answered by its code alone: its message names files and internals.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Annotated

from annotated_types import MinLen
from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from api.logs import request_id
from search.errors import NewsdeskError
from search.models import to_plain

log = logging.getLogger("newsdesk.api")

_TITLES = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 500: "Server error", 503: "Unavailable"}


@dataclass(frozen=True)
class ErrorDetail:
    code: str
    """Stable and machine-readable: invalid_input, not_found, bad_encoding, method_not_allowed, internal_error, ..."""
    message: Annotated[str, MinLen(1)]
    """What was wrong, for a person."""


@dataclass(frozen=True)
class ErrorResponse:
    """The one shape of every error response."""

    error: ErrorDetail


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify(to_plain(ErrorResponse(ErrorDetail(code, message))))
    response.status_code = status
    return response


def _wants_page() -> bool:
    path = request.path
    if path == "/api" or path.startswith("/api/") or path == "/metrics":
        return False
    if request.blueprint == "web":
        return True
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def failure_response(status: int, code: str, message: str) -> Response:
    """The error as JSON, or as an HTML page where a browser asked for a page (see the module docstring)."""
    if _wants_page():
        try:
            title = _TITLES.get(status, "Error")
            html = render_template("error.html", status=status, title=title, code=code, message=message)
            return Response(html, status=status, mimetype="text/html")
        except Exception:  # an error page that cannot render must not hide the original error
            log.exception("error page failed to render")
    return error_response(status, code, message)


def server_side_message(exc: NewsdeskError) -> str:
    """What a client is told of a server-side failure (a damaged or missing index, an unreachable vector store):
    its kind, never its details. Those name paths on disk, URIs and parser errors, and ``/api/health`` answers
    anyone, so they go to the server log only."""
    return f"the index cannot be served right now ({exc.code}); the server log has the details"


def _http_code(exc: HTTPException) -> str:
    return re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(NewsdeskError)
    def _newsdesk(exc: NewsdeskError) -> Response:
        if exc.status >= 500:  # the server's own trouble: its message names files and parser errors
            log.error("%s: %s (request id %s)", exc.code, exc.message, request_id())
            return failure_response(exc.status, exc.code, server_side_message(exc))
        return failure_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        response = failure_response(exc.code or 500, _http_code(exc), exc.description or exc.name)
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error (request id %s)", request_id())
        return failure_response(500, "internal_error", "internal server error; the server log has the details")
