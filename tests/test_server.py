"""``newsdesk serve``: one waitress process, or gunicorn workers that each load the model and index after forking."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from api.cli import main
from tests import procs
from tests.procs import free_port


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _children(pid: int) -> list[int]:
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


def test_serve_without_an_index_is_one_line_and_exit_1(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["serve", "--index", str(tmp_path / "missing"), "--processes", "2"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: no index at")
    assert len(result.output.strip().splitlines()) == 1


def test_serve_rejects_zero_processes(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["serve", "--index", str(tmp_path), "--processes", "0"])
    assert result.exit_code == 2


def test_two_worker_processes_serve_one_index(sample_index: Path, tmp_path: Path) -> None:
    """Both workers are forked before loading anything, answer searches, and stop on SIGTERM."""
    log = tmp_path / "server.log"
    proc, port = procs.serve(sample_index, log, "--processes", "2", "--workers", "2", "--backend", "torch")
    base = f"http://127.0.0.1:{port}"
    try:
        health = _get(f"{base}/api/health")
        assert health["status"] == "ok" and health["articles"] > 1
        assert len(_children(proc.pid)) == 2
        body = _get(f"{base}/api/search?q=why+is+North+Korea+accusing+the+US")
        assert body["results"] and "NATO" in json.dumps(body["results"][0])
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
