"""Structured request logs: one JSON object per request on the ``newsdesk.access`` logger, tied to a request id.

An operator's log pipeline (Loki, Elasticsearch, ``jq``) parses one JSON line per request without a grok pattern, and
the request id joins that line to the client's own logs and to the server's traceback of a 500: a sane
``X-Request-ID`` sent by a proxy or client is kept, anything else is replaced by a fresh id, and either way the id is
echoed in the response's ``X-Request-ID`` header.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from datetime import UTC, datetime

from flask import Flask, Response, g, request

REQUEST_ID_HEADER = "X-Request-ID"
# Letters, digits and ._:- only, at most 128: what proxies generate (UUIDs, trace ids), and nothing that could forge
# a log line or a header (no spaces, quotes, control characters or non-ASCII).
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_log = logging.getLogger("newsdesk.access")


def request_id() -> str | None:
    """The current request's id (for error logs), or None outside a request that went through the hooks."""
    rid: str | None = g.get("request_id")
    return rid


def new_request_id() -> str:
    """128 random bits as 32 hex digits (what ``uuid4().hex`` gives, without building a UUID per request)."""
    return os.urandom(16).hex()


def _start() -> None:
    g.request_started = time.perf_counter()
    sent = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = sent if REQUEST_ID.fullmatch(sent) else new_request_id()


def _finish(response: Response) -> Response:
    started = g.get("request_started")
    rid = g.get("request_id") or new_request_id()
    response.headers[REQUEST_ID_HEADER] = rid
    if access_log.isEnabledFor(logging.INFO):
        duration = (time.perf_counter() - started) * 1000 if started is not None else None
        fields = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": "request",
            "request_id": rid,
            "method": request.method,
            "path": request.path,  # the query string stays out: searches are the users' own words
            "rule": request.url_rule.rule if request.url_rule is not None else None,
            "status": response.status_code,
            "duration_ms": round(duration, 3) if duration is not None else None,
            "bytes": response.content_length,
        }
        # a record made directly: Logger.info would walk the stack for a caller's file and line on every request
        record = access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, json.dumps(fields), (), None)
        access_log.handle(record)
    return response


def _ensure_handler() -> None:
    """Send access lines to stderr unless the embedding program configured logging itself.

    ``newsdesk serve`` configures no logging, and without a handler Python drops INFO lines; a program that set up
    the root logger or this one keeps its own routing. Installed once per process however many apps are created.
    """
    if access_log.handlers or logging.getLogger().handlers:
        if access_log.level == logging.NOTSET:
            access_log.setLevel(logging.INFO)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def register_request_logging(app: Flask) -> None:
    """Give every request an id and log it as one JSON line when its response is ready.

    Call it before other ``before_request`` hooks: a hook that answers early (the bad-encoding check) skips the
    hooks registered after it, and its response must still carry an id and be logged.
    """
    _ensure_handler()
    app.before_request(_start)
    app.after_request(_finish)
