"""Nothing lost, whatever the disk does (issue 14, findings 1 and 4-6).

- ``newsdesk index --index DIR`` never deletes a directory newsdesk did not write, through a symlink or not.
- A full disk: a write committed in SQLite is answered as done, temporary files go, a build fails in one line.
- A read-only index directory (a read-only bind mount here, which refuses root too) serves, with writes off.
- Truncated or garbled caches are rebuilt from SQLite on open and reported by ``check``; a damaged SQLite file is
  one line naming it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from api.app import create_app
from indexer.build import build_index
from indexer.sources import read_sources
from indexer.update import add_articles, optimize
from search.errors import IndexCorrupt, InvalidInput, WritesDisabled
from search.models import Article
from search.service import SearchService
from search.settings import Settings
from search.storage.index import MANIFEST, SQLITE, VECTORS_STATE, check_index, open_index, swap_in
from search.text.bm25 import LexicalPostings
from search.vectors.faiss import FaissVectorStore
from tests.conftest import CORPUS, ROOT, assert_error, make_service
from tests.fakes import HashEmbedder
from tests.test_cli import assert_one_line_error, invoke

KEY = "test-write-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MARKER = ".newsdesk-index"  # what every build writes into its directory: an on-disk format, so spelled out here
NEW = {"id": "safety/1", "title": "Lighthouse keepers vote to strike", "paragraphs": ["Keepers walked out at dawn."]}


def hash_build(target: Path, articles: list[Article] | None = None) -> Path:
    """The fixture corpus (or ``articles``) indexed at ``target`` with the hashing embedder: fast, real files."""
    items = articles if articles is not None else list(read_sources([CORPUS]))
    build_index(items, target, Settings(index_dir=target), HashEmbedder(), progress=False)
    return target


def temporary_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.resolve().iterdir() if ".tmp" in p.name)


# -- 1. a directory that is not an index is never deleted ---------------------------------------------------------


def test_index_refuses_a_non_empty_foreign_directory(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "thesis.txt").write_text("precious")
    error = assert_one_line_error(invoke(runner, "index", CORPUS, "--index", target), str(target), "not a newsdesk")
    assert "refusing" in error
    assert (target / "thesis.txt").read_text() == "precious" and not target.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no half-built sibling left either


def test_index_refuses_a_symlink_to_a_foreign_directory(runner: CliRunner, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.md").write_text("keep me")
    link = tmp_path / "idx"
    link.symlink_to(home)
    assert_one_line_error(invoke(runner, "index", CORPUS, "--index", link), "a link to", "not a newsdesk")
    assert (home / "notes.md").read_text() == "keep me" and link.resolve() == home


def test_index_dot_in_a_project_directory_is_refused(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "manifest.json").write_text('{"name": "a web app"}')  # a manifest.json that is not newsdesk's
    monkeypatch.chdir(project)
    assert_one_line_error(invoke(runner, "index", CORPUS, "--index", "."), "not a newsdesk")
    assert sorted(p.name for p in project.iterdir()) == ["manifest.json"]


def test_a_foreign_directory_appearing_during_a_build_is_kept(tmp_path: Path) -> None:
    """The swap checks again: whatever took the name while the index was built is neither replaced nor deleted."""
    target = tmp_path / "idx"
    work = tmp_path / ".idx.fresh"
    work.mkdir()
    target.mkdir()
    (target / "report.docx").write_text("mine")
    with pytest.raises(InvalidInput, match="not a newsdesk index"):
        swap_in(target, work)
    assert (target / "report.docx").read_text() == "mine" and not target.is_symlink()


def test_an_empty_directory_and_an_older_index_may_be_replaced(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    hash_build(empty)
    assert empty.is_symlink() and (empty / MARKER).is_file()
    assert open_index(empty, None).store.counts()[0] == 8
    old = tmp_path / "old"
    shutil.copytree(empty, old)  # a plain directory holding an index built before the marker existed
    (old / MARKER).unlink()
    hash_build(old, [Article(id="x", title="Replacement headline")])
    assert open_index(old, None).store.counts() == (1, 1)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".old.")] == [old.resolve().name]


def test_a_link_to_an_index_elsewhere_is_replaced_and_that_index_kept(tmp_path: Path) -> None:
    elsewhere = tmp_path / "shared" / "main"
    shutil.copytree(hash_build(tmp_path / "built"), elsewhere)  # a plain directory holding an index
    link = tmp_path / "mine"
    link.symlink_to(elsewhere)
    hash_build(link, [Article(id="x", title="Replacement headline")])
    assert open_index(link, None).store.counts() == (1, 1)
    assert open_index(elsewhere, None).store.counts()[0] == 8  # not ours to delete: another name points at it


# -- 4. a full disk -----------------------------------------------------------------------------------------------


def full_disk_at(directory: Path, name: str, generation: int = 0) -> Path:
    """Make the save of ``name`` hit a real ENOSPC: its temporary file is a link to ``/dev/full`` (``{next}``: the
    generation after ``generation``, which a write's segment files are named by)."""
    link = directory.resolve() / name.format(pid=os.getpid(), next=generation + 1)
    link.symlink_to("/dev/full")
    return link


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full for a real ENOSPC")
def test_a_committed_post_answers_200_on_a_full_disk(tmp_path: Path, corpus_index: Path, embedder: Any) -> None:
    copy = tmp_path / "idx"
    shutil.copytree(corpus_index, copy)
    svc = make_service(copy, embedder, api_key=KEY)
    client = create_app(service=svc).test_client()
    before = json.loads((copy / VECTORS_STATE).read_text())["generation"]
    tmp = full_disk_at(copy, ".vectors.faiss.{pid}.tmp")  # FAISS's writer: a C++ exception, not an OSError
    response = client.post("/api/articles", json=NEW, headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert not tmp.is_symlink() and temporary_files(copy) == []
    assert svc.search("lighthouse keepers strike", k=1).results[0].article.id == NEW["id"]  # served from memory
    assert json.loads((copy / VECTORS_STATE).read_text())["generation"] == before  # stale: rebuilt on open
    reopened = make_service(copy, embedder)
    assert reopened.search("lighthouse keepers strike", k=1).results[0].article.id == NEW["id"]
    assert check_index(copy) == []


def test_a_post_the_disk_cannot_hold_is_a_json_507_and_stores_nothing(
    tmp_path: Path, corpus_index: Path, embedder: Any
) -> None:
    """SQLite's own "database or disk is full" (made real here by capping the file's pages): nothing committed, so
    the answer is an error, and a JSON one that says so rather than an unexpected 500."""
    copy = tmp_path / "idx"
    shutil.copytree(corpus_index, copy)
    svc = make_service(copy, embedder, api_key=KEY)
    client = create_app(service=svc).test_client()
    generation = svc.index.store.generation()
    conn = svc.index.sqlite.connection()  # the request runs on this thread: the cap applies to its connection
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    body = {"articles": [{**NEW, "id": f"full/{i}", "paragraphs": ["x" * 5000]} for i in range(20)]}
    assert_error(client.post("/api/articles", json=body, headers=AUTH), 507, "storage_error")
    assert svc.index.store.generation() == generation
    assert svc.index.store.aid_of("full/0") is None


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full for a real ENOSPC")
def test_a_small_faiss_file_that_does_not_fit_is_an_error_not_a_silent_loss(tmp_path: Path) -> None:
    """``faiss.write_index(path)`` ignores a failed ``fclose``: an index that fits stdio's buffer "saved" nothing."""
    store = FaissVectorStore.build(4, "IDMap2,Flat", [(np.arange(3, dtype=np.int64), np.eye(3, 4, dtype=np.float32))])
    target = tmp_path / "articles.faiss"
    link = full_disk_at(tmp_path, ".articles.faiss.{pid}.tmp")
    with pytest.raises(OSError) as caught:
        store.save(target)
    assert caught.value.errno == errno.ENOSPC or "No space" in str(caught.value)
    assert not target.exists() and not link.is_symlink()


CACHE_TEMPORARIES = [
    ".vectors.faiss.{pid}.tmp",
    ".articles.faiss.{pid}.tmp",
    f".{VECTORS_STATE}.tmp",
    ".lexical-passages.tmp",
    ".lexical-articles.tmp",
    ".lexical.json.tmp",
    ".neighbours.seg-{next}.npz.{pid}.tmp",  # a write appends a segment to the profiles and the fingerprints
    ".neighbours.json.tmp",
    ".duplicates.seg-{next}.npz.{pid}.tmp",
    ".duplicates.json.tmp",
    f".{MANIFEST}.tmp",
]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full for a real ENOSPC")
@pytest.mark.parametrize("temporary", CACHE_TEMPORARIES)
def test_add_commits_on_a_full_disk_and_leaves_no_temporary_file(tmp_path: Path, temporary: str) -> None:
    target = hash_build(tmp_path / "idx")
    embedder = HashEmbedder()
    index = open_index(target, embedder)
    link = full_disk_at(target, temporary, index.generation)
    article = Article(id="safety/1", title="Lighthouse keepers vote to strike", paragraphs=("Keepers walked out.",))
    assert add_articles(index, [article], embedder, Settings(index_dir=target)) == 1
    index.close()
    assert not link.is_symlink() and temporary_files(target) == []
    reopened = SearchService(open_index(target, embedder), embedder, Settings(index_dir=target))
    assert reopened.search("lighthouse keepers strike", k=1, mode="lexical").results[0].article.id == NEW["id"]
    assert reopened.search("lighthouse keepers strike", k=1, mode="dense").results[0].article.id == NEW["id"]
    assert check_index(target) == []


def test_a_build_onto_a_full_disk_is_one_line_and_keeps_the_old_index(
    runner: CliRunner, tmp_path: Path, corpus_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "idx"
    shutil.copytree(corpus_index, target)
    before = index_files(target)

    def no_space(self: LexicalPostings, directory: Path) -> None:
        (directory / ".lexical-passages.npz.tmp.npz").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(LexicalPostings, "save", no_space)
    result = invoke(runner, "index", CORPUS, "--index", target, "--rebuild", "--backend", "torch", "--quiet")
    assert_one_line_error(result, "No space left on device", "previous index is untouched")
    assert index_files(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # the half-built directory is gone


def index_files(directory: Path) -> dict[str, bytes]:
    """Every file of an index directory and its bytes, less SQLite's ``-wal`` and ``-shm``: the last connection to
    close checkpoints and removes them (the incremental check before a build opens the store), which changes no
    committed byte: the database file itself is compared."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.endswith(("-wal", "-shm"))}


# -- 5. a read-only index -----------------------------------------------------------------------------------------


def test_read_only_serves_and_refuses_writes(tmp_path: Path, corpus_index: Path, embedder: Any) -> None:
    copy = tmp_path / "idx"
    shutil.copytree(corpus_index, copy)
    stored = hashlib.sha256((copy / SQLITE).read_bytes()).hexdigest()
    svc = SearchService(
        open_index(copy, embedder, read_only=True), embedder, Settings(index_dir=copy, api_key=KEY, read_only=True)
    )
    client = create_app(service=svc).test_client()
    health = client.get("/api/health").get_json()
    assert health["read_only"] is True
    assert client.get("/api/search?q=interest rates").status_code == 200
    assert_error(client.post("/api/articles", json=NEW, headers=AUTH), 403, "writes_disabled")
    assert_error(client.delete("/api/articles/business/001", headers=AUTH), 403, "writes_disabled")
    assert_error(client.delete("/api/articles/no-such-id", headers=AUTH), 403, "writes_disabled")
    svc.index.close()
    assert hashlib.sha256((copy / SQLITE).read_bytes()).hexdigest() == stored


def test_serve_has_a_read_only_option(runner: CliRunner) -> None:
    result = invoke(runner, "serve", "--help")
    assert result.exit_code == 0 and "--read-only" in result.output


def _read_only_mount(directory: Path) -> list[str] | None:
    """A command prefix that runs its command with ``directory`` mounted read-only (root: a private mount namespace
    with a read-only bind mount, which refuses root too), after chmod for anyone else; None where neither works."""
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(directory)], check=True)
        return []
    if shutil.which("unshare") is None:
        return None
    quoted = str(directory).replace("'", "'\\''")
    script = f"mount --bind '{quoted}' '{quoted}' && mount -o remount,bind,ro '{quoted}' && exec \"$@\""
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    probe = subprocess.run([*prefix, "touch", str(directory / "probe")], capture_output=True, text=True)
    if "Read-only file system" not in probe.stderr:
        (directory / "probe").unlink(missing_ok=True)
        return None
    return prefix


READ_ONLY_SCRIPT = """
import json, sys
from pathlib import Path
from api.app import create_app
from search.storage.index import open_index
from search.service import SearchService
from search.settings import Settings
from tests.fakes import HashEmbedder

target = Path(sys.argv[1])
embedder = HashEmbedder()
svc = SearchService(open_index(target, embedder), embedder, Settings(index_dir=target, api_key="k"))
client = create_app(service=svc).test_client()
auth = {"Authorization": "Bearer k"}
post = client.post("/api/articles", json={"id": "n", "title": "New"}, headers=auth)
out = {
    "health": client.get("/api/health").get_json(),
    "search": [r["article"]["id"] for r in client.get("/api/search?q=interest rates&k=3").get_json()["results"]],
    "post": [post.status_code, post.get_json()["error"]["code"]],
    "delete": client.delete("/api/articles/business/001", headers=auth).status_code,
}
print(json.dumps(out))
"""


def test_a_read_only_mount_serves_with_writes_off(tmp_path: Path, corpus_index: Path) -> None:
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    hashed = hash_build(shelf / "hashed")
    shutil.copytree(corpus_index, shelf / "real")
    expected = SearchService(open_index(hashed, HashEmbedder()), HashEmbedder(), Settings(index_dir=hashed))
    want = [r.article.id for r in expected.search("interest rates", k=3).results]
    expected.index.close()
    prefix = _read_only_mount(shelf)
    if prefix is None:
        pytest.skip("no way to make a read-only directory here (root without mount namespaces)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(READ_ONLY_SCRIPT), str(hashed)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["health"]["read_only"] is True and out["health"]["articles"] == 8
    assert out["search"] == want
    assert out["post"] == [403, "writes_disabled"] and out["delete"] == 403
    source = tmp_path / "new.jsonl"
    source.write_text(json.dumps(NEW) + "\n")
    newsdesk = [sys.executable, "-m", "api.cli"]
    add = subprocess.run(
        [*prefix, *newsdesk, "add", str(source), "--index", str(shelf / "real"), "--backend", "torch"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert add.returncode == 1, add.stderr
    errors = [line for line in add.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("error: ") and "read-only" in errors[-1] and "Traceback" not in add.stderr
    for command in (["check"], ["stats", "--json"]):  # they read the store alone: read-only too
        done = subprocess.run(
            [*prefix, *newsdesk, *command, "--index", str(shelf / "real")],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["articles"] == 8
    assert temporary_files(shelf / "real") == [] and not list(shelf.glob("*/.newsdesk-probe-*"))


# -- 6. damaged caches are rebuilt; a damaged SQLite file is one line ---------------------------------------------


@pytest.fixture(scope="module")
def hashed_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hash_build(tmp_path_factory.mktemp("safety") / "idx")


def answers(target: Path) -> dict[str, Any]:
    """What an open index answers: the top articles of a query in each mode, similar articles, and after a write."""
    embedder = HashEmbedder()
    svc = SearchService(open_index(target, embedder), embedder, Settings(index_dir=target))
    try:
        out: dict[str, Any] = {
            mode: [r.article.id for r in svc.search("central bank interest rates", k=5, mode=mode).results]
            for mode in ("hybrid", "dense", "lexical")
        }
        out["similar"] = [r.article.id for r in svc.similar("business/001", k=3).results]
        return out
    finally:
        svc.index.close()


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbled":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 64]) + data[middle + 64 :])
    else:
        path.write_bytes(b"\0" * len(data))


CACHES = [
    "lexical-passages.base-*.docs.npy",
    "lexical-articles.base-*.tfs.npy",
    "neighbours.npz",
    "duplicates.npz",
    "vectors.faiss",
    "articles.faiss",
    "vectors.json",
    "lexical.json",
    "neighbours.json",
    "duplicates.json",
]


@pytest.mark.parametrize("how", ["truncated", "garbled", "zeroed"])
@pytest.mark.parametrize("cache", CACHES)
def test_a_damaged_cache_is_reported_then_rebuilt(tmp_path: Path, hashed_index: Path, cache: str, how: str) -> None:
    copy = tmp_path / "idx"
    shutil.copytree(hashed_index, copy)
    want = answers(copy)
    damage(next(copy.glob(cache)), how)
    problems = check_index(copy)
    assert problems, f"check says ok for a {how} {cache}"
    if ".base-" in cache and how != "truncated":
        return  # an open checks a BM25 base by size and headers, not whole (search/text/bm25.py): check finds it
    if how == "garbled" and cache.endswith(".faiss"):
        # an open checks a FAISS base by its size (a CRC would read 1.7 GB at 1.1M passages): check found it, and
        # optimize, which verifies the checksums, drops it so that the open below rebuilds it
        index = open_index(copy, HashEmbedder())
        try:
            with pytest.raises(OSError, match="checksum"):
                optimize(index)
        finally:
            index.close()
    assert answers(copy) == want  # the open rebuilt it from SQLite
    if not cache.startswith("duplicates."):  # read by the first write, not by an open: that write rebuilds it
        assert check_index(copy) == []  # ... and saved it
    embedder = HashEmbedder()
    index = open_index(copy, embedder)
    add_articles(index, [Article(id="w", title="Harbour pilots join strike")], embedder, Settings(index_dir=copy))
    index.close()
    assert check_index(copy) == []


def _passages_root_page(target: Path) -> tuple[int, int]:
    with sqlite3.connect(target / SQLITE) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'passages'").fetchone()[0]
    return int(root), int(page_size)


def damage_sqlite(target: Path, how: str) -> None:
    path = target / SQLITE
    data = bytearray(path.read_bytes())
    if how == "bad page":
        root, size = _passages_root_page(target)
        data[(root - 1) * size : root * size] = b"\xa5" * size
    elif how == "truncated":
        data = data[: len(data) // 3]
    else:
        data = bytearray(b"not a database at all " * 200)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["bad page", "truncated", "garbage"])
def test_a_damaged_sqlite_file_is_one_error_naming_it(tmp_path: Path, hashed_index: Path, how: str) -> None:
    copy = tmp_path / "idx"
    shutil.copytree(hashed_index, copy)
    damage_sqlite(copy, how)
    with pytest.raises(IndexCorrupt, match=SQLITE):
        open_index(copy, HashEmbedder())
    problems = check_index(copy)
    assert problems and any(SQLITE in p for p in problems)


@pytest.mark.parametrize("command", ["check", "search", "add", "serve"])
def test_the_cli_names_a_damaged_sqlite_file_in_one_line(
    runner: CliRunner, tmp_path: Path, corpus_index: Path, write_jsonl: Any, command: str
) -> None:
    copy = tmp_path / "idx"
    shutil.copytree(corpus_index, copy)
    damage_sqlite(copy, "bad page")
    args: list[str | Path] = {
        "check": ["check"],
        "search": ["search", "interest rates", "--backend", "torch"],
        "add": ["add", write_jsonl("new.jsonl", [NEW]), "--backend", "torch"],
        # one process: CliRunner runs serve inside pytest, which must not fork (tests/test_server.py runs the default)
        "serve": ["serve", "--backend", "torch", "--port", "0", "--processes", "1"],
    }[command]
    result = invoke(runner, *args, "--index", copy)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert SQLITE in last and (last.startswith("error: ") or last.startswith("problem: ")), result.stderr


def test_writes_disabled_is_the_error_a_read_only_index_raises(tmp_path: Path, hashed_index: Path) -> None:
    copy = tmp_path / "idx"
    shutil.copytree(hashed_index, copy)
    index = open_index(copy, None, read_only=True)
    with pytest.raises(WritesDisabled, match="read-only"):
        add_articles(index, [Article(id="n", title="New")], HashEmbedder(), Settings(index_dir=copy))
    assert index.reopen().read_only  # a reload (another process wrote) stays read-only
