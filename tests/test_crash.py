"""kill -9 at random moments of a build, of ``newsdesk add``, of a server taking write batches, of a server's write
process alone (api/writes.py: the server goes on and a new one takes the writes) and of merges of the vector
segments (``newsdesk optimize``, and an add whose save merges); after each, the index opens, passes ``check_index``,
holds every acknowledged article and no partial one.

``NEWSDESK_CRASH_TRIALS`` sets how many trials of each kind run; unset, the default run does 2 of each and the
slow-marked acceptance run (``.venv/bin/pytest tests/test_crash.py -m slow``) 20 of each.

Every process runs the int8 backend (``procs.INT8``, what users run): it loads in about a second where torch takes
several, so a kill lands in the index's writing more often and in the model's loading less, and the trials cost a
third of what they did. Kill moments are fractions of the same operation's measured time, not fixed seconds.
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

from search.storage.index import VECTORS_STATE, check_index, open_index
from search.vectors.faiss import PASSAGE_VECTORS
from tests.fakes import wire_articles
from tests.procs import INT8, children, niceness, serve, spawn
from tests.procs import kill as _kill
from tests.procs import post as _post


def crash_trials(*, slow: bool) -> int:
    """Trials of each kind: ``NEWSDESK_CRASH_TRIALS`` when set (for both runs), else 2, or 20 in the slow run."""
    raw = os.environ.get("NEWSDESK_CRASH_TRIALS", "").strip()
    if not raw:
        return 20 if slow else 2
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"NEWSDESK_CRASH_TRIALS must be a whole number of trials, at least 1; got {raw!r}")
    return int(raw)


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


def _run(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``newsdesk ARGS`` on the int8 backend, in its own session."""
    return spawn(args, log, INT8)


@pytest.fixture(scope="module")
def base_build(tmp_path_factory: pytest.TempPathFactory, corpus: Path, embedder: object) -> tuple[Path, float]:
    """The corpus indexed by ``newsdesk index``, and how long that took (the build trials kill within that time).
    ``embedder`` is asked for so that the int8 export exists before any process here needs it."""
    target = tmp_path_factory.mktemp("crash") / "base"
    log = target.parent / "base.log"
    started = time.monotonic()
    proc = _run(["index", str(corpus), "--index", str(target), "--quiet"], log)
    assert proc.wait(timeout=600) == 0, log.read_text()
    return target, time.monotonic() - started


@pytest.fixture(scope="module")
def base_index(base_build: tuple[Path, float]) -> Path:
    return base_build[0]


def _build_trials(trials: int, corpus: Path, base_build: tuple[Path, float], tmp_path: Path) -> None:
    """``newsdesk index --rebuild`` killed at a random moment of a build's time (measured on the base build: the
    same corpus), half of them over a new directory, half over a complete index, which must survive untouched."""
    rng = random.Random(1)
    base_index, seconds = base_build
    for trial in range(trials):
        target = tmp_path / f"build-{trial}"
        if trial % 2:  # half the trials rebuild over a complete index, which must survive untouched
            shutil.copytree(base_index, target)
        before = check_index(target) == [] if target.exists() else None
        proc = _run(["index", str(corpus), "--index", str(target), "--rebuild", "--quiet"], tmp_path / "build.log")
        time.sleep(rng.uniform(0.05, 1.0) * seconds)
        _kill(proc)
        if (target / "manifest.json").exists() or before:
            _sound(target, set(), [])
        else:
            assert not target.exists() or not any(p.name == "manifest.json" for p in target.iterdir())


EXTRA_TRIALS = 4


def _add_trials(trials: int, base_index: Path, tmp_path: Path) -> None:
    """``newsdesk add`` of 20 articles, ``trials`` times on one index. The first runs to its acknowledgement (exit
    0) and is timed; the others are killed at a random moment of the fastest acknowledged add's time (loading,
    embedding or writing), so the acknowledged batch has to survive later crashes, and a killed batch must be all
    there or absent. An add that beats its kill (a later add can be faster than the first, which writes the caches'
    first segments) is acknowledged like the first, and up to ``EXTRA_TRIALS`` more trials run until one is killed."""
    rng = random.Random(2)
    target = tmp_path / "add"
    shutil.copytree(base_index, target)
    acknowledged: set[str] = set()
    batches: list[list[str]] = []
    outcomes = {"acknowledged": 0, "killed": 0}
    duration = 0.0
    trial = -1
    while (trial := trial + 1) < trials or (trials >= 2 and not outcomes["killed"] and trial < trials + EXTRA_TRIALS):
        rows = [{**r, "id": f"add-{trial}-{i}"} for i, r in enumerate(wire_articles(20, seed=100 + trial))]
        source = tmp_path / f"add-{trial}.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        batches.append([r["id"] for r in rows])
        started = time.monotonic()
        proc = _run(["add", str(source), "--index", str(target)], tmp_path / "add.log")
        try:
            code = proc.wait(timeout=600 if trial == 0 else rng.uniform(0.1, 0.8) * duration)
        except subprocess.TimeoutExpired:
            _kill(proc)
            outcomes["killed"] += 1
        else:
            assert code == 0, (tmp_path / "add.log").read_text(errors="replace")[-3000:]
            acknowledged |= set(batches[-1])
            outcomes["acknowledged"] += 1
            took = time.monotonic() - started
            duration = min(duration, took) if duration else took
        _sound(target, acknowledged, batches)
    # a run where every add was killed before acknowledging proves nothing about acknowledged writes surviving
    assert outcomes["acknowledged"] >= 1, outcomes
    assert trials < 2 or outcomes["killed"] >= 1, outcomes


def _server_trials(trials: int, base_index: Path, tmp_path: Path) -> None:
    rng = random.Random(3)
    target = tmp_path / "served"
    shutil.copytree(base_index, target)
    acknowledged: set[str] = set()
    batches: list[list[str]] = []
    for trial in range(trials):
        proc, port = serve(target, tmp_path / "serve.log", env=INT8)
        stop = threading.Event()
        writer = threading.Thread(target=_post_batches, args=(port, f"srv-{trial}", stop, acknowledged, batches))
        writer.start()
        time.sleep(rng.uniform(0.5, 6.0))
        _kill(proc)
        stop.set()
        writer.join(timeout=60)
        _sound(target, acknowledged, batches)
    assert acknowledged, "no write was acknowledged in any trial: the trials did not exercise writes"


def _write_process_trials(trials: int, base_index: Path, tmp_path: Path) -> None:
    """A server of several processes (api/writes.py) taking write batches while its write process is killed, at
    random moments, ``trials`` times: the server stays up, gunicorn starts a new write process, writes go on to it
    (a batch in flight when it died is answered 503 and not acknowledged), and the index is sound after."""
    rng = random.Random(5)
    target = tmp_path / "served-apart"
    shutil.copytree(base_index, target)
    acknowledged: set[str] = set()
    batches: list[list[str]] = []
    proc, port = serve(target, tmp_path / "serve-apart.log", "--processes", "2", env=INT8)
    try:
        for trial in range(trials):
            deadline = time.monotonic() + 60
            while (writer_pid := _write_process(proc.pid)) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert writer_pid is not None, "the server has no write process"
            stop = threading.Event()
            unexpected: list[str] = []
            batch_args = (port, f"apart-{trial}", stop, acknowledged, batches, unexpected)
            writer = threading.Thread(target=_post_batches, args=batch_args)
            writer.start()
            time.sleep(rng.uniform(0.5, 4.0))
            os.kill(writer_pid, 9)
            deadline = time.monotonic() + 60
            while _write_process(proc.pid) in (writer_pid, None) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(rng.uniform(0.5, 2.0))  # writes go on to the new write process
            stop.set()
            writer.join(timeout=120)
            assert not writer.is_alive() and not unexpected, unexpected  # only 503s: the server stayed up
        after = [{**r, "id": f"apart-after-{i}"} for i, r in enumerate(wire_articles(2, seed=99))]
        assert _post(port, {"articles": after}) == 200  # the last write process takes writes
        acknowledged.update(r["id"] for r in after)
        batches.append([r["id"] for r in after])
    finally:
        _kill(proc)
    _sound(target, acknowledged, batches)


def _post_batches(
    port: int,
    prefix: str,
    stop: threading.Event,
    acknowledged: set[str],
    batches: list[list[str]],
    unexpected: list[str] | None = None,
) -> None:
    """Post 4-article batches to the server until ``stop``, recording every batch sent and the ids of those it
    acknowledged. With ``unexpected`` None the server is being killed: a failed post ends the writes (that batch
    not acknowledged). Else only its write process is: a 503 (the batch's outcome unknown) and the writes go on,
    anything else is put in ``unexpected`` and ends them."""
    n = 0
    while not stop.is_set():
        rows = [{**r, "id": f"{prefix}-{n}-{i}"} for i, r in enumerate(wire_articles(4, seed=n))]
        batches.append([r["id"] for r in rows])
        n += 1
        try:
            if _post(port, {"articles": rows}) == 200:
                acknowledged.update(r["id"] for r in rows)
        except OSError as exc:  # urllib's HTTPError among them
            if unexpected is None:
                return
            if not (isinstance(exc, urllib.error.HTTPError) and exc.code == 503):
                unexpected.append(repr(exc))
                return


def _write_process(server: int) -> int | None:
    """The pid of the server's write process (its niced worker), if one is running."""
    niced = [pid for pid in children(server) if niceness(pid) > 0]
    return niced[0] if niced else None


def _write_rows(tmp_path: Path, name: str, n: int, seed: int) -> tuple[Path, list[str]]:
    rows = [{**r, "id": f"{name}-{i}"} for i, r in enumerate(wire_articles(n, seed=seed))]
    source = tmp_path / f"{name}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return source, [r["id"] for r in rows]


def _segments(index: Path) -> int:
    """The passage-vector segments the index's stamp lists (each save appends one per kind)."""
    listed = json.loads((index / VECTORS_STATE).read_text()).get("segments", {})
    return len(listed.get(PASSAGE_VECTORS, []))


def _merge_trials(trials: int, base_index: Path, tmp_path: Path) -> None:
    """SIGKILL during merges of the vector segments: ``newsdesk optimize`` (even trials) and a ``newsdesk add``
    large enough that its save writes new bases instead of a segment (odd trials), each over segments an
    acknowledged small add appended just before. Each kind is timed once on a copy, run to the end, and the trials
    kill it at a random moment of its second half, where the merge runs. A merge that beats its kill (the process
    time varies; int8 processes are short) is acknowledged, and up to ``EXTRA_TRIALS`` more trials run until one is
    killed."""
    rng = random.Random(4)
    target = tmp_path / "merged"
    shutil.copytree(base_index, target)
    log = tmp_path / "merge.log"
    timing = tmp_path / "timing"
    shutil.copytree(base_index, timing)
    source, _ = _write_rows(tmp_path, "timing-small", 4, 500)
    assert _run(["add", str(source), "--index", str(timing)], log).wait(timeout=600) == 0, log.read_text()[-3000:]
    durations: dict[str, float] = {}
    big, _ = _write_rows(tmp_path, "timing-big", 40, 501)
    for kind, args in (("optimize", ["optimize"]), ("add", ["add", str(big)])):
        started = time.monotonic()
        assert _run([*args, "--index", str(timing)], log).wait(timeout=600) == 0, log.read_text()[-3000:]
        durations[kind] = time.monotonic() - started
    acknowledged: set[str] = set()
    batches: list[list[str]] = []
    killed = 0
    trial = -1
    while (trial := trial + 1) < trials or (not killed and trial < trials + EXTRA_TRIALS):
        # A small acknowledged add appends a segment, unless the merge policy says its save merges instead (more than
        # MERGE_SEGMENTS: the segments into one; MERGE_FRACTION of the vectors: into new bases; the segments of
        # trials whose merge was killed pile up); then a second small add appends one to the new bases.
        for attempt in range(2):
            before = _segments(target)
            source, ids = _write_rows(tmp_path, f"seg-{trial}-{attempt}", 4, 600 + 2 * trial + attempt)
            proc = _run(["add", str(source), "--index", str(target)], log)
            assert proc.wait(timeout=600) == 0, log.read_text(errors="replace")[-3000:]
            acknowledged |= set(ids)
            batches.append(ids)
            after = _segments(target)
            assert after == before + 1 or (after <= 1 and before > 0), (before, after)
            if after > 1 or (after and before == 0):
                break
        kind = "optimize" if trial % 2 == 0 else "add"
        if kind == "optimize":
            proc = _run(["optimize", "--index", str(target)], log)
        else:
            source, ids = _write_rows(tmp_path, f"merge-{trial}", 40, 700 + trial)
            batches.append(ids)
            proc = _run(["add", str(source), "--index", str(target)], log)
        try:
            code = proc.wait(timeout=rng.uniform(0.5, 1.0) * durations[kind])
        except subprocess.TimeoutExpired:
            _kill(proc)
            killed += 1
        else:
            assert code == 0, log.read_text(errors="replace")[-3000:]
            if kind == "add":
                acknowledged |= set(batches[-1])
        _sound(target, acknowledged, batches)
    assert killed >= 1, "no merge was killed: the trials did not exercise a crash"


def test_crash_trials_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs read ``NEWSDESK_CRASH_TRIALS`` (the slow one once ignored it); a bad value is refused, not run."""
    monkeypatch.delenv("NEWSDESK_CRASH_TRIALS", raising=False)
    assert (crash_trials(slow=False), crash_trials(slow=True)) == (2, 20)
    monkeypatch.setenv("NEWSDESK_CRASH_TRIALS", "5")
    assert (crash_trials(slow=False), crash_trials(slow=True)) == (5, 5)
    for bad in ("0", "-3", "two"):
        monkeypatch.setenv("NEWSDESK_CRASH_TRIALS", bad)
        with pytest.raises(ValueError, match="NEWSDESK_CRASH_TRIALS"):
            crash_trials(slow=True)


def test_kill_during_builds(corpus: Path, base_build: tuple[Path, float], tmp_path: Path) -> None:
    _build_trials(crash_trials(slow=False), corpus, base_build, tmp_path)


def test_kill_during_cli_adds(base_index: Path, tmp_path: Path) -> None:
    _add_trials(crash_trials(slow=False), base_index, tmp_path)


def test_kill_the_server_during_write_batches(base_index: Path, tmp_path: Path) -> None:
    _server_trials(max(crash_trials(slow=False), 2), base_index, tmp_path)


def test_kill_the_write_process_during_write_batches(base_index: Path, tmp_path: Path) -> None:
    _write_process_trials(crash_trials(slow=False), base_index, tmp_path)


def test_kill_during_merges(base_index: Path, tmp_path: Path) -> None:
    _merge_trials(crash_trials(slow=False), base_index, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["build", "add", "server", "write-process", "merge"])
def test_kills_acceptance_run(kind: str, corpus: Path, base_build: tuple[Path, float], tmp_path: Path) -> None:
    """The acceptance run: ``crash_trials(slow=True)`` trials of each kind (20 unless the environment says)."""
    trials = crash_trials(slow=True)
    base_index = base_build[0]
    if kind == "build":
        _build_trials(trials, corpus, base_build, tmp_path)
    elif kind == "add":
        _add_trials(trials, base_index, tmp_path)
    elif kind == "merge":
        _merge_trials(trials, base_index, tmp_path)
    elif kind == "write-process":
        _write_process_trials(trials, base_index, tmp_path)
    else:
        _server_trials(trials, base_index, tmp_path)
