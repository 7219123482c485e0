"""Writes in a process of their own: how ``newsdesk serve`` with several processes takes writes beside searches.

Why. A write costs a second or more of CPU (chunking, embedding, labelling, the commit, saving the caches), and
``serve`` on 2 cores already keeps both busy with searches. Written in a serving worker, that work shares the CPU
equally with the searches (search p99 2.3x with a writer never pausing, bench/README.md "Search p99 beside writes
over HTTP"), and the searches on keep-alive connections held by the worker that writes wait for the write to end.
So the gunicorn arbiter runs one worker more, which takes no public connections: the first worker to start takes a
lock and becomes the *write process*; it lowers its CPU priority (``write_nice``) before it loads anything, so its
model's threads inherit it, and serves the write routes of the same app on a Unix socket private to the server.
The serving workers' write routes check the key and parse the body as before, then hand the articles to it through
``WriteForwarder`` (the same ``upsert`` and ``delete`` as ``indexer.live.Writer``) and answer what it answered.
Their searches follow its commits as they follow any other process's (``SearchService.refresh``), before any read
that comes after the write's answer.

Why niceness works here: Linux schedules by autogroup (one per session), and the write process is in the server's
own session, so the niceness weighs it against the serving workers, not against the rest of the machine. Writes
still run at full speed on an idle core; under a load that keeps both cores busy they get what the searches leave
(bench/writes_beside.py reports write latency beside searches).

gunicorn supervises the write process like any worker: it is restarted if it dies (its lock goes with it, and the
replacement takes it), and a write that arrives meanwhile waits for it up to ``WAIT_FOR_WRITER`` seconds.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Protocol

from flask import Flask

from indexer.live import Writer, WriteResult
from search.errors import NewsdeskError
from search.jsontypes import JSONValue
from search.models import Article, to_plain

WAIT_FOR_WRITER = 120.0  # seconds a write waits for the write process to (re)start and listen: its index load
WRITE_TIMEOUT = 3600.0  # a write under full search load, niced, can take long; the client's own timeout governs


WRITER = "newsdesk.writer"  # the app's extension doing its writes: an ``ArticleWriter``


class ArticleWriter(Protocol):
    """What the write routes call: ``indexer.live.Writer`` in the process that writes, ``WriteForwarder`` in a
    serving worker of a server with a write process."""

    def upsert(self, articles: list[Article]) -> WriteResult: ...

    def delete(self, article_ids: list[str]) -> WriteResult: ...


def forward_writes(app: Flask, path: Path) -> None:
    """Make ``app`` (a serving worker's) hand its writes to the write process listening at ``path``."""
    settings = app.extensions["newsdesk"].settings
    app.extensions[WRITER] = WriteForwarder(path, settings.api_key)


def prepare_writes(app: Flask) -> None:
    """In the write process, before it listens: load what its first write would (``indexer.live.Writer.prepare``),
    so that no write pays for it niced under a full search load."""
    writer = app.extensions[WRITER]
    if isinstance(writer, Writer):
        writer.prepare()


class WriteProcessUnavailable(NewsdeskError):
    """The server's write process did not answer: it is not running, or it could not start (its log says why)."""

    code = "write_process_unavailable"
    status = 503


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the write process's Unix socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("newsdesk-writer", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class WriteForwarder:
    """``indexer.live.Writer``'s ``upsert`` and ``delete``, done by the write process at ``path``.

    The articles were parsed and checked by the serving worker (a bad body is answered there, without a round
    trip); the write process parses them again from their plain form, with the same limits. Its error answers come
    back as the same ``NewsdeskError`` class (by their code), so the serving worker answers them in the one error
    shape, with the same status."""

    def __init__(self, path: Path, write_key: str) -> None:
        self.path = path
        self._headers = {"Authorization": f"Bearer {write_key}", "Content-Type": "application/json"}

    def upsert(self, articles: list[Article]) -> WriteResult:
        return self._call("POST", {"articles": [to_plain(a) for a in articles]})

    def delete(self, article_ids: list[str]) -> WriteResult:
        return self._call("DELETE", {"ids": list(article_ids)})

    def _call(self, method: str, body: JSONValue) -> WriteResult:
        data = json.dumps(body, ensure_ascii=False).encode()
        conn = self._connected()
        try:
            # sent once: a write that reached the write process is never sent again (it may have committed)
            conn.request(method, "/api/articles", body=data, headers=self._headers)
            response = conn.getresponse()
            status, text = response.status, response.read()
            answer = json.loads(text)
        except (OSError, http.client.HTTPException, ValueError) as exc:  # reset, cut short, or not its JSON
            raise WriteProcessUnavailable(f"the write process stopped answering during a write: {exc!r}") from exc
        finally:
            conn.close()
        if status != 200:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            raise error_of(str(error.get("code", "")), str(error.get("message", "")), status)
        return WriteResult(list(answer["written"]), list(answer["deleted"]), int(answer["generation"]))

    def _connected(self) -> _UnixConnection:
        """A connection to the write process, waiting for it while it starts (or restarts after dying)."""
        deadline = time.monotonic() + WAIT_FOR_WRITER
        while True:
            conn = _UnixConnection(self.path, WRITE_TIMEOUT)
            try:
                conn.connect()
                return conn
            except OSError as exc:  # no socket yet, or nobody listening on it
                if time.monotonic() > deadline:
                    raise WriteProcessUnavailable(
                        f"the write process has not answered for {WAIT_FOR_WRITER:.0f} s: {exc}"
                    ) from exc
                time.sleep(0.1)


def error_of(code: str, message: str, status: int) -> NewsdeskError:
    """The ``NewsdeskError`` an answer's error code names (any subclass, by its ``code``), else a plain one with
    the answer's status: a write refused by the write process is refused by the serving worker the same way."""
    pending: list[type[NewsdeskError]] = [NewsdeskError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls(message)
        pending.extend(cls.__subclasses__())
    error = NewsdeskError(message or f"the write process answered HTTP {status}")
    error.code, error.status = code or "write_failed", status
    return error
