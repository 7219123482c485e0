"""Online backups (indexer/backup.py): taken while writes stream, restored to an index that passes ``check`` and
holds every write acknowledged before the backup began."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from api.cli import main
from indexer.backup import BACKUP_INFO, backup, restore
from indexer.build import build_index
from indexer.live import Writer
from search.models import Article
from search.settings import Settings
from search.storage.index import check_index, open_index
from search.text.embedding import Embedder
from tests.conftest import make_service
from tests.fakes import wire_articles


def _articles(prefix: str, n: int, seed: int) -> list[Article]:
    return [
        Article(id=f"{prefix}-{i}", title=r["title"], paragraphs=tuple(r["paragraphs"]), date=r.get("date"))
        for i, r in enumerate(wire_articles(n, seed=seed))
    ]


@pytest.fixture
def small_index(tmp_path: Path, embedder: Embedder) -> Path:
    target = tmp_path / "idx"
    build_index(_articles("base", 12, 1), target, Settings(index_dir=target), embedder, progress=False)
    return target


def _ids(directory: Path) -> set[str]:
    index = open_index(directory, None)
    try:
        return {r[0] for r in index.sqlite.connection().execute("SELECT id FROM articles")}
    finally:
        index.close()


@pytest.mark.parametrize("caches", [False, True])
def test_backup_while_writes_stream_restores_every_acknowledged_write(
    small_index: Path, embedder: Embedder, tmp_path: Path, caches: bool
) -> None:
    writer = Writer(make_service(small_index, embedder))
    acknowledged: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        n = 0
        try:
            while not stop.is_set():
                batch = _articles(f"w{n}", 2, seed=100 + n)
                writer.upsert(batch)
                acknowledged.extend(a.id for a in batch)
                n += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while len(acknowledged) < 4 and thread.is_alive():
            stop.wait(0.05)
        before = set(acknowledged)  # acknowledged before the backup began
        info = backup(small_index, tmp_path / "bk", caches=caches)
        while len(acknowledged) < len(before) + 4 and thread.is_alive():
            stop.wait(0.05)  # writes go on after the backup, into the index, not the backup
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not errors, errors
    assert (tmp_path / "bk" / BACKUP_INFO).is_file()
    assert (info.caches > 0) == caches
    target = tmp_path / "restored"
    generation, n_articles, _ = restore(tmp_path / "bk", target)
    assert generation == info.generation and n_articles == info.articles
    assert check_index(target) == []
    restored = _ids(target)
    assert before <= restored
    assert {f"base-{i}" for i in range(12)} <= restored
    assert set(acknowledged) - restored  # the writes after the backup are not in it: it is a snapshot
    # the restored index serves a search
    svc = make_service(target, embedder)
    first = svc.article("base-0")
    assert "base-0" in [r.article.id for r in svc.search(first.title, k=3).results]


def test_restore_replaces_an_index_and_cli_errors_are_one_line(
    small_index: Path, embedder: Embedder, tmp_path: Path
) -> None:
    runner = CliRunner()
    out = tmp_path / "bk"
    ok = runner.invoke(main, ["backup", str(out), "--index", str(small_index)])
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(main, ["backup", str(out), "--index", str(small_index)])
    assert (
        again.exit_code == 1
        and len(again.output.strip().splitlines()) == 1
        and "not an empty directory" in again.output
    )
    other = tmp_path / "other"
    build_index(_articles("other", 3, 7), other, Settings(index_dir=other), embedder, progress=False)
    done = runner.invoke(main, ["restore", str(out), "--index", str(other)])
    assert done.exit_code == 0, done.output
    assert _ids(other) == {f"base-{i}" for i in range(12)} and check_index(other) == []
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    bad = runner.invoke(main, ["restore", str(bogus), "--index", str(other)])
    assert bad.exit_code == 1 and "not a newsdesk backup" in bad.output and len(bad.output.strip().splitlines()) == 1
    assert _ids(other) == {f"base-{i}" for i in range(12)}  # untouched
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in out.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    raw = bytearray((damaged / "newsdesk.sqlite").read_bytes())
    raw[100:4096] = b"\x00" * (4096 - 100)
    (damaged / "newsdesk.sqlite").write_bytes(bytes(raw))
    broken = runner.invoke(main, ["restore", str(damaged), "--index", str(other)])
    assert broken.exit_code == 1 and len(broken.output.strip().splitlines()) == 1, broken.output
    assert check_index(other) == []
