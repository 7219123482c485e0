"""The index directory: manifest, SQLite store and vectors, opened and checked together.

Layout (``index_data/<name>/``): ``manifest.json`` (search/storage/manifest.py), ``newsdesk.sqlite``, the vectors
of the backend the manifest names (search/vectors/factory.py: FAISS files in the directory, or collections on
Milvus) with ``vectors.json`` recording the generation they match, and the derived caches (BM25 postings,
more-like-this profiles, duplicate fingerprints). ``<name>`` is a symlink to a versioned sibling directory, so a
rebuild swaps it atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np

from search.errors import (
    IndexCorrupt,
    IndexMissing,
    InvalidInput,
    NewsdeskError,
    StaleIndex,
    StorageError,
    WritesDisabled,
)
from search.memory import deep_size
from search.news.dedup import DedupIndex
from search.news.grouping import duplicates_problems, label_unlabelled, load_duplicates, save_duplicates
from search.news.neighbours import DEFAULT_NEIGHBOURS, NeighbourGraph, graph_problems, load_graph
from search.ranking.catalog import ArticleCatalog
from search.storage.files import DAMAGED_CACHE, directory_writable, fsync_path
from search.storage.manifest import FORMAT_VERSION as FORMAT_VERSION
from search.storage.manifest import MANIFEST as MANIFEST
from search.storage.manifest import Manifest, looks_like_manifest, read_manifest, write_manifest
from search.storage.store import ReadStore, Store
from search.text.bm25 import LEXICAL_STATE, POSTINGS_VERSION, LexicalPostings, load_postings
from search.text.embedding import Embedder, check_compatible
from search.vectors.base import VECTORS_STATE as VECTORS_STATE
from search.vectors.base import IndexVectors, VectorStore
from search.vectors.factory import backend_of, check_vectors, open_vectors

SQLITE = "newsdesk.sqlite"
# Written first into every directory a build creates: what tells ``newsdesk index`` that it may replace (delete) it.
MARKER = ".newsdesk-index"
MARKER_TEXT = "A newsdesk index directory: `newsdesk index --index` replaces it. Nothing else here is kept.\n"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


DENSE_LOOKUP_FROM = 4096  # ids looked up at once from which ``PassageOwners.articles_of`` uses its id-indexed table


@dataclass(frozen=True)
class PassageOwners:
    """Which article each passage belongs to, as sorted arrays in memory: a query maps hundreds of FAISS hits to
    articles and lists the passages of a hundred articles, which from SQLite costs 5-10 ms each time."""

    pids: np.ndarray  # int64, ascending
    aids: np.ndarray  # int64, the article of pids[i]
    order: np.ndarray  # positions sorting aids (stable, so each article's passages stay in id order)

    @classmethod
    def of(cls, pids: np.ndarray, aids: np.ndarray) -> PassageOwners:
        """Owners of ``pids`` (any order). Ids in order (as SQLite gives them: a write's passages get ids above all
        others) are not sorted again, nor are their articles when those are in order too (a sort of 1.1M
        passages costs 0.1 s, on every open and every write)."""
        pids, aids = np.asarray(pids, dtype=np.int64), np.asarray(aids, dtype=np.int64)
        if not _ascending(pids, strict=True):
            sort = np.argsort(pids, kind="stable")
            pids, aids = pids[sort], aids[sort]
        order = np.arange(len(aids), dtype=np.int64) if _ascending(aids) else np.argsort(aids, kind="stable")
        return cls(pids, aids, order)

    @classmethod
    def load(cls, store: Store) -> PassageOwners:
        return cls.of(*store.passage_owners())

    def articles_of(self, pids: np.ndarray) -> np.ndarray:
        """The article of each passage id; -1 for an id not (or no longer) in the index. Many ids (a query's range
        search: hundreds of thousands of hits at 924k passages) are looked up in ``by_id``, one gather, where a
        binary search each cost 90-170 ms a query."""
        pids = np.asarray(pids, dtype=np.int64)
        if len(pids) >= DENSE_LOOKUP_FROM and self.by_id is not None:
            table = self.by_id
            inside = (pids >= 0) & (pids < len(table))
            out = np.full(len(pids), -1, dtype=np.int64)
            out[inside] = table[pids[inside]]
            return out
        at = np.minimum(np.searchsorted(self.pids, pids), max(len(self.pids) - 1, 0))
        if not len(self.pids):
            return np.full(len(pids), -1, dtype=np.int64)
        return np.where(self.pids[at] == pids, self.aids[at], -1)

    @cached_property
    def by_id(self) -> np.ndarray | None:
        """The article of every passage id as one array indexed by id (-1 where no passage has that id), built at
        the first large lookup; None when ids are too sparse for it (more than twice as many slots as passages).
        SQLite numbers passages 1..N, so it is 8 bytes a passage."""
        if not len(self.pids) or int(self.pids[0]) < 0 or int(self.pids[-1]) >= 2 * len(self.pids) + 1024:
            return None
        table = np.full(int(self.pids[-1]) + 1, -1, dtype=np.int64)
        table[self.pids] = self.aids
        return table

    @cached_property
    def sorted_aids(self) -> np.ndarray:
        """``aids`` in ``order``, made once: gathering them on every lookup cost 2.5 ms a search at 924k passages."""
        return self.aids if _ascending(self.aids) else self.aids[self.order]

    def passages_of(self, aids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(article, passage id) of every passage of the given articles, grouped by article in the given order, each
        article's passages in id (= position) order."""
        sorted_aids = self.sorted_aids
        want = np.asarray(aids, dtype=np.int64)
        lo, hi = np.searchsorted(sorted_aids, want, "left"), np.searchsorted(sorted_aids, want, "right")
        if not len(want) or not int((hi - lo).sum()):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        picks = np.concatenate([self.order[a:b] for a, b in zip(lo, hi, strict=True)])
        return self.aids[picks], self.pids[picks]

    def passages_of_set(self, aids: np.ndarray) -> np.ndarray:
        """Sorted passage ids of the given (sorted, unique) article keys: a filter's passages, in one vector op."""
        return self.pids[np.isin(self.aids, aids, assume_unique=False)]

    def memory_bytes(self) -> int:
        """The three arrays, 24 bytes a passage, and the id lookup and sorted articles once built. ``owners`` in the
        memory report."""
        extra = 0
        for name in ("by_id", "sorted_aids"):
            made = self.__dict__.get(name)
            if isinstance(made, np.ndarray) and made is not self.aids:
                extra += made.nbytes
        return int(self.pids.nbytes + self.aids.nbytes + self.order.nbytes + extra)

    def updated(self, removed: list[int], added_pids: np.ndarray, added_aids: np.ndarray) -> PassageOwners:
        """The owners after a write removed passages ``removed`` and added ``added_pids`` (of ``added_aids``): the
        removed ids are found by binary search (``np.isin`` sorts all 1.1M ids for a few hundred), and the result is
        not sorted again when the added ids come after the others, as SQLite gives them."""
        gone = np.asarray(removed, dtype=np.int64)
        keep = np.ones(len(self.pids), dtype=bool)
        if len(gone) and len(self.pids):
            at = np.minimum(np.searchsorted(self.pids, gone), len(self.pids) - 1)
            keep[at[self.pids[at] == gone]] = False
        return PassageOwners.of(
            np.concatenate([self.pids[keep], np.asarray(added_pids, dtype=np.int64)]),
            np.concatenate([self.aids[keep], np.asarray(added_aids, dtype=np.int64)]),
        )


def _ascending(values: np.ndarray, *, strict: bool = False) -> bool:
    if len(values) < 2:
        return True
    return bool((values[1:] > values[:-1]).all() if strict else (values[1:] >= values[:-1]).all())


class Published(Protocol):
    """Where a stateless replica's index comes from (search/vectors/milvus/replica.py ``Replica``): asked whether
    a newer state was published, and to load it (from ``current``, the index it serves, by the published deltas)."""

    background: bool  # reloaded in a thread, the loaded state served meanwhile (SearchService.refresh)

    def changed(self) -> bool: ...

    def reopen(self, current: Index) -> Index: ...

    def close(self) -> None: ...


@dataclass
class Index:
    """An open index: its manifest, its store and its vectors, consistent with each other. A replica
    (search/vectors/milvus/replica.py) has no directory: its store is a read-only view of what the engine published."""

    directory: Path | None
    manifest: Manifest
    store: ReadStore  # a Store for a directory index (what open_index returns; ``writable`` gives it typed)
    vectors: IndexVectors  # passages and articles, from the backend the manifest names (search/vectors/factory.py)
    lexical: LexicalPostings
    owners: PassageOwners
    catalog: ArticleCatalog
    duplicates: DedupIndex | None = None  # loaded when a write needs it (search/news/grouping.py)
    neighbours: NeighbourGraph | None = None  # more-like-this profiles (search/news/neighbours.py), set by open_index
    # (article keys deleted, added) by writes the profiles do not reflect yet: see indexer/update.py save_state
    neighbour_changes: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))
    replica: Published | None = None  # set for an index served from Milvus alone (search/vectors/milvus/replica.py)
    read_only: bool = False  # opened read-only (a directory it cannot write, or --read-only): writes are refused
    # The store generation every in-memory part (vectors, postings, owners, catalog, profiles) reflects; -1 for a
    # replica (its Replica tracks what it loaded). A part may hold later changes when a write landed while the
    # index was being opened, never fewer: a writer that finds the store at this generation holds it all.
    generation: int = -1
    closed: bool = False  # set by ``close``: a service's background follower stops there

    @property
    def passages(self) -> VectorStore:
        return self.vectors.passages

    @property
    def articles(self) -> VectorStore:
        return self.vectors.articles

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or (self.directory.name if self.directory else "index"))

    @property
    def writable(self) -> tuple[Path, Store]:
        """The directory its caches are written to, and the SQLite store a write goes to; a replica has neither.

        The directory is the store's own (the symlink resolved when the index was opened), so a process that
        still holds a replaced build never writes its caches into the build that replaced it."""
        if self.read_only:
            raise WritesDisabled(
                f"the index {self.name} is open read-only (its directory cannot be written, or it is served with "
                "--read-only): writes are off"
            )
        if self.directory is None or not isinstance(self.store, Store):
            raise WritesDisabled(
                "this server is a read replica of an index on Milvus: write through the indexer (newsdesk add "
                "--index DIR) or a server on the index directory; replicas reload when it publishes"
            )
        return self.store.path.parent, self.store

    @property
    def sqlite(self) -> Store:
        """The SQLite store of an index opened from its directory (read-only or not): what checks, exports and
        tests read beyond the query side's ``ReadStore``. WritesDisabled for a replica, which has none."""
        if not isinstance(self.store, Store):
            raise WritesDisabled("this server is a read replica of an index on Milvus: it has no SQLite store")
        return self.store

    @property
    def build(self) -> str:
        """The id of the full build this index's store came from (changes with every build, unlike generations)."""
        return self.store.build if isinstance(self.store, Store) else ""

    def current(self) -> bool:
        """Whether the index directory still leads to this index's store: False once a rebuild swapped in another
        build (or the directory went). A ``stat``, cheap enough to ask on every request."""
        if self.directory is None or not isinstance(self.store, Store):
            return True
        try:
            stat = os.stat(self.directory / SQLITE)
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self.store.identity

    def reopen(self, embedder: Embedder | None = None) -> Index:
        """This index as now committed (or published, for a replica). ``embedder`` is checked against the model
        of a new build (one swapped in since this index was opened); the same build needs no check."""
        if self.replica is not None:
            return self.replica.reopen(self)
        if self.directory is None:
            raise WritesDisabled("this index has no directory to reopen")
        read_only = True if self.read_only else None  # None: read-only where the directory cannot be written
        return open_index(self.directory, None if self.current() else embedder, read_only=read_only)

    def catch_up(self, embedder: Embedder | None = None) -> None:
        """Become the index as now committed, in place (callers hold this object): after another process's write
        or a rebuild. The replaced store's connections are closed; the caller must hold no reader on them (the
        service calls this under its write lock)."""
        fresh = self.reopen(embedder)
        previous = self.store
        vars(self).update(vars(fresh))
        if previous is not self.store and isinstance(previous, Store):
            previous.close()

    def memory(self) -> dict[str, int]:
        """Bytes each in-memory part holds (search/memory.py): the backend's vectors, the BM25 postings, the article
        catalog, the passage owners, the more-like-this profiles and the duplicate fingerprints (loaded for a write).
        Sentence vectors stay in SQLite, read per page for highlighting: none are held, hence 0."""
        return {
            "vectors": self.vectors.memory_bytes(),
            "sentence_vectors": 0,
            "postings": self.lexical.memory_bytes(),
            "catalog": self.catalog.memory_bytes(),
            "owners": self.owners.memory_bytes(),
            "profiles": self.neighbours.memory_bytes() if self.neighbours is not None else 0,
            "duplicates": deep_size(self.duplicates) if self.duplicates is not None else 0,
        }

    def close(self) -> None:
        self.closed = True
        if self.replica is not None:
            self.replica.close()
            return
        self.store.close()
        self.vectors.close()


@dataclass
class DirectoryIndex(Index):
    """An index opened from its directory (``open_index``): its store is the SQLite ``Store`` itself."""

    store: Store


def open_index(directory: Path, embedder: Embedder | None, *, read_only: bool | None = None) -> DirectoryIndex:
    """Open and check an index; refuse a model whose vectors are not the index's; rebuild stale FAISS caches.

    ``embedder=None`` skips the model check, for a caller that verified the model otherwise (an incremental
    re-index compares model files and settings, and loads the model only if something needs embedding).
    ``read_only`` opens SQLite read-only and refuses writes (``Index.writable``); ``None`` decides by trying to write
    in the directory, so a read-only copy or mount serves instead of failing to open. A damaged SQLite file is one
    ``IndexCorrupt`` naming it; damaged caches are rebuilt from it. The directory's symlink is resolved once: the
    store and every cache come from one build, whatever a rebuild swaps in meanwhile."""
    link = directory.absolute()
    for _ in range(OPEN_TRIES):
        directory = link.resolve()  # one build's directory: a rebuild swapping the link meanwhile changes nothing here
        try:
            manifest = read_manifest(directory)
            if read_only is None:
                read_only = not directory_writable(directory, directory / SQLITE)
            store = Store(directory / SQLITE, read_only=read_only)
        except (IndexMissing, IndexCorrupt):
            if directory == link.resolve():
                raise
            continue  # the build just replaced: its directory went while it was opened
        if manifest.get("build", store.build) == store.build:
            break
        store.close()  # the manifest of one build, the store of another: a swap in between
    else:
        raise StaleIndex(f"{link} kept being replaced while it was opened ({OPEN_TRIES} tries)")
    try:
        if embedder is not None:
            check_compatible(manifest["model"], embedder)
        return _open(link, directory, manifest, store, read_only)
    except sqlite3.DatabaseError as exc:
        store.close()
        if isinstance(exc, sqlite3.OperationalError):
            raise  # locked, or an I/O error: not a damaged file
        raise IndexCorrupt(f"{directory / SQLITE} is damaged ({exc}); restore it from a copy or rebuild") from None
    except BaseException:
        store.close()
        raise


OPEN_TRIES = 5


def _open(link: Path, directory: Path, manifest: Manifest, store: Store, read_only: bool) -> DirectoryIndex:
    # Read first: every part loaded below reflects at least this generation (see Index.generation).
    generation = store.generation()
    n_articles, n_passages = store.counts()
    if manifest["counts"] != {"articles": n_articles, "passages": n_passages}:
        # SQLite is the truth; counts lag it only if a writer died between its commit and the manifest update.
        manifest["counts"] = {"articles": n_articles, "passages": n_passages}
        if not read_only:
            with contextlib.suppress(OSError), store.saving(generation) as ok:  # not beside a writer's own save
                if ok:
                    write_manifest(directory, manifest)
    vectors = open_vectors(directory, store, manifest)
    lexical = load_postings(directory, store)
    owners, catalog = PassageOwners.load(store), ArticleCatalog.load(store)
    dedup = None
    if not catalog.labelled.all():  # an index from before story and duplicate labels
        dedup = load_duplicates(directory, store, catalog)
        labels = label_unlabelled(catalog, vectors.articles, store, dedup)
        if not read_only:  # read-only: the labels live in memory only
            with contextlib.suppress(sqlite3.OperationalError, OSError):
                store.set_groups(labels)
                with store.saving(generation) as ok:
                    if ok:
                        save_duplicates(directory, dedup, generation)
                vectors.relabel(store, manifest, list(labels))
        catalog = ArticleCatalog.load(store, labels)
    neighbours = load_graph(directory, store, vectors.articles, lexical.articles, DEFAULT_NEIGHBOURS, generation)
    index = DirectoryIndex(
        link, manifest, store, vectors, lexical, owners, catalog, dedup, neighbours, generation=generation
    )
    index.read_only = read_only
    return index


def open_store(directory: Path) -> Store:
    """The index's SQLite store alone (no caches), read-only where the directory cannot be written: what ``check``
    and ``stats`` read, so that they work on a read-only copy or mount as ``open_index`` does."""
    path = directory / SQLITE
    return Store(path, read_only=path.is_file() and not directory_writable(directory, path))


def check_index(directory: Path) -> list[str]:
    """Every disagreement between manifest, SQLite and vectors; empty when the index is sound.

    Independent of any model: it compares what is on disk, including every vector its backend holds (all of them
    where it keeps them exactly) against its stored copy.
    """
    directory = directory.absolute()
    try:
        manifest = read_manifest(directory)
        backend_of(manifest)  # a backend this version has
    except NewsdeskError as exc:
        return [exc.message]
    problems: list[str] = []
    try:
        store = open_store(directory)
    except NewsdeskError as exc:
        return [exc.message]
    try:
        problems += store.integrity_problems()
        if problems:
            return problems
        # The manifest's counts are a cache of SQLite's, written after each commit: a crash between the two leaves
        # them behind, which open_index repairs, so they are not compared here (the FAISS ids below are).
        dim = int(manifest["model"]["dimension"])
        for table in ("passages", "articles"):
            for ids, vecs in store.iter_vectors(table):
                if vecs.shape[1] != dim:
                    problems.append(f"{table} {ids[0]}..: stored vectors have dimension {vecs.shape[1]}, not {dim}")
                    break
                norms = np.linalg.norm(vecs, axis=1)
                bad = ids[np.abs(norms - 1.0) > 1e-3]
                if len(bad):
                    problems.append(f"{len(bad)} {table} vectors are not normalised (first id {bad[0]})")
                    break
        if problems:
            return problems
        problems += check_vectors(directory, store, manifest)
        problems += _check_postings(directory, store)
        problems += graph_problems(directory, store.generation(), DEFAULT_NEIGHBOURS)
        problems += duplicates_problems(directory, store.generation())
        return problems
    finally:
        store.close()


def _check_postings(directory: Path, store: Store) -> list[str]:
    """The BM25 postings cache, when it claims the store's generation, covers exactly the stored rows."""
    try:
        state = json.loads((directory / LEXICAL_STATE).read_text(encoding="utf-8"))
    except OSError:
        return []  # missing: rebuilt on open
    except ValueError:
        return [f"{LEXICAL_STATE} is unreadable"]
    if not isinstance(state, dict):
        return [f"{LEXICAL_STATE} is unreadable"]
    if state.get("generation") != store.generation() or state.get("version") != POSTINGS_VERSION:
        return []  # stale or of an older format: rebuilt on open
    try:
        postings = LexicalPostings.load(directory, store.generation(), verify=True)  # the bases' CRC-32 too
    except IndexCorrupt as exc:
        # a base of the right size is not read whole on open: removing the stamp makes the next open rebuild it
        return [f"BM25 postings cache is damaged ({exc.message}); remove {LEXICAL_STATE} to rebuild it from SQLite"]
    except DAMAGED_CACHE as exc:
        return [f"BM25 postings cache is unreadable ({type(exc).__name__}: {exc}); it is rebuilt on open"]
    problems: list[str] = []
    for table, got in (("passages", postings.passages), ("articles", postings.articles)):
        stored = store.keys(table)
        if not np.array_equal(stored, got.rowids):
            problems.append(f"BM25 postings hold {got.rows} {table}, SQLite {len(stored)}; they differ")
    return problems


# -- atomic builds ---------------------------------------------------------------------------------------------


@contextmanager
def building(target: Path, before_swap: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a fresh directory beside ``target``; on success make ``target`` point at it atomically.

    ``target`` is a symlink to a versioned sibling (``.<name>.<id>``); swapping it is one ``rename``, so readers see
    the old index or the new one, never a mix, and a crash mid-build leaves the old index untouched. ``target`` must
    be new, empty or an index newsdesk wrote (``check_replaceable``): nothing else is ever deleted. A build that
    cannot write (a full disk) is one ``StorageError``, its new directory removed and the old index untouched.
    ``before_swap`` runs once the new directory's files are synced, just before the swap (a build carries the last
    writes of the index it replaces into its own store there: indexer/build.py).
    """
    target = target.absolute()
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}"
    work.mkdir()
    try:
        (work / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
        yield work
        for f in work.iterdir():
            if f.is_file():
                fsync_path(f)
        fsync_path(work)
        if before_swap is not None:
            before_swap()
        swap_in(target, work)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError) or _disk_full(exc):
            raise StorageError(
                f"cannot write the new index for {target}: {_reason(exc)}; the previous index is untouched"
            ) from None
        raise


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).splitlines()[0]


def is_newsdesk_index(directory: Path) -> bool:
    """Whether ``directory`` is an index newsdesk wrote: it holds the marker every build writes first, or (an index
    built before the marker) a newsdesk manifest beside a SQLite store. A ``manifest.json`` alone is not enough: a
    web project has one too."""
    if (directory / MARKER).is_file():
        return True
    return looks_like_manifest(directory / MANIFEST) and (directory / SQLITE).is_file()


def check_replaceable(target: Path) -> None:
    """Refuse to build at ``target`` unless it is new, an empty directory or an index newsdesk wrote (through a
    symlink or not): the swap removes what ``target`` held, and a mistyped ``--index`` (``.``, ``~``, a project
    directory, a symlink to one) must never delete it."""
    if not target.exists():
        return  # nothing there, or a dangling symlink: only the link is replaced
    real = target.resolve()
    shown = str(target) if real == target else f"{target} (a link to {real})"
    if not real.is_dir():
        raise InvalidInput(f"{shown} exists and is not a directory; refusing to replace it")
    if is_newsdesk_index(real) or not any(real.iterdir()):
        return
    raise InvalidInput(
        f"{shown} is not empty and is not a newsdesk index; refusing to replace it (give a new or empty directory)"
    )


def swap_in(target: Path, new_dir: Path) -> None:
    """Point ``target`` at ``new_dir``, then delete the index it replaced if newsdesk wrote it there: a versioned
    sibling it linked to, or a plain directory holding an index (a copy). A link to anywhere else is replaced and what
    it pointed to kept; an empty directory is removed only while still empty."""
    check_replaceable(target)  # again: something may have appeared there while the index was built
    previous: Path | None = None  # deleted after the swap
    emptied: Path | None = None  # an empty directory moved aside, removed if still empty
    if target.is_symlink():
        linked = target.parent / os.readlink(target)
        own = linked.parent == target.parent and linked.name.startswith(f".{target.name}.")
        if own and linked.is_dir() and not linked.is_symlink() and is_newsdesk_index(linked):
            previous = linked
    elif target.exists():
        # A plain directory (a copied index, or an empty one): move it aside under a versioned name first.
        aside = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}"
        ours = is_newsdesk_index(target)
        os.rename(target, aside)
        previous, emptied = (aside, None) if ours else (None, aside)
    link_tmp = target.parent / f".{target.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(new_dir.name, link_tmp)
    os.replace(link_tmp, target)
    fsync_path(target.parent)
    if previous is not None and previous.resolve() != new_dir.resolve():
        shutil.rmtree(previous, ignore_errors=True)
    if emptied is not None:
        with contextlib.suppress(OSError):
            emptied.rmdir()
