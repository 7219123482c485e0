"""Several API processes serving one corpus whose vectors live in a Milvus server (issue 8, acceptance 4).

The Milvus server here is Milvus Lite's own gRPC server (``python -m milvus_lite server``) in a process of its own,
reached at an ``http://`` URI exactly as a Milvus standalone or cluster is: the API processes hold no vectors
themselves, share the SQLite store read-only between writes, and must answer the same query identically, including
after one of them takes a write.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CORPUS
from tests.procs import PRODUCT_ENV, free_port, post, serving

QUERIES = ("central bank raises interest rates", "football match result", "new phone launch")


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "milvus.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "milvus"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "milvus.log").read_text()
        time.sleep(0.2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    body.pop("took_ms", None)  # the only field that may differ between two identical answers
    return body


def test_two_api_processes_on_one_milvus_corpus_answer_alike(milvus_server: str, tmp_path: Path) -> None:
    index = tmp_path / "corpus"
    built = subprocess.run(
        [str(Path(sys.executable).with_name("newsdesk")), "index", str(CORPUS), "--index", str(index), "--quiet",
         "--store", "milvus", "--milvus-uri", milvus_server],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["store"] == "milvus" and manifest["milvus"]["uri"] == milvus_server
    assert not any(index.glob("*.faiss"))  # no vectors beside the store: they are in the Milvus server only
    with serving(2, index, tmp_path, "--workers", "2", env=PRODUCT_ENV) as (a, b):
        paths = [f"/api/search?q={q.replace(' ', '+')}&k=5" for q in QUERIES]
        paths += ["/api/articles/business%2F001/similar?k=5", "/api/articles/sport%2F001/timeline?k=5"]
        for path in paths:
            first = _get(a, path)
            assert first == _get(b, path), path
        assert _get(a, paths[0])["results"], "the corpus should answer the query"
        # a write through one replica is served by the other (it reloads on the store's generation)
        article = {"id": "replica/1", "title": "Central bank raises interest rates again", "paragraphs": [
            "The central bank raised its main interest rate by half a point to fight inflation."]}  # fmt: skip
        assert post(a, article) == 200
        for path in paths[:1]:
            got_a, got_b = _get(a, path), _get(b, path)
            assert got_a == got_b
            assert "replica/1" in [r["article"]["id"] for r in got_b["results"]]
