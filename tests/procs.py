"""Running ``newsdesk`` in other processes, for the tests that need real concurrency, real crashes or real sockets
(tests/test_crash.py, tests/test_concurrency.py, the replica and server tests): the CLI, a server on a free port,
writes over HTTP, and clients that trickle bytes at a server.

The test suite's own helpers: bench/ has its runner for benchmarks (bench/serve.py), and neither imports the other,
so a benchmark can change what it measures without a test changing what it checks.

``NEWSDESK_BACKEND=torch`` spares each process the int8 export; every process gets its own session, so a kill
takes its workers with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NEWSDESK = str(Path(sys.executable).with_name("newsdesk"))
KEY = "crash-test-key"
# as users run it (the default backend), and the same pinned to torch for the crash and concurrency trials
PRODUCT_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ENV = {**PRODUCT_ENV, "NEWSDESK_BACKEND": "torch"}
# The int8 backend, named (whatever the environment says): a process loads its export in about a second where torch
# takes 6 to 10 (measured on a 2-core machine), which is most of a short trial. The export must exist already (the
# session's ``embedder`` fixture makes it), or each process would make its own.
INT8 = {**ENV, "NEWSDESK_BACKEND": "onnx-int8"}


PORT_ATTEMPTS = 3  # servers started on a newly picked port when the last one was taken before the server bound it
PORT_TAKEN = ("address already in use", "connection in use")  # what waitress (errno 98) and gunicorn say then


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick for a bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """``newsdesk ARGS`` in its own session (in ``cwd``, by default this one), output appended to ``log``."""
    return subprocess.Popen(
        [NEWSDESK, *args], stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env or ENV, cwd=cwd,
        start_new_session=True,
    )  # fmt: skip


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and everything in its session (a server's workers), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def children(pid: int) -> list[int]:
    """The living child processes of ``pid`` (a gunicorn arbiter's workers), from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def niceness(pid: int) -> int:
    """A process's CPU niceness (its main thread's), from /proc."""
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[16])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's session and wait for it; SIGKILL if it does not go within 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        kill(proc)


def serve(
    directory: Path | None, log: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """A server on ``directory`` (write key ``KEY``) on a free port, once it answers its health check.

    ``directory=None`` with ``args`` such as ``--milvus-uri URI --collections NAME`` serves a stateless replica.
    Without ``--processes`` in ``args`` the server runs one process.

    The port is free when picked but not reserved: until the server binds it (seconds, while it loads), any other
    process may take it, as a client's connection from a test running beside this one in another worker does. A
    server that then exits saying the address is in use is started again on another port (a few times)."""
    env = {**(env or ENV), "NEWSDESK_API_KEY": KEY}
    index = ["--index", str(directory)] if directory is not None else []
    if "--processes" not in args:
        # one process, as the tests were written for: serve's own pick (a process per core and one more,
        # tests/test_server.py) would load the model and index three times per server beside the other xdist
        # worker's tests, and a fresh clone's make test then saw a local Ray node time out starting up
        args = ("--processes", "1", *args)
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        logged = log.stat().st_size if log.exists() else 0
        proc = spawn(["serve", *index, "--port", str(port), *args], log, env, cwd)
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).close()
                return proc, port
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    kill(proc)
                    with log.open("rb") as f:
                        f.seek(logged)
                        said = f.read().decode(errors="replace")
                    if attempt + 1 < PORT_ATTEMPTS and any(m in said.lower() for m in PORT_TAKEN):
                        break
                    raise AssertionError(f"the server did not start:\n{said[-3000:]}") from None
                time.sleep(0.2)
    raise AssertionError("unreachable: the last attempt returns or raises")


@contextlib.contextmanager
def serving(
    count: int,
    directory: Path | None,
    logs: Path,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[list[int]]:
    """``count`` servers as ``serve`` starts them, logging to ``api-N.log`` in ``logs``: their ports; all stopped
    at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        for n in range(count):
            proc, port = serve(directory, logs / f"api-{n}.log", *args, env=env, cwd=cwd)
            procs.append(proc)
            ports.append(port)
        yield ports
    finally:
        for proc in procs:
            stop(proc)


def post(port: int, body: dict[str, Any]) -> int:
    """POST a write batch with the write key; the status (an HTTPError or OSError propagates)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/articles",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return int(r.status)


def get_json(port: int, path: str) -> tuple[int, Any]:
    """GET ``path`` from the server: (status, parsed JSON body), for errors too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class Trickle:
    """``count`` connections to a server on 127.0.0.1, each sending a request's head and then one byte every
    ``interval`` seconds, never finishing: half a search whose headers never end, half a write (with ``key``) whose
    1 MB body never comes. A connection the server closes or answers is counted in ``closes`` and opened again, as
    an attacker would. Runs in one thread between ``with`` and its end."""

    def __init__(self, port: int, count: int, interval: float, key: str, max_connects: int = 10_000) -> None:
        self.port, self.count, self.interval, self.max_connects = port, count, interval, max_connects
        write = (
            f"POST /api/articles HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        )
        self.heads = [b"GET /api/search?q=slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", write.encode()]
        self.connects = self.closes = self.refused = 0
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="trickle", daemon=True)

    def __enter__(self) -> Trickle:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _connect(self, slot: int, selector: selectors.BaseSelector) -> socket.socket | None:
        if self.connects >= self.max_connects:
            return None
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2.0)
            sock.sendall(self.heads[slot % 2])
        except OSError:
            self.refused += 1
            return None
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, slot)
        self.connects += 1
        return sock

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            socks = [self._connect(slot, selector) for slot in range(self.count)]
            self._ready.set()
            try:
                while not self._stop.wait(self.interval):
                    for key, _ in selector.select(timeout=0):  # the server answered or closed it: connect again
                        closed = socks[int(key.data)]
                        if closed is not None:
                            selector.unregister(closed)
                            closed.close()
                            socks[int(key.data)] = None
                            self.closes += 1
                    for slot, sock in enumerate(socks):
                        if sock is None:
                            sock = socks[slot] = self._connect(slot, selector)
                        if sock is not None:
                            with contextlib.suppress(OSError):  # a reset shows as readable on the next pass
                                sock.send(b" " if slot % 2 else b"a")
            finally:
                for sock in socks:
                    if sock is not None:
                        sock.close()
