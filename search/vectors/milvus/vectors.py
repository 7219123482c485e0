"""Milvus behind the ``VectorStore`` interface (issue 8): passage and article vectors in two Milvus collections.

Chosen per index at build time (``--store milvus``, ``NEWSDESK_STORE``) and recorded in the manifest, like the FAISS
factory. Everything goes through pymilvus's ``MilvusClient``, so one code path serves both deployments:

- ``http(s)://host:19530``: a Milvus standalone or distributed cluster.
- a path ending in ``.db`` (relative paths are inside the index directory; the default is ``milvus.db``): Milvus
  Lite, the pure-Python rebuild of Milvus that the ``milvus-lite`` package runs in this process behind a loopback
  gRPC server, so the client speaks the same protocol to it as to a cluster. It holds a lock on its directory:
  one process at a time (no ``serve --processes N``, no ``newsdesk add`` beside a server).

SQLite stays the source of truth, as with FAISS: the collections are derived from the stored embeddings, keyed by
our int64 passage and article keys, and ``vectors.json`` records the store generation they match. Writes commit in
SQLite first and then reach Milvus; an open that finds the state stale (a writer died in between) brings the
collections back to SQLite's rows without re-embedding.

Both collections have the schema ``id INT64 primary key, vector FLOAT_VECTOR(dim)`` with inner product on
normalised vectors and ``Strong`` consistency (a search sees every write acknowledged before it, as FAISS in
memory does). Passage vectors get the configured index type (``FLAT``, exact, by default); article vectors are
always ``FLAT``, as the FAISS backend keeps them exact (related stories and story labels depend on exact cosines).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search.errors import IndexCorrupt, InvalidInput, VectorStoreUnavailable
from search.settings import STORES as STORES  # declared with the settings, so the CLI need not import this module
from search.storage.files import discarded_on_failure
from search.storage.store import Store
from search.vectors.faiss import EXACT_FILTER_LIMIT, checked_batch
from search.vectors.milvus.records import (
    RECORD_KINDS,
    EngineRecords,
    article_records,
    meta_name,
    read_state,
    record_names,
)

DEFAULT_URI = "milvus.db"
# Index types MilvusClient accepts for a dense float vector; Milvus Lite builds FLAT, HNSW, HNSW_SQ, IVF_FLAT,
# IVF_SQ8 and AUTOINDEX (a cluster all of them); an unsupported one fails when the collection is created.
INDEX_TYPES = ("FLAT", "HNSW", "HNSW_SQ", "HNSW_PQ", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "AUTOINDEX", "DISKANN", "SCANN")
# What Milvus Lite 3.2 builds: it accepts any other type when the index is created, then fails to build it in the
# background (logging a traceback) and searches by brute force, so other types are refused here for it.
LITE_INDEX_TYPES = ("FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX")
ARTICLE_INDEX = "FLAT"
KINDS = ("passages", "articles")  # the SQLite table each collection mirrors
SCHEMA = {
    "fields": [
        {"name": "id", "type": "INT64", "primary_key": True, "auto_id": False},
        {"name": "vector", "type": "FLOAT_VECTOR"},
    ],
    "metric": "IP",
    "consistency_level": "Strong",
}
WRITE_BATCH = 4096  # rows per insert/upsert: ~6 MiB at 384 dimensions, far below gRPC's 64 MiB default
READ_BATCH = 4096  # ids per get: keeps each "id in [...]" expression and its answer small
MAX_TOPK = 16384  # a Milvus cluster's default limit on limit (quotaAndLimits.limits.topK)
CONNECT_TIMEOUT = 10.0  # seconds to reach a Milvus server before reporting it unreachable
LITE_WORKERS = 8  # gRPC threads of an in-process Milvus Lite: concurrent reads are safe, our writes are serialised
# OpenMP threads per Milvus Lite worker thread (its HNSW/IVF indexes are FAISS): one, as search_threads pins the
# FAISS backend's request threads, since concurrent requests already fill the two cores.
LITE_OMP_THREADS = 1
_NAME = re.compile(r"[^A-Za-z0-9_]+")


# -- configuration ---------------------------------------------------------------------------------------------


def parse_params(text: str, what: str) -> dict[str, Any]:
    """``"M=32,efConstruction=200"`` as ``{"M": 32, "efConstruction": 200}`` (numbers as numbers); "" is {}."""
    out: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, eq, raw = part.partition("=")
        name, raw = name.strip(), raw.strip()
        if not eq or not name or not raw:
            raise InvalidInput(f"invalid Milvus {what} {text!r}: expected name=value, comma-separated (e.g. ef=128)")
        value: Any = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        out[name] = value
    return out


def format_params(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


@dataclass(frozen=True)
class MilvusConfig:
    """Where the collections live and how passage vectors are indexed and searched (the manifest's ``milvus``)."""

    uri: str = DEFAULT_URI
    index_type: str = "FLAT"
    index_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)
    collections: dict[str, str] = field(default_factory=dict)  # vector and record collections of this build, by kind
    meta: str = ""  # the index's stable meta collection (search/vectors/milvus/records.py), what replicas follow

    @classmethod
    def from_settings(cls, settings: Any, index_name: str = "") -> MilvusConfig:
        """Validated settings for a new build, with fresh collection names (a rebuild never writes into the
        collections the index it replaces is still serving from)."""
        if settings.store not in STORES:
            raise InvalidInput(f"setting store must be one of {', '.join(STORES)}, got {settings.store!r}")
        index_type = str(settings.milvus_index).strip().upper()
        if index_type not in INDEX_TYPES:
            raise InvalidInput(f"setting milvus_index must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
        uri = str(settings.milvus_uri).strip() or DEFAULT_URI
        check_uri(uri)
        return cls(
            uri=uri,
            index_type=index_type,
            index_params=parse_params(settings.milvus_index_params, "index parameters"),
            search_params=parse_params(settings.milvus_search, "search parameters"),
            collections=collection_names(index_name),
            meta=meta_name(index_name or "index"),
        )

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> MilvusConfig:
        try:
            index = entry["index"]["passages"]
            return cls(
                uri=str(entry["uri"]),
                index_type=str(index["type"]),
                index_params=dict(index.get("params") or {}),
                search_params=dict(entry.get("search_params") or {}),
                collections=_with_records({kind: str(entry["collections"][kind]) for kind in KINDS}),
                meta=str(entry.get("meta") or _meta_of(str(entry["collections"]["passages"]))),
            )
        except (KeyError, TypeError) as exc:
            raise IndexCorrupt(f"the manifest's milvus entry lacks {exc}; rebuild the index") from None

    def manifest_entry(self, dimension: int) -> dict[str, Any]:
        """What the manifest records, like its ``faiss`` entry: enough to reopen and to compare with settings."""
        schema = json.loads(json.dumps(SCHEMA))
        schema["fields"][1]["dim"] = dimension
        return {
            "uri": self.uri,
            "collections": dict(self.collections),
            "meta": self.meta,
            "schema": schema,
            "index": {
                "passages": {"type": self.index_type, "params": dict(self.index_params)},
                "articles": {"type": ARTICLE_INDEX, "params": {}},
            },
            "search_params": dict(self.search_params),
        }


def collection_names(index_name: str) -> dict[str, str]:
    """``newsdesk_<index>_<12 hex>_<kind>``: Milvus names allow letters, digits and underscores, first not a digit.
    The vector collections (``KINDS``) and the record collections (``RECORD_KINDS``) of one build."""
    stem = _NAME.sub("_", index_name).strip("_")[:100] or "index"
    build = uuid.uuid4().hex[:12]
    return {kind: f"newsdesk_{stem}_{build}_{kind}" for kind in (*KINDS, *RECORD_KINDS)}


def _with_records(collections: dict[str, str]) -> dict[str, str]:
    """A manifest's collections with the record collections' names (derived for an index built before them)."""
    return {**collections, **record_names(collections)}


def _meta_of(passages: str) -> str:
    """The meta collection of an index built before it was recorded: from ``newsdesk_<stem>_<12 hex>_passages``."""
    stem = passages.removeprefix("newsdesk_").removesuffix("_passages")
    return meta_name(stem.rsplit("_", 1)[0] if "_" in stem else stem)


def engine_records(connection: MilvusConnection, config: MilvusConfig) -> EngineRecords:
    """The record and meta collections of an index (search/vectors/milvus/records.py)."""
    return EngineRecords(connection, {kind: config.collections[kind] for kind in RECORD_KINDS}, config.meta)


def publish(
    connection: MilvusConnection,
    config: MilvusConfig,
    manifest: dict[str, Any],
    generation: int,
    *,
    take_over: bool = False,
) -> bool:
    """Tell replicas the collections hold ``generation`` (after the writes it stands for); returns whether it did.

    Only a new build ``take_over``s the meta collection from another build's collections. A write or a repair
    publishes only while this build's collections are the published ones (or none are): an old copy of the index
    directory, or a server still on the directory a rebuild replaced, must not point replicas back at them."""
    if not take_over:
        state = read_state(connection, config.meta)
        if state is not None and state.get("collections") != dict(config.collections):
            return False
    engine_records(connection, config).publish(generation, dict(config.collections), manifest)
    return True


def published(connection: MilvusConnection, config: MilvusConfig, generation: int) -> bool:
    state = read_state(connection, config.meta)
    return state == {"generation": generation, "collections": dict(config.collections)}


def is_lite(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "tcp://", "unix:"))


def check_uri(uri: str) -> None:
    if is_lite(uri) and not uri.endswith(".db"):
        raise InvalidInput(
            f"milvus_uri {uri!r} is neither http(s)://host:port (a Milvus server) nor a path ending in .db "
            "(Milvus Lite)"
        )


def lite_path(uri: str, directory: Path) -> Path:
    """A Milvus Lite URI as an absolute path, relative ones inside the index directory. Symlinks are resolved: an
    index path is a symlink swapped by every rebuild, and the Lite server of the old target must not be reused."""
    path = Path(uri).expanduser()
    return (path if path.is_absolute() else directory / path).resolve()


def same_location(a: str, b: str) -> bool:
    """Whether two URIs name the same Milvus (for Lite: the same path as written, relative to the index)."""
    return a.rstrip("/") == b.rstrip("/")


# -- connections and in-process Milvus Lite ------------------------------------------------------------------


class _DropIteratorWarning(logging.Filter):
    """pymilvus's query iterator warns that Milvus Lite gives no MVCC timestamp and falls back to the client's
    clock, on every ``ids()`` call; with ``Strong`` consistency that fallback is what we want, so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


class _LiteServers:
    """In-process Milvus Lite servers, one per ``.db`` path, shared by every connection to it in this process.

    Started here rather than through pymilvus's ``.db`` URI hook (``milvus_lite.server_manager``) for two reasons:
    that hook logs a traceback and returns a bare "Open local milvus failed" when the directory is locked by
    another process, where we owe the user one clear line; and its gRPC worker threads cannot be given an
    initializer, which we need to pin their OpenMP pool like the FAISS backend's request threads. The server is
    built exactly as ``milvus_lite.adapter.grpc.server`` builds it. Reference-counted: the last ``release`` stops
    it and closes the database (flushing its memtable), freeing the directory lock for other processes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[Path, tuple[Any, Any, int, int]] = {}  # path -> (grpc server, MilvusLite, port, users)
        atexit.register(self.release_all)

    def acquire(self, path: Path) -> str:
        with self._lock:
            entry = self._servers.get(path)
            if entry is None:
                server, db, port = _start_lite(path)
                entry = (server, db, port, 0)
            self._servers[path] = (*entry[:3], entry[3] + 1)
            return f"http://127.0.0.1:{entry[2]}"

    def release(self, path: Path) -> None:
        with self._lock:
            entry = self._servers.get(path)
            if entry is None:
                return
            if entry[3] > 1:
                self._servers[path] = (*entry[:3], entry[3] - 1)
                return
            del self._servers[path]
        _stop_lite(entry[0], entry[1])

    def release_all(self) -> None:
        with self._lock:
            entries = list(self._servers.values())
            self._servers.clear()
        for server, db, *_ in entries:
            _stop_lite(server, db)


def _pin_omp() -> None:
    import faiss

    faiss.omp_set_num_threads(LITE_OMP_THREADS)


def _start_lite(path: Path) -> tuple[Any, Any, int]:
    from concurrent import futures

    import grpc
    from milvus_lite import DataDirLockedError, MilvusLite
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from pymilvus.grpc_gen import milvus_pb2_grpc

    if not path.parent.is_dir():
        raise VectorStoreUnavailable(f"cannot open Milvus Lite at {path}: {path.parent} does not exist")
    try:
        db = MilvusLite(str(path))
    except DataDirLockedError:
        raise VectorStoreUnavailable(
            f"Milvus Lite at {path} is open in another process (Milvus Lite allows one process at a time); stop "
            "that process, or build the index on a Milvus server with --milvus-uri http://HOST:19530"
        ) from None
    except OSError as exc:
        raise VectorStoreUnavailable(f"cannot open Milvus Lite at {path}: {exc.strerror or exc}") from None
    try:
        limit = 256 * 1024 * 1024  # as milvus_lite.adapter.grpc.server and Milvus standalone
        pool = futures.ThreadPoolExecutor(LITE_WORKERS, thread_name_prefix="milvus-lite", initializer=_pin_omp)
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        server = grpc.server(pool, options=options)
        milvus_pb2_grpc.add_MilvusServiceServicer_to_server(MilvusServicer(db), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
    except BaseException:
        db.close()
        raise
    return server, db, int(port)


def _stop_lite(server: Any, db: Any) -> None:
    with contextlib.suppress(Exception):
        server.stop(grace=1).wait()
    with contextlib.suppress(Exception):
        db.close()


_LITE = _LiteServers()
_DROP_ITERATOR_WARNING = _DropIteratorWarning()


class MilvusConnection:
    """A ``MilvusClient`` on the index's Milvus; for Milvus Lite also a hold on the in-process server."""

    def __init__(self, uri: str, directory: Path) -> None:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        check_uri(uri)
        # Milvus Lite, in process or as a server, gives query iterators no MVCC timestamp: a warning per page
        logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_DROP_ITERATOR_WARNING)
        self.uri = uri
        self.lite: Path | None = lite_path(uri, directory) if is_lite(uri) else None
        address = _LITE.acquire(self.lite) if self.lite is not None else uri
        try:
            self.client: Any = MilvusClient(uri=address, timeout=CONNECT_TIMEOUT)
        except MilvusException as exc:
            self._release()
            raise VectorStoreUnavailable(f"cannot reach Milvus at {uri}: {_reason(exc)}") from None
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self.client.close()
            self._release()

    def _release(self) -> None:
        if self.lite is not None:
            _LITE.release(self.lite)

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.<method>(...)`` with Milvus's errors as ours: a lost server is a 503, not a traceback."""
        from pymilvus.exceptions import MilvusException

        try:
            return getattr(self.client, method)(*args, **kwargs)
        except MilvusException as exc:
            raise VectorStoreUnavailable(f"Milvus at {self.uri} failed to {what}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    message = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return message[0] if message else type(exc).__name__


# -- the store -------------------------------------------------------------------------------------------------


class MilvusVectorStore:
    """One Milvus collection of (int64 id, float32 vector), inner product, with ``FaissVectorStore``'s semantics:
    ``search`` pads with id -1 and score -inf, ``remove`` returns how many ids it found, ``reconstruct_batch``
    raises KeyError for an id the collection lacks, ``ids()`` is sorted.

    ``count()`` is kept in memory (set when opened, moved by this store's writes): the service asks it on every
    dense query, and a ``count(*)`` costs a round trip and, on Milvus Lite, a scan. A write by another process
    bumps SQLite's generation, and the service reopens the index (and so recounts) when it sees that.
    """

    def __init__(
        self,
        connection: MilvusConnection,
        collection: str,
        dimension: int,
        index_type: str = "FLAT",
        search_params: dict[str, Any] | None = None,
    ) -> None:
        self.connection = connection
        self.collection = collection
        self.dimension = dimension
        self.index_type = index_type
        self.search_params: dict[str, Any] = dict(search_params or {})
        self._count = 0

    # -- lifecycle --

    @classmethod
    def create(
        cls,
        connection: MilvusConnection,
        collection: str,
        dimension: int,
        index_type: str = "FLAT",
        index_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
    ) -> MilvusVectorStore:
        """A new, empty, loaded collection (an existing one of that name is dropped first)."""
        from pymilvus import DataType, MilvusClient
        from pymilvus.exceptions import MilvusException

        conn = connection
        if conn.lite is not None and index_type not in LITE_INDEX_TYPES:
            raise InvalidInput(
                f"Milvus Lite does not build {index_type} indexes (it builds {', '.join(LITE_INDEX_TYPES)}); use "
                "one of those or a Milvus server (--milvus-uri http://HOST:19530)"
            )
        if conn.call("look up a collection", "has_collection", collection):
            conn.call("drop a collection", "drop_collection", collection)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
        index = conn.client.prepare_index_params()
        index.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=dict(index_params or {}))

        try:
            conn.client.create_collection(collection, schema=schema, consistency_level=SCHEMA["consistency_level"])
            # sync=False: the collection is empty, so there is nothing to wait for, and the wait would ask for a
            # timestamp (AllocTimestamp) that Milvus Lite does not implement (it answers UNIMPLEMENTED and logs it)
            conn.client.create_index(collection, index, sync=False)
        except MilvusException as exc:
            with contextlib.suppress(MilvusException):
                conn.client.drop_collection(collection)
            raise InvalidInput(
                f"Milvus at {conn.uri} cannot create collection {collection} with index {index_type} "
                f"{format_params(index_params or {}) or '(defaults)'}: {_reason(exc)}"
            ) from None
        conn.call("load a collection", "load_collection", collection)
        return cls(connection, collection, dimension, index_type, search_params)

    @classmethod
    def open(
        cls,
        connection: MilvusConnection,
        collection: str,
        dimension: int,
        index_type: str = "FLAT",
        search_params: dict[str, Any] | None = None,
    ) -> MilvusVectorStore:
        """An existing collection, loaded for search; IndexCorrupt if Milvus does not hold it."""
        if not connection.call("look up a collection", "has_collection", collection):
            raise IndexCorrupt(f"Milvus at {connection.uri} has no collection {collection}")
        connection.call("load a collection", "load_collection", collection)
        store = cls(connection, collection, dimension, index_type, search_params)
        store._count = store._stored_count()
        return store

    def _stored_count(self) -> int:
        rows = self.connection.call(
            "count vectors", "query", self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def set_search_params(self, search: str | dict[str, Any]) -> None:
        """Search-time parameters passed with every search (``ef=128`` for HNSW, ``nprobe=32`` for IVF)."""
        self.search_params = parse_params(search, "search parameters") if isinstance(search, str) else dict(search)

    def flush(self) -> None:
        """Seal what was written into indexed segments (after a build; Milvus persists each write by itself)."""
        self.connection.call("flush", "flush", self.collection)

    def close(self) -> None:
        """Nothing to release per collection: the connection belongs to whoever opened both stores."""

    # -- writes --

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._write("insert", ids, vectors)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or overwrite by id: repairs after a crash, where SQLite may have reused an id for a new vector."""
        self._write("upsert", ids, vectors)

    def _write(self, method: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids, vectors = checked_batch(ids, vectors, self.dimension)
        before = self._present(ids) if method == "upsert" else 0
        for start in range(0, len(ids), WRITE_BATCH):
            rows = [
                {"id": int(i), "vector": v}
                for i, v in zip(ids[start : start + WRITE_BATCH], vectors[start : start + WRITE_BATCH], strict=True)
            ]
            self.connection.call(f"{method} vectors", method, self.collection, rows)
        self._count += len(np.unique(ids)) - before

    def remove(self, ids: np.ndarray) -> int:
        """Delete the given ids; returns how many the collection held (Milvus's own delete count is the number of
        ids asked for, present or not, so they are looked up first)."""
        ids = np.unique(np.ascontiguousarray(ids, dtype=np.int64))
        if len(ids) == 0:
            return 0
        present = self._existing(ids)
        for start in range(0, len(present), READ_BATCH):
            chunk = [int(i) for i in present[start : start + READ_BATCH]]
            self.connection.call("delete vectors", "delete", self.collection, ids=chunk)
        self._count -= len(present)
        return len(present)

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        found: list[int] = []
        for start in range(0, len(ids), READ_BATCH):
            chunk = [int(i) for i in ids[start : start + READ_BATCH] if i >= 0]
            if chunk:
                rows = self.connection.call("look up ids", "get", self.collection, ids=chunk, output_fields=["id"])
                found += [int(r["id"]) for r in rows]
        return np.unique(np.asarray(found, dtype=np.int64))

    def _present(self, ids: np.ndarray) -> int:
        return len(self._existing(np.unique(ids)))

    # -- reads --

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` (score, id) per query, best first; ids of -1 (score -inf) pad a short answer.

        ``allowed`` (sorted ids) restricts the search, as a filter must, inside Milvus: up to
        ``EXACT_FILTER_LIMIT`` ids as one ``id in [...]`` expression (exact on FLAT; Milvus's own filtered search
        on HNSW/IVF). Larger sets first try an unfiltered search deep enough to hold ``k`` allowed hits were they
        spread evenly, then fall back to filtered searches over chunks of the set, merged.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if allowed is None:
            k = max(1, min(k, max(self._count, 1), MAX_TOPK))
            return self._search(queries, k, "")
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        k = max(1, min(k, len(allowed), MAX_TOPK))
        if len(allowed) == 0:
            return _empty(len(queries), 1)
        if len(allowed) <= EXACT_FILTER_LIMIT:
            return self._search(queries, k, _id_filter(allowed))
        fetch = int(np.ceil(2 * k * max(self._count, 1) / len(allowed)))
        if fetch <= MAX_TOPK:
            scores, ids = self._search(queries, min(fetch, max(self._count, 1)), "")
            keep = np.isin(ids, allowed) & (ids >= 0)
            if (keep.sum(axis=1) >= k).all() or fetch >= self._count:
                return _top_of(scores, ids, keep, k)
        parts = [
            self._search(queries, k, _id_filter(allowed[start : start + EXACT_FILTER_LIMIT]))
            for start in range(0, len(allowed), EXACT_FILTER_LIMIT)
        ]
        scores = np.concatenate([s for s, _ in parts], axis=1)
        ids = np.concatenate([i for _, i in parts], axis=1)
        return _top_of(scores, ids, ids >= 0, k)

    def _search(self, queries: np.ndarray, k: int, expr: str) -> tuple[np.ndarray, np.ndarray]:
        hits = self.connection.call(
            "search",
            "search",
            self.collection,
            data=[q for q in queries],
            limit=k,
            filter=expr,
            anns_field="vector",
            output_fields=["id"],
            search_params={"metric_type": "IP", "params": dict(self.search_params)},
            consistency_level="Strong",
        )
        scores, ids = _empty(len(queries), k)
        for row, found in enumerate(hits):
            for col, hit in enumerate(list(found)[:k]):
                ids[row, col] = int(hit["id"])
                scores[row, col] = float(hit["distance"])
        return scores, ids

    def reconstruct(self, id_: int) -> np.ndarray:
        if int(id_) < 0:
            raise KeyError(id_)
        vector: np.ndarray = self.reconstruct_batch(np.asarray([int(id_)], dtype=np.int64))[0]
        return vector

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        keys = np.ascontiguousarray(ids, dtype=np.int64)
        if len(keys) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if int(keys.min()) < 0:
            raise KeyError(int(keys.min()))
        unique = np.unique(keys)
        found: dict[int, Any] = {}
        for start in range(0, len(unique), READ_BATCH):
            chunk = [int(i) for i in unique[start : start + READ_BATCH]]
            rows = self.connection.call("read vectors", "get", self.collection, ids=chunk, output_fields=["vector"])
            found.update((int(r["id"]), r["vector"]) for r in rows)
        if len(found) != len(unique):
            missing = next(int(i) for i in unique if int(i) not in found)
            raise KeyError(missing)
        return np.asarray([found[int(i)] for i in keys], dtype=np.float32).reshape(len(keys), self.dimension)

    def count(self) -> int:
        return self._count

    def ids(self) -> np.ndarray:
        """Every id, sorted: a paged scan (``query_iterator``), so a cluster's result-size limits do not apply."""
        iterator = self.connection.call(
            "list ids", "query_iterator", self.collection, batch_size=READ_BATCH * 4, filter="", output_fields=["id"]
        )
        parts = [np.zeros(0, np.int64)]
        try:
            while True:
                rows = _next_page(iterator, self.connection)
                if not rows:
                    break
                parts.append(np.fromiter((int(r["id"]) for r in rows), np.int64, len(rows)))
        finally:
            with contextlib.suppress(Exception):
                iterator.close()
        return np.sort(np.concatenate(parts))

    def save(self, path: Path) -> None:
        """Nothing to write: Milvus persists every acknowledged write itself (Milvus Lite in its write-ahead log).
        ``path`` is what a FAISS store would write; ``save_state`` records the generation the collections match."""


def _next_page(iterator: Any, connection: MilvusConnection) -> list[Any]:
    from pymilvus.exceptions import MilvusException

    try:
        return list(iterator.next())
    except MilvusException as exc:
        raise VectorStoreUnavailable(f"Milvus at {connection.uri} failed to list ids: {_reason(exc)}") from None


def _id_filter(ids: np.ndarray) -> str:
    return f"id in [{','.join(map(str, ids.tolist()))}]"


def _empty(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


def _top_of(scores: np.ndarray, ids: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` kept (score, id) of each row, best first (ties by id), padded with -inf / -1."""
    scores = np.where(keep, scores, -np.inf)
    order = np.lexsort((np.where(keep, ids, np.iinfo(np.int64).max), -scores), axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    top_ids = np.where(np.isfinite(top_scores), np.take_along_axis(ids, order, axis=1), -1)
    out_scores, out_ids = _empty(len(scores), k)
    out_scores[:, : top_scores.shape[1]], out_ids[:, : top_ids.shape[1]] = top_scores, top_ids
    return out_scores, out_ids


# -- an index's two collections: open, repair, record, check -------------------------------------------------


def open_collections(
    directory: Path, store: Store, manifest: dict[str, Any], state_path: Path, *, records: bool = True
) -> tuple[MilvusVectorStore, MilvusVectorStore]:
    """The index's passage and article collections, brought up to SQLite's rows when ``state_path`` does not
    record the store's generation (a new build, or a writer that died between its commit and Milvus); with
    ``records``, the record collections too, and the repaired generation is published to replicas. A build passes
    ``records=False``: it fills the records once its articles are labelled (``fill_records``)."""
    config = MilvusConfig.from_manifest(manifest["milvus"])
    dim = int(manifest["model"]["dimension"])
    generation = store.generation()
    connection = MilvusConnection(config.uri, directory)
    try:
        fresh = _read_state(state_path) == _state(generation, config)
        stores: list[MilvusVectorStore] = []
        for kind in KINDS:
            index_type = config.index_type if kind == "passages" else ARTICLE_INDEX
            params = config.index_params if kind == "passages" else {}
            search = config.search_params if kind == "passages" else {}
            name = config.collections[kind]
            if connection.call("look up a collection", "has_collection", name):
                vs = MilvusVectorStore.open(connection, name, dim, index_type, search)
            else:
                vs = MilvusVectorStore.create(connection, name, dim, index_type, params, search)
                fresh = False
            stores.append(vs)
        engine = engine_records(connection, config) if records else None
        if engine is not None and not engine.ensure():
            fresh = False  # record collections were missing (an index built before them): written below
        if not fresh:
            for kind, vs in zip(KINDS, stores, strict=True):
                sync_collection(vs, store, kind)
            if engine is not None:
                engine.sync(store)
            with contextlib.suppress(OSError):  # a read-only index still serves from the repaired collections
                write_state(state_path, generation, config)
        if engine is not None and not published(connection, config, generation):
            publish(connection, config, manifest, generation)  # e.g. a writer died between vectors.json and this
        return stores[0], stores[1]
    except BaseException:
        connection.close()
        raise


def sync_collection(vs: MilvusVectorStore, store: Store, table: str) -> None:
    """Make the collection hold exactly SQLite's vectors of ``table``: a new one is filled with inserts (then
    flushed into indexed segments); an old one gets every stored vector upserted (SQLite may have given a deleted
    row's id to a new one) and the ids SQLite no longer has deleted."""
    empty = vs.count() == 0
    stored: list[np.ndarray] = []
    for ids, vecs in store.iter_vectors(table):
        stored.append(ids)
        if empty:
            vs.add(ids, vecs)
        else:
            vs.upsert(ids, vecs)
    if not empty:
        keep = np.concatenate(stored) if stored else np.zeros(0, np.int64)
        extra = np.setdiff1d(vs.ids(), keep)
        vs.remove(extra)
        vs._count = vs._stored_count()
    else:
        vs.flush()


def _state(generation: int, config: MilvusConfig) -> dict[str, Any]:
    return {"generation": generation, "store": "milvus", "collections": dict(config.collections)}


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(path: Path, generation: int, config: MilvusConfig) -> None:
    """Record the generation the collections match; written after the writes it stands for, so a crash in
    between leaves it stale and the next open repairs the collections."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with discarded_on_failure(tmp):
        tmp.write_text(json.dumps(_state(generation, config)), encoding="utf-8")
        os.replace(tmp, path)


def check_collections(directory: Path, store: Store, manifest: dict[str, Any], state_path: Path) -> list[str]:
    """Problems between the collections and SQLite when the state claims the store's generation (a stale or
    missing state is legal: the next open repairs it); every vector is compared on exact (FLAT) collections."""
    try:
        config = MilvusConfig.from_manifest(manifest["milvus"])
    except IndexCorrupt as exc:
        return [exc.message]
    if _read_state(state_path) != _state(store.generation(), config):
        return []
    try:
        connection = MilvusConnection(config.uri, directory)
    except (VectorStoreUnavailable, InvalidInput) as exc:
        return [exc.message]
    problems: list[str] = []
    dim = int(manifest["model"]["dimension"])
    try:
        for kind in KINDS:
            index_type = config.index_type if kind == "passages" else ARTICLE_INDEX
            try:
                vs = MilvusVectorStore.open(connection, config.collections[kind], dim, index_type)
            except IndexCorrupt as exc:
                problems.append(exc.message)
                continue
            stored = np.concatenate([ids for ids, _ in store.iter_vectors(kind)] or [np.zeros(0, np.int64)])
            held = vs.ids()
            if not np.array_equal(np.sort(stored), held):
                problems.append(
                    f"Milvus collection {vs.collection} holds {len(held)} ids, SQLite {len(stored)} {kind}; they differ"
                )
                continue
            if index_type == "FLAT":
                for ids, vecs in store.iter_vectors(kind):
                    bad = ~np.isclose(vs.reconstruct_batch(ids), vecs, atol=1e-5).all(axis=1)
                    if bad.any():
                        problems.append(f"Milvus collection {vs.collection}: vector {ids[bad][0]} differs from SQLite")
                        break
        problems += engine_records(connection, config).problems(store)
    except VectorStoreUnavailable as exc:
        problems.append(exc.message)
    finally:
        connection.close()
    return problems


def fill_records(vectors: MilvusVectorStore, store: Store, manifest: dict[str, Any]) -> None:
    """A new build's record collections, written from its finished (labelled) SQLite store."""
    engine = engine_records(vectors.connection, MilvusConfig.from_manifest(manifest["milvus"]))
    engine.ensure()
    engine.fill(store)


def relabel_records(vectors: Any, store: Store, manifest: dict[str, Any], aids: list[int]) -> None:
    """Rewrite the article records of articles labelled after they were written (an index older than labels)."""
    if manifest.get("store") == "milvus" and isinstance(vectors, MilvusVectorStore) and aids:
        engine = engine_records(vectors.connection, MilvusConfig.from_manifest(manifest["milvus"]))
        engine.collection("article_rows").put(article_records(store, aids))


def publish_index(vectors: Any, generation: int, manifest: dict[str, Any], *, take_over: bool = False) -> None:
    """Publish an index on Milvus at ``generation`` (a new build ``take_over``, a write not: see ``publish``);
    nothing for FAISS."""
    if manifest.get("store") == "milvus" and isinstance(vectors, MilvusVectorStore):
        config = MilvusConfig.from_manifest(manifest["milvus"])
        publish(vectors.connection, config, manifest, generation, take_over=take_over)


def drop_collections(entry: dict[str, Any], directory: Path) -> None:
    """Drop a replaced index's collections, as a rebuild deletes the old index directory (a Milvus Lite database
    inside that directory goes with it). Best effort: a Milvus that cannot be reached keeps them, which costs
    space, not correctness."""
    try:
        config = MilvusConfig.from_manifest(entry)
    except IndexCorrupt:
        return
    if is_lite(config.uri) and not Path(config.uri).expanduser().is_absolute():
        return  # inside the replaced index directory, deleted with it
    with contextlib.suppress(VectorStoreUnavailable, InvalidInput):
        connection = MilvusConnection(config.uri, directory)
        try:
            for name in config.collections.values():
                if connection.call("look up a collection", "has_collection", name):
                    connection.call("drop a collection", "drop_collection", name)
        finally:
            connection.close()


def close_vectors(*stores: Any) -> None:
    """Release what vector stores hold (a Milvus connection, and so an in-process Milvus Lite's directory lock)."""
    seen: set[int] = set()
    for vs in stores:
        connection = getattr(vs, "connection", None)
        if isinstance(connection, MilvusConnection) and id(connection) not in seen:
            seen.add(id(connection))
            connection.close()


def describe(manifest: dict[str, Any]) -> dict[str, Any]:
    """The vector store of an index, for ``newsdesk stats``."""
    backend = str(manifest.get("store") or "faiss")
    if backend != "milvus":
        return {"backend": backend}
    entry = manifest.get("milvus") or {}
    return {"backend": "milvus", **entry}


def build_store(
    connection: MilvusConnection,
    collection: str,
    dimension: int,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    index_type: str = "FLAT",
    index_params: dict[str, Any] | None = None,
    search_params: dict[str, Any] | None = None,
) -> MilvusVectorStore:
    """A new collection filled from (ids, vectors) batches and flushed: ``FaissVectorStore.build``'s counterpart."""
    vs = MilvusVectorStore.create(connection, collection, dimension, index_type, index_params, search_params)
    for ids, vecs in batches:
        vs.add(ids, vecs)
    vs.flush()
    return vs
