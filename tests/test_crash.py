"""kill -9 at random moments of a build, of ``newsdesk add`` and of a server taking write batches; after each, the
index opens, passes ``check_index``, holds every acknowledged article and no partial one.

The default run does a few trials of each (``NEWSDESK_CRASH_TRIALS``, default 2); the acceptance run is 20:
``NEWSDESK_CRASH_TRIALS=20 .venv/bin/pytest tests/test_crash.py -m slow`` runs the slow-marked 20-trial versions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
import urllib.error
from pathlib import Path

import pytest

from search.storage.index import check_index, open_index
from tests.fakes import wire_articles
from tests.procs import kill as _kill
from tests.procs import post as _post
from tests.procs import serve
from tests.procs import spawn as _run

TRIALS = int(os.environ.get("NEWSDESK_CRASH_TRIALS", "2"))


def _sound(directory: Path, acknowledged: set[str], batches: list[list[str]]) -> None:
    """The index is intact: checks pass, acknowledged articles are there, every batch is all there or absent, and
    every article has its passages and labels (none half-written)."""
    assert check_index(directory) == [], check_index(directory)
    index = open_index(directory, None)
    try:
        conn = index.store.connection()
        present = {r[0] for r in conn.execute("SELECT id FROM articles")}
        assert acknowledged <= present, sorted(acknowledged - present)[:5]
        for batch in batches:
            assert len(set(batch) & present) in (0, len(batch)), batch
        bare = conn.execute("SELECT COUNT(*) FROM articles WHERE aid NOT IN (SELECT aid FROM passages)").fetchone()
        assert bare[0] == 0
        unlabelled = conn.execute(
            "SELECT COUNT(*) FROM articles WHERE aid NOT IN (SELECT aid FROM article_groups)"
        ).fetchone()
        assert unlabelled[0] == 0
    finally:
        index.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "wire.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in wire_articles(160, seed=9)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base_index(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    target = tmp_path_factory.mktemp("crash") / "base"
    log = target.parent / "base.log"
    proc = _run(["index", str(corpus), "--index", str(target), "--quiet"], log)
    assert proc.wait(timeout=600) == 0, log.read_text()
    return target


def _build_trials(trials: int, corpus: Path, base_index: Path, tmp_path: Path) -> None:
    rng = random.Random(1)
    for trial in range(trials):
        target = tmp_path / f"build-{trial}"
        if trial % 2:  # half the trials rebuild over a complete index, which must survive untouched
            shutil.copytree(base_index, target)
        before = check_index(target) == [] if target.exists() else None
        proc = _run(["index", str(corpus), "--index", str(target), "--rebuild", "--quiet"], tmp_path / "build.log")
        time.sleep(rng.uniform(0.5, 12.0))
        _kill(proc)
        if (target / "manifest.json").exists() or before:
            _sound(target, set(), [])
        else:
            assert not target.exists() or not any(p.name == "manifest.json" for p in target.iterdir())


def _add_trials(trials: int, base_index: Path, tmp_path: Path) -> None:
    rng = random.Random(2)
    target = tmp_path / "add"
    shutil.copytree(base_index, target)
    acknowledged: set[str] = set()
    batches: list[list[str]] = []
    for trial in range(trials):
        rows = [{**r, "id": f"add-{trial}-{i}"} for i, r in enumerate(wire_articles(20, seed=100 + trial))]
        source = tmp_path / f"add-{trial}.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        batches.append([r["id"] for r in rows])
        proc = _run(["add", str(source), "--index", str(target)], tmp_path / "add.log")
        try:
            if proc.wait(timeout=rng.uniform(1.0, 8.0)) == 0:
                acknowledged |= set(batches[-1])
        except subprocess.TimeoutExpired:
            _kill(proc)
        _sound(target, acknowledged, batches)


def _server_trials(trials: int, base_index: Path, tmp_path: Path) -> None:
    rng = random.Random(3)
    target = tmp_path / "served"
    shutil.copytree(base_index, target)
    acknowledged: set[str] = set()
    batches: list[list[str]] = []
    for trial in range(trials):
        proc, port = serve(target, tmp_path / "serve.log")
        stop = threading.Event()

        def write(trial: int = trial, port: int = port, stop: threading.Event = stop) -> None:
            n = 0
            while not stop.is_set():
                rows = [{**r, "id": f"srv-{trial}-{n}-{i}"} for i, r in enumerate(wire_articles(4, seed=n))]
                batches.append([r["id"] for r in rows])
                n += 1
                try:
                    if _post(port, {"articles": rows}) == 200:
                        acknowledged.update(r["id"] for r in rows)
                except (OSError, urllib.error.HTTPError):
                    return  # the server died mid-request: this batch is not acknowledged

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(rng.uniform(0.5, 6.0))
        _kill(proc)
        stop.set()
        writer.join(timeout=60)
        _sound(target, acknowledged, batches)
    assert acknowledged, "no write was acknowledged in any trial: the trials did not exercise writes"


def test_kill_during_builds(corpus: Path, base_index: Path, tmp_path: Path) -> None:
    _build_trials(TRIALS, corpus, base_index, tmp_path)


def test_kill_during_cli_adds(base_index: Path, tmp_path: Path) -> None:
    _add_trials(TRIALS, base_index, tmp_path)


def test_kill_the_server_during_write_batches(base_index: Path, tmp_path: Path) -> None:
    _server_trials(max(TRIALS, 2), base_index, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["build", "add", "server"])
def test_twenty_kills(kind: str, corpus: Path, base_index: Path, tmp_path: Path) -> None:
    """The acceptance run: 20 trials of each kind (the default-run tests above do the same with fewer)."""
    if kind == "build":
        _build_trials(20, corpus, base_index, tmp_path)
    elif kind == "add":
        _add_trials(20, base_index, tmp_path)
    else:
        _server_trials(20, base_index, tmp_path)
