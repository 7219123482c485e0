"""``newsdesk serve``: one waitress process, or gunicorn workers that each load the model and index after forking."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import api.server
from api.cli import main
from api.server import (
    SINGLE_PROCESS_THREADS,
    SPARE_PROCESSES,
    THREADS_PER_PROCESS,
    THREADS_WITH_WRITES,
    WORKER_READY,
    WRITER_READY,
    plan_server,
    usable_cores,
    yield_when_busy,
)
from tests import procs
from tests.procs import free_port


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_serve_without_an_index_is_one_line_and_exit_1(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["serve", "--index", str(tmp_path / "missing"), "--processes", "2"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: no index at")
    assert len(result.output.strip().splitlines()) == 1


def test_serve_rejects_zero_processes(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["serve", "--index", str(tmp_path), "--processes", "0"])
    assert result.exit_code == 2


def _write(base: str, method: str, body: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {procs.KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"{base}/api/articles", json.dumps(body).encode(), headers, method=method)
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def test_two_worker_processes_serve_one_index(sample_index: Path, tmp_path: Path) -> None:
    """Both workers are forked before loading anything, answer searches, and stop on SIGTERM; a third, niced, does
    the writes they are sent (api/writes.py), and gunicorn starts another in its place when it dies."""
    index = tmp_path / "index"
    shutil.copytree(sample_index, index)
    log = tmp_path / "server.log"
    proc, port = procs.serve(index, log, "--processes", "2", "--workers", "2", "--backend", "torch")
    base = f"http://127.0.0.1:{port}"
    try:
        health = _get(f"{base}/api/health")
        assert health["status"] == "ok" and health["articles"] > 1
        body = _get(f"{base}/api/search?q=why+is+North+Korea+accusing+the+US")
        assert body["results"] and "NATO" in json.dumps(body["results"][0])
        deadline = time.monotonic() + 60  # each worker says when its model and index are loaded (bench/serve.py)
        while (log.read_text().count(WORKER_READY) < 2 or WRITER_READY not in log.read_text()) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert log.read_text().count(WORKER_READY) == 2 and log.read_text().count(WRITER_READY) == 1
        said = log.read_text()
        started = "(writes in a process of their own at nice 10) with gunicorn with waitress workers, 2 process(es) x 2"
        assert started in said and "thread(s): as asked" in said
        children = procs.children(proc.pid)
        assert sorted(procs.niceness(c) for c in children) == [0, 0, 10]
        article = {"id": "moon/1", "title": "Penguins colonise the lunar base", "paragraphs": ["Emperor penguins."]}
        assert _write(base, "POST", article)["written"] == ["moon/1"]
        for _ in range(4):  # whichever worker answers has followed the write
            assert _get(f"{base}/api/search?q=penguins+on+the+moon&k=1")["results"][0]["article"]["id"] == "moon/1"
        writer = next(c for c in children if procs.niceness(c) == 10)
        os.kill(writer, signal.SIGKILL)  # a write it was doing would be answered 503: its outcome is unknown
        deadline = time.monotonic() + 30
        while writer in procs.children(proc.pid) and time.monotonic() < deadline:  # until gunicorn reaped it
            time.sleep(0.05)
        assert _write(base, "DELETE", {"ids": ["moon/1"]})["deleted"] == ["moon/1"]  # waits for the new one
        now = procs.children(proc.pid)
        assert writer not in now and sorted(procs.niceness(c) for c in now) == [0, 0, 10]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()


def test_a_server_whose_port_is_taken_before_it_binds_starts_on_another(
    sample_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A free port is not reserved: another process (a test's client in the worker beside this one) may hold it by
    the time the server binds, and the server exits. ``procs.serve`` starts it again on another port rather than
    failing the test that wanted a server."""
    with socket.socket() as held:  # bound, not listening: what a client's connection does to its local port
        held.bind(("127.0.0.1", 0))
        taken = int(held.getsockname()[1])
        picks = [taken]
        monkeypatch.setattr(procs, "free_port", lambda: picks.pop() if picks else free_port())
        log = tmp_path / "server.log"
        proc, port = procs.serve(sample_index, log, env=procs.PRODUCT_ENV)
        try:
            assert port != taken and _get(f"http://127.0.0.1:{port}/api/health")["status"] == "ok"
            assert "address already in use" in log.read_text().lower()  # the first start did fail on the port
        finally:
            procs.stop(proc)


# -- what `serve` picks when not told ------------------------------------------------------------------------------


def test_the_default_plan_follows_the_cores() -> None:
    two = plan_server(2)
    assert (two.processes, two.threads) == (2 + SPARE_PROCESSES, THREADS_PER_PROCESS)
    writing = plan_server(2, writes=True)  # a process may wait on the write process: a second thread
    assert (writing.processes, writing.threads) == (2 + SPARE_PROCESSES, THREADS_WITH_WRITES)
    assert "2 threads each (one may wait on the write process)" in writing.why
    assert two.server == "gunicorn with waitress workers" and "2 usable cores" in two.why
    eight = plan_server(8)
    assert eight.processes == 8 + SPARE_PROCESSES
    one = plan_server(1)
    assert (one.processes, one.threads, one.server) == (1, SINGLE_PROCESS_THREADS, "waitress")


def test_what_is_asked_wins_and_one_process_when_only_one_may_open() -> None:
    asked = plan_server(2, processes=1)
    assert (asked.processes, asked.threads) == (1, SINGLE_PROCESS_THREADS) and "as asked" in asked.why
    assert (plan_server(2, processes=2, threads=3).processes, plan_server(2, processes=2, threads=3).threads) == (2, 3)
    assert plan_server(2, threads=2).threads == 2  # --workers alone keeps the picked processes
    lite = plan_server(2, single="Milvus Lite opens in one process at a time")
    assert lite.processes == 1 and "Milvus Lite" in lite.describe()


def test_usable_cores_is_the_affinity_not_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cores() == 1


def test_serve_says_what_it_picked_in_one_line(
    runner: CliRunner, sample_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --processes and --workers, ``serve`` runs the plan for the cores it may use, and says so."""
    ran: list[dict[str, object]] = []
    monkeypatch.setattr(api.server, "serve", lambda make_app, host, port, **kw: ran.append(kw))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    result = runner.invoke(main, ["serve", "--index", str(sample_index)])
    assert result.exit_code == 0, result.output
    plan = plan_server(2)
    assert ran[0]["processes"] == plan.processes and ran[0]["threads"] == plan.threads
    line = result.output.strip()
    assert len(line.splitlines()) == 1
    assert line.endswith(plan.describe()) and "gunicorn" in line and "2 usable cores" in line
    ran.clear()
    result = runner.invoke(main, ["serve", "--index", str(sample_index), "--processes", "1", "--workers", "2"])
    assert result.exit_code == 0 and (ran[0]["processes"], ran[0]["threads"]) == (1, 2)
    assert "waitress, 1 process(es) x 2 thread(s): as asked" in result.output


def test_the_default_server_names_an_index_it_cannot_open_in_one_line(sample_index: Path, tmp_path: Path) -> None:
    """Several worker processes open the index after their fork; one that cannot says why in the parent's one
    error line and exit status 1, as one process does, not in gunicorn's traceback and exit status 3."""
    copy = tmp_path / "idx"
    shutil.copytree(sample_index, copy)
    (copy / "newsdesk.sqlite").write_bytes(b"not a database at all " * 200)
    done = subprocess.run(
        [procs.NEWSDESK, "serve", "--index", str(copy), "--port", "0", "--processes", "2"],
        env=procs.INT8, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "gunicorn" in done.stderr
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "newsdesk.sqlite" in last


def test_a_busy_worker_leaves_new_connections_to_the_others() -> None:
    """A waitress worker with its one thread busy and more connections than threads stops accepting (those
    connections wait in the shared socket's backlog for another worker), and accepts again once a thread is
    free; an idle one accepts however many keep-alive connections it holds."""
    import threading

    from waitress.server import create_server
    from waitress.wasyncore import loop

    release = threading.Event()

    def app(environ: Any, start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/slow":
            release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    socket_map: dict[int, object] = {}
    server = create_server(app, host="127.0.0.1", port=0, threads=1, map=socket_map)
    yield_when_busy(server, 1)
    stop = threading.Event()
    looping = threading.Thread(target=lambda: [loop(0.02, True, socket_map, 1) for _ in iter(stop.is_set, True)])
    looping.start()
    port = server.socket.getsockname()[1]
    clients: list[socket.socket] = []
    try:

        def connect() -> socket.socket:
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(conn)
            return conn

        def settle(channels: int) -> bool:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if len(server.active_channels) == channels:
                    return True
                time.sleep(0.02)
            return False

        idle = [connect() for _ in range(3)]  # idle keep-alive connections: all accepted
        assert settle(3)
        for conn in idle:
            conn.close()
        assert settle(0)
        busy = connect()
        busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        second = connect()
        assert settle(2)  # the thread is busy, yet at one connection per thread it still accepts
        connect()
        time.sleep(0.3)
        assert len(server.active_channels) == 2  # busy and over: the third waits in the backlog
        release.set()
        assert busy.recv(1024).startswith(b"HTTP/1.1 200")
        assert settle(3)  # a thread is free: accepted
        second.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert second.recv(1024).startswith(b"HTTP/1.1 200")
    finally:
        release.set()
        stop.set()
        looping.join(5)
        for conn in clients:
            conn.close()
        server.close()
        server.task_dispatcher.shutdown(timeout=1)
