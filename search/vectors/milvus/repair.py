"""An index's Milvus collections as a whole: opened and repaired from SQLite, stamped, checked, published.

SQLite stays the source of truth: the collections are derived from the stored embeddings, and ``vectors.json``
records the store generation they match (with the backend's name and the collections). Writes commit in SQLite
first and then reach Milvus; an open that finds the stamp stale (a writer died in between) brings the vector and
record collections back to SQLite's rows without re-embedding, then publishes the repaired generation to replicas.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from search.errors import IndexCorrupt, InvalidInput, VectorStoreUnavailable
from search.jsontypes import JSONObject
from search.settings import Settings
from search.storage.files import discarded_on_failure
from search.storage.manifest import Manifest, MilvusEntry
from search.storage.store import Store
from search.vectors.base import VECTORS_STATE, Changes, IndexVectors, ids_problem
from search.vectors.milvus.client import MilvusConnection
from search.vectors.milvus.config import ARTICLE_INDEX, KINDS, RECORD_KINDS, MilvusConfig, is_lite, parse_params
from search.vectors.milvus.records import EngineRecords, article_records, change_record, read_state
from search.vectors.milvus.vectors import MilvusVectorStore


def engine_records(connection: MilvusConnection, config: MilvusConfig) -> EngineRecords:
    """The record and meta collections of an index (search/vectors/milvus/records.py)."""
    return EngineRecords(connection, {kind: config.collections[kind] for kind in RECORD_KINDS}, config.meta)


def publish(
    connection: MilvusConnection,
    config: MilvusConfig,
    manifest: Manifest,
    generation: int,
    *,
    take_over: bool = False,
    store: Store | None = None,
) -> bool:
    """Tell replicas the collections hold ``generation`` (after the writes it stands for); returns whether it did.

    Only a new build ``take_over``s the meta collection from another build's collections. A write or a repair
    publishes only while this build's collections are the published ones (or none are): an old copy of the index
    directory, or a server still on the directory a rebuild replaced, must not point replicas back at them.

    With the ``store`` whose rows the collections hold, the delta since the published state goes in the change log
    (records.py ``change_record``), so replicas catch up by it; without (a new build, labels rewritten without a new
    generation), a new log begins and replicas reload in full."""
    state = read_state(connection, config.meta)
    ours = state is not None and state.get("collections") == dict(config.collections)
    if not take_over and state is not None and not ours:
        return False
    delta = change_record(store, state, generation) if store is not None and state is not None and ours else None
    engine_records(connection, config).publish(generation, dict(config.collections), dict(manifest), delta)
    return True


def published(connection: MilvusConnection, config: MilvusConfig, generation: int) -> bool:
    state = read_state(connection, config.meta)
    return state is not None and (state.get("generation"), state.get("collections")) == (
        generation,
        dict(config.collections),
    )


class MilvusVectors(IndexVectors):
    """An index's passage and article collections on one connection, with its record and meta collections: what
    a write mirrors (``apply``), what a save records (``vectors.json``) and what replicas are told (``publish``).

    ``owned``: closing releases the connection (a directory index); a replica's belongs to its ``Replica``."""

    def __init__(
        self,
        passages: MilvusVectorStore,
        articles: MilvusVectorStore,
        config: MilvusConfig,
        *,
        owned: bool = True,
        store: Store | None = None,
    ) -> None:
        self.passages: MilvusVectorStore = passages
        self.articles: MilvusVectorStore = articles
        self.config = config
        self.connection = passages.connection
        self._owned = owned
        self._store = store  # the SQLite store the collections mirror: what a publication's delta is read from

    def save(self, directory: Path, generation: int, manifest: Manifest) -> None:
        """Milvus holds its writes already: only the generation they match is recorded."""
        write_state(directory / VECTORS_STATE, generation, MilvusConfig.from_manifest(manifest["milvus"]))

    def search_params_changed(self, manifest: Manifest, settings: Settings) -> bool:
        wanted = parse_params(settings.milvus_search, "search parameters")
        entry = manifest["milvus"]
        if entry.get("search_params") == wanted:
            return False
        self.passages.set_search_params(wanted)
        entry["search_params"] = wanted
        return True

    def memory_bytes(self) -> int:
        """The vectors and their index live in the Milvus server (or Milvus Lite's own process); what the
        connection's client holds counts as ``other`` in the memory report. In this process: the vectors a replica
        keeps from its reads (``MilvusVectorStore.remember``: its article vectors)."""
        return sum(
            len(store.memo) * store.dimension * 4 for store in (self.passages, self.articles) if store.memo is not None
        )

    def publish(self, generation: int, manifest: Manifest, *, take_over: bool = False) -> None:
        config = MilvusConfig.from_manifest(manifest["milvus"])
        publish(self.connection, config, manifest, generation, take_over=take_over, store=self._store)

    def fill(self, store: Store, manifest: Manifest) -> None:
        engine = engine_records(self.connection, MilvusConfig.from_manifest(manifest["milvus"]))
        engine.ensure()
        engine.fill(store)

    def apply(self, store: Store, deleted: Changes, added: Changes) -> None:
        engine_records(self.connection, self.config).apply(store, deleted, added)

    def relabel(self, store: Store, manifest: Manifest, aids: list[int]) -> None:
        if aids:
            config = MilvusConfig.from_manifest(manifest["milvus"])
            engine_records(self.connection, config).collection("article_rows").put(article_records(store, aids))
            # labels change no generation, so no delta can carry them: a new log sends replicas to a full reload
            publish(self.connection, config, manifest, store.generation())

    def close(self) -> None:
        if self._owned:
            self.connection.close()


# -- an index's two collections: open, repair, record, check -------------------------------------------------


def open_collections(
    directory: Path, store: Store, manifest: Manifest, state_path: Path, *, records: bool = True
) -> MilvusVectors:
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
            # e.g. a writer died between vectors.json and this: SQLite's change log still names what it wrote
            publish(connection, config, manifest, generation, store=store)
        return MilvusVectors(stores[0], stores[1], config, store=store)
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


def _state(generation: int, config: MilvusConfig) -> JSONObject:
    return {"generation": generation, "store": "milvus", "collections": dict(config.collections)}


def _read_state(path: Path) -> JSONObject:
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


def check_collections(directory: Path, store: Store, manifest: Manifest, state_path: Path) -> list[str]:
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
            problem = ids_problem(vs.ids(), store, kind, f"Milvus collection {vs.collection}")
            if problem:
                problems.append(problem)
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


def drop_collections(entry: MilvusEntry, directory: Path) -> None:
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
