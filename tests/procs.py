"""Running ``newsdesk`` in other processes, for the tests that need real concurrency or real crashes
(tests/test_crash.py, tests/test_concurrency.py): the CLI, a server on a free port, writes over HTTP.

``NEWSDESK_BACKEND=torch`` spares each process the int8 export; every process gets its own session, so a kill
takes its workers with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.serve import free_port

NEWSDESK = str(Path(sys.executable).with_name("newsdesk"))
KEY = "crash-test-key"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NEWSDESK_BACKEND": "torch"}


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``newsdesk ARGS`` in its own session, output appended to ``log``."""
    return subprocess.Popen(
        [NEWSDESK, *args], stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env or ENV, start_new_session=True
    )


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and everything in its session (a server's workers), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's session and wait for it; SIGKILL if it does not go within 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        kill(proc)


def serve(
    directory: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """A server on ``directory`` (write key ``KEY``) on a free port, once it answers its health check."""
    port = free_port()
    env = {**(env or ENV), "NEWSDESK_API_KEY": KEY}
    proc = spawn(["serve", "--index", str(directory), "--port", str(port), *args], log, env)
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                kill(proc)
                raise AssertionError(f"the server did not start:\n{log.read_text(errors='replace')[-3000:]}") from None
            time.sleep(0.2)


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
