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

import contextlib
from collections.abc import Iterable, Mapping

import numpy as np

from search.errors import IndexCorrupt, InvalidInput, VectorStoreUnavailable
from search.storage.manifest import Params
from search.vectors.base import EXACT_FILTER_LIMIT, Matches, checked_batch, deepened_range, lookup_keys, matches_of
from search.vectors.milvus.client import MilvusConnection, next_page, reason
from search.vectors.milvus.config import LITE_INDEX_TYPES, SCHEMA, MilvusConfig, format_params, parse_params

__all__ = ["MilvusConfig", "MilvusConnection", "MilvusVectorStore", "build_store"]  # the first two: bench/ imports

WRITE_BATCH = 4096  # rows per insert/upsert: ~6 MiB at 384 dimensions, far below gRPC's 64 MiB default
READ_BATCH = 4096  # ids per get: keeps each "id in [...]" expression and its answer small
MAX_TOPK = 16384  # a Milvus cluster's default limit on limit (quotaAndLimits.limits.topK)
RANGE_CEILING = 1e6  # range_filter of a range search's first band: above any inner product of stored vectors
HELD_SLACK = 64  # hits fetched beyond k where answers are limited to ``held`` keys: a write's new vectors


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
        search_params: Mapping[str, int | float | str] | None = None,
    ) -> None:
        self.connection = connection
        self.collection = collection
        self.dimension = dimension
        self.index_type = index_type
        self.search_params: Params = dict(search_params or {})
        self._count = 0
        # A replica's keys (sorted): answers are limited to them. The engine holds a write's vectors before the
        # replica has applied it, and an id the replica does not know must not reach a page (search/vectors/milvus/
        # replica.py); None (a writer's store) leaves answers as the engine gives them.
        self.held: np.ndarray | None = None
        # Vectors read back, by id, where ``remember`` asked for it (None: every read goes to the engine).
        self.memo: dict[int, np.ndarray] | None = None

    # -- lifecycle --

    @classmethod
    def create(
        cls,
        connection: MilvusConnection,
        collection: str,
        dimension: int,
        index_type: str = "FLAT",
        index_params: Mapping[str, int | float | str] | None = None,
        search_params: Mapping[str, int | float | str] | None = None,
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
                f"{format_params(index_params or {}) or '(defaults)'}: {reason(exc)}"
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
        search_params: Mapping[str, int | float | str] | None = None,
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

    def set_count(self, count: int) -> None:
        """The number of vectors the collection holds, known otherwise (a replica counts its passages and
        articles after a delta): saves a ``count(*)``, which Milvus Lite answers by a scan."""
        self._count = int(count)

    def set_search_params(self, search: str | Params) -> None:
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
        if self.held is None:
            return self._search_held(queries, k, allowed, self._count)
        if allowed is not None:
            allowed = allowed[np.isin(allowed, self.held)]
        want = max(1, min(k, len(self.held) if allowed is None else len(allowed), MAX_TOPK))
        scores, ids = self._search_held(queries, want + HELD_SLACK, allowed, self._count + HELD_SLACK)
        return _top_of(scores, ids, np.isin(ids, self.held), want)

    def _search_held(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None, count: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``search`` over whatever the engine holds, ``count`` rows taken as its size."""
        if allowed is None:
            k = max(1, min(k, max(count, 1), MAX_TOPK))
            return self._search(queries, k, "")
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        k = max(1, min(k, len(allowed), MAX_TOPK))
        if len(allowed) == 0:
            return _empty(len(queries), 1)
        if len(allowed) <= EXACT_FILTER_LIMIT:
            return self._search(queries, k, _id_filter(allowed))
        fetch = int(np.ceil(2 * k * max(count, 1) / len(allowed)))
        if fetch <= MAX_TOPK:
            scores, ids = self._search(queries, min(fetch, max(count, 1)), "")
            keep = np.isin(ids, allowed) & (ids >= 0)
            if (keep.sum(axis=1) >= k).all() or fetch >= count:
                return _top_of(scores, ids, keep, k)
        parts = [
            self._search(queries, k, _id_filter(allowed[start : start + EXACT_FILTER_LIMIT]))
            for start in range(0, len(allowed), EXACT_FILTER_LIMIT)
        ]
        scores = np.concatenate([s for s, _ in parts], axis=1)
        ids = np.concatenate([i for _, i in parts], axis=1)
        return _top_of(scores, ids, ids >= 0, k)

    def matches(self, query: np.ndarray, floor: float, best: int) -> Matches:
        return matches_of(*self.range(query, floor), best)

    def range(self, query: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """Every (score, id) at or above ``floor``: one Milvus range search (``radius``, exclusive for IP, the
        float32 just below the floor) of up to ``MAX_TOPK`` hits. Its answer is cut at that limit, and Milvus Lite
        did not page further by ``range_filter`` (a band below a full answer came back short), so a full answer,
        or an engine refusing range parameters, falls back to a top-k search deepened until its last hit falls
        below the floor (bounded by ``MAX_TOPK`` too, as before range search). A replica's answer is limited to the
        keys it holds, as ``search``'s is."""
        query = np.ascontiguousarray(np.reshape(query, (1, -1)), dtype=np.float32)
        if self._count == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        limit = max(1, min(self._count + (HELD_SLACK if self.held is not None else 0), MAX_TOPK))
        radius = float(np.nextafter(np.float32(floor), np.float32(-np.inf)))
        try:
            scores, ids = self._search(query, limit, "", {"radius": radius, "range_filter": RANGE_CEILING})
        except VectorStoreUnavailable:  # refused (a lost server fails the deepened searches the same way)
            scores, ids = deepened_range(self, query[0], floor)
        else:
            hit = (ids[0] >= 0) & (scores[0] >= np.float32(floor))
            if hit.sum() >= limit and limit < self._count:
                scores, ids = deepened_range(self, query[0], floor)
            else:
                scores, ids = scores[0][hit], ids[0][hit]
        if self.held is not None:
            keep = np.isin(ids, self.held)
            scores, ids = scores[keep], ids[keep]
        return scores.astype(np.float32), ids.astype(np.int64)

    def _search(
        self, queries: np.ndarray, k: int, expr: str, extra: Params | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        hits = self.connection.call(
            "search",
            "search",
            self.collection,
            data=[q for q in queries],
            limit=k,
            filter=expr,
            anns_field="vector",
            output_fields=["id"],
            search_params={"metric_type": "IP", "params": dict(self.search_params) | dict(extra or {})},
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

    def remember(self, forget: Iterable[int] = ()) -> None:
        """Keep the vectors this store reads in memory from now on, less those of ``forget`` (ids whose vectors a
        write changed or removed). A replica's article vectors: its more-like-this profiles read every one of them
        back after each delta (0.9 s of a 1.6 s delta at 2,700 articles on Milvus Lite, decoding them through
        pymilvus), though only the delta's articles changed. The memo is a new dict: a copy of this store (the one
        a replica still serves) keeps the memo it had."""
        memo = dict(self.memo or {})  # one C-level copy: a request thread may be adding to the old one
        for key in forget:
            memo.pop(int(key), None)
        self.memo = memo

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        keys = lookup_keys(ids)
        if len(keys) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        unique = np.unique(keys)
        memo = self.memo
        found: dict[int, np.ndarray] = {}
        wanted = [int(i) for i in unique] if memo is None else [int(i) for i in unique if int(i) not in memo]
        for start in range(0, len(wanted), READ_BATCH):
            chunk = wanted[start : start + READ_BATCH]
            rows = self.connection.call("read vectors", "get", self.collection, ids=chunk, output_fields=["vector"])
            found.update((int(r["id"]), np.asarray(r["vector"], dtype=np.float32)) for r in rows)
        if len(found) != len(wanted):
            missing = next(i for i in wanted if i not in found)
            raise KeyError(missing)
        if memo is not None:
            memo.update(found)
            found = memo
        out = np.empty((len(keys), self.dimension), dtype=np.float32)
        for row, i in enumerate(keys.tolist()):
            out[row] = found[i]
        return out

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
                rows = next_page(iterator, self.connection)
                if not rows:
                    break
                parts.append(np.fromiter((int(r["id"]) for r in rows), np.int64, len(rows)))
        finally:
            with contextlib.suppress(Exception):
                iterator.close()
        return np.sort(np.concatenate(parts))


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


def build_store(
    connection: MilvusConnection,
    collection: str,
    dimension: int,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    index_type: str = "FLAT",
    index_params: Mapping[str, int | float | str] | None = None,
    search_params: Mapping[str, int | float | str] | None = None,
) -> MilvusVectorStore:
    """A new collection filled from (ids, vectors) batches and flushed: ``FaissVectorStore.build``'s counterpart."""
    vs = MilvusVectorStore.create(connection, collection, dimension, index_type, index_params, search_params)
    for ids, vecs in batches:
        vs.add(ids, vecs)
    vs.flush()
    return vs
