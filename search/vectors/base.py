"""What a vector backend is: the interface every backend implements, and what the rest of the product may ask.

An index keeps two sets of int64-keyed float32 vectors, passages and articles (their means), and searches them by
inner product. SQLite (search/storage/store.py) holds every vector too and stays the source of truth: a backend's
copy is derived, can lag a crash, and is brought back to SQLite's rows without re-embedding.

Three levels, as txtai's ``ann`` package splits them:

- ``VectorStore``: one set of vectors (search, add, remove, reconstruct); what queries, labels and profiles use.
- ``IndexVectors``: one open index's two stores, and what a backend does with them as a whole: persist or publish
  them at a generation, mirror a committed write into what replicas read, change search parameters, close.
- ``VectorBackend``: what a backend does before or without an open index: record itself in a new build's manifest,
  open (repairing a copy SQLite has moved past), check against SQLite, describe, say why settings cannot reuse an
  index, refuse a deployment it cannot serve, drop a replaced build's data.

Backends register by name in search/vectors/factory.py; the manifest's ``store`` names the one an index uses.
Nothing outside this package asks which backend an index has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from search.errors import InvalidInput
from search.jsontypes import JSONObject
from search.settings import Settings
from search.storage.manifest import Manifest, VectorEntry
from search.storage.store import Store

VECTORS_STATE = "vectors.json"  # the generation a backend's copy of the vectors matches (each backend's own shape)
# A filter allowing at most this many vectors is searched exactly over them (about 8 ms at 384 dimensions).
EXACT_FILTER_LIMIT = 20_000

Changes = tuple[list[int], list[int]]  # (article keys, passage ids) a committed write deleted, or added


class VectorStore(Protocol):
    """Inner-product search over int64-keyed float32 vectors."""

    dimension: int

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (len(queries), k); missing slots have id -1 and score -inf. ``allowed`` (sorted
        ids) limits the search to those vectors."""
        ...

    def range(self, query: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of every vector whose inner product with the one ``query`` (1-d) is at least ``floor``, in
        no particular order: all of them for an exact index, those the ANN finds for an approximate one. What a
        query's match count needs (``SearchService.matching_rows``), whose size no top-k can know in advance."""
        ...

    def matches(self, query: np.ndarray, floor: float, best: int) -> Matches:
        """What ``range`` finds, as a search uses it: the ids of every hit, and the exact scores of the best ``best``
        only (``matches_of``). A store that can bound its scores cheaply scores no other hit exactly (FAISS's
        int8 sketch: search/vectors/sketch.py)."""
        ...

    def reconstruct(self, id_: int) -> np.ndarray: ...

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dimension) vectors of the given ids, as the index stores them; KeyError for an unknown id."""
        ...

    def count(self) -> int: ...

    def ids(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Matches:
    """Every vector at or above a floor (``ids``, in no particular order) and the best ``best`` of them by exact
    score (``best_scores``, ``best_ids``: best first, ties by the smaller id)."""

    ids: np.ndarray
    best_scores: np.ndarray
    best_ids: np.ndarray


def kth_highest(values: np.ndarray, k: int) -> np.floating:
    """The ``k``-th highest of ``values`` (1: the highest), by one partition; ``0 < k <= len(values)``."""
    at = len(values) - k
    found: np.floating = np.partition(values, at)[at]
    return found


def best_of(scores: np.ndarray, ids: np.ndarray, best: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``best`` highest (score, id) pairs, best first, ties by the smaller id: whichever ties share the last
    place, the same ones are kept (a partition alone would keep any)."""
    if len(ids) > best > 0:
        last = kth_highest(scores, best)
        above = np.flatnonzero(scores > last)
        tied = np.flatnonzero(scores == last)
        tied = tied[np.argsort(ids[tied], kind="stable")[: best - len(above)]]
        keep = np.concatenate([above, tied])
    elif best > 0:
        keep = np.arange(len(ids))
    else:
        keep = np.zeros(0, np.int64)
    order = keep[np.lexsort((ids[keep], -scores[keep]))]
    return scores[order], ids[order]


def matches_of(scores: np.ndarray, ids: np.ndarray, best: int) -> Matches:
    """``Matches`` from a range search's (scores, ids)."""
    return Matches(ids, *best_of(scores, ids, best))


# A ``deepened_range`` asks this many hits first, then ``DEEPEN_BY`` times more until its last is below the floor.
DEEPEN_FROM = 256
DEEPEN_BY = 16


def deepened_range(store: VectorStore, query: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """``VectorStore.range`` through top-k searches deepened until the last hit falls below ``floor`` (or the store is
    exhausted): for an engine whose own range search is bounded (FAISS's HNSW stops at efSearch candidates) or
    missing. Each deeper search repeats the shallower one, so a store with a real range search should use it."""
    query = np.ascontiguousarray(np.reshape(query, (1, -1)), dtype=np.float32)
    count = store.count()
    n = min(count, DEEPEN_FROM)
    while n > 0:
        scores, ids = store.search(query, n)
        hits = ids[0] >= 0
        if not hits.all() or n >= count or scores[0][hits][-1] < floor:
            keep = hits & (scores[0] >= floor)
            return scores[0][keep].astype(np.float32), ids[0][keep].astype(np.int64)
        n = min(count, n * DEEPEN_BY)
    return np.zeros(0, np.float32), np.zeros(0, np.int64)


def checked_batch(ids: np.ndarray, vectors: np.ndarray, dimension: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ids, float32 vectors), contiguous, as every backend stores them; InvalidInput for a wrong shape, a
    count mismatch or a negative id (-1 marks a missing slot in search results)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise InvalidInput(f"expected vectors of dimension {dimension}, got shape {vectors.shape}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) != len(vectors):
        raise InvalidInput(f"{len(ids)} ids for {len(vectors)} vectors")
    if len(ids) and ids.min() < 0:
        raise InvalidInput("vector ids must not be negative")
    return ids, vectors


def lookup_keys(ids: np.ndarray) -> np.ndarray:
    """The keys of a ``reconstruct_batch``: contiguous int64; KeyError for a negative one (no vector has it), as
    for any key the backend does not hold."""
    keys = np.ascontiguousarray(ids, dtype=np.int64)
    if len(keys) and int(keys.min()) < 0:
        raise KeyError(int(keys.min()))
    return keys


def ids_problem(held: np.ndarray, store: Store, table: str, what: str) -> str | None:
    """The ``newsdesk check`` line when a backend's copy (``what``, holding the sorted ids ``held``) has other ids
    than SQLite's vectors of ``table``; None when they are the same."""
    stored = np.concatenate([ids for ids, _ in store.iter_vectors(table)] or [np.zeros(0, np.int64)])
    if np.array_equal(np.sort(stored), held):
        return None
    return f"{what} holds {len(held)} ids, SQLite {len(stored)} {table}; they differ"


class IndexVectors(ABC):
    """The passage and article vectors of one open index, and what its backend does with them as a whole.

    The defaults suit a backend whose vectors live in the index directory only: nothing to publish, nothing
    besides vectors to mirror, nothing to close."""

    passages: VectorStore
    articles: VectorStore

    @abstractmethod
    def save(self, directory: Path, generation: int, manifest: Manifest) -> None:
        """Make the vectors durable as of ``generation`` and stamp them with it, the stamp last: a crash in between
        leaves them stale, and the next open repairs them from SQLite."""

    def merge(self, directory: Path, generation: int, manifest: Manifest) -> int:
        """Fold what saves appended since the last whole write into the backend's base files (``newsdesk
        optimize``), as of ``generation``, and return how many segment files that merged; 0 when there was nothing
        to merge (the default: a backend that keeps no segments)."""
        return 0

    @abstractmethod
    def search_params_changed(self, manifest: Manifest, settings: Settings) -> bool:
        """Apply the query-time parameters ``settings`` ask for (efSearch, nprobe, ef) and record them in
        ``manifest``; False when they are the recorded ones. Nothing is rebuilt."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes both stores hold in this process (codes, ids, graph, id maps): ``vectors`` in the memory report
        (search/memory.py). A backend whose vectors live in another process (a Milvus server) holds none here."""

    def publish(self, generation: int, manifest: Manifest, *, take_over: bool = False) -> None:
        """Tell servers that read the backend alone (stateless replicas) that it holds ``generation``. Only a new
        build ``take_over``s from another build's data."""
        return None

    def fill(self, store: Store, manifest: Manifest) -> None:
        """A new build's records besides vectors (what replicas read), written from its finished, labelled store."""
        return None

    # Whether ``follow`` can bring these vectors forward to a write another process committed. False: that process
    # reopens the index instead (a backend whose vectors live in a server has them there already).
    follows: ClassVar[bool] = False

    def follow(
        self, directory: Path, generation: int, deleted: Changes, added: Changes, vectors: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """Bring the in-memory vectors to a write another process committed at ``generation``: ``deleted`` and
        ``added`` (article keys, passage ids) as in ``apply``, ``vectors`` the added passages' and articles' stored
        embeddings in that order. Only called where ``follows``."""
        raise NotImplementedError(f"{type(self).__name__} does not follow other processes' writes")

    def apply(self, store: Store, deleted: Changes, added: Changes) -> None:
        """Mirror a committed write (or a metadata change: the same keys deleted and added) beyond the vectors."""
        return None

    def relabel(self, store: Store, manifest: Manifest, aids: list[int]) -> None:
        """Rewrite what replicas read of articles labelled after they were written (an index older than labels)."""
        return None

    def close(self) -> None:
        """Release what the vectors hold (a connection, a server's lock)."""
        return None


class VectorBackend(ABC):
    """One kind of vector storage, chosen per index at build time (``--store``) and recorded in its manifest."""

    name: ClassVar[str]

    @abstractmethod
    def entry(self, settings: Settings, target: Path, dimension: int) -> VectorEntry:
        """What a new build at ``target`` records in its manifest: at least ``store``. Checks the settings (and
        that a server answers) before anything is embedded."""

    @abstractmethod
    def open(self, directory: Path, store: Store, manifest: Manifest, *, records: bool = True) -> IndexVectors:
        """The index's vectors, brought up to the store's generation from its stored embeddings when the copy is
        stale or damaged (no re-embedding). ``records=False``: a build, which fills its records once labelled."""

    @abstractmethod
    def check(self, directory: Path, store: Store, manifest: Manifest) -> list[str]:
        """Disagreements between the vectors and SQLite (``newsdesk check``). A stale copy is not one: the next
        open repairs it."""

    def pin_threads(self, threads: int) -> None:
        """Limit the engine's thread pool in the calling thread to ``threads`` (OpenMP keeps its count per thread,
        so a server pins each request thread). Nothing by default: an engine in another process pins its own."""
        return None

    def describe(self, manifest: Manifest) -> JSONObject:
        """Where the vectors live, for ``newsdesk stats --json`` (``backend`` and the backend's own entry)."""
        return {"backend": self.name}

    def quality(self, directory: Path, store: Store, manifest: Manifest) -> JSONObject:
        """What ``newsdesk check`` measures of the vectors besides disagreements (FAISS: an ANN base's recall@10
        against exact search over SQLite's vectors); empty when there is nothing to measure."""
        return {}

    def summary(self, stats: JSONObject) -> str:
        """The ``vectors`` line of ``newsdesk stats``, from what ``index_stats`` gathered."""
        return str(stats["store"].get("backend", self.name))

    def incompatibility(self, manifest: Manifest, settings: Settings) -> str | None:
        """Why an incremental re-index with ``settings`` cannot keep this index's vectors, or None."""
        return None

    def serving_problem(self, manifest: Manifest, processes: int) -> str | None:
        """Why this index cannot be served by ``processes`` server processes, or None."""
        return None

    def drop_replaced(self, manifest: Manifest, target: Path) -> None:
        """Delete what a replaced build kept outside its directory (which the rebuild deletes itself). Best
        effort: what cannot be reached is left, costing space, not correctness."""
        return None
