"""Writers in several processes, and a rebuild under a writing server: nothing acknowledged goes missing.

Trials in other processes (the acceptance of issue 14): two ``newsdesk add`` at once; ``add`` beside a server taking
POSTs; ``serve --processes 2`` with concurrent POSTs; ``index --rebuild`` under a server taking writes. After each,
every acknowledged article is found by id and by a query on its headline in every mode, exactly once, from the
running server (the trial's articles; its requests reach either worker of ``--processes 2``) and after a reopen
from disk (every article acknowledged so far), and ``newsdesk check`` passes. ``NEWSDESK_CONCURRENCY_TRIALS`` (default
2) sets the trials of the default run; the slow-marked tests run 20 of each (``pytest tests/test_concurrency.py -m
slow``).

A rebuild makes the index its sources, less nothing a writer was told was stored while it ran: articles written
before it began are replaced with everything else (kept with ``--keep-missing``), those acknowledged after it read
the index are carried into the new build, and those after the swap land in it; the rebuild trials check all three.

Before them, in-process tests of each mechanism, deterministic and fast: a second writer catches up, a server
moves to a rebuilt directory and writes into it, writes committed into the old store during a rebuild are carried
into the new build, a write applies to the index the service holds after the
embedding, and reloads close the connections of the store they replace.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.build import build_index
from indexer.live import Writer
from indexer.sources import read_sources
from indexer.update import add_articles, delete_articles
from search.errors import NotFound
from search.models import Article
from search.service import SearchService
from search.settings import Settings
from search.storage.index import SQLITE, check_index, open_index
from search.storage.manifest import Manifest
from tests.fakes import wire_articles
from tests.procs import INT8, NEWSDESK, get_json, post, serve, spawn, stop, write_jsonl

TRIALS = int(os.environ.get("NEWSDESK_CONCURRENCY_TRIALS", "2"))
# Servers and ``newsdesk add`` run the int8 backend (procs.INT8: the default, which built the base index through the
# session's ``embedder``). A rebuild keeps torch: its model load falls after it has read the index, which keeps the
# window of writes it must carry into the new build several seconds wide (its vectors pass the probe check).
MODES = ("dense", "lexical", "hybrid")
PAUSE = 1.0  # seconds between one client's write batches
# Headlines are five of these words, so every article's headline is its own and a query on it finds it first.
WORDS = (
    "harbour glacier violin orchard lantern falcon meadow quarry tractor velvet canyon pepper walrus chimney "
    "satellite porcelain tornado accordion lighthouse marble hedgehog volcano bicycle cathedral saffron turbine "
    "penguin compass raincoat telescope avalanche biscuit dolphin emerald fountain gondola hammock iceberg jasmine "
    "kettle lobster mosaic nectar octopus pyramid quilt reindeer sapphire tapestry umbrella vineyard waffle yacht "
    "zeppelin anchor blizzard cactus dune elephant ferry granite helmet island jungle kayak lemon mango needle "
    "oyster parrot quartz river scarf tiger unicorn valley walnut xylophone yogurt zebra almond bamboo copper "
    "diamond engine forest garlic honey ivory jacket koala ladder magnet nickel olive pillow quiver rocket "
    "spider tunnel uranium vulture wagon willow basalt cobalt dragon feather goblet hornet igloo juniper"
).split()


def new_rows(prefix: str, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` articles with ids ``PREFIX-i``, distinct headlines and distinct bodies (no two are duplicates)."""
    rows = []
    for i in range(n):
        title = " ".join(rng.sample(WORDS, 5)).capitalize()
        body = " ".join(rng.sample(WORDS, 24))
        rows.append({"id": f"{prefix}-{i}", "title": title, "paragraphs": [f"{body}."], "date": "2024-03-01"})
    return rows


Lookup = tuple[Callable[[str], bool], Callable[[str, str], list[str]]]  # (article by id exists, search ids)


def http_lookup(port: int) -> Lookup:
    def by_id(article_id: str) -> bool:
        status, _ = get_json(port, f"/api/articles/{article_id}")
        assert status in (200, 404), status
        return status == 200

    def search(query: str, mode: str) -> list[str]:
        status, body = get_json(port, "/api/search?" + urllib.parse.urlencode({"q": query, "mode": mode, "k": 10}))
        assert status == 200, body
        return [r["article"]["id"] for r in body["results"]]

    return by_id, search


def service_lookup(svc: SearchService) -> Lookup:
    def by_id(article_id: str) -> bool:
        try:
            return svc.article(article_id).id == article_id
        except NotFound:
            return False

    def search(query: str, mode: str) -> list[str]:
        return [r.article.id for r in svc.search(query, k=10, mode=mode).results]

    return by_id, search


def assert_found(lookup: Lookup, present: dict[str, str], absent: Collection[str] = (), where: str = "") -> None:
    """Every article of ``present`` (id -> headline) is found by id and, exactly once, by its headline in every
    mode; no article of ``absent`` is found by id."""
    by_id, search = lookup
    for article_id, title in sorted(present.items()):
        assert by_id(article_id), f"{where}: {article_id} acknowledged but not found by id"
        for mode in MODES:
            ids = search(title, mode)
            assert ids.count(article_id) == 1, f"{where}: {article_id} ({title!r}) in {mode} results {ids}"
    for article_id in sorted(absent):
        assert not by_id(article_id), f"{where}: {article_id} should be gone"


def assert_sound(directory: Path, embedder: Any, present: dict[str, str], absent: Collection[str] = ()) -> None:
    """``newsdesk check`` passes, and a process that opens the index now (a restart) finds what it must."""
    done = subprocess.run([NEWSDESK, "check", "--index", str(directory)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    svc = SearchService(open_index(directory, embedder), embedder, Settings(index_dir=directory))
    try:
        assert_found(service_lookup(svc), present, absent, "after a reopen")
    finally:
        svc.index.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Path:
    """A tiny index (30 wire stories, the real model), built once; its source file is ``base/../wire.jsonl``.
    The session's ``embedder`` made the int8 export in the default model cache, so the processes below, which run
    the default backend, load it rather than race to make it."""
    root = tmp_path_factory.mktemp("concurrency")
    source = write_jsonl(root / "wire.jsonl", wire_articles(30, seed=11))
    build_index(read_sources([source]), root / "index", Settings(index_dir=root / "index"), embedder, progress=False)
    return root / "index"


def fresh_copy(base: Path, tmp_path: Path) -> Path:
    """The base index copied with its layout (a symlink to a versioned directory), as a build leaves it."""
    shutil.copytree(base.parent, tmp_path / "copy", symlinks=True)
    return tmp_path / "copy" / base.name


def titles(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {r["id"]: r["title"] for r in rows}


# -- in-process: each mechanism --------------------------------------------------------------------------------


def articles_of(rows: list[dict[str, Any]]) -> list[Article]:
    return [Article(id=r["id"], title=r["title"], paragraphs=tuple(r["paragraphs"]), date=r["date"]) for r in rows]


def test_a_writer_behind_another_process_catches_up_before_it_writes(base: Path, tmp_path: Path, embedder: Any) -> None:
    """Two processes' indexes opened at the same generation, each adding an article: the second must not stamp its
    caches with the newest generation while missing the first's article (found by no search, even after a
    restart)."""
    target = fresh_copy(base, tmp_path)
    settings = Settings(index_dir=target)
    first, second = open_index(target, embedder), open_index(target, embedder)
    rows = new_rows("two", 2, random.Random(1))
    add_articles(first, articles_of(rows[:1]), embedder, settings)
    add_articles(second, articles_of(rows[1:]), embedder, settings)
    svc = SearchService(second, embedder, settings)
    assert_found(service_lookup(svc), titles(rows), where="the second writer")
    assert check_index(target) == []
    assert_sound(target, embedder, titles(rows))


def test_a_server_moves_to_a_rebuilt_index_and_writes_into_it(base: Path, tmp_path: Path, embedder: Any) -> None:
    """A rebuild swaps the directory (its store's generation may equal the old one): the service serves the new
    build, and a write after the swap lands in it, not in the replaced file."""
    target = fresh_copy(base, tmp_path)
    settings = Settings(index_dir=target)
    svc = SearchService(open_index(target, embedder), embedder, settings)
    writer = Writer(svc)
    rng = random.Random(2)
    before, after = new_rows("before", 1, rng), new_rows("after", 1, rng)
    writer.upsert(articles_of(before))
    build_index(read_sources([base.parent / "wire.jsonl"]), target, settings, embedder, progress=False)
    assert_found(service_lookup(svc), {}, set(titles(before)), "the server after the rebuild")
    writer.upsert(articles_of(after))
    assert_found(service_lookup(svc), titles(after), where="the server")
    assert_sound(target, embedder, titles(after), set(titles(before)))


class WritingDuringBuild:
    """The real model for a build, that has another writer commit into the index being replaced the first time
    the build embeds: a write acknowledged after the rebuild read the old store, before its caches are made."""

    def __init__(self, inner: Any, write: Callable[[], None]) -> None:
        self.inner, self.write = inner, write

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_spans(self, *args: Any, **kwargs: Any) -> Any:
        self.write()
        self.write = lambda: None
        return self.inner.encode_spans(*args, **kwargs)


@pytest.mark.parametrize("same_chunking", [True, False], ids=["vectors copied", "chunking changed"])
def test_writes_acknowledged_during_a_rebuild_are_in_the_new_build(
    base: Path, tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch, same_chunking: bool
) -> None:
    """``newsdesk index --rebuild`` replaces the index, but not what writers were told was stored while it ran: an
    article written before the rebuild began (and missing from its sources) goes, as it always did; articles
    written, replaced or deleted after the rebuild read the old store (while it embeds, while it makes its caches,
    and one whose writer waits on the old store's lock during the swap) are in the new build as written, found by
    id and by headline in every mode after a reopen, and ``check`` passes. With other chunking the carried articles
    are embedded again for the new build."""
    import indexer.build
    import search.storage.index
    import search.storage.manifest
    from indexer.sync import sync_index

    target = fresh_copy(base, tmp_path)
    old_settings = Settings(index_dir=target)
    settings = (
        old_settings if same_chunking else Settings(index_dir=target, title_context=not old_settings.title_context)
    )
    rng = random.Random(7)
    before, embedding, caching, swapping = (new_rows(p, 1, rng) for p in ("before", "embedding", "caching", "swapping"))
    sources = wire_articles(30, seed=11)
    deleted, replaced = sources[0]["id"], dict(sources[1], title="Replaced zeppelin quartz headline walrus cobalt")
    writer = open_index(target, embedder)
    add_articles(writer, articles_of(before), embedder, old_settings, origin="api")

    def while_embedding() -> None:
        add_articles(writer, articles_of([*embedding, replaced]), embedder, old_settings, origin="api")
        delete_articles(writer, [deleted])

    write_manifest = search.storage.manifest.write_manifest  # what the build calls

    def while_caching(directory: Path, manifest: Manifest) -> None:
        add_articles(writer, articles_of(caching), embedder, old_settings, origin="api")
        write_manifest(directory, manifest)

    swap_in = search.storage.index.swap_in
    waiting: list[threading.Thread] = []
    others: list[Any] = []

    def while_swapping(link: Path, new_dir: Path) -> None:
        """Under the old store's lock (with the carry): a writer that waits on it must catch up onto the new build."""
        other = open_index(target, embedder)
        thread = threading.Thread(target=add_articles, args=(other, articles_of(swapping), embedder, old_settings))
        thread.start()
        waiting.append(thread)
        others.append(other)
        time.sleep(0.5)  # the writer reaches the lock
        swap_in(link, new_dir)

    monkeypatch.setattr(indexer.build, "write_manifest", while_caching)
    monkeypatch.setattr(search.storage.index, "swap_in", while_swapping)
    report = sync_index(
        articles_of(sources), settings, WritingDuringBuild(embedder, while_embedding), rebuild=True, progress=False
    )
    assert report.mode == "full"
    for thread in waiting:
        thread.join(timeout=120)
        assert not thread.is_alive(), "the writer waiting on the old store's lock never finished"
    for index in others:
        index.close()
    monkeypatch.undo()
    assert check_index(target) == []
    svc = SearchService(open_index(target, embedder), embedder, settings)
    try:
        written = titles(embedding + caching + swapping) | titles([replaced])
        assert_found(service_lookup(svc), written, {deleted} | set(titles(before)), "after the rebuild")
        assert svc.article(replaced["id"]).title == replaced["title"]
        assert svc.index.store.counts()[0] == 30 - 1 + 3
        carried = [r["id"] for r in embedding + caching]
        before_swap = {text: vec for _, _, text, vec, _ in writer.store.passage_texts(carried)}  # the replaced file
        now = {text: vec for _, _, text, vec, _ in svc.index.sqlite.passage_texts(carried)}
        assert now.keys() == before_swap.keys()
        # copied as they were, or (other chunking: the headline before each body passage) embedded again
        assert all(np.array_equal(v, before_swap[t]) for t, v in now.items()) == same_chunking
    finally:
        svc.index.close()
        writer.close()


def test_a_write_applies_to_the_index_reloaded_during_its_embedding(base: Path, tmp_path: Path, embedder: Any) -> None:
    """Another process writes while this one embeds a write, and a search reloads the service meanwhile: the
    write must go to the index the service now serves, not the detached one it held before embedding."""
    target = fresh_copy(base, tmp_path)
    settings = Settings(index_dir=target)
    svc = SearchService(open_index(target, embedder), embedder, settings)
    rng = random.Random(3)
    theirs, ours = new_rows("theirs", 1, rng), new_rows("ours", 1, rng)

    class Interrupted:
        """The model, except that the first embedding also lets another process write and a search reload."""

        def __init__(self, inner: Any) -> None:
            self.inner, self.fired = inner, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def encode_spans(self, *args: Any, **kwargs: Any) -> Any:
            if not self.fired:
                self.fired = True
                add_articles(open_index(target, embedder), articles_of(theirs), embedder, settings)
                svc.search("anything", k=1)  # a request thread: sees the other process's write and reloads
            return self.inner.encode_spans(*args, **kwargs)

    svc.embedder = Interrupted(embedder)
    Writer(svc).upsert(articles_of(ours))
    svc.embedder = embedder
    assert svc.embedder is embedder
    assert_found(service_lookup(svc), titles(theirs) | titles(ours), where="the server")
    assert_sound(target, embedder, titles(theirs) | titles(ours))


def sqlite_fds(directory: Path) -> int:
    """Open file descriptors of this process on the index's SQLite file (after a collection: only what is still
    referenced counts, not a finished thread's connection waiting for the garbage collector)."""
    gc.collect()
    real = str((directory / SQLITE).resolve())
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == real
        except OSError:
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
def test_reloads_close_the_connections_of_the_store_they_replace(base: Path, tmp_path: Path, embedder: Any) -> None:
    """Each reload (another process wrote) used to leave every request thread's connection to the old store open.
    Another process's writes are now followed on the same store (search/storage/changes.py) and a rebuild reopens
    it: neither may leave connections behind. The other writer is opened and closed around each write, as a
    ``newsdesk add`` process is: an index held open in this process keeps a lock on the file, under which SQLite
    parks the descriptor of every connection closed (below)."""
    target = fresh_copy(base, tmp_path)
    settings = Settings(index_dir=target)
    svc = SearchService(open_index(target, embedder), embedder, settings)
    rows = new_rows("reload", 6, random.Random(4))

    def searches() -> None:
        threads = [threading.Thread(target=svc.search, args=("harbour glacier",)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    searches()
    settled = sqlite_fds(target)
    for i, row in enumerate(rows):
        other = open_index(target, None)
        add_articles(other, articles_of([row]), embedder, settings)
        other.close()
        if i == 3:
            build_index(read_sources([base.parent / "wire.jsonl"]), target, settings, embedder, progress=False)
        searches()  # the first follows (or reopens the rebuilt index); all four threads open connections
    # One batch of request threads' connections may still be counted: SQLite's unix VFS does not close the descriptor
    # of a closed connection while another connection of this process holds a lock on the same file (``other``'s
    # WAL read lock here): it parks it for reuse by the next connection (unixClose, setPendingFd). Whether the last
    # batch was collected before or after the final reload decides whether its four are parked. The leak this test
    # caught grew with every reload instead (31 descriptors after these six).
    threads = 4
    assert sqlite_fds(target) <= settled + threads + 2, (settled, sqlite_fds(target))


# -- in other processes: the acceptance trials -------------------------------------------------------------------


def _two_adds(trials: int, base: Path, tmp_path: Path, embedder: Any) -> None:
    """Two ``newsdesk add`` processes started together, each adding its own articles."""
    target = fresh_copy(base, tmp_path)
    rng = random.Random(10)
    log = tmp_path / "add.log"
    acknowledged: dict[str, str] = {}
    for trial in range(trials):
        batches = [new_rows(f"add{trial}{side}", 3, rng) for side in "ab"]
        sources = [write_jsonl(tmp_path / f"{trial}-{i}.jsonl", rows) for i, rows in enumerate(batches)]
        procs = [spawn(["add", str(source), "--index", str(target)], log, INT8) for source in sources]
        for proc, rows in zip(procs, batches, strict=True):
            assert proc.wait(timeout=600) == 0, log.read_text()
            acknowledged |= titles(rows)
        assert_sound(target, embedder, acknowledged)


class Poster(threading.Thread):
    """POSTs a batch of one new article to a server every ``PAUSE`` seconds or so (a paced client keeps the
    articles to check few) until stopped (after at least ``after`` batches sent once ``mark()`` was called);
    records each batch: when it was sent, its rows, its status (0: the connection failed)."""

    def __init__(self, port: int, prefix: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.port, self.prefix, self.rng = port, prefix, random.Random(seed)
        self.sent: list[tuple[float, list[dict[str, Any]], int]] = []
        self.marked: float | None = None
        self.after = 0
        self.done = threading.Event()

    def mark(self, after: int) -> None:
        """Stop once ``after`` more batches were sent and answered."""
        self.marked, self.after = time.monotonic(), after

    def run(self) -> None:
        n = 0
        while self.marked is None or sum(1 for t, _, _ in self.sent if t > self.marked) < self.after:
            rows = new_rows(f"{self.prefix}-{n}", 1, self.rng)
            n += 1
            sent = time.monotonic()
            try:
                status = post(self.port, {"articles": rows})
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = 0
            self.sent.append((sent, rows, status))
            time.sleep(PAUSE)
        self.done.set()

    def acknowledged(self, since: float = 0.0, until: float = float("inf")) -> dict[str, str]:
        """Articles of the batches answered 200 that were sent between ``since`` and ``until``."""
        return {
            r["id"]: r["title"] for t, rows, status in self.sent if status == 200 and since <= t < until for r in rows
        }

    def finish(self) -> None:
        self.join(timeout=600)
        assert not self.is_alive(), "the writer thread did not finish"

    def all_acknowledged(self) -> dict[str, str]:
        """Once finished: its articles, every batch having been answered 200 (a trial with no rebuild refuses none)."""
        self.finish()
        assert all(status == 200 for _, _, status in self.sent), [s for _, _, s in self.sent]
        return self.acknowledged()


def _posting(port: int, prefix: str, seed: int) -> Poster:
    poster = Poster(port, prefix, seed)
    poster.start()
    return poster


def _add_beside_server(trials: int, base: Path, tmp_path: Path, embedder: Any) -> None:
    """A server taking POSTs while a ``newsdesk add`` writes to the same index."""
    target = fresh_copy(base, tmp_path)
    log = tmp_path / "serve.log"
    proc, port = serve(target, log, env=INT8)
    rng = random.Random(20)
    acknowledged: dict[str, str] = {}
    try:
        for trial in range(trials):
            poster = _posting(port, f"srv{trial}", trial)
            rows = new_rows(f"cli{trial}", 3, rng)
            source = write_jsonl(tmp_path / f"{trial}.jsonl", rows)
            add = spawn(["add", str(source), "--index", str(target)], log, INT8)
            assert add.wait(timeout=600) == 0, log.read_text()
            poster.mark(after=2)
            trial_acknowledged = titles(rows) | poster.all_acknowledged()
            assert_found(http_lookup(port), trial_acknowledged, where="the server")
            acknowledged |= trial_acknowledged
            assert_sound(target, embedder, acknowledged)
    finally:
        stop(proc)


def _two_server_processes(trials: int, base: Path, tmp_path: Path, embedder: Any) -> None:
    """``serve --processes 2`` taking two clients' POSTs at once."""
    target = fresh_copy(base, tmp_path)
    proc, port = serve(target, tmp_path / "serve.log", "--processes", "2", env=INT8)
    acknowledged: dict[str, str] = {}
    try:
        for trial in range(trials):
            posters = [_posting(port, f"p{trial}{side}", 10 * trial + i) for i, side in enumerate("ab")]
            for poster in posters:
                poster.mark(after=4)
            trial_acknowledged: dict[str, str] = {}
            for poster in posters:
                trial_acknowledged |= poster.all_acknowledged()
            assert_found(http_lookup(port), trial_acknowledged, where="the server")
            acknowledged |= trial_acknowledged
            assert_sound(target, embedder, acknowledged)
    finally:
        stop(proc)


def _rebuild_under_server(trials: int, base: Path, tmp_path: Path, embedder: Any) -> None:
    """``newsdesk index SOURCE --rebuild`` while a server takes POSTs; every other trial with ``--keep-missing``.

    A write acknowledged once the rebuild has read the index is carried into the new build (indexer/build.py), and
    one after the swap lands in it: every one of them must be found. Writes acknowledged before the rebuild began are
    missing from its sources: gone without ``--keep-missing`` (the server moved to the new build), kept with it. The
    rebuild reads the index a moment after its process starts, and a write in that moment counts as before it: so
    without ``--keep-missing`` the articles of the racing window that are gone must all have been sent before every
    one that is there (one point in time divides them), and with it every acknowledged article must be there."""
    target = fresh_copy(base, tmp_path)
    log = tmp_path / "serve.log"
    source = base.parent / "wire.jsonl"
    base_ids = [r["id"] for r in wire_articles(30, seed=11)]
    proc, port = serve(target, log, env=INT8)
    acknowledged: dict[str, str] = {}  # every article that must be there from now on
    try:
        for trial in range(trials):
            keep = trial % 2 == 1
            poster = _posting(port, f"rb{trial}", trial)
            while not poster.sent:
                time.sleep(0.05)
            began = time.monotonic()
            rebuild = spawn(
                ["index", str(source), "--index", str(target), "--rebuild", "--quiet"] + ["--keep-missing"] * keep, log
            )
            assert rebuild.wait(timeout=600) == 0, log.read_text()
            poster.mark(after=2)
            ended = poster.marked or 0.0
            poster.finish()
            statuses = {status for t, _, status in poster.sent if t < began or t > ended}
            assert statuses == {200}, statuses  # only a write that meets the swap itself may be refused (503)
            lookup = http_lookup(port)
            before, racing = poster.acknowledged(until=began), poster.acknowledged(since=began, until=ended)
            gone: set[str] = set()
            if keep:
                acknowledged |= before | racing
            else:
                found = [lookup[0](i) for i in racing]  # in the order sent
                cut = found.index(True) if True in found else len(found)
                assert all(found[cut:]), f"acknowledged during the rebuild and lost: {list(racing)}, found {found}"
                gone = set(acknowledged) | set(before) | set(list(racing)[:cut])
                acknowledged = {i: racing[i] for i in list(racing)[cut:]}
            acknowledged |= poster.acknowledged(since=ended)
            assert_found(lookup, acknowledged, gone, "the server")
            assert all(lookup[0](i) for i in base_ids[:5])
            assert_sound(target, embedder, acknowledged, gone)
    finally:
        stop(proc)


KINDS: dict[str, Callable[[int, Path, Path, Any], None]] = {
    "two adds": _two_adds,
    "add beside a server": _add_beside_server,
    "serve --processes 2": _two_server_processes,
    "rebuild under a server": _rebuild_under_server,
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_concurrent_writers(kind: str, base: Path, tmp_path: Path, embedder: Any) -> None:
    KINDS[kind](TRIALS, base, tmp_path, embedder)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_twenty_concurrent_trials(kind: str, base: Path, tmp_path: Path, embedder: Any) -> None:
    """The acceptance run: 20 trials of each kind (the default run does ``NEWSDESK_CONCURRENCY_TRIALS``)."""
    KINDS[kind](20, base, tmp_path, embedder)
