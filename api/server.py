"""Running the WSGI app: waitress threads in one process, or gunicorn worker processes each running waitress.

One process is enough for I/O-bound traffic, but a search is mostly Python holding the GIL (fusion, BM25 scoring,
serialisation) around an ONNX call that releases it, so one process uses little more than one core however many
threads it has. ``processes > 1`` runs gunicorn workers: each worker is forked *before* it builds the app, so every
process loads its own model and index after the fork, and no process forks after torch, onnxruntime or FAISS
started threads.

Slow clients. A request is read whole, headers and body, by waitress's event loop before a thread runs the app, so
a client trickling bytes holds no request thread. gunicorn's own ``gthread`` worker reads a request inside its
thread pool: 8 connections sending a header byte a second froze ``--processes 2`` with 4 threads each. So the
gunicorn workers here (``WaitressWorker``) run waitress's loop on the sockets gunicorn listens on, and gunicorn
keeps what it is for (forking, supervising, restarting and stopping workers). Neither server bounds how long a
request may take to arrive (waitress's ``channel_timeout`` only closes connections that send *nothing* for that
long, so one byte a second keeps a connection forever, and at ``connection_limit`` connections, 100 by default, it
stops accepting), hence ``harden``: each request must finish its headers within ``header_timeout`` of its first
byte and its body within ``body_timeout`` of its headers, else its connection is closed; idle connections close
after ``idle_timeout``; each process holds at most ``max_connections``.

Bodies. waitress refuses a body over ``max_body_bytes`` (by ``Content-Length`` before reading it, a chunked one
as soon as it grows past), and before reading any body the app's ``early_refusal`` hook may refuse the request from
its headers: a write without the write key is answered 401/403 without the server spooling up to 16 MiB for an
unauthenticated caller. Errors the server answers itself are the API's JSON error shape.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypedDict

from flask import Flask
from gunicorn.errors import HaltServer
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server
from waitress.utilities import Error, RequestEntityTooLarge

from api.writes import forward_writes, prepare_writes
from search.errors import NewsdeskError
from search.settings import Settings

log = logging.getLogger("newsdesk.server")

# The app's hook (``app.extensions[EARLY_REFUSAL]``): given a request's method, path and headers (upper-case, as
# waitress keeps them: ``AUTHORIZATION``, ``CONTENT_LENGTH``), the status, code, message and extra headers to
# answer instead of reading its body, or None to read it.
EARLY_REFUSAL = "newsdesk.early_refusal"
Refusal = tuple[int, str, str, Mapping[str, str]]
RefusalHook = Callable[[str, str, Mapping[str, str]], Refusal | None]
WORKER_BOOT_ERROR = 3  # gunicorn's status for a worker that could not start: its arbiter then stops
LOOP_SECONDS = 0.5  # how often the loop wakes when idle: deadlines are enforced within about this much


class WaitressOptions(TypedDict):
    """The options ``ServerLimits.adjustments`` gives waitress's ``create_server`` (its ``Adjustments``)."""

    threads: int
    ident: str
    channel_timeout: float
    connection_limit: int
    cleanup_interval: float
    asyncore_loop_timeout: float
    asyncore_use_poll: bool
    max_request_body_size: int


class _TaskDispatcher(Protocol):
    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> object: ...


class _Serving(Protocol):
    """What waitress's ``create_server`` returns, as used here (waitress has no type hints): a ``BaseWSGIServer``
    listening on one socket, or a ``MultiSocketServer`` holding one per socket in its ``map``."""

    task_dispatcher: _TaskDispatcher

    def print_listen(self, format_str: str) -> None: ...

    def run(self) -> None: ...


@dataclass(frozen=True)
class ServerLimits:
    """What a serving process bounds, from the settings of the same names."""

    header_timeout: float
    body_timeout: float
    idle_timeout: float
    max_connections: int
    max_body_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> ServerLimits:
        return cls(
            settings.header_timeout,
            settings.body_timeout,
            settings.idle_timeout,
            settings.max_connections,
            settings.max_body_bytes,
        )

    def adjustments(self, threads: int) -> WaitressOptions:
        """waitress's own options: the limits it has, and maintenance often enough for the deadlines."""
        return {
            "threads": threads,
            "ident": "newsdesk",
            "channel_timeout": self.idle_timeout,
            "connection_limit": self.max_connections,
            "cleanup_interval": min(1.0, self.header_timeout / 4),
            "asyncore_loop_timeout": LOOP_SECONDS,
            "asyncore_use_poll": True,  # select() stops at file descriptor 1024
            "max_request_body_size": self.max_body_bytes + 1,  # waitress refuses a body of this size or more
        }


# What ``newsdesk serve`` runs when not told (``plan_server``), from bench/README.md ("Server configurations": the
# 110k-passage real index, 4 clients, hybrid searches, 2 cores shared with other jobs). A search is GIL-bound Python
# around an ONNX call, so a process uses about one core and a core needs a process: one process with 4 threads spent
# 35 ms of CPU per search where several single-threaded processes spent 25-31 (2, 3 or 4 of them, and 2 x 2 threads,
# within the noise of one another). Keep-alive connections stay with the worker that accepted them, so 4 clients
# may split 3:1 over 2 workers; one process more than the cores keeps the cores busy then. Each process holds its
# own model and index, so the spare is one, not one per core.
SPARE_PROCESSES = 1
THREADS_PER_PROCESS = 1
# With a write process (api/writes.py), 2: a serving worker hands a write over and waits for it, niced, for as long
# as the searches keep the cores busy; its keep-alive connections' searches run on the second thread meanwhile.
# (2 x 2 threads served within the noise of 2 single-threaded processes, bench/README.md "Server configurations".)
THREADS_WITH_WRITES = 2
SINGLE_PROCESS_THREADS = 4  # one process (one core, or an index one process at a time may open): requests overlap


@dataclass(frozen=True)
class ServerPlan:
    """How ``newsdesk serve`` runs: processes x request threads, and why (said in one line at start-up)."""

    processes: int
    threads: int
    why: str

    @property
    def server(self) -> str:
        return "waitress" if self.processes == 1 else "gunicorn with waitress workers"

    def describe(self) -> str:
        return f"{self.server}, {self.processes} process(es) x {self.threads} thread(s): {self.why}"


@dataclass(frozen=True)
class WriteProcess:
    """Where a server with several processes does its writes (api/writes.py): one more gunicorn worker, the first
    to take ``lock``, serving the write routes on the Unix socket ``socket`` at CPU niceness ``nice``."""

    socket: Path
    lock: Path
    nice: int

    def claim(self) -> bool:
        """Become the write process, if no living worker is: the lock is held by an open descriptor this process
        keeps until it exits, so a write process that dies frees it for the worker gunicorn starts in its place.
        Called right after the fork, with one thread: the niceness (Linux: per thread) is inherited by every
        thread the worker starts after it, the model's among them."""
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.setpriority(os.PRIO_PROCESS, 0, max(self.nice, os.getpriority(os.PRIO_PROCESS, 0)))
        return True


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's cpuset, ``taskset``), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        return os.cpu_count() or 1


def plan_server(
    cores: int,
    processes: int | None = None,
    threads: int | None = None,
    single: str | None = None,
    writes: bool = False,
) -> ServerPlan:
    """The processes and threads to serve with on ``cores`` cores: what was asked, else the measured best.

    ``single`` is why only one process may serve (Milvus Lite opens in one process at a time); it overrides the
    default, never an explicit ``processes``, which the caller checks and refuses. ``writes``: the server may take
    writes, so several processes get a write process and a second thread each (``THREADS_WITH_WRITES``)."""
    per_process = THREADS_WITH_WRITES if writes else THREADS_PER_PROCESS
    if processes is not None:
        count = threads if threads is not None else (SINGLE_PROCESS_THREADS if processes == 1 else per_process)
        return ServerPlan(processes, count, "as asked (--processes)")
    if single is not None:
        return ServerPlan(1, threads or SINGLE_PROCESS_THREADS, f"one process, since {single}")
    if cores <= 1:
        return ServerPlan(
            1, threads or SINGLE_PROCESS_THREADS, "1 usable core: one process, requests overlapping in threads"
        )
    count = cores + SPARE_PROCESSES
    each = f"{per_process} threads each (one may wait on the write process)" if writes else "1 thread each"
    return ServerPlan(
        count,
        threads or per_process,
        f"{cores} usable cores: a process per core for GIL-bound searches and {SPARE_PROCESSES} more for uneven "
        f"keep-alive connections, {each}: the least CPU per search measured (bench/README.md)",
    )


def serve(
    make_app: Callable[[], Flask],
    host: str,
    port: int,
    *,
    threads: int,
    processes: int = 1,
    timeout: int = 300,
    limits: ServerLimits | None = None,
    write_nice: int | None = None,
) -> None:
    """Serve ``make_app()`` on ``host:port`` until interrupted; ``make_app`` runs once per serving process.

    With several processes and ``write_nice`` (writes are possible), one more process does every write at that
    CPU niceness (api/writes.py); one process serving writes in itself."""
    limits = limits or ServerLimits.of(Settings())
    if processes <= 1:
        app = make_app()
        server = harden(create_server(app, host=host, port=port, **limits.adjustments(threads)), limits, _hook(app))
        server.print_listen("Serving on http://{}:{}")
        server.run()
        return
    # not a TemporaryDirectory: gunicorn's workers are forks of this call and leave by SystemExit through it, so
    # its cleanup ran in the first worker to stop and took the write process's lock and socket with it
    scratch = Path(tempfile.mkdtemp(prefix="newsdesk-serve-"))
    arbiter = os.getpid()
    failure = scratch / "boot-error"
    writes = None if write_nice is None else WriteProcess(scratch / "writer.sock", scratch / "writer.lock", write_nice)
    options = _gunicorn_options(host, port, processes + (writes is not None), threads, timeout)
    try:
        _GunicornApp(make_app, options, limits, failure, writes).run()
    except (SystemExit, HaltServer):  # halt() ends in SystemExit, or re-raises as a second worker fails
        said = failure.read_text(encoding="utf-8") if failure.exists() and os.getpid() == arbiter else ""
        if said:  # a worker could not build the app (a damaged index): the CLI's one line, not gunicorn's exit 3
            raise NewsdeskError(said) from None
        raise
    finally:
        if os.getpid() == arbiter:
            shutil.rmtree(scratch, ignore_errors=True)


def _gunicorn_options(host: str, port: int, processes: int, threads: int, timeout: int) -> dict[str, object]:
    return {
        "bind": f"{host}:{port}",
        "workers": processes,
        "worker_class": WaitressWorker,
        "threads": threads,
        "preload_app": False,  # build the app in each worker, after its fork
        "timeout": timeout,  # a worker loading a large index must not be killed as hung
        "graceful_timeout": 10,
        "accesslog": None,  # the app writes its own structured request log
        "proc_name": "newsdesk",
        "post_fork": _claim_writes,
        "post_worker_init": _worker_ready,
    }


WORKER_READY = "worker ready"  # logged by each gunicorn worker once its app is built
WRITER_READY = "write process ready"  # logged instead by the worker that does the writes


def _claim_writes(server: object, worker: object) -> None:
    """gunicorn's ``post_fork`` hook, in the new worker before it loads anything: become the write process if the
    server has one and no living worker holds its lock."""
    app = getattr(worker, "app", None)
    if isinstance(app, _GunicornApp) and app.writes is not None and app.writes.claim():
        app.writes_here = True


def _worker_ready(worker: object) -> None:
    """gunicorn's ``post_worker_init`` hook: say that this worker has loaded its model and index and now accepts.

    ``/api/health`` answers as soon as one worker is up; keep-alive connections opened before the others are up
    all stay with that one (bench/serve.py's 4 clients could all land on the first), so a client that cares waits for
    as many of these lines as the start-up line announced processes."""
    log = getattr(worker, "log", None)
    app = getattr(worker, "app", None)
    if log is not None:
        said = WRITER_READY if isinstance(app, _GunicornApp) and app.writes_here else WORKER_READY
        log.info("%s (pid %d)", said, os.getpid())


def harden(server: _Serving, limits: ServerLimits, hook: RefusalHook | None = None) -> _Serving:
    """``server`` (made by waitress's ``create_server``) with request deadlines and JSON errors.

    Each listening server of it reads requests with a ``_Parser`` (which records when a request started and asks
    ``hook`` before reading its body) and closes late requests in its maintenance pass, which
    waitress runs every ``cleanup_interval`` seconds from its loop.
    """
    parser = type("Parser", (_Parser,), {"hook": staticmethod(hook) if hook else None})
    for each in _listeners(server):
        each.channel_class = type("Channel", (HTTPChannel,), {"parser_class": parser})
        each.maintenance = _maintenance(each, limits)
    return server


def yield_when_busy(listener: BaseWSGIServer, threads: int) -> None:
    """Make a worker whose every thread is busy and which holds more connections than threads stop accepting, so
    that the connections arriving meanwhile go to the other workers on the same socket. Without it the kernel
    handed them to whichever worker polled first: in one bench/serve.py run all four keep-alive clients landed on
    one of three workers, which kept one core busy of two for the whole minute (hybrid: 47.8 searches/s of a
    92.5/s bound). An idle worker, or one with a thread free, accepts as before, so idle keep-alive connections
    never keep a new one waiting; a busy one accepts again as soon as a thread is free."""
    stock = listener.readable
    dispatcher = listener.task_dispatcher

    def readable() -> bool:
        if not stock():
            return False
        busy = dispatcher.active_count + len(dispatcher.queue) >= threads
        return not (busy and len(listener.active_channels) > threads)

    listener.readable = readable


def _listeners(server: _Serving) -> list[BaseWSGIServer]:
    """The listening servers of what ``create_server`` returned: itself, or those of a multi-socket server."""
    if isinstance(server, BaseWSGIServer):
        return [server]
    if isinstance(server, MultiSocketServer):
        return [d for d in server.map.values() if isinstance(d, BaseWSGIServer)]
    raise TypeError(f"not a waitress server: {type(server).__name__}")


def _hook(app: object) -> RefusalHook | None:
    """The app's early-refusal hook, if it has one (waitress may wrap the app, so it is read here, unwrapped)."""
    extensions = getattr(app, "extensions", None)
    hook = extensions.get(EARLY_REFUSAL) if isinstance(extensions, dict) else None
    return hook if callable(hook) else None


def _maintenance(server: BaseWSGIServer, limits: ServerLimits) -> Callable[[float], None]:
    stock = server.maintenance

    def maintenance(now: float) -> None:
        stock(now)  # idle connections past channel_timeout
        clock = time.monotonic()
        for channel in list(server.active_channels.values()):
            request = channel.request
            if isinstance(request, _Parser) and request.late(clock, limits):
                log.info("closing a connection from %s: its request did not arrive in time", channel.addr)
                channel.will_close = True  # its loop closes it at the next pass

    return maintenance


class _JsonError(Error):  # type: ignore[misc]
    """An error the server answers itself, in the API's shape."""

    def __init__(self, code: int, reason: str, slug: str, message: str, headers: Mapping[str, str] = {}) -> None:
        super().__init__(message)
        self.code, self.reason, self.slug, self.headers = code, reason, slug, dict(headers)

    @classmethod
    def of(cls, error: Error) -> _JsonError:
        slug = error.reason.lower().replace(" ", "_")
        return cls(error.code, error.reason, slug, f"{error.reason.lower()}: {error.body}")

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        body = json.dumps({"error": {"code": self.slug, "message": self.body}}).encode()
        return f"{self.code} {self.reason}", [("Content-Type", "application/json"), *self.headers.items()], body


_REASONS = {401: "Unauthorized", 403: "Forbidden", 413: "Request Entity Too Large"}


class _Parser(HTTPRequestParser):  # type: ignore[misc]
    """One request as it arrives: when it started, when its headers ended, and the app's verdict on its headers
    before any of its body is read."""

    hook: RefusalHook | None = None
    error: Error | None = None  # waitress's own class attributes, typed
    completed = False
    headers_finished = False
    expect_continue = False

    def __init__(self, adj: Adjustments) -> None:
        super().__init__(adj)
        self.started = time.monotonic()
        self.headers_at: float | None = None

    def received(self, data: bytes) -> int:
        had_headers = self.headers_finished
        consumed: int = super().received(data)
        if self.headers_finished and not had_headers:
            self.headers_at = time.monotonic()
            body_ahead = self.error is None and not self.completed
            if (body_ahead or isinstance(self.error, RequestEntityTooLarge)) and self.hook is not None:
                refusal = self.hook(self.command or "", self.path or "", self.headers)
                if refusal is not None:
                    status, code, message, headers = refusal
                    self.error = _JsonError(status, _REASONS.get(status, "Refused"), code, message, headers)
                    self.completed = True  # answered now; the unread body is dropped with the connection
                    self.expect_continue = False  # and no "100 Continue" invites it
        if isinstance(self.error, RequestEntityTooLarge):
            limit = self.adj.max_request_body_size - 1
            message = f"the body is over the limit of {limit} bytes (max_body_bytes)"
            self.error = _JsonError(413, RequestEntityTooLarge.reason, "request_entity_too_large", message)
        elif self.error is not None and not isinstance(self.error, _JsonError):
            self.error = _JsonError.of(self.error)
        return consumed

    def late(self, now: float, limits: ServerLimits) -> bool:
        if self.completed:
            return False
        if self.headers_at is None:
            return now - self.started > limits.header_timeout
        return now - self.headers_at > limits.body_timeout


def _gunicorn_base(module: str, name: str) -> type:
    import importlib

    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


class WaitressWorker(_gunicorn_base("gunicorn.workers.base", "Worker")):  # type: ignore[misc]
    """A gunicorn worker that serves with waitress (see the module docstring): connections are read by an event
    loop, requests run on ``threads`` threads, and the loop tells the arbiter it is alive between passes."""

    def run(self) -> None:
        limits: ServerLimits = self.app.limits
        socket_map: dict[int, object] = {}
        writes: WriteProcess | None = self.app.writes
        private = writes is not None and self.app.writes_here
        if writes is not None and private:  # the write process: the private socket, not the public one
            where: dict[str, object] = {"unix_socket": str(writes.socket), "unix_socket_perms": "600"}
        else:
            where = {"sockets": [getattr(s, "sock", s) for s in self.sockets]}
        server = create_server(self.wsgi, map=socket_map, **where, **limits.adjustments(self.cfg.threads))
        harden(server, limits, _hook(self.wsgi))
        if not private:  # the public socket, shared with the other workers
            for listener in _listeners(server):
                yield_when_busy(listener, int(self.cfg.threads))
        parent = self.ppid
        try:
            while self.alive:
                self.notify()
                wasyncore.loop(timeout=LOOP_SECONDS, map=socket_map, use_poll=True, count=1)
                if os.getppid() != parent:
                    self.log.info("parent changed, shutting down: %s", self)
                    break
        finally:
            for listener in _listeners(server):
                listener.accepting = False
            server.task_dispatcher.shutdown(timeout=self.cfg.graceful_timeout)


class _GunicornApp(_gunicorn_base("gunicorn.app.base", "BaseApplication")):  # type: ignore[misc]
    """gunicorn's documented custom-application hook: options from a dict, the app from a factory."""

    def __init__(
        self,
        make_app: Callable[[], Flask],
        options: dict[str, object],
        limits: ServerLimits,
        failure: Path,
        writes: WriteProcess | None = None,
    ) -> None:
        self._make_app = make_app
        self._options = options
        self.limits = limits
        self._failure = failure
        self.writes = writes
        self.writes_here = False  # set in the one worker that claims the writes (``_claim_writes``)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        """The app, built in the worker after its fork. An index that cannot be opened is the user's error, as in one
        process: its message goes to ``failure`` for the parent to report in one line, and the worker leaves at
        once with gunicorn's boot-error status (``os._exit``: a forked copy of the caller must not unwind its
        stack), which stops the arbiter."""
        try:
            app = self._make_app()
            if self.writes is not None and not self.writes_here:
                forward_writes(app, self.writes.socket)
            elif self.writes is not None:
                prepare_writes(app)
            return app
        except NewsdeskError as exc:
            self._failure.write_text(str(exc), encoding="utf-8")
            os._exit(WORKER_BOOT_ERROR)
