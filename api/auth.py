"""API keys: ``Authorization: Bearer <key>`` for writes, and for reads when a read key is set.

No write key configured means writes over HTTP are off (403), never open; a missing or wrong key is a 401 with a
``WWW-Authenticate`` challenge. Keys are compared in constant time (``hmac.compare_digest``), so response timing
tells nothing about how much of a guess was right. ``/api/health``, ``/api/openapi.json`` and ``/metrics`` stay open
for load balancers, clients and scrapers.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from flask import Flask, Response, request

from search.errors import NewsdeskError, Unauthorized, WritesDisabled
from search.settings import Settings

CHALLENGE = 'Bearer realm="newsdesk"'
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/api/health", "/api/openapi.json", "/metrics"})


def _presented() -> bytes | None:
    return bearer_token(request.headers.get("Authorization", ""))


def bearer_token(header: str) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def _matches(token: bytes | None, *keys: str) -> bool:
    if token is None:
        return False
    found = False
    for key in keys:
        if key:  # every configured key is compared, so timing does not say which one matched
            found |= hmac.compare_digest(token, key.encode("utf-8"))
    return found


def require_write_key(settings: Settings) -> None:
    error = write_key_error(settings, _presented())
    if error is not None:
        raise error


def write_key_error(settings: Settings, token: bytes | None) -> NewsdeskError | None:
    """Why ``token`` may not write (writes off: 403; no or a wrong key: 401), or None if it may."""
    if not settings.api_key:
        return WritesDisabled("writes are disabled: the server has no write key (set NEWSDESK_API_KEY)")
    if not _matches(token, settings.api_key):
        return Unauthorized("a valid write key is required: send Authorization: Bearer <key>")
    return None


def early_refusal(
    settings: Settings, method: str, path: str, headers: Mapping[str, str]
) -> tuple[int, str, str, Mapping[str, str]] | None:
    """The server's question before it reads a request body (api/server.py): only writes read a body, so a body
    without the write key is refused from its headers (401, or 403 where writes are off), and nobody without the
    key makes the server spool up to ``max_body_bytes`` (the server itself refuses a larger body). A body on a
    read (GET, HEAD, OPTIONS) is read as before: the app ignores it, and the limits bound it."""
    if method.upper() in READ_METHODS:
        return None
    error = write_key_error(settings, bearer_token(headers.get("AUTHORIZATION", "")))
    if error is None:
        return None
    challenge = {"WWW-Authenticate": CHALLENGE} if error.status == 401 else {}
    return error.status, error.code, error.message, challenge


def register_auth(app: Flask, settings: Settings) -> None:
    """The read-key check (when a read key is set) and the 401 challenge header."""

    @app.before_request
    def _read_key() -> None:
        if not settings.read_api_key or request.path in OPEN_PATHS or request.path.startswith("/static/"):
            return
        if request.method in ("GET", "HEAD") and not _matches(_presented(), settings.read_api_key, settings.api_key):
            raise Unauthorized("a valid read key is required: send Authorization: Bearer <key>")

    @app.after_request
    def _challenge(response: Response) -> Response:
        if response.status_code == 401:
            response.headers["WWW-Authenticate"] = CHALLENGE
        return response
