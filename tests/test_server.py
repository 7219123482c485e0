"""``newsdesk serve``: one waitress process, or gunicorn workers that each load the model and index after forking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from api.cli import main
from tests.procs import free_port

NEWSDESK = Path(sys.executable).with_name("newsdesk")


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
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    args = ["serve", "--index", str(sample_index), "--port", str(port), "--processes", "2", "--workers", "2"]
    proc = subprocess.Popen(
        [str(NEWSDESK), *args, "--backend", "torch"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                health = _get(f"{base}/api/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        assert health["status"] == "ok" and health["articles"] > 1
        assert len(_children(proc.pid)) == 2
        body = _get(f"{base}/api/search?q=why+is+North+Korea+accusing+the+US")
        assert body["results"] and "NATO" in json.dumps(body["results"][0])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "server.log").read_text()
