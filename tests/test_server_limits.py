"""Slow and unauthenticated clients against the real serving stack (api/server.py), in both of its shapes: one
waitress process, and gunicorn with two worker processes. The app is a small Flask app with the real write-key
check and early-refusal hook, so the server's behaviour is what is tested, without loading a model per process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request

from tests.procs import Trickle, free_port

KEY = "the-write-key"
MAX_BODY = 1000
DEADLINE = 1.5  # header_timeout and body_timeout of the server under test
ROOT = Path(__file__).resolve().parent.parent


def make_app() -> Flask:
    """A write route that checks the key before reading the body, as the real one does."""
    from api.auth import require_write_key
    from api.errors import register_error_handlers
    from search.settings import Settings

    settings = Settings(api_key=KEY, max_body_bytes=MAX_BODY)
    app = Flask("tiny")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    register_error_handlers(app)
    try:
        from api.auth import early_refusal
        from api.server import EARLY_REFUSAL

        app.extensions[EARLY_REFUSAL] = partial(early_refusal, settings)
    except ImportError:  # a server from before the hook
        pass

    @app.get("/ping")
    def ping() -> Any:
        return jsonify(ok=True)

    @app.post("/api/articles")
    def write() -> Any:
        require_write_key(settings)
        return jsonify(n=len(request.get_data()))

    return app


def run(port: int, processes: int) -> None:
    """The server process: ``api.server.serve`` as ``newsdesk serve`` runs it, with short deadlines."""
    from api import server

    limits: dict[str, Any] = {}
    if hasattr(server, "ServerLimits"):
        limits["limits"] = server.ServerLimits(DEADLINE, DEADLINE, 30.0, 500, MAX_BODY)
    server.serve(make_app, "127.0.0.1", port, threads=2, processes=processes, **limits)


@pytest.fixture(params=[1, 2], ids=["waitress", "gunicorn-2-processes"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    code = f"from tests.test_server_limits import run; run({port}, {request.param})"
    log = (tmp_path / "server.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while _get(port, "/ping", timeout=1.0) is None:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _get(port: int, path: str, timeout: float) -> bytes | None:
    """One request on a fresh connection; the raw response, or None if none came within ``timeout``."""
    return _exchange(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(), timeout)


def _exchange(port: int, data: bytes, timeout: float) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                sock.settimeout(max(0.01, end - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
            return b"".join(chunks) or None
    except OSError:
        return None


def _complete(raw: bytes) -> bool:
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def _status_and_json(raw: bytes | None) -> tuple[int, Any]:
    assert raw is not None, "no answer in time"
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), head
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_the_settings_reach_waitress() -> None:
    """What ``newsdesk serve`` hands waitress: its own limits from the settings, poll() for more than 1,024
    descriptors, and maintenance often enough for the deadlines."""
    from api.server import ServerLimits
    from search.settings import Settings

    settings = Settings(max_connections=321, idle_timeout=7.0, header_timeout=2.0, max_body_bytes=5000)
    adj = ServerLimits.of(settings).adjustments(threads=3)
    assert adj["connection_limit"] == 321 and adj["channel_timeout"] == 7.0 and adj["threads"] == 3
    assert adj["max_request_body_size"] == 5001  # waitress refuses a body of this size or more: 5,000 passes
    assert adj["asyncore_use_poll"] is True and adj["cleanup_interval"] <= 0.5


def test_trickling_clients_neither_freeze_the_server_nor_stay(server: int) -> None:
    """120 connections trickling a byte of headers or body every 0.3 s: beyond waitress's stock connection limit
    (100) and far beyond gunicorn gthread's threads (2 processes x 2 here), which both froze. Normal requests are
    answered at once, and every trickling connection is closed at its deadline (the clients reconnect)."""
    with Trickle(server, 120, interval=0.3, key=KEY, max_connects=2000) as slow:
        assert slow.connects >= 120 and slow.refused == 0
        for _ in range(5):
            started = time.monotonic()
            answer = _get(server, "/ping", timeout=3.0)
            assert answer is not None and answer.startswith(b"HTTP/1.1 200"), "the server froze"
            assert time.monotonic() - started < 3.0
        time.sleep(DEADLINE * 2 + 1.5)  # every connection past its deadline, and the server's next pass
        closes = slow.closes
    assert closes >= 120, f"only {closes} of 120 trickling connections were closed"


def test_a_body_is_not_read_for_a_write_without_the_key_nor_past_the_limit(server: int) -> None:
    """Headers announcing 400 MB and no body yet: answered at once (401 without the key, 413 with it but over
    max_body_bytes), as the API's JSON error, rather than after the server spooled the body."""
    head = "POST /api/articles HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{}"
    big = "Content-Length: 400000000\r\n\r\n"
    status, body = _status_and_json(_exchange(server, head.format(big).encode(), timeout=3.0))
    assert status == 401 and body["error"]["code"] == "unauthorized"
    wrong = head.format(f"Authorization: Bearer nope\r\n{big}")
    assert _status_and_json(_exchange(server, wrong.encode(), timeout=3.0))[0] == 401
    keyed = head.format(f"Authorization: Bearer {KEY}\r\n{big}")
    status, body = _status_and_json(_exchange(server, keyed.encode(), timeout=3.0))
    assert status == 413 and body["error"]["code"] == "request_entity_too_large"
    chunked = head.format(f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunks = "".join(f"{100:x}\r\n{'x' * 100}\r\n" for _ in range(12)) + "0\r\n\r\n"  # 1,200 bytes > MAX_BODY
    assert _status_and_json(_exchange(server, (chunked + chunks).encode(), timeout=3.0))[0] == 413
    read = "GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"  # a read's body: read, ignored
    assert _status_and_json(_exchange(server, read.encode(), timeout=3.0)) == (200, {"ok": True})
    fine = head.format(f"Authorization: Bearer {KEY}\r\nContent-Length: 2\r\n\r\n") + "{}"
    assert _status_and_json(_exchange(server, fine.encode(), timeout=3.0)) == (200, {"n": 2})
